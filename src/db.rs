//! Your own SQL, run as the caller: the [`Tx`] extractor.
//!
//! A handler that takes a [`Tx`] gets a transaction that already acts as the verified user on
//! Postgres: `role` is the token's role and `request.jwt.claims` holds its claims, both
//! transaction-local (as Supabase's Data API sets them), so `auth.uid()` and the tables'
//! row-level security policies decide what every statement sees. It comes from the same pool
//! the built-in routes use, costs one round trip to begin, waits at most
//! `DB_TIMEOUT_SECONDS` for a connection, and each statement on it is cut off by the server
//! after `DB_TIMEOUT_SECONDS` too (`statement_timeout`). With `SESSION_CHECK=on` a token whose
//! session has ended is refused (401 `invalid_token`) before the handler runs.
//!
//! The transaction ends in one of three ways: the handler calls [`Tx::commit`] (or
//! [`Tx::rollback`]); or the handler returns and the app commits it when the answer is 2xx and
//! rolls it back otherwise (a panic's 500 included); or the request is abandoned (timeout,
//! client gone) and its connection is closed, which ends the transaction on the server. A
//! connection is never handed back to the pool while it still acts as the user: the public API
//! gives out only `&mut` borrows of it, never the pooled connection itself. A failed commit
//! turns the answer into 503 `unavailable`.
//!
//! **On the embedded SQLite store there is no row-level security.** A `Tx` there is a plain
//! SQLite transaction, committed and rolled back the same way, and every query must filter by
//! the caller's id itself (`where owner = ?`, with [`Claims::sub`] from the `Claims`
//! extractor). Write queries that filter by owner on both stores and a route behaves the same
//! on each; on Postgres the policies then stand behind the filter.
//!
//! With `DB_RLS=off` the role is left as the connecting user's (only the claims are set), so
//! filter by owner there too.
//!
//! Take a [`ValidUser`](crate::ValidUser) before the `Tx` in a handler's arguments, not after:
//! it reads the profile on a connection of its own, which a `Tx` taken first would make it wait
//! for while holding one (with a one-connection pool, until the timeout).
//!
//! `Tx` works on routes served through [`App`](crate::App) (its layer settles the
//! transaction); on a route outside it, extraction fails with 500 and an error log.
//!
//! ```
//! use axum::{Json, Router, routing::get};
//! use supabase_jwt_service::{ApiError, AppState, Conn, Tx};
//!
//! /// The caller's note ids: on Postgres, row-level security picks the rows.
//! async fn note_ids(mut tx: Tx) -> Result<Json<Vec<String>>, ApiError> {
//!     let ids: Vec<String> = match tx.conn() {
//!         Conn::Postgres(conn) => sqlx::query_scalar("select id::text from public.notes")
//!             .fetch_all(conn)
//!             .await?,
//! #       #[cfg(feature = "sqlite")]
//!         Conn::Sqlite(_) => return Err(ApiError::NotFound),
//!     };
//!     Ok(Json(ids))
//! }
//!
//! let routes: Router<AppState> = Router::new().route("/note-ids", get(note_ids));
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::postgres::PgConnection;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use crate::auth::extractor::log_store_error;
use crate::auth::{Claims, Verifier};
use crate::config::{Config, PreparedStatements};
use crate::error::ApiError;
use crate::store::postgres::quote_literal;
use crate::store::{Lease, PgStore, StoreError, UserStore, bounded};
use crate::telemetry::server_timing;

/// The database behind the app's store, shared with the built-in routes: one pool, never a
/// second. [`UserStore::db`] hands it out, for start-up work such as your own migrations.
#[derive(Debug, Clone)]
pub enum Db {
    /// Postgres: take a [`Tx`] in handlers; [`PgStore::acquire`] for work outside any user.
    Postgres(PgStore),
    /// The embedded SQLite store's pool (no row-level security).
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
}

/// The connection of a [`Tx`], by store, so one handler can serve both.
#[derive(Debug)]
pub enum Conn<'a> {
    /// Postgres, acting as the caller under row-level security.
    Postgres(&'a mut PgConnection),
    /// The embedded SQLite store: no row-level security, filter by owner yourself.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut SqliteConnection),
}

