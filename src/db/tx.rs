//! [`DbTx`]: a transaction acting as the caller, for work outside one request's handler, and
//! what it shares with the request's `Tx`: the open transaction of either store, how it ends,
//! and sqlx's `Executor` over it.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqliteConnection;

use super::error::{DbError, bounded};
use super::pg::Lease;
use crate::telemetry::server_timing;

/// A database a caller's transaction can run on: [`sqlx::Postgres`] (row-level security, the
/// production store) and, with the `sqlite` feature, `sqlx::Sqlite` (the embedded store, no
/// row-level security). Implemented by the crate only.
pub trait Backend: sqlx::Database + sealed::Sealed {
    /// `postgres` or `sqlite`.
    const STORE: &'static str;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
}

impl Backend for sqlx::Postgres {
    const STORE: &'static str = "postgres";
}

#[cfg(feature = "sqlite")]
impl Backend for sqlx::Sqlite {
    const STORE: &'static str = "sqlite";
}

/// An open transaction as the caller, on either store.
#[derive(Debug)]
pub(crate) enum OpenTx {
    /// A lease marked in-transaction: released only after a successful COMMIT or ROLLBACK,
    /// closed in every other case; with `wipe`, its statements are dropped in the same message
    /// as the end (see `PgDb::begin`).
    Postgres { lease: Lease, wipe: bool },
    /// A sqlx transaction, rolled back by sqlx when dropped.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl OpenTx {
    /// The Postgres connection, or an error naming the mix-up (a transaction of one store used
    /// as the other's: the crate never builds one, the error keeps it from being a panic).
    pub(crate) fn pg(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        match self {
            Self::Postgres { lease, .. } => Ok(lease),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => Err(wrong_store("postgres", "sqlite")),
        }
    }

    /// The SQLite connection, or an error naming the mix-up.
    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        match self {
            Self::Sqlite(tx) => Ok(tx),
            Self::Postgres { .. } => Err(wrong_store("sqlite", "postgres")),
        }
    }

    /// Commits or rolls back within `timeout`, then hands the connection back. On any failure
    /// the connection is dropped instead: closed on Postgres (which ends the transaction
    /// there), rolled back by sqlx on SQLite. A failure is recorded here.
    pub(crate) async fn end(self, commit: bool, timeout: Duration) -> Result<(), DbError> {
        let started = Instant::now();
        let statement = if commit { "commit" } else { "rollback" };
        let result = match self {
            Self::Postgres { mut lease, wipe } => {
                bounded(timeout, async move {
                    lease
                        .end(statement, wipe)
                        .await
                        .map_err(DbError::unavailable)?;
                    lease.release();
                    Ok(())
                })
                .await
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(tx) => {
                bounded(timeout, async move {
                    let ended = if commit {
                        tx.commit().await
                    } else {
                        tx.rollback().await
                    };
                    ended.map_err(DbError::unavailable)
                })
                .await
            }
        };
        server_timing::add_db(started.elapsed());
        result.map_err(DbError::recorded)
    }
}

#[cfg(feature = "sqlite")]
fn wrong_store(wanted: &'static str, actual: &'static str) -> sqlx::Error {
    DbError::WrongStore { wanted, actual }.into_sqlx()
}

/// A transaction acting as the verified caller that you begin with
/// [`Db::begin_as`](crate::Db::begin_as) and end yourself: for work outside one request's
/// handler, such as a stream that stores what it sent once its body has ended, in a task of
/// its own. It is opened exactly as a request's [`Tx`](crate::Tx) is (the same settings, the
/// same bounds, the same session check), but nothing settles it for you: call
/// [`commit`](Self::commit) or [`rollback`](Self::rollback). One dropped while open is never
/// reused: on Postgres its connection is closed, which ends the transaction on the server; on
/// SQLite it is rolled back.
///
/// Run queries on it as on any sqlx executor: `.fetch_all(&mut tx)`.
///
/// ```
/// use supabase_jwt_service::{ApiError, AppState, Claims};
///
/// /// Records that the caller finished something, after the answer went out.
/// async fn record_later(state: AppState, claims: Claims) -> Result<(), ApiError> {
///     let mut tx = state.db().begin_as(&claims).await?;
///     // `auth.uid()` is the caller here: the policies decide.
///     sqlx::query("insert into public.done (owner) values (auth.uid())")
///         .execute(&mut tx)
///         .await?;
///     tx.commit().await?;
///     Ok(())
/// }
/// ```
pub struct DbTx<DB: Backend = sqlx::Postgres> {
    open: OpenTx,
    timeout: Duration,
    backend: PhantomData<fn() -> DB>,
}

