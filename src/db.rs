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
//! Work that outlives the handler (a streamed answer stored once its body has ended, in a task
//! of its own) takes a [`UserTx`] instead: [`AppState::db`](crate::AppState::db) then
//! [`Db::begin_as`], begun the same way and with the same guarantees as a `Tx` (a `Tx` is a
//! `UserTx` the app's layer settles), but committed or rolled back by you alone.
//!
//! **On the embedded SQLite store there is no row-level security.** A `Tx` there is a plain
//! SQLite transaction (`BEGIN IMMEDIATE`: it takes the write lock when it begins, so concurrent
//! transactions that read then write queue on `busy_timeout` instead of failing with
//! `SQLITE_BUSY`; on the embedded store they run one at a time), committed and rolled back the
//! same way, and every query must filter by
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
use crate::config::Config;
use crate::error::ApiError;
use crate::store::postgres::quote_literal;
use crate::store::{Lease, PgStore, StoreError, UserStore, bounded};
use crate::telemetry::server_timing;

/// The database behind the app's store, shared with the built-in routes: one pool, never a
/// second. [`AppState::db`](crate::AppState::db) hands it out, for start-up work such as your
/// own migrations and for [`Db::begin_as`], a caller's transaction outside the [`Tx`] extractor.
#[derive(Debug, Clone)]
pub enum Db {
    /// Postgres: take a [`Tx`] in handlers; [`PgStore::acquire`] for work outside any user.
    Postgres(PgStore),
    /// The embedded SQLite store's pool (no row-level security).
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
}

/// The connection of a [`Tx`] or a [`UserTx`], by store, so one handler can serve both.
#[derive(Debug)]
pub enum Conn<'a> {
    /// Postgres, acting as the caller under row-level security.
    Postgres(&'a mut PgConnection),
    /// The embedded SQLite store: no row-level security, filter by owner yourself.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut SqliteConnection),
}

/// A transaction acting as the verified caller (see the [module docs](self)). Take it as a
/// handler argument; run queries on [`Tx::pg`] or [`Tx::conn`]. It is a [`UserTx`] that the
/// app's layer settles when the handler has not.
#[derive(Debug)]
pub struct Tx {
    // `Some` for as long as the `Tx` exists: only `commit` and `rollback` take it, and both
    // consume the `Tx`. The guard goes back to the request's slot on drop, where the app's
    // layer settles whatever is left.
    slot: OwnedMutexGuard<Option<UserTx>>,
}

/// A transaction acting as the verified caller that you begin with [`Db::begin_as`] and end
/// yourself: for work outside one request's handler, such as a stream that stores what it
/// sent once its body has ended, in a task of its own. It is begun exactly as a [`Tx`] is (the
/// same message, the same bounds, the same session check; a `Tx` is one of these inside), but
/// nothing settles it for you: call [`commit`](Self::commit) or [`rollback`](Self::rollback).
/// One dropped while open is never reused: on Postgres its connection is closed, which ends
/// the transaction on the server; on SQLite it is rolled back.
///
/// ```
/// use supabase_jwt_service::{ApiError, AppState, Claims, Conn};
///
/// /// Records that the caller finished something, after the answer went out.
/// async fn record_later(state: AppState, claims: Claims) -> Result<(), ApiError> {
///     let mut tx = state.db()?.begin_as(&claims).await?;
///     match tx.conn() {
///         // `auth.uid()` is the caller here: the policies decide.
///         Conn::Postgres(conn) => {
///             sqlx::query("insert into public.done (owner) values (auth.uid())")
///                 .execute(conn)
///                 .await?;
///         }
/// #       #[cfg(feature = "sqlite")]
///         Conn::Sqlite(conn) => {
///             sqlx::query("insert into done (owner) values (?1)")
///                 .bind(claims.sub.to_string())
///                 .execute(conn)
///                 .await?;
///         }
///     }
///     tx.commit().await
/// }
/// ```
#[derive(Debug)]
pub struct UserTx {
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

/// How a caller's transaction begins on a Postgres store, from its configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxSettings {
    /// `DB_RLS`: switch to the token's role.
    pub(crate) rls: bool,
    /// sqlx's statement cache is off, so the backend's prepared statements are dropped first.
    pub(crate) wipe_statements: bool,
    /// `SESSION_CHECK`.
    pub(crate) session_check: bool,
    /// `DB_TIMEOUT_SECONDS`.
    pub(crate) timeout: Duration,
}

/// Where a request's transaction waits for the app's layer, in the request extensions.
#[derive(Debug, Clone)]
struct TxSlot(Arc<Mutex<Option<UserTx>>>);

impl Tx {
    /// The connection, by store.
    pub fn conn(&mut self) -> Conn<'_> {
        self.open().conn()
    }

    /// The Postgres connection, for routes that need Postgres:
    /// `sqlx::query_as(…).fetch_all(tx.pg()?)`. On the embedded store it answers 500
    /// `internal` and logs why.
    pub fn pg(&mut self) -> Result<&mut PgConnection, ApiError> {
        self.open().pg()
    }

    /// Commits now (the answer is then yours to choose, an error included). A failure is
    /// 503 `unavailable`.
    pub async fn commit(mut self) -> Result<(), ApiError> {
        match self.slot.take() {
            Some(open) => open.commit().await,
            None => Ok(()),
        }
    }

    /// Rolls back now.
    pub async fn rollback(mut self) -> Result<(), ApiError> {
        match self.slot.take() {
            Some(open) => open.rollback().await,
            None => Ok(()),
        }
    }

    fn open(&mut self) -> &mut UserTx {
        self.slot.as_mut().expect("a live Tx holds its transaction")
    }
}

