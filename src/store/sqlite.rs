//! The embedded SQLite store: the zero-install default for local development.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

use super::{PoolStats, StoreError, StoreFuture, UserRow, UserStore, bounded};
use crate::auth::Claims;

/// The embedded store's migrations (`migrations/sqlite`).
pub(super) static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Profiles in a local SQLite file. No row-level security: queries filter by the verified id.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    timeout: Duration,
}

// By hand, so the pool's options never print through a derive; a SQLite URL carries no
// credential today, but this type's `Debug` should not depend on sqlx's.
impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing, with its parent folder) and migrates the database at `url`.
    pub async fn open(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(timeout);
        let path = options.get_filename();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()).into())
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::unavailable)?;
        SQLITE_MIGRATOR
            .run(&pool)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Self { pool, timeout })
    }

    /// The pool, for tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn row_to_user(row: &sqlx::sqlite::SqliteRow) -> Result<UserRow, StoreError> {
    let id: String = row.try_get("id").map_err(StoreError::unavailable)?;
    Ok(UserRow {
        id: Uuid::try_parse(&id).map_err(StoreError::unavailable)?,
        full_name: row.try_get("full_name").map_err(StoreError::unavailable)?,
        avatar_url: row.try_get("avatar_url").map_err(StoreError::unavailable)?,
    })
}

impl UserStore for SqliteStore {
    fn profile<'a>(&'a self, claims: &'a Claims) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(bounded(self.timeout, async move {
            let row = sqlx::query("select id, full_name, avatar_url from users where id = ?1")
                .bind(claims.sub.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::unavailable)?;
            row.as_ref().map(row_to_user).transpose()
        }))
    }

    fn set_full_name<'a>(
        &'a self,
        claims: &'a Claims,
        full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(bounded(self.timeout, async move {
            let row = sqlx::query(
                "update users set full_name = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 where id = ?1 returning id, full_name, avatar_url",
            )
            .bind(claims.sub.to_string())
            .bind(full_name)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::unavailable)?;
            row.as_ref().map(row_to_user).transpose()
        }))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(bounded(self.timeout, async move {
            sqlx::query("select 1")
                .execute(&self.pool)
                .await
                .map_err(StoreError::unavailable)?;
            Ok(())
        }))
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn db(&self) -> Option<crate::db::Db> {
        Some(crate::db::Db::Sqlite(self.pool.clone()))
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        Some(PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle(),
            max: self.pool.options().get_max_connections(),
        })
    }
}
