//! Migrations: the crate's own (the `auth` stand-in, `public.users` and its policies), then the
//! app's, each on `DIRECT_DATABASE_URL`: a transaction-mode pooler cannot run them.

use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::Migrator;

use super::error::DbError;
use super::pg::connect_options;
use crate::config::{DatabaseUrl, DbConfig};

/// How long a migration's connection may take to open.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);

/// The crate's Postgres migrations (`migrations/`), their bookkeeping kept in the private
/// `jwt_service` schema rather than in `public`, which Supabase's Data API exposes.
pub(crate) fn pg_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.create_schema("jwt_service");
    migrator.dangerous_set_table_name("jwt_service._sqlx_migrations");
    migrator
}

/// Applies the crate's migrations to `DIRECT_DATABASE_URL` (else `DATABASE_URL`): on Postgres
/// the `auth` stand-in where Supabase's is missing, `public.users` with its row-level security
/// policies; the embedded store migrates itself when it opens. Run it before your own
/// ([`migrate_app`]); `migrate` on the command line does exactly this. Applying it twice
/// changes nothing.
///
/// ```no_run
/// # async fn run(config: supabase_jwt_service::Config) -> Result<(), supabase_jwt_service::DbError> {
/// supabase_jwt_service::db::migrate(&config.db).await?;
/// # Ok(())
/// # }
/// ```
pub async fn migrate(config: &DbConfig) -> Result<(), DbError> {
    let url = &config.direct_url;
    if url.is_postgres() {
        run_postgres(url, &pg_migrator()).await?;
    } else {
        open_embedded(url, config).await?;
    }
    tracing::info!(database = %url.masked(), "migrations applied");
    Ok(())
}

/// Applies your app's own migrations, after [`migrate`], to the same database: `migrator` is
/// `sqlx::migrate!("…")` of the store `DATABASE_URL` names (Postgres SQL for a `postgres://`
/// URL, SQLite SQL for the embedded store). Keep its bookkeeping out of `public`, which
/// Supabase's Data API exposes:
///
/// ```no_run
/// # async fn run(config: supabase_jwt_service::Config) -> Result<(), supabase_jwt_service::DbError> {
/// use supabase_jwt_service::db::{migrate, migrate_app};
///
/// let mut mine = sqlx::migrate!("./migrations");
/// mine.create_schema("app_private");
/// mine.dangerous_set_table_name("app_private._sqlx_migrations");
/// migrate(&config.db).await?;
/// migrate_app(&config.db, &mine).await?;
/// # Ok(())
/// # }
/// ```
pub async fn migrate_app(config: &DbConfig, migrator: &Migrator) -> Result<(), DbError> {
    let url = &config.direct_url;
    if url.is_postgres() {
        return run_postgres(url, migrator).await;
    }
    #[cfg(feature = "sqlite")]
    {
        let db = open_embedded(url, config).await?;
        migrator
            .run(db.pool())
            .await
            .map_err(|e| DbError::Migration(Box::new(e)))
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = migrator;
        Err(no_embedded_store())
    }
}

/// Runs `migrator` over one connection of its own to `url`, closed when done. A failure names
/// the database by its masked URL (host, port, database; never the password), so an operator
/// sees which one it tried.
async fn run_postgres(url: &DatabaseUrl, migrator: &Migrator) -> Result<(), DbError> {
    let failed = |what: String| DbError::Migration(what.into());
    let options = connect_options(url)?;
    let mut conn = tokio::time::timeout(CONNECT_LIMIT, sqlx::ConnectOptions::connect(&options))
        .await
        .map_err(|_| {
            failed(format!(
                "no answer from {} within {CONNECT_LIMIT:?}",
                url.masked()
            ))
        })?
        .map_err(|e| failed(format!("connect to {}: {e}", url.masked())))?;
    // Idempotent migrations say "already exists, skipping" at NOTICE, which sqlx logs at INFO:
    // on every start that reads as if something went wrong.
    let quiet = sqlx::raw_sql("set client_min_messages = warning")
        .execute(&mut conn)
        .await;
    let applied = match quiet {
        Ok(_) => migrator
            .run_direct(None, &mut conn, false)
            .await
            .map_err(|e| failed(format!("migrate {}: {e}", url.masked()))),
        Err(e) => Err(failed(format!("migrate {}: {e}", url.masked()))),
    };
    let _ = conn.close().await;
    applied
}

#[cfg(feature = "sqlite")]
async fn open_embedded(
    url: &DatabaseUrl,
    config: &DbConfig,
) -> Result<super::sqlite::SqliteDb, DbError> {
    super::sqlite::SqliteDb::open(url.expose(), config.timeout).await
}

/// Without the `sqlite` feature no `DatabaseUrl` names the embedded store (parsing refuses
/// one), so this is reached only if that rule is ever broken: an error, never a panic.
#[cfg(not(feature = "sqlite"))]
async fn open_embedded(_url: &DatabaseUrl, _config: &DbConfig) -> Result<(), DbError> {
    Err(no_embedded_store())
}

#[cfg(not(feature = "sqlite"))]
fn no_embedded_store() -> DbError {
    DbError::Unavailable("this build has no embedded SQLite store (feature `sqlite`)".into())
}
