//! Where the chat's SQL runs: a transaction acting as the caller.
//!
//! TEMPORARY wiring over today's public API, kept in this one file: on Postgres a second
//! `PgStore` whose `begin_as` gives a transaction running as the user (role `authenticated`,
//! `request.jwt.claims` set, so RLS applies); on the embedded store a SQLite pool of our own on
//! the same file. When the library's RLS-scoped `Tx` extractor lands, [`ChatTx`] wraps it and
//! nothing else changes: `quota.rs` and `history.rs` take `&mut PgConnection` /
//! `&mut SqliteConnection` and run unchanged inside it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, PgConnection, Sqlite, SqliteConnection};
use supabase_jwt_service::store::UserTransaction;
use supabase_jwt_service::{ApiError, Claims, Config, PgStore};

/// The example's Postgres migrations (`examples/chat/migrations`), with their bookkeeping in
/// `chat_private`, apart from the service's own.
fn pg_migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("examples/chat/migrations");
    migrator.create_schema("chat_private");
    migrator.dangerous_set_table_name("chat_private._sqlx_migrations");
    migrator
}

/// The SQLite twin, with its own bookkeeping table next to the service's.
fn sqlite_migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("examples/chat/migrations/sqlite");
    migrator.dangerous_set_table_name("_chat_sqlx_migrations");
    migrator
}

/// The chat's database.
#[derive(Debug, Clone)]
pub enum ChatDb {
    /// Postgres, every statement as the user under RLS.
    Pg(PgStore),
    /// The embedded store: no RLS, queries filter by the verified id.
    Sqlite(SqlitePool),
}

/// A transaction acting as one user.
#[derive(Debug)]
pub enum ChatTx {
    /// Role `authenticated` with the user's claims, until it ends.
    Pg(UserTransaction),
    /// A write transaction (`BEGIN IMMEDIATE`: it takes SQLite's write lock up front, so two
    /// admissions queue on `busy_timeout` instead of failing on a lock upgrade).
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

/// How long one database step may take.
#[derive(Debug, Clone, Copy)]
pub struct DbTimeout(pub Duration);

impl ChatDb {
    /// Opens the store named by `DATABASE_URL` and applies the chat migrations (on Postgres
    /// through `DIRECT_DATABASE_URL`, since a transaction-mode pooler cannot run them).
    pub async fn open(config: &Config) -> Result<Self, String> {
        if config.database_url.is_postgres() {
            let direct = &config.direct_database_url;
            let options: sqlx::postgres::PgConnectOptions =
                direct.expose().parse().map_err(|e| format!("{e}"))?;
            let mut conn = tokio::time::timeout(Duration::from_secs(15), options.connect())
                .await
                .map_err(|_| format!("no answer from {} within 15 s", direct.masked()))?
                .map_err(|e| format!("connect to {}: {e}", direct.masked()))?;
            pg_migrator()
                .run_direct(None, &mut conn, false)
                .await
                .map_err(|e| format!("migrate {}: {e}", direct.masked()))?;
            let store = PgStore::connect_lazy(config).map_err(|e| e.to_string())?;
            Ok(Self::Pg(store))
        } else {
            let options = SqliteConnectOptions::from_str(config.database_url.expose())
                .map_err(|e| e.to_string())?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(config.db_timeout);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(config.db_timeout)
                .connect_with(options)
                .await
                .map_err(|e| e.to_string())?;
            sqlite_migrator()
                .run(&pool)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Self::Sqlite(pool))
        }
    }

    /// Begins a transaction acting as the caller.
    pub async fn begin(&self, claims: &Claims) -> Result<ChatTx, ApiError> {
        match self {
            Self::Pg(store) => store.begin_as(claims).await.map(ChatTx::Pg).map_err(|e| {
                tracing::warn!(target: "chat::db", error = %e, "could not begin");
                ApiError::from(e)
            }),
            Self::Sqlite(pool) => pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map(ChatTx::Sqlite)
                .map_err(unavailable),
        }
    }
}

/// The connection of a transaction, for the SQL modules.
pub enum Conn<'a> {
    /// Postgres, as the user.
    Pg(&'a mut PgConnection),
    /// SQLite.
    Sqlite(&'a mut SqliteConnection),
}

impl ChatTx {
    /// The connection to run statements on.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Pg(tx) => Conn::Pg(&mut *tx),
            Self::Sqlite(tx) => Conn::Sqlite(&mut *tx),
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), ApiError> {
        match self {
            Self::Pg(tx) => tx.commit().await.map_err(ApiError::from),
            Self::Sqlite(tx) => tx.commit().await.map_err(unavailable),
        }
    }

    /// Rolls back (dropping would too, but this hands the connection back to the pool).
    pub async fn rollback(self) {
        let _ = match self {
            Self::Pg(tx) => tx.rollback().await.map_err(ApiError::from),
            Self::Sqlite(tx) => tx.rollback().await.map_err(unavailable),
        };
    }
}

/// A database failure as the contract's 503; the reason goes to the log only.
pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(target: "chat::db", error = %e, "database step failed");
    ApiError::Unavailable
}

/// Runs one database step within `limit`, a timeout being a 503 like any outage.
pub async fn bounded<T>(
    limit: DbTimeout,
    step: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit.0, step)
        .await
        .unwrap_or_else(|_| Err(unavailable("no answer within DB_TIMEOUT_SECONDS")))
}
