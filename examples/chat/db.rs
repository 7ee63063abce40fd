//! The chat's schema, and the small helpers its SQL steps share. Every statement runs in a
//! transaction acting as the caller, from the library: a [`Tx`](supabase_jwt_service::Tx)
//! in the handlers that read, a [`UserTx`](supabase_jwt_service::UserTx) where the work
//! outlives the handler (the streamed answer). Both come from the one pool the built-in routes
//! use; the example opens none of its own.

use std::time::Duration;

use sqlx::ConnectOptions;
use supabase_jwt_service::{ApiError, Config, Db, SqliteStore};

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

/// Applies the chat's migrations. On Postgres through one connection of its own to
/// `DIRECT_DATABASE_URL` (a transaction-mode pooler cannot run migrations), closed when done;
/// on the embedded store on the app's pool (`db`), or, for `chat migrate` (which builds no
/// app), on the store opened here.
pub async fn migrate(config: &Config, db: Option<&Db>) -> Result<(), String> {
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
        let _ = sqlx::Connection::close(conn).await;
        return Ok(());
    }
    let pool = match db {
        Some(Db::Sqlite(pool)) => pool.clone(),
        _ => SqliteStore::open(config.database_url.expose(), config.db_timeout)
            .await
            .map_err(|e| e.to_string())?
            .pool()
            .clone(),
    };
    sqlite_migrator()
        .run(&pool)
        .await
        .map_err(|e| e.to_string())
}

/// A database failure as the contract's 503; the reason goes to the log only.
pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(target: "chat::db", error = %e, "database step failed");
    ApiError::Unavailable
}

/// Runs a few database steps within `limit` (`DB_TIMEOUT_SECONDS`), a timeout being a 503
/// like any outage. The server bounds each statement too; this bounds a server that stopped
/// answering, and dropping the steps' transaction closes its connection.
pub async fn bounded<T>(
    limit: Duration,
    steps: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, steps)
        .await
        .unwrap_or_else(|_| Err(unavailable("no answer within DB_TIMEOUT_SECONDS")))
}
