//! One integration-test binary: the crate links once (this matters on 2-core CI).
#![allow(clippy::unwrap_used)]

mod cli;
mod errors;
mod fixtures;
mod happy;
mod helpers;
mod outage;
mod pooler;
mod property;
mod rls;
