//! [`Tx`]: the request's transaction as the caller, begun on first use and settled by the app.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::postgres::PgConnection;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqliteConnection;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::claims::verified_claims;
use crate::auth::{Claims, Verifier};
use crate::db::{Backend, Db, DbError, OpenTx, executor_via};
use crate::error::ApiError;

/// The request's transaction, acting as the verified caller. Take it as a handler argument and
/// run queries on it as on any sqlx executor: `sqlx::query(…).fetch_all(&mut tx)`.
///
/// **On Postgres** (`Tx`, short for `Tx<sqlx::Postgres>`) `role` is the token's role and
/// `request.jwt.claims` its claims, both transaction-local as Supabase's Data API sets them,
/// so `auth.uid()` and the tables' row-level security policies decide what every statement
/// sees. **On the embedded store** (`Tx<sqlx::Sqlite>`) there is no row-level security:
/// filter every query by `claims.sub` yourself. An app serves one store; a route taking the
/// other's `Tx` answers 500 and logs why.
///
/// **It begins on first use**: the first query opens it (one round trip: the settings above,
/// the server-side bounds on each statement, lock wait and idle spell, the session check under
/// `SESSION_CHECK=on`, and `begin`), after every extractor has run, so a client that sends its
/// body slowly holds no connection. Waiting for a connection and beginning take at most
/// `DB_TIMEOUT_SECONDS`, else the query fails with an error whose `?` answers 503 (401 for an
/// ended session).
///
/// **It ends** in one of three ways: you call [`commit`](Self::commit) (or
/// [`rollback`](Self::rollback)); or the handler returns and the app commits it when the answer
/// is 2xx and rolls it back otherwise (a panic's 500 included; a failed commit turns the answer
/// into 503); or the request is abandoned (timeout, client gone) and its connection is closed,
/// which ends the transaction on the server. A connection is never handed back to the pool
/// while it still acts as the caller. `Tx` works on routes served through
/// [`App`](crate::App), whose layer settles it.
///
/// ```
/// use axum::{Json, Router, routing::get};
/// use supabase_jwt_service::{ApiError, AppState, Tx};
///
/// /// The caller's note ids: on Postgres, row-level security picks the rows.
/// async fn note_ids(mut tx: Tx) -> Result<Json<Vec<String>>, ApiError> {
///     let ids = sqlx::query_scalar("select id::text from public.notes")
///         .fetch_all(&mut tx)
///         .await?;
///     Ok(Json(ids))
/// }
///
/// let routes: Router<AppState> = Router::new().route("/note-ids", get(note_ids));
/// ```
pub struct Tx<DB: Backend = sqlx::Postgres> {
    // Holds the request's slot for as long as the `Tx` exists; the transaction, once begun,
    // waits there for the app's layer to settle it.
    slot: OwnedMutexGuard<Option<OpenTx>>,
    db: Db,
    claims: Claims,
    backend: PhantomData<fn() -> DB>,
}

impl<DB: Backend> std::fmt::Debug for Tx<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("store", &DB::STORE)
            .field("begun", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

/// Where a request's transaction waits for the app's layer, in the request extensions.
#[derive(Debug, Clone)]
struct TxSlot(Arc<Mutex<Option<OpenTx>>>);

impl<DB: Backend> Tx<DB> {
    /// The open transaction, begun now if this is its first use.
    async fn open(&mut self) -> Result<&mut OpenTx, DbError> {
        let open = match self.slot.take() {
            Some(open) => open,
            None => self.db.open::<DB>(Some(&self.claims), true).await?,
        };
        Ok(self.slot.insert(open))
    }

    /// Commits now, if the transaction began (the answer is then yours to choose, an error
    /// included). A failure converts to 503 `unavailable`.
    pub async fn commit(mut self) -> Result<(), DbError> {
        let timeout = self.db.timeout();
        match self.slot.take() {
            Some(open) => open.end(true, timeout).await,
            None => Ok(()),
        }
    }

    /// Rolls back now, if the transaction began.
    pub async fn rollback(mut self) -> Result<(), DbError> {
        let timeout = self.db.timeout();
        match self.slot.take() {
            Some(open) => open.end(false, timeout).await,
            None => Ok(()),
        }
    }
}

impl Tx<sqlx::Postgres> {
    async fn executor_conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.open().await.map_err(DbError::into_sqlx)?.pg()
    }
}

#[cfg(feature = "sqlite")]
impl Tx<sqlx::Sqlite> {
    async fn executor_conn(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        self.open().await.map_err(DbError::into_sqlx)?.sqlite()
    }
}

executor_via!(Tx<sqlx::Postgres>, sqlx::Postgres);
#[cfg(feature = "sqlite")]
executor_via!(Tx<sqlx::Sqlite>, sqlx::Sqlite);

impl<S, DB: Backend> FromRequestParts<S> for Tx<DB>
where
    Arc<Verifier>: FromRef<S>,
    Db: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = verified_claims(parts, state).await?;
        let db = Db::from_ref(state);
        if db.store_name() != DB::STORE {
            let wrong = DbError::WrongStore {
                wanted: DB::STORE,
                actual: db.store_name(),
            };
            wrong.record();
            return Err(wrong.into());
        }
        let Some(TxSlot(slot)) = parts.extensions.get::<TxSlot>().cloned() else {
            tracing::error!(
                "Tx extracted on a route that is not served through App, so nothing would end its transaction"
            );
            return Err(ApiError::Internal);
        };
        let slot = match slot.try_lock_owned() {
            Ok(slot) if slot.is_none() => slot,
            _ => {
                tracing::error!("a handler took two Tx; one request has one transaction");
                return Err(ApiError::Internal);
            }
        };
        Ok(Tx {
            slot,
            db,
            claims,
            backend: PhantomData,
        })
    }
}

/// The app's layer for [`Tx`]: gives each request a slot for its transaction, and settles what
/// the handler left there: commit on 2xx, roll back otherwise. It sits outside the panic layer
/// (a panic's 500 rolls back) and inside the request timeout (an abandoned request drops the
/// slot, which closes the connection).
pub(crate) async fn settle_transaction(db: Db, mut req: Request, next: Next) -> Response {
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
    match open.end(commit, db.timeout()).await {
        Ok(()) => response,
        Err(e) if commit => ApiError::from(e).into_response(),
        // The rollback failed, so the connection was closed, which rolled back too.
        Err(_) => response,
    }
}
