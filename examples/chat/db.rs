//! The chat's schema, and the transaction its SQL steps run in. The example serves both stores
//! from one set of handlers, so it opens its transactions itself ([`ChatTx`]): on Postgres a
//! [`DbTx`] acting as the caller under row-level security (or, to settle usage, as the
//! service itself), on the embedded store a plain SQLite one. All come from the one pool the
//! built-in routes use; the example opens none of its own. An app on Postgres alone takes the
//! library's `Tx` in its handlers instead (see `examples/notes.rs`).

use sqlx::Sqlite;
use supabase_jwt_service::db::migrate_app;
use supabase_jwt_service::{ApiError, Claims, Config, Db, DbError, DbTx};

/// The example's migrations (`examples/chat/migrations`, or their SQLite twin), with their
/// bookkeeping apart from the service's: in `chat_private` on Postgres, in a table of their
/// own on SQLite.
pub async fn migrate(config: &Config) -> Result<(), DbError> {
    let migrator = if config.db.url.is_postgres() {
        let mut migrator = sqlx::migrate!("examples/chat/migrations");
        migrator.create_schema("chat_private");
        migrator.dangerous_set_table_name("chat_private._sqlx_migrations");
        migrator
    } else {
        let mut migrator = sqlx::migrate!("examples/chat/migrations/sqlite");
        migrator.dangerous_set_table_name("_chat_sqlx_migrations");
        migrator
    };
    migrate_app(&config.db, &migrator).await
}

/// A transaction of the chat's, on whichever store the app serves.
#[derive(Debug)]
pub enum ChatTx {
    /// As the caller (or the service), under row-level security.
    Postgres(DbTx),
    /// The embedded store: every query filters by the caller's id.
    Sqlite(DbTx<Sqlite>),
}

/// The transaction's executor, by store.
pub enum Conn<'a> {
    Postgres(&'a mut DbTx),
    Sqlite(&'a mut DbTx<Sqlite>),
}

impl ChatTx {
    /// Begins one acting as `claims`' user.
    pub async fn as_caller(db: &Db, claims: &Claims) -> Result<Self, ApiError> {
        Ok(if db.is_postgres() {
            Self::Postgres(db.begin_as(claims).await?)
        } else {
            Self::Sqlite(db.begin_sqlite().await?)
        })
    }

    /// Begins one as the service itself: for the step no caller may skip or do (settling).
    pub async fn as_service(db: &Db) -> Result<Self, ApiError> {
        Ok(if db.is_postgres() {
            Self::Postgres(db.begin_as_service().await?)
        } else {
            Self::Sqlite(db.begin_sqlite().await?)
        })
    }

    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Postgres(tx) => Conn::Postgres(tx),
            Self::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    pub async fn commit(self) -> Result<(), ApiError> {
        match self {
            Self::Postgres(tx) => tx.commit().await?,
            Self::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// A failed rollback closes the connection, which rolls back too.
    pub async fn rollback(self) {
        let _ = match self {
            Self::Postgres(tx) => tx.rollback().await,
            Self::Sqlite(tx) => tx.rollback().await,
        };
    }
}

/// A database failure as the contract's answer (503 for an outage, 401 for an ended session);
/// the reason goes to the log only.
pub fn unavailable(e: sqlx::Error) -> ApiError {
    tracing::warn!(target: "chat::db", error = %e, "database step failed");
    ApiError::from(e)
}

/// Runs a few database steps within `limit` (`DB_TIMEOUT_SECONDS`), a timeout being a 503
/// like any outage. The server bounds each statement too; this bounds a server that stopped
/// answering, and dropping the steps' transaction closes its connection.
pub async fn bounded<T>(
    limit: std::time::Duration,
    steps: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, steps).await.unwrap_or_else(|_| {
        tracing::warn!(target: "chat::db", "database step: no answer within DB_TIMEOUT_SECONDS");
        Err(ApiError::Unavailable)
    })
}
