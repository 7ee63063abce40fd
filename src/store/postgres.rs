//! The Postgres store: row-level security per transaction, pooler-safe statements.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};
use uuid::Uuid;

use super::{StoreError, StoreFuture, UserRow, UserStore, bounded};
use crate::auth::Claims;
use crate::config::Config;

/// Sets the role and claims for this transaction only, as PostgREST does, so `auth.uid()` and
/// the table's policies see the verified user; nothing outlives the transaction.
const SET_RLS_CONTEXT: &str =
    "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)";
const SELECT_PROFILE: &str = "select id, full_name, avatar_url from public.users where id = $1";
/// One round trip for both the session and the profile: the left join keeps the session
/// answer even when the profile row is missing.
const SELECT_PROFILE_AND_SESSION: &str = "select jwt_service.session_active($2, $1) as session_active, \
     u.id, u.full_name, u.avatar_url \
     from (select 1) as one left join public.users u on u.id = $1";
const UPDATE_NAME: &str = "update public.users set full_name = $2, updated_at = now() \
     where id = $1 returning id, full_name, avatar_url";

/// Profiles in Postgres (Supabase, or any Postgres 14+ migrated by `migrate`).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    rls: bool,
    prepared: bool,
    session_check: bool,
    timeout: Duration,
}

impl PgStore {
    /// A store over a lazily connecting pool: the service starts even while the database is
    /// down, and reports it through `/readyz` and 503s until it returns.
    pub fn connect_lazy(config: &Config) -> Result<Self, StoreError> {
        let mut options: PgConnectOptions = config
            .database_url
            .expose()
            .parse()
            .map_err(StoreError::unavailable)?;
        options = options
            .application_name("supabase-jwt-service")
            .log_statements(tracing::log::LevelFilter::Trace);
        if !config.prepared_statements {
            // Behind a transaction-mode pooler a named statement prepared on one backend is
            // missing (or, worse, different) on the next: use only unnamed statements.
            options = options.statement_cache_capacity(0);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .min_connections(0)
            .acquire_timeout(config.db_timeout)
            .idle_timeout(Duration::from_secs(300))
            .max_lifetime(Duration::from_secs(1800))
            // A dead connection surfaces as one failed request (503) and is dropped; pinging
            // before every checkout would add a round trip to every request instead.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool, config))
    }

    /// A store over an existing pool (tests, embedding).
    pub fn from_pool(pool: PgPool, config: &Config) -> Self {
        Self {
            pool,
            rls: config.db_rls,
            prepared: config.prepared_statements,
            session_check: config.session_check,
            timeout: config.db_timeout,
        }
    }

    /// The pool, for metrics and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks that the connecting user may switch to `authenticated` (needed by `DB_RLS=on`).
    /// `Ok(false)` means the database answered no; `Err` that it did not answer.
    pub async fn can_switch_to_authenticated(&self) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            let mut tx = self.pool.begin().await.map_err(StoreError::unavailable)?;
            let ok = sqlx::query(
                "select coalesce((select rolsuper from pg_roles where rolname = current_user), false) \
                 or (exists (select 1 from pg_roles where rolname = 'authenticated') \
                     and pg_has_role(current_user, 'authenticated', 'member'))",
            )
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::unavailable)?
            .try_get::<bool, _>(0)
            .map_err(StoreError::unavailable)?;
            tx.rollback().await.map_err(StoreError::unavailable)?;
            Ok(ok)
        })
        .await
    }
}

fn row_to_user(row: &sqlx::postgres::PgRow) -> Result<Option<UserRow>, StoreError> {
    let id: Option<Uuid> = row.try_get("id").map_err(StoreError::unavailable)?;
    Ok(match id {
        None => None,
        Some(id) => Some(UserRow {
            id,
            full_name: row.try_get("full_name").map_err(StoreError::unavailable)?,
            avatar_url: row.try_get("avatar_url").map_err(StoreError::unavailable)?,
        }),
    })
}

impl UserStore for PgStore {
    fn profile<'a>(&'a self, claims: &'a Claims) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(bounded(self.timeout, async move {
            let session = if self.session_check {
                Some(claims.session_id.ok_or(StoreError::SessionEnded)?)
            } else {
                None
            };
            // Every statement runs inside an explicit transaction: through a transaction-mode
            // pooler an unnamed statement outside one may be answered by another backend.
            let mut tx = self.pool.begin().await.map_err(StoreError::unavailable)?;
            if self.rls {
                sqlx::query(SET_RLS_CONTEXT)
                    .bind(claims.raw_json().to_owned())
                    .persistent(self.prepared)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?;
            }
            let user = match session {
                Some(session) => {
                    let row = sqlx::query(SELECT_PROFILE_AND_SESSION)
                        .bind(claims.sub.uuid())
                        .bind(session)
                        .persistent(self.prepared)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(StoreError::unavailable)?;
                    let active: bool = row
                        .try_get("session_active")
                        .map_err(StoreError::unavailable)?;
                    if !active {
                        return Err(StoreError::SessionEnded);
                    }
                    row_to_user(&row)?
                }
                None => match sqlx::query(SELECT_PROFILE)
                    .bind(claims.sub.uuid())
                    .persistent(self.prepared)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?
                {
                    Some(row) => row_to_user(&row)?,
                    None => None,
                },
            };
            tx.commit().await.map_err(StoreError::unavailable)?;
            Ok(user)
        }))
    }

    fn set_full_name<'a>(
        &'a self,
        claims: &'a Claims,
        full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(bounded(self.timeout, async move {
            let mut tx = self.pool.begin().await.map_err(StoreError::unavailable)?;
            if self.rls {
                sqlx::query(SET_RLS_CONTEXT)
                    .bind(claims.raw_json().to_owned())
                    .persistent(self.prepared)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?;
            }
            if self.session_check {
                let session = claims.session_id.ok_or(StoreError::SessionEnded)?;
                let active: bool = sqlx::query_scalar("select jwt_service.session_active($1, $2)")
                    .bind(session)
                    .bind(claims.sub.uuid())
                    .persistent(self.prepared)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?;
                if !active {
                    return Err(StoreError::SessionEnded);
                }
            }
            let row = sqlx::query(UPDATE_NAME)
                .bind(claims.sub.uuid())
                .bind(full_name)
                .persistent(self.prepared)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::unavailable)?;
            let user = match row {
                Some(row) => row_to_user(&row)?,
                None => None,
            };
            tx.commit().await.map_err(StoreError::unavailable)?;
            Ok(user)
        }))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(bounded(self.timeout, async move {
            let mut tx = self.pool.begin().await.map_err(StoreError::unavailable)?;
            sqlx::query("select 1")
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::unavailable)?;
            tx.commit().await.map_err(StoreError::unavailable)?;
            Ok(())
        }))
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

/// The Postgres migrations (`migrations/`), with their bookkeeping table kept in the private
/// `jwt_service` schema rather than in `public`, which Supabase's Data API exposes.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.create_schema("jwt_service");
    migrator.dangerous_set_table_name("jwt_service._sqlx_migrations");
    migrator
}
