//! Profile storage: the `UserStore` trait and its Postgres and embedded SQLite implementations.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::auth::{AuthError, Claims};
use crate::error::ApiError;

mod instrumented;
mod pool;
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use instrumented::Instrumented;
pub use pool::{ConnPool, Lease, PoolSettings};
pub use postgres::{PgStore, UserTransaction};
#[cfg(feature = "sqlite")]
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

/// The error a store failure carries: a [`sqlx::Error`], [`NoAnswer`], or another cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store call failed.
///
/// The cause stays reachable through [`std::error::Error::source`]; the message itself names
/// only the [`kind`](Self::kind). Neither carries a password: sqlx's messages name the host,
/// the user and the server's complaint, never the URL's credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not answer in time (down, frozen, saturated, misconfigured).
    #[error("store unavailable ({})", kind_of(.0.as_ref()))]
    Unavailable(#[source] BoxError),
    /// `SESSION_CHECK=on` and the token's session is gone or expired.
    #[error("session ended")]
    SessionEnded,
}

impl StoreError {
    /// A store failure caused by `e`.
    pub(crate) fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(e))
    }

    /// The `kind` label of `db_errors_total` for this failure: `timeout`, `acquire_timeout`,
    /// `connection`, `database`, `decode`, `pool_closed` or `other`; `None` for an ended
    /// session, which is the client's business and not a database error.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Self::Unavailable(cause) => Some(kind_of(cause.as_ref())),
            Self::SessionEnded => None,
        }
    }
}

/// No answer from the database within the store's bound (`DB_TIMEOUT_SECONDS`).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct NoAnswer(pub Duration);

fn kind_of(cause: &(dyn std::error::Error + Send + Sync + 'static)) -> &'static str {
    if cause.is::<NoAnswer>() {
        "timeout"
    } else {
        cause
            .downcast_ref::<sqlx::Error>()
            .map_or("other", error_kind)
    }
}

/// The `kind` label for a database error. `acquire_timeout` is the one to alert on: every
/// pooled connection stayed busy for the whole wait.
fn error_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "acquire_timeout",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => "connection",
        sqlx::Error::Database(_) => "database",
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_) => "decode",
        _ => "other",
    }
}

/// How full a connection pool is, sampled for the `db_pool_*` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, busy or idle.
    pub size: u32,
    /// Open connections waiting for work.
    pub idle: usize,
    /// The most connections the pool will open.
    pub max: u32,
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
    /// The connection pool's occupancy, for metrics; `None` when the store has no pool.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
    /// The database behind the store, shared with [`Tx`](crate::Tx) and your own start-up
    /// work; `None` for a store with no database.
    fn db(&self) -> Option<crate::db::Db> {
        None
    }
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
        Err(_) => Err(StoreError::unavailable(NoAnswer(limit))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saturated_pool_is_its_own_error_kind() {
        assert_eq!(error_kind(&sqlx::Error::PoolTimedOut), "acquire_timeout");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(error_kind(&sqlx::Error::Io(refused)), "connection");
        assert_eq!(error_kind(&sqlx::Error::RowNotFound), "decode");
    }

    #[test]
    fn the_cause_is_kept_and_named_by_kind_only() {
        let e = StoreError::unavailable(sqlx::Error::PoolTimedOut);
        assert_eq!(e.kind(), Some("acquire_timeout"));
        assert_eq!(e.to_string(), "store unavailable (acquire_timeout)");
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause, Some(sqlx::Error::PoolTimedOut.to_string()));

        let e = StoreError::unavailable(NoAnswer(Duration::from_secs(3)));
        assert_eq!(e.kind(), Some("timeout"));
        assert_eq!(StoreError::SessionEnded.kind(), None);
    }
}
