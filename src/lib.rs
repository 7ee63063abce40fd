//! `supabase-jwt-service`: verifies Supabase Auth access tokens and serves the caller's profile.
//! The README follows; its Rust example is compiled as a doctest.
#![doc = include_str!("../README.md")]

mod app;
pub mod auth;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod db;
mod error;
/// The guide: add your own authenticated route in five minutes (`docs/library.md`).
#[doc = include_str!("../docs/library.md")]
pub mod guide {}
pub mod mint;
pub mod routes;
mod server;
mod startup;
mod state;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use app::App;
pub use auth::{Claims, ValidUser, Verifier};
pub use config::{Config, ConfigError};
pub use db::{Conn, Db, Tx, UserTx};
pub use error::ApiError;
pub use routes::router;
pub use server::serve;
#[cfg(feature = "prometheus")]
pub use startup::spawn_metrics_listener;
pub use startup::{
    StartError, build_state, build_state_with, log_startup, migrate, run_migrations,
    shutdown_signal,
};
pub use state::{AppState, ShutdownFlag};
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{Instrumented, PgStore, UserStore};
