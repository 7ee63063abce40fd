//! One integration-test binary: the crate links once (this matters on 2-core CI).
#![allow(clippy::unwrap_used)]

mod bans;
mod chat;
mod cli;
mod deploy_files;
mod errors;
mod fake_llm;
mod fixtures;
mod grants;
mod happy;
mod helpers;
mod hostile;
mod image_env;
mod jwks;
mod notes;
mod outage;
mod pooler;
mod prometheus_metrics;
mod property;
mod request_logs;
mod rls;
mod shutdown;
mod token_role;
mod token_shapes;
