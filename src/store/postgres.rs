//! The Postgres store: row-level security per transaction, pooler-safe statements.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Postgres, Row, Transaction};
use uuid::Uuid;

use super::{PoolStats, StoreError, StoreFuture, UserRow, UserStore, bounded};
use crate::auth::Claims;
use crate::config::Config;

const SELECT_PROFILE: &str = "select id, full_name, avatar_url from public.users where id = $1";
/// One round trip for both the session and the profile: the left join keeps the session
/// answer even when the profile row is missing.
const SELECT_PROFILE_AND_SESSION: &str = "select jwt_service.session_active($2, $1) as session_active, \
     u.id, u.full_name, u.avatar_url \
     from (select 1) as one left join public.users u on u.id = $1";
const UPDATE_NAME: &str = "update public.users set full_name = $2, updated_at = now() \
     where id = $1 returning id, full_name, avatar_url";
/// The update and the session check in one statement: the update touches the row only while
/// the session is active, and the answer tells a missing row from an ended session.
const UPDATE_NAME_IF_SESSION_ACTIVE: &str = "with s as (select jwt_service.session_active($3, $1) as active), \
     u as (update public.users set full_name = $2, updated_at = now() \
           where id = $1 and (select active from s) returning id, full_name, avatar_url) \
     select s.active as session_active, u.id, u.full_name, u.avatar_url from s left join u on true";

/// The statement that opens a user's transaction under row-level security: it sets `role` and
/// `request.jwt.claims` transaction-locally (as PostgREST does), then `begin`s, all in one
/// simple-protocol message, so it costs one round trip instead of two (`BEGIN`, then a bound
/// `set_config`, which is itself two round trips as an unnamed statement).
///
/// Why this order: the `select` runs in the message's implicit transaction, which `begin`
/// turns into the explicit one (PostgreSQL protocol docs, "Multiple Statements in a Simple
/// Query"), so the settings last until `commit`. Were `begin` first, a failing `set_config`
/// would leave the connection in an aborted transaction that sqlx does not roll back, and the
/// pool would hand it on broken; this way a failure aborts only the implicit transaction.
///
/// The role switch and the user's queries are separate statements on purpose: a policy is
/// applied when a statement is planned, under the role current then, so switching the role
/// inside the user's own statement would not be guaranteed to take effect.
///
/// The simple protocol takes no bind parameters, so the claims travel as a literal; see
/// [`quote_literal`] for why that is safe.
fn begin_as_sql(claims_json: &str) -> String {
    format!(
        "select set_config('role', 'authenticated', true), \
         set_config('request.jwt.claims', {}, true); begin",
        quote_literal(claims_json)
    )
}

/// The read of one request as a single simple-protocol message: under `DB_RLS=on` it first
/// sets `role` and `request.jwt.claims` with `SET LOCAL`, then selects the profile (and the
/// session's state). The statements of one simple `Query` message run as one implicit
/// transaction (PostgreSQL protocol docs, "Multiple Statements in a Simple Query"), so the
/// settings hold for the select and end with it, an error rolls back everything, and no
/// state can outlive the message, even when the caller gives up mid-flight. Through a
/// transaction-mode pooler the message is one transaction on one backend, and it names no
/// prepared statement.
///
/// The role switch and the select are separate statements on purpose: a policy is applied
/// when a statement is planned, under the role current then.
///
/// Only values we produced or checked are inlined: the ids are canonical UUIDs (parsed, then
/// printed by `uuid`), and the claims go through [`quote_literal`].
fn read_in_one_message(rls: bool, claims: &Claims, session: Option<Uuid>) -> String {
    let mut sql = String::with_capacity(256 + claims.raw_json().len());
    if rls {
        sql.push_str("set local role authenticated; set local request.jwt.claims = ");
        sql.push_str(&quote_literal(claims.raw_json()));
        sql.push_str("; ");
    }
    let sub = claims.sub.uuid().hyphenated();
    match session {
        Some(session) => sql.push_str(&format!(
            "select jwt_service.session_active('{}'::uuid, '{sub}'::uuid) as session_active, \
             u.id, u.full_name, u.avatar_url \
             from (select 1) as one left join public.users u on u.id = '{sub}'::uuid",
            session.hyphenated()
        )),
        None => sql.push_str(&format!(
            "select id, full_name, avatar_url from public.users where id = '{sub}'::uuid"
        )),
    }
    sql
}