impl UserTx {
    /// The connection, by store.
    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.conn {
            OpenConn::Postgres(lease) => Conn::Postgres(lease),
            #[cfg(feature = "sqlite")]
            OpenConn::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    /// The Postgres connection, for work that needs Postgres. On the embedded store it is
    /// 500 `internal`, and the log says why.
    pub fn pg(&mut self) -> Result<&mut PgConnection, ApiError> {
        match &mut self.conn {
            OpenConn::Postgres(lease) => Ok(lease),
            #[cfg(feature = "sqlite")]
            OpenConn::Sqlite(_) => {
                tracing::error!(
                    "this route needs a Postgres DATABASE_URL (Tx::pg or UserTx::pg); use conn() to serve the embedded store too"
                );
                Err(ApiError::Internal)
            }
        }
    }

    /// Commits, within `DB_TIMEOUT_SECONDS`. A failure is 503 `unavailable`, and the
    /// transaction is then rolled back (its connection closed on Postgres).
    pub async fn commit(self) -> Result<(), ApiError> {
        self.end(true).await
    }

    /// Rolls back, within `DB_TIMEOUT_SECONDS`. Should that fail, the connection is closed,
    /// which rolls back too.
    pub async fn rollback(self) -> Result<(), ApiError> {
        self.end(false).await
    }

    /// Commits or rolls back within the store's timeout, then hands the connection back. On
    /// any failure the connection is dropped instead: closed on Postgres (which ends the
    /// transaction there), rolled back by sqlx on SQLite.
    async fn end(self, commit: bool) -> Result<(), ApiError> {
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
        let db = Db::of(&*Arc::<dyn UserStore>::from_ref(state))?;
        *slot = Some(db.begin_as(&claims).await?);
        Ok(Tx { slot })
    }
}

impl Db {
    /// The store's database, or 500 `internal` (logged) for a store backed by neither.
    pub(crate) fn of(store: &dyn UserStore) -> Result<Db, ApiError> {
        store.db().ok_or_else(|| {
            tracing::error!("a caller's transaction needs a store backed by Postgres or SQLite");
            ApiError::Internal
        })
    }

    /// Begins a transaction acting as `claims`' user, exactly as the [`Tx`] extractor does:
    /// on Postgres one message sets the role and `request.jwt.claims` transaction-locally,
    /// bounds each statement by `statement_timeout`, checks the session when `SESSION_CHECK`
    /// is on (401 `invalid_token` for an ended one) and begins; waiting for a connection and
    /// beginning take at most `DB_TIMEOUT_SECONDS`, else 503 `unavailable`. On the embedded
    /// store it is `BEGIN IMMEDIATE`, with the pool's acquire timeout (`DB_TIMEOUT_SECONDS`)
    /// as its bound. End it with [`UserTx::commit`] or [`UserTx::rollback`].
    pub async fn begin_as(&self, claims: &Claims) -> Result<UserTx, ApiError> {
        self.begin(claims, true).await
    }

    /// [`begin_as`](Self::begin_as), for a transaction that only reads when `for_writes` is
    /// false: on SQLite it then begins deferred, so it never waits for a writer's lock (a
    /// handler holding a `Tx` while its profile loads would otherwise wait for itself).
    pub(crate) async fn begin(
        &self,
        claims: &Claims,
        for_writes: bool,
    ) -> Result<UserTx, ApiError> {
        // Only SQLite takes its write lock up front; Postgres locks rows as it writes them.
        #[cfg(not(feature = "sqlite"))]
        let _ = for_writes;
        let started = Instant::now();
        let (timeout, begun) = match self {
            Db::Postgres(pg) => {
                let settings = pg.tx_settings();
                let begun = bounded(settings.timeout, begin_postgres(pg, claims, settings)).await;
                (settings.timeout, begun.map(OpenConn::Postgres))
            }
            #[cfg(feature = "sqlite")]
            Db::Sqlite(pool) => {
                let timeout = pool.options().get_acquire_timeout();
                // IMMEDIATE takes the write lock at once: two transactions that read and then
                // write queue on `busy_timeout`, where deferred ones would fail at the first
                // write with SQLITE_BUSY when another wrote since their read.
                let begun = bounded(timeout, async {
                    let begin = if for_writes {
                        "BEGIN IMMEDIATE"
                    } else {
                        "BEGIN"
                    };
                    pool.begin_with(begin)
                        .await
                        .map_err(StoreError::unavailable)
                })
                .await;
                (timeout, begun.map(OpenConn::Sqlite))
            }
        };
        server_timing::add_db(started.elapsed());
        match begun {
            Ok(conn) => Ok(UserTx { conn, timeout }),
            Err(e) => {
                log_store_error(&e);
                Err(e.into())
            }
        }
    }
}

async fn begin_postgres(
    pg: &PgStore,
    claims: &Claims,
    settings: TxSettings,
) -> Result<Lease, StoreError> {
    let session = if settings.session_check {
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
    // A connection with sqlx's cache on (a server that proved direct) keeps its statements:
    // sqlx closes what it evicts, and only that connection ever sees them.
    let wipe_statements = settings.wipe_statements && !lease.has_statement_cache();
    let sql = begin_sql(
        settings.rls,
        claims,
        session,
        settings.timeout,
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
        Claims::from_payload_json(&serde_json::json!({
            "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "role": "authenticated", "x": "a'b", "exp": 0,
        }))
        .expect("claims")
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
