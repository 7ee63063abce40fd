//! One integration-test binary: the crate links once (this matters on 2-core CI).
#![allow(clippy::unwrap_used)]
// `unreachable_pub` is for the library's API; in a test binary `pub` only shares helpers.
#![allow(unreachable_pub)]

mod bans;
mod cache_headers;
mod caller_identity;
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
mod network_defaults;
mod notes;
mod outage;
mod pooler;
mod prometheus_metrics;
mod property;
mod readiness;
mod redaction;
mod request_logs;
mod rls;
mod shutdown;
mod token_cache;
mod token_role;
mod token_shapes;
