//! The embedded SQLite store: the zero-install default for trying the service and the examples
//! locally. It has no roles and no row-level security: every query filters by the caller's id.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::error::{DbError, bounded};
use crate::telemetry::metrics::PoolStats;

/// The embedded store's own migrations (`migrations/sqlite`).
pub(crate) static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A local SQLite file. Its `Debug` shows nothing of the pool's options.
#[derive(Clone)]
pub(crate) struct SqliteDb {
    pool: SqlitePool,
    timeout: Duration,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteDb {
    /// Opens (creating when missing, with its parent folder) and migrates the database at
    /// `url`. Waits for a writer's lock at most `timeout` (`busy_timeout`).
    pub(crate) async fn open(url: &str, timeout: Duration) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(DbError::unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(timeout);
        let path = options.get_filename();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                DbError::Unavailable(format!("cannot create {}: {e}", parent.display()).into())
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(DbError::unavailable)?;
        SQLITE_MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| DbError::Migration(Box::new(e)))?;
        Ok(Self { pool, timeout })
    }

    /// The pool, for the crate's queries on the embedded store.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The bound on one call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A transaction: `BEGIN IMMEDIATE` for one that may write, so two that read and then write
    /// queue on `busy_timeout` where deferred ones would fail at the first write with
    /// `SQLITE_BUSY`; a plain `BEGIN` for one that only reads, which never waits for a writer.
    pub(crate) async fn begin(
        &self,
        for_writes: bool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
        bounded(self.timeout, async {
            let begin = if for_writes {
                "BEGIN IMMEDIATE"
            } else {
                "BEGIN"
            };
            self.pool
                .begin_with(begin)
                .await
                .map_err(DbError::unavailable)
        })
        .await
    }

    /// Whether the file answers a trivial query now.
    pub(crate) async fn ping(&self) -> Result<(), DbError> {
        bounded(self.timeout, async {
            sqlx::query("select 1")
                .execute(&self.pool)
                .await
                .map_err(DbError::unavailable)?;
            Ok(())
        })
        .await
    }

    /// The pool's occupancy, for the metrics listener.
    pub(crate) fn pool_stats(&self) -> PoolStats {
        PoolStats {
            store: "sqlite",
            size: self.pool.size(),
            idle: self.pool.num_idle(),
            max: self.pool.options().get_max_connections(),
        }
    }
}