/// A transaction acting as the verified caller (see the [module docs](self)). Take it as a
/// handler argument; run queries on [`Tx::pg`] or [`Tx::conn`].
#[derive(Debug)]
pub struct Tx {
    // `Some` for as long as the `Tx` exists: only `commit` and `rollback` take it, and both
    // consume the `Tx`. The guard goes back to the request's slot on drop, where the app's
    // layer settles whatever is left.
    slot: OwnedMutexGuard<Option<Open>>,
}

#[derive(Debug)]
pub(crate) struct Open {
    conn: OpenConn,
    timeout: Duration,
}

#[derive(Debug)]
enum OpenConn {
    // A lease marked `enter_transaction`: released only after a successful COMMIT or ROLLBACK,
    // closed in every other case.
    Postgres(Lease),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// Where a request's transaction waits for the app's layer, in the request extensions.
#[derive(Debug, Clone)]
struct TxSlot(Arc<Mutex<Option<Open>>>);

impl Tx {
    /// The connection, by store.
    pub fn conn(&mut self) -> Conn<'_> {
        self.open().conn()
    }

    /// The Postgres connection, for routes that need Postgres:
    /// `sqlx::query_as(…).fetch_all(tx.pg()?)`. On the embedded store it answers 500
    /// `internal` and logs why.
    pub fn pg(&mut self) -> Result<&mut PgConnection, ApiError> {
        match &mut self.open().conn {
            OpenConn::Postgres(lease) => Ok(lease),
            #[cfg(feature = "sqlite")]
            OpenConn::Sqlite(_) => {
                tracing::error!(
                    "this route calls Tx::pg, which needs a Postgres DATABASE_URL; use Tx::conn to serve the embedded store too"
                );
                Err(ApiError::Internal)
            }
        }
    }

    /// Commits now (the answer is then yours to choose, an error included). A failure is
    /// 503 `unavailable`.
    pub async fn commit(mut self) -> Result<(), ApiError> {
        match self.slot.take() {
            Some(open) => open.end(true).await,
            None => Ok(()),
        }
    }

    /// Rolls back now.
    pub async fn rollback(mut self) -> Result<(), ApiError> {
        match self.slot.take() {
            Some(open) => open.end(false).await,
            None => Ok(()),
        }
    }

    fn open(&mut self) -> &mut Open {
        self.slot.as_mut().expect("a live Tx holds its transaction")
    }
}

impl Open {
    /// The connection, by store.
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match &mut self.conn {
            OpenConn::Postgres(lease) => Conn::Postgres(lease),
            #[cfg(feature = "sqlite")]
            OpenConn::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    /// Commits or rolls back within the store's timeout, then hands the connection back. On
    /// any failure the connection is dropped instead: closed on Postgres (which ends the
    /// transaction there), rolled back by sqlx on SQLite.
    pub(crate) async fn end(self, commit: bool) -> Result<(), ApiError> {
        let started = Instant::now();
        let result = match self.conn {
            OpenConn::Postgres(mut lease) => {
                bounded(self.timeout, async move {
                    sqlx::raw_sql(if commit { "commit" } else { "rollback" })
                        .execute(&mut *lease)
                        .await
                        .map_err(StoreError::unavailable)?;
                    lease.transaction_ended();
                    lease.release();
                    Ok(())
                })
                .await
            }
            #[cfg(feature = "sqlite")]
            OpenConn::Sqlite(tx) => {
                bounded(self.timeout, async move {
                    let ended = if commit {
                        tx.commit().await
                    } else {
                        tx.rollback().await
                    };
                    ended.map_err(StoreError::unavailable)
                })
                .await
            }
        };
        server_timing::add_db(started.elapsed());
        result.map_err(|e| {
            log_store_error(&e);
            ApiError::from(e)
        })
    }
}

impl<S> FromRequestParts<S> for Tx
where
    Arc<Verifier>: FromRef<S>,
    Arc<dyn UserStore>: FromRef<S>,
    Arc<Config>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = Claims::from_request_parts(parts, state).await?;
        let Some(TxSlot(slot)) = parts.extensions.get::<TxSlot>().cloned() else {
            tracing::error!(
                "Tx extracted on a route that is not served through App, so nothing would end its transaction"
            );
            return Err(ApiError::Internal);
        };
        let mut slot = match slot.try_lock_owned() {
            Ok(slot) if slot.is_none() => slot,
            _ => {
                tracing::error!("a handler took two Tx; one request has one transaction");
                return Err(ApiError::Internal);
            }
        };
        let store = Arc::<dyn UserStore>::from_ref(state);
        let config = Arc::<Config>::from_ref(state);
        let Some(db) = store.db() else {
            tracing::error!("Tx needs a store backed by Postgres or SQLite");
            return Err(ApiError::Internal);
        };
        *slot = Some(begin(&db, &claims, &config).await?);
        Ok(Tx { slot })
    }
}