impl<DB: Backend> std::fmt::Debug for DbTx<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTx")
            .field("store", &DB::STORE)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> DbTx<DB> {
    pub(crate) fn new(open: OpenTx, timeout: Duration) -> Self {
        Self {
            open,
            timeout,
            backend: PhantomData,
        }
    }

    /// Commits, within `DB_TIMEOUT_SECONDS`. On failure the transaction is rolled back (its
    /// connection closed on Postgres); the error converts to 503 `unavailable`.
    pub async fn commit(self) -> Result<(), DbError> {
        self.open.end(true, self.timeout).await
    }

    /// Rolls back, within `DB_TIMEOUT_SECONDS`. Should that fail, the connection is closed,
    /// which rolls back too.
    pub async fn rollback(self) -> Result<(), DbError> {
        self.open.end(false, self.timeout).await
    }
}

impl DbTx<sqlx::Postgres> {
    async fn executor_conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.open.pg()
    }
}

#[cfg(feature = "sqlite")]
impl DbTx<sqlx::Sqlite> {
    async fn executor_conn(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        self.open.sqlite()
    }
}

/// `impl sqlx::Executor for &mut $ty`, over `$ty::executor_conn`: an async method giving the
/// connection of store `$db` (beginning the transaction first, for a `Tx`), or the
/// `sqlx::Error` that kept it from opening.
macro_rules! executor_via {
    ($ty:ty, $db:ty) => {
        impl<'c> sqlx::Executor<'c> for &'c mut $ty {
            type Database = $db;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_util::stream::BoxStream<
                'e,
                Result<
                    sqlx::Either<
                        <$db as sqlx::Database>::QueryResult,
                        <$db as sqlx::Database>::Row,
                    >,
                    sqlx::Error,
                >,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, $db>,
            {
                use futures_util::StreamExt as _;
                futures_util::stream::once(async move {
                    match self.executor_conn().await {
                        Ok(conn) => conn.fetch_many(query),
                        Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
                    }
                })
                .flatten()
                .boxed()
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_util::future::BoxFuture<
                'e,
                Result<Option<<$db as sqlx::Database>::Row>, sqlx::Error>,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, $db>,
            {
                Box::pin(async move { self.executor_conn().await?.fetch_optional(query).await })
            }

            fn prepare_with<'e>(
                self,
                sql: sqlx::SqlStr,
                parameters: &'e [<$db as sqlx::Database>::TypeInfo],
            ) -> futures_util::future::BoxFuture<
                'e,
                Result<<$db as sqlx::Database>::Statement, sqlx::Error>,
            >
            where
                'c: 'e,
            {
                Box::pin(async move {
                    self.executor_conn()
                        .await?
                        .prepare_with(sql, parameters)
                        .await
                })
            }

            fn describe<'e>(
                self,
                sql: sqlx::SqlStr,
            ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<$db>, sqlx::Error>>
            where
                'c: 'e,
            {
                Box::pin(async move { self.executor_conn().await?.describe(sql).await })
            }
        }
    };
}
pub(crate) use executor_via;

executor_via!(DbTx<sqlx::Postgres>, sqlx::Postgres);
#[cfg(feature = "sqlite")]
executor_via!(DbTx<sqlx::Sqlite>, sqlx::Sqlite);
