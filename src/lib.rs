//! `supabase-jwt-service`: verifies Supabase Auth access tokens and runs the caller's queries
//! under row-level security. The README follows; its Rust example is compiled as a doctest.
#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod app;
pub mod auth;
pub mod config;
pub mod db;
mod error;
mod extract;
/// The guide: your own authenticated routes, from an empty `main.rs` to tests on Postgres
/// (`docs/library.md`).
#[doc = include_str!("../docs/library.md")]
pub mod guide {}
mod http;
mod mint;
mod profile;
mod server;
mod startup;
mod state;
pub mod telemetry;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use app::App;
pub use auth::{Claims, UserId};
pub use config::{Config, ConfigError};
pub use db::{Db, DbError, DbTx};
pub use error::ApiError;
pub use extract::{Json, Path, Query, Tx, ValidUser};
pub use mint::AccessToken;
pub use profile::{Profile, ProfileRow, UserRow};
pub use server::serve;
pub use startup::{StartError, shutdown_signal};
pub use state::AppState;