/// Opens the caller's transaction on `db`, bounded by `DB_TIMEOUT_SECONDS` as a whole.
pub(crate) async fn begin(db: &Db, claims: &Claims, config: &Config) -> Result<Open, ApiError> {
    let timeout = config.db_timeout;
    let started = Instant::now();
    let result = match db {
        Db::Postgres(pg) => bounded(timeout, begin_postgres(pg, claims, config))
            .await
            .map(OpenConn::Postgres),
        #[cfg(feature = "sqlite")]
        Db::Sqlite(pool) => bounded(timeout, async {
            pool.begin().await.map_err(StoreError::unavailable)
        })
        .await
        .map(OpenConn::Sqlite),
    };
    server_timing::add_db(started.elapsed());
    match result {
        Ok(conn) => Ok(Open { conn, timeout }),
        Err(e) => {
            log_store_error(&e);
            Err(e.into())
        }
    }
}

async fn begin_postgres(
    pg: &PgStore,
    claims: &Claims,
    config: &Config,
) -> Result<Lease, StoreError> {
    let session = if config.session_check {
        Some(claims.session_id.ok_or(StoreError::SessionEnded)?)
    } else {
        None
    };
    let mut lease = pg.acquire().await?;
    // From here until a COMMIT or ROLLBACK succeeds, the connection is closed rather than
    // reused, whatever happens to this future.
    lease.enter_transaction();
    // Unless sqlx's own statement cache is on (`DB_PREPARED_STATEMENTS=on`), every plain
    // `sqlx::query` in the handler leaves a named statement on the server (see `begin_sql`),
    // so the slate is wiped first; the store's own prepared read goes with it and is
    // prepared again by the connection's next read.
    let wipe_statements = config.prepared_statements != PreparedStatements::On;
    let sql = begin_sql(
        config.db_rls,
        claims,
        session,
        config.db_timeout,
        wipe_statements,
    );
    if wipe_statements {
        lease.set_prepared_read(None);
    }
    let rows = sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_all(&mut *lease)
        .await
        .map_err(StoreError::unavailable)?;
    if session.is_some() {
        let active = match rows.first() {
            Some(row) => row
                .try_get::<bool, _>("session_active")
                .map_err(StoreError::unavailable)?,
            None => false,
        };
        if !active {
            sqlx::raw_sql("rollback")
                .execute(&mut *lease)
                .await
                .map_err(StoreError::unavailable)?;
            lease.transaction_ended();
            lease.release();
            return Err(StoreError::SessionEnded);
        }
    }
    Ok(lease)
}

