//! One integration-test binary: the crate links once (this matters on 2-core CI).
#![allow(clippy::unwrap_used)]

mod cli;
mod deploy_files;
mod errors;
mod fixtures;
mod happy;
mod helpers;
mod hostile;
mod image_env;
mod jwks;
mod outage;
mod pooler;
mod prometheus_metrics;
mod property;
mod request_logs;
mod rls;
mod shutdown;
mod token_cache;
