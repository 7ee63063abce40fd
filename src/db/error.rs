//! [`DbError`]: why the database could not do the caller's work, with the kinds that
//! `db_errors_total` counts, and the one place a failure is logged and counted.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::telemetry::{metrics, server_timing};

/// The cause a [`DbError::Unavailable`] carries: a [`sqlx::Error`], [`NoAnswer`], or another.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the database could not do the work. Each converts into the contract's answer
/// ([`ApiError`](crate::ApiError)): an outage is 503 `unavailable`, an ended session 401.
///
/// The cause stays reachable through [`std::error::Error::source`]; the message names only
/// its kind. Neither carries a password: sqlx's messages name the host, the user and the
/// server's complaint, never the URL's credentials.
///
/// ```
/// use supabase_jwt_service::{ApiError, DbError};
///
/// assert_eq!(ApiError::from(DbError::SessionEnded).code(), "invalid_token");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database could not answer in time (down, frozen, saturated, misconfigured).
    #[error("database unavailable ({})", kind_of(.0.as_ref()))]
    Unavailable(#[source] BoxError),
    /// `SESSION_CHECK=on` and the token's session is gone or expired (or the token names none).
    #[error("session ended")]
    SessionEnded,
    /// A transaction for one kind of database on an app whose store is the other kind (a
    /// `Tx<Postgres>` on the embedded store): a route written for the wrong store.
    #[error("this needs the {wanted} store, and the app's store is {actual}")]
    WrongStore {
        /// The store the route was written for.
        wanted: &'static str,
        /// The app's store.
        actual: &'static str,
    },
    /// A migration could not be applied (or its database not reached).
    #[error("migration failed")]
    Migration(#[source] BoxError),
}

impl DbError {
    /// A failure caused by `e`.
    pub(crate) fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(e))
    }

    /// The `kind` label of `db_errors_total` for this failure: `timeout`, `acquire_timeout`,
    /// `connection`, `database`, `decode`, `pool_closed`, `migration` or `other`; `None` for
    /// an ended session, which is the client's business and not a database error.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Self::Unavailable(cause) => Some(kind_of(cause.as_ref())),
            Self::SessionEnded => None,
            Self::WrongStore { .. } => Some("other"),
            Self::Migration(_) => Some("migration"),
        }
    }

    /// Logs this failure at the level it deserves (an ended session is the client's business,
    /// an outage the operator's) and counts it in `db_errors_total`. The database layer calls
    /// it once where a failure leaves it, so every failure is counted once.
    pub(crate) fn record(&self) {
        match self {
            Self::SessionEnded => {
                tracing::debug!(target: "supabase_jwt_service::auth", reason = "session_ended", "token rejected");
            }
            Self::WrongStore { .. } => {
                metrics::db_error("other");
                tracing::error!(target: "supabase_jwt_service::db", error = %self, "route written for another store");
            }
            Self::Unavailable(cause) | Self::Migration(cause) => {
                let kind = self.kind().unwrap_or("other");
                metrics::db_error(kind);
                tracing::warn!(target: "supabase_jwt_service::db", kind, reason = %cause, "database unavailable");
            }
        }
    }

    /// Records this failure and returns it: for the points where a failure leaves the layer.
    pub(crate) fn recorded(self) -> Self {
        self.record();
        self
    }

    /// This failure as the `sqlx::Error` an `Executor` must return (a transaction that begins
    /// on first use fails inside the query that began it). [`ApiError`](crate::ApiError)'s
    /// conversion from `sqlx::Error` finds it again, so a handler's `?` answers as for the
    /// `DbError` itself.
    pub(crate) fn into_sqlx(self) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::other(self))
    }

    /// The `DbError` inside a `sqlx::Error` made by [`into_sqlx`](Self::into_sqlx).
    pub(crate) fn inside(e: &sqlx::Error) -> Option<&DbError> {
        match e {
            sqlx::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref()),
            _ => None,
        }
    }
}

/// No answer from the database within the bound on one call (`DB_TIMEOUT_SECONDS`).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(crate) struct NoAnswer(pub(crate) Duration);

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

/// Runs `fut` with an upper bound, turning a timeout into [`DbError::Unavailable`]. The pool's
/// acquire timeout alone is not enough: a frozen server accepts the query and never answers,
/// so each call as a whole is bounded.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(DbError::unavailable(NoAnswer(limit))),
    }
}

/// Times one database call for `db_query_duration_seconds{op}` and the `db` entry of
/// `Server-Timing`, and records its failure.
pub(crate) async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    let started = Instant::now();
    let result = call.await;
    let elapsed = started.elapsed();
    metrics::db_query(op, elapsed);
    server_timing::add_db(elapsed);
    result.map_err(DbError::recorded)
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
        let e = DbError::unavailable(sqlx::Error::PoolTimedOut);
        assert_eq!(e.kind(), Some("acquire_timeout"));
        assert_eq!(e.to_string(), "database unavailable (acquire_timeout)");
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause, Some(sqlx::Error::PoolTimedOut.to_string()));

        let e = DbError::unavailable(NoAnswer(Duration::from_secs(3)));
        assert_eq!(e.kind(), Some("timeout"));
        assert_eq!(DbError::SessionEnded.kind(), None);
    }

    #[test]
    fn a_db_error_survives_the_trip_through_sqlx() {
        let e = DbError::SessionEnded.into_sqlx();
        assert!(matches!(DbError::inside(&e), Some(DbError::SessionEnded)));
        assert!(DbError::inside(&sqlx::Error::PoolTimedOut).is_none());
    }
}