/// The one message that opens a caller's transaction: the settings, the session check when on,
/// then `begin`. The `select` runs in the message's implicit transaction, which `begin` turns
/// into the explicit one, so the transaction-local settings hold until it ends (the same
/// construction as the store's writes, see `PgStore::begin_as`). Were `begin` first, a failing
/// `set_config` would leave an aborted transaction behind.
///
/// `statement_timeout` makes the server itself cancel a statement that runs past the limit,
/// so a slow query frees its backend instead of running on after the answer.
///
/// With `wipe_statements` (sqlx's statement cache off) it first drops every prepared
/// statement on the backend. sqlx names the statements of a plain `sqlx::query` even with its
/// statement cache off (`sqlx_s_1`, `sqlx_s_2`, … counted per client connection) and never
/// closes them; through a transaction-mode pooler the next transaction on that backend may
/// come from another client connection, whose `sqlx_s_1` then collides ("prepared statement
/// already exists"). A backend serves one transaction at a time there, so whatever it holds
/// when ours begins is left over from a finished one. On a direct connection the wipe keeps
/// those statements from piling up on the backend for the connection's whole lifetime.
///
/// Only values we produced or checked are inlined: the claims and role through
/// [`quote_literal`], the ids as canonical UUIDs, the timeout as an integer.
fn begin_sql(
    rls: bool,
    claims: &Claims,
    session: Option<Uuid>,
    timeout: Duration,
    wipe_statements: bool,
) -> String {
    let mut sql = String::with_capacity(256 + claims.raw_json().len());
    if wipe_statements {
        sql.push_str("deallocate all; ");
    }
    sql.push_str("select ");
    if rls {
        sql.push_str("set_config('role', ");
        sql.push_str(&quote_literal(&claims.role));
        sql.push_str(", true), ");
    }
    sql.push_str("set_config('request.jwt.claims', ");
    sql.push_str(&quote_literal(claims.raw_json()));
    sql.push_str(&format!(
        ", true), set_config('statement_timeout', '{}', true)",
        timeout.as_millis().max(1)
    ));
    if let Some(session) = session {
        sql.push_str(&format!(
            ", jwt_service.session_active('{}'::uuid, '{}'::uuid) as session_active",
            session.hyphenated(),
            claims.sub.uuid().hyphenated()
        ));
    }
    sql.push_str("; begin");
    sql
}

/// The app's layer for [`Tx`]: gives each request a slot for its transaction, and settles what
/// the handler left there: commit on 2xx, roll back otherwise. It sits outside the panic layer
/// (a panic's 500 rolls back) and inside the request timeout (an abandoned request drops the
/// slot, which closes the connection).
pub(crate) async fn settle_transaction(mut req: Request, next: Next) -> Response {
    let slot = Arc::new(Mutex::new(None));
    req.extensions_mut().insert(TxSlot(Arc::clone(&slot)));
    let response = next.run(req).await;
    // Locked only if the handler moved its Tx into a task that still runs; that task's drop
    // then closes the connection.
    let open = match slot.try_lock() {
        Ok(mut open) => open.take(),
        Err(_) => None,
    };
    let Some(open) = open else {
        return response;
    };
    let commit = response.status().is_success();
    match open.end(commit).await {
        Ok(()) => response,
        Err(e) if commit => e.into_response(),
        // The rollback failed, so the connection was closed, which rolled back too.
        Err(_) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        let raw = serde_json::json!({"sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "role": "authenticated", "x": "a'b"});
        let serde_json::Value::Object(raw) = raw else {
            unreachable!()
        };
        let sub = crate::auth::UserId::parse("5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f")
            .expect("canonical id");
        Claims::from_payload(sub, 0, raw)
    }

    #[test]
    fn begin_sql_sets_role_claims_and_timeout_before_it_begins() {
        let sql = begin_sql(true, &claims(), None, Duration::from_secs(3), false);
        assert!(sql.starts_with("select set_config('role', E'authenticated', true), "));
        assert!(sql.contains("set_config('statement_timeout', '3000', true)"));
        assert!(sql.contains(r#""x":"a''b""#), "{sql}");
        assert!(sql.ends_with("; begin"));
        assert!(!sql.contains("session_active"));
    }

    #[test]
    fn begin_sql_checks_the_session_and_skips_the_role_without_rls() {
        let session = Uuid::nil();
        let sql = begin_sql(
            false,
            &claims(),
            Some(session),
            Duration::from_millis(1500),
            true,
        );
        assert!(sql.starts_with("deallocate all; select "));
        assert!(!sql.contains("'role'"));
        assert!(sql.contains("'1500'"));
        assert!(sql.contains("jwt_service.session_active('00000000-0000-0000-0000-000000000000'::uuid, '5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f'::uuid) as session_active"));
    }
}
