//! Profile storage: the `UserStore` trait and its Postgres and embedded SQLite implementations.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::auth::{AuthError, Claims};
use crate::error::ApiError;

pub mod postgres;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A boxed future, so that [`UserStore`] stays dyn-compatible.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A row of `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    /// The auth user's id.
    pub id: Uuid,
    /// Display name.
    pub full_name: Option<String>,
    /// Avatar image URL.
    pub avatar_url: Option<String>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not answer in time (down, frozen, saturated, misconfigured).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// `SESSION_CHECK=on` and the token's session is gone or expired.
    #[error("session ended")]
    SessionEnded,
}

impl StoreError {
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable,
            StoreError::SessionEnded => AuthError::SessionEnded.into(),
        }
    }
}

/// What the HTTP layer needs from a store. Every call is bounded in time by the store.
pub trait UserStore: Send + Sync + 'static {
    /// The caller's own profile row, if any.
    fn profile<'a>(&'a self, claims: &'a Claims) -> StoreFuture<'a, Option<UserRow>>;
    /// Sets the caller's own `full_name`; `None` when the caller has no row.
    fn set_full_name<'a>(
        &'a self,
        claims: &'a Claims,
        full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>>;
    /// Whether the store answers a trivial query now.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// A short name for logs: `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;
}

/// Runs `fut` with an upper bound, turning a timeout into [`StoreError::Unavailable`].
/// The pool's acquire timeout alone is not enough: a frozen server accepts the query and never
/// answers, so each call as a whole is bounded.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {limit:?}"
        ))),
    }
}