/// Quotes `text` as a PostgreSQL escape-string literal, `E'…'`: every backslash and quote is
/// doubled, so the literal ends exactly where we end it, whatever the text holds. The `E` form
/// reads backslashes the same way whatever `standard_conforming_strings` says; sqlx connects
/// with `client_encoding` UTF8, where neither byte can occur inside a multi-byte character; and
/// the text comes from `serde_json`, which escapes control characters, so it holds no NUL.
fn quote_literal(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 3);
    quoted.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\'' => quoted.push_str("''"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

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
        // The RLS context carries the verified claims (email included) in its SQL text, so
        // statements are never logged, at any level.
        options = options
            .application_name("supabase-jwt-service")
            .disable_statement_logging();
        if !config.prepared_statements {
            // Behind a transaction-mode pooler a named statement prepared on one backend is
            // missing (or, worse, different) on the next: use only unnamed statements.
            options = options.statement_cache_capacity(0);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .min_connections(0)
            // A little shorter than the bound on the whole call, so that a saturated pool
            // surfaces as sqlx's pool timeout (db_errors_total{kind="acquire_timeout"}) rather
            // than as the generic one; both answer 503 within DB_TIMEOUT_SECONDS.
            .acquire_timeout(config.db_timeout.mul_f64(0.8))
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

    /// Begins a transaction acting as the verified user: `role` is `authenticated` and
    /// `request.jwt.claims` holds `claims` until the transaction ends (commit, rollback or
    /// drop), so `auth.uid()`, `auth.jwt()` and the tables' row-level security policies apply
    /// to every statement run on it, as in Supabase's Data API. Nothing outlives the
    /// transaction, so the connection goes back to the pool as it came.
    ///
    /// This is the path every user query of this store takes when `DB_RLS=on`; your own
    /// routes can use it too. It costs one round trip. The caller bounds it in time (the pool's
    /// acquire timeout bounds only the wait for a connection); giving up early is safe.
    pub async fn begin_as(
        &self,
        claims: &Claims,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let sql = AssertSqlSafe(begin_as_sql(claims.raw_json()));
        begin_to_completion(self.pool.clone(), Some(sql)).await
    }

    /// Begins the transaction for one user query: as the user under `DB_RLS=on`, else a plain
    /// one whose queries filter by the verified id themselves. Every statement runs inside an
    /// explicit transaction: through a transaction-mode pooler an unnamed statement outside
    /// one may be answered by another backend.
    async fn begin_for(
        &self,
        claims: &Claims,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        if self.rls {
            self.begin_as(claims).await
        } else {
            begin_to_completion(self.pool.clone(), None).await
        }
    }

    /// Checks that the connecting user may switch to `authenticated` (needed by `DB_RLS=on`).
    /// `Ok(false)` means the database answered no; `Err` that it did not answer.
    pub async fn can_switch_to_authenticated(&self) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            let mut tx = begin_to_completion(self.pool.clone(), None).await?;
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

/// Begins a transaction in a task of its own, so that it always runs to completion.
///
/// A caller may stop waiting at any point (a client disconnects, a store call times out). Once
/// the transaction exists, dropping it is safe: sqlx rolls it back before the connection is
/// reused. But dropped while the begin statement is in flight, sqlx (0.9) has not counted the
/// transaction yet and queues no rollback, so the connection would go back to the pool inside
/// a transaction, under `DB_RLS=on` still acting as that user. In its own task the begin
/// finishes, and a transaction nobody waits for any more is dropped, hence rolled back.
async fn begin_to_completion(
    pool: PgPool,
    statement: Option<AssertSqlSafe<String>>,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    let begin = tokio::spawn(async move {
        match statement {
            Some(sql) => pool.begin_with(sql).await,
            None => pool.begin().await,
        }
    });
    match begin.await {
        Ok(result) => result.map_err(StoreError::unavailable),
        Err(e) => Err(StoreError::unavailable(e)),
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
            let query = match session {
                Some(session) => sqlx::query(SELECT_PROFILE_AND_SESSION)
                    .bind(claims.sub.uuid())
                    .bind(session),
                None => sqlx::query(SELECT_PROFILE).bind(claims.sub.uuid()),
            };
            let row = if !self.prepared {
                // Behind a transaction-mode pooler: everything in one simple-protocol
                // message, one round trip, no statement name (see `read_in_one_message`).
                sqlx::raw_sql(AssertSqlSafe(read_in_one_message(
                    self.rls, claims, session,
                )))
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::unavailable)?
                .pop()
            } else if !self.rls {
                // Direct connection, no RLS: one named prepared statement, the cheapest
                // query Postgres can answer; a single statement needs no explicit transaction.
                query
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::unavailable)?
            } else {
                // Direct connection under RLS: the context in one message, then the named
                // prepared select, whose cached plan saves Postgres more (the policy calls
                // auth.uid(), which parses the claims) than the one-message form's saved round
                // trip. Dropping the transaction queues its ROLLBACK, which the pool sends with
                // its test of the returned connection, after the answer has gone out.
                let mut tx = self.begin_as(claims).await?;
                let row = query
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?;
                drop(tx);
                row
            };
            let Some(row) = row else {
                return Ok(None);
            };
            if session.is_some() {
                let active: bool = row
                    .try_get("session_active")
                    .map_err(StoreError::unavailable)?;
                if !active {
                    return Err(StoreError::SessionEnded);
                }
            }
            row_to_user(&row)
        }))
    }

    fn set_full_name<'a>(
        &'a self,
        claims: &'a Claims,
        full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(bounded(self.timeout, async move {
            let session = if self.session_check {
                Some(claims.session_id.ok_or(StoreError::SessionEnded)?)
            } else {
                None
            };
            let mut tx = self.begin_for(claims).await?;
            let row = match session {
                Some(session) => {
                    let row = sqlx::query(UPDATE_NAME_IF_SESSION_ACTIVE)
                        .bind(claims.sub.uuid())
                        .bind(full_name)
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
                    Some(row)
                }
                None => sqlx::query(UPDATE_NAME)
                    .bind(claims.sub.uuid())
                    .bind(full_name)
                    .persistent(self.prepared)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?,
            };
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
            let mut tx = begin_to_completion(self.pool.clone(), None).await?;
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

    fn pool_stats(&self) -> Option<PoolStats> {
        Some(PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle(),
            max: self.pool.options().get_max_connections(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_literal_doubles_quotes_and_backslashes() {
        assert_eq!(quote_literal(""), "E''");
        assert_eq!(quote_literal("plain"), "E'plain'");
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
        assert_eq!(quote_literal(r#"{"x":"\"q\""}"#), r#"E'{"x":"\\"q\\""}'"#);
    }

    #[test]
    fn begin_as_sql_sets_the_context_before_it_begins() {
        let sql = begin_as_sql(r#"{"sub":"x','y"}"#);
        assert!(sql.starts_with("select set_config('role', 'authenticated', true), "));
        assert!(sql.contains(r#"set_config('request.jwt.claims', E'{"sub":"x'',''y"}', true)"#));
        assert!(sql.ends_with("; begin"));
    }
}
