//! The Postgres store: row-level security per transaction, pooler-safe statements.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};
use uuid::Uuid;

use super::pool::{ConnPool, Lease, PoolSettings};
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
/// would leave the connection in an aborted transaction; this way a failure aborts only the
/// implicit transaction.
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

/// Names of the statements `PREPARE`d on every direct connection under `DB_RLS=on`: the
/// profile read, without and with the session check. SQL-level prepared statements share
/// their namespace with the protocol-level ones sqlx names `sqlx_s_N`, hence the prefix.
const PREPARED_PROFILE: &str = "sjs_profile";
const PREPARED_PROFILE_AND_SESSION: &str = "sjs_profile_session";

/// What every new direct connection runs once under `DB_RLS=on`, so that each read is one
/// simple-protocol message that still uses a cached plan (see [`read_in_one_message`]).
/// Postgres re-plans a prepared statement when the role it runs under changes the table's
/// row-level security (plancache.c, `dependsOnRLS`), so preparing it as the connecting user
/// and running it as `authenticated` applies the policies.
fn prepare_reads_sql(session_check: bool) -> String {
    if session_check {
        format!(
            "prepare {PREPARED_PROFILE_AND_SESSION}(uuid, uuid) as \
             select jwt_service.session_active($2, $1) as session_active, \
             u.id, u.full_name, u.avatar_url \
             from (select 1) as one left join public.users u on u.id = $1"
        )
    } else {
        format!("prepare {PREPARED_PROFILE}(uuid) as {SELECT_PROFILE}")
    }
}

/// How [`read_in_one_message`] names the select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadForm {
    /// The select's text inline: nothing named, as a transaction-mode pooler needs.
    Inline,
    /// `execute` of the statement [`prepare_reads_sql`] prepared on this connection.
    Prepared,
}

/// The read of one request as a single simple-protocol message: under `DB_RLS=on` it first
/// sets `role` and `request.jwt.claims` with `SET LOCAL`, then selects the profile (and the
/// session's state). The statements of one simple `Query` message run as one implicit
/// transaction (PostgreSQL protocol docs, "Multiple Statements in a Simple Query"), so the
/// settings hold for the select and end with it, an error rolls back everything, and no
/// state can outlive the message. That makes it one round trip with nothing to clean up,
/// which is why both the pooler path and the direct `DB_RLS=on` path use it; through a
/// transaction-mode pooler the message is one transaction on one backend.
///
/// The role switch and the select are separate statements on purpose: a policy is applied
/// when a statement is planned, under the role current then.
///
/// Only values we produced or checked are inlined: the ids are canonical UUIDs (parsed, then
/// printed by `uuid`), and the claims go through [`quote_literal`].
fn read_in_one_message(
    rls: bool,
    claims: &Claims,
    session: Option<Uuid>,
    form: ReadForm,
) -> String {
    let mut sql = String::with_capacity(256 + claims.raw_json().len());
    if rls {
        sql.push_str("set local role authenticated; set local request.jwt.claims = ");
        sql.push_str(&quote_literal(claims.raw_json()));
        sql.push_str("; ");
    }
    let sub = claims.sub.uuid().hyphenated();
    match (session, form) {
        (Some(session), ReadForm::Inline) => sql.push_str(&format!(
            "select jwt_service.session_active('{}'::uuid, '{sub}'::uuid) as session_active, \
             u.id, u.full_name, u.avatar_url \
             from (select 1) as one left join public.users u on u.id = '{sub}'::uuid",
            session.hyphenated()
        )),
        (None, ReadForm::Inline) => sql.push_str(&format!(
            "select id, full_name, avatar_url from public.users where id = '{sub}'::uuid"
        )),
        (Some(session), ReadForm::Prepared) => sql.push_str(&format!(
            "execute {PREPARED_PROFILE_AND_SESSION}('{sub}', '{}')",
            session.hyphenated()
        )),
        (None, ReadForm::Prepared) => {
            sql.push_str(&format!("execute {PREPARED_PROFILE}('{sub}')"));
        }
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

/// Profiles in Postgres (Supabase, or any Postgres 14+ migrated by `migrate`). Its `Debug`
/// never shows the password.
#[derive(Clone)]
pub struct PgStore {
    pool: ConnPool,
    rls: bool,
    prepared: bool,
    session_check: bool,
    timeout: Duration,
}

// By hand, so that no field added later can print connect options through a derive.
impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool)
            .field("rls", &self.rls)
            .field("session_check", &self.session_check)
            .finish_non_exhaustive()
    }
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
        let settings = PoolSettings {
            max_connections: config.db_max_connections,
            // A little shorter than the bound on the whole call, so that a saturated pool
            // surfaces as its own error (db_errors_total{kind="acquire_timeout"}) rather than
            // as the generic timeout; both answer 503 within DB_TIMEOUT_SECONDS.
            acquire_timeout: config.db_timeout.mul_f64(0.8),
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(1800),
            after_connect: (config.db_rls && config.prepared_statements)
                .then(|| prepare_reads_sql(config.session_check)),
        };
        Ok(Self {
            pool: ConnPool::new(options, settings),
            rls: config.db_rls,
            prepared: config.prepared_statements,
            session_check: config.session_check,
            timeout: config.db_timeout,
        })
    }

    /// The pool, for metrics and tests.
    pub fn pool(&self) -> &ConnPool {
        &self.pool
    }

    /// A pooled connection, for queries of your own; hand it back with [`Lease::release`]
    /// once they succeeded. The caller bounds it in time.
    pub async fn acquire(&self) -> Result<Lease, StoreError> {
        self.pool.acquire().await.map_err(StoreError::unavailable)
    }

    /// Begins a transaction acting as the verified user: `role` is `authenticated` and
    /// `request.jwt.claims` holds `claims` until the transaction ends, so `auth.uid()`,
    /// `auth.jwt()` and the tables' row-level security policies apply to every statement run
    /// on it, as in Supabase's Data API. Nothing outlives the transaction: `commit` and
    /// `rollback` end it, and a transaction dropped while open takes its connection with it.
    ///
    /// This is the path the store's writes take when `DB_RLS=on`; your own routes can use it
    /// too. It costs one round trip. The caller bounds it in time (the pool's acquire timeout
    /// bounds only the wait for a connection); giving up early is safe.
    pub async fn begin_as(&self, claims: &Claims) -> Result<UserTransaction, StoreError> {
        self.begin_with(Some(claims)).await
    }

    /// Begins the transaction for one write: as the user under `DB_RLS=on`, else a plain one
    /// whose statements filter by the verified id themselves. Writes run inside an explicit
    /// transaction: through a transaction-mode pooler, sqlx's unnamed statement is two
    /// exchanges that another backend could answer the second of.
    async fn begin_with(&self, claims: Option<&Claims>) -> Result<UserTransaction, StoreError> {
        let mut lease = self.acquire().await?;
        lease.enter_transaction();
        let sql = match claims {
            Some(claims) => begin_as_sql(claims.raw_json()),
            None => "begin".to_owned(),
        };
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *lease)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(UserTransaction { lease })
    }

    /// With `SESSION_CHECK=on`, the session the query must find active; a token without one is
    /// refused before any query.
    fn session_to_check(&self, claims: &Claims) -> Result<Option<Uuid>, StoreError> {
        if self.session_check {
            claims.session_id.ok_or(StoreError::SessionEnded).map(Some)
        } else {
            Ok(None)
        }
    }

    async fn begin_for(&self, claims: &Claims) -> Result<UserTransaction, StoreError> {
        self.begin_with(self.rls.then_some(claims)).await
    }

    /// Checks that the connecting user may switch to `authenticated` (needed by `DB_RLS=on`).
    /// `Ok(false)` means the database answered no; `Err` that it did not answer.
    pub async fn can_switch_to_authenticated(&self) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            let mut lease = self.acquire().await?;
            let ok = sqlx::raw_sql(
                "select coalesce((select rolsuper from pg_roles where rolname = current_user), false) \
                 or (exists (select 1 from pg_roles where rolname = 'authenticated') \
                     and pg_has_role(current_user, 'authenticated', 'member'))",
            )
            .fetch_one(&mut *lease)
            .await
            .map_err(StoreError::unavailable)?
            .try_get::<bool, _>(0)
            .map_err(StoreError::unavailable)?;
            lease.release();
            Ok(ok)
        })
        .await
    }
}

/// A transaction on a pooled connection, from [`PgStore::begin_as`]; dereferences to the
/// [`PgConnection`], so `&mut *tx` runs queries on it.
///
/// End it with [`commit`](Self::commit) or [`rollback`](Self::rollback). Dropped while open
/// (an error, a timeout, a caller that gave up), its connection is closed, which ends the
/// transaction on the server, and the pool opens a fresh one.
pub struct UserTransaction {
    lease: Lease,
}

// By hand, like `PgStore`'s: the lease shows where it points, never a credential.
impl std::fmt::Debug for UserTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTransaction")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl UserTransaction {
    /// Commits, then hands the connection back to the pool.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.end("commit").await
    }

    /// Rolls back, then hands the connection back to the pool.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.end("rollback").await
    }

    async fn end(mut self, statement: &'static str) -> Result<(), StoreError> {
        sqlx::raw_sql(statement)
            .execute(&mut *self.lease)
            .await
            .map_err(StoreError::unavailable)?;
        self.lease.transaction_ended();
        self.lease.release();
        Ok(())
    }
}

impl std::ops::Deref for UserTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.lease
    }
}

impl std::ops::DerefMut for UserTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.lease
    }
}

/// What a profile read or update answers: `None` without a row; when the session was checked,
/// [`StoreError::SessionEnded`] unless the row says it is active.
fn answer(
    row: Option<sqlx::postgres::PgRow>,
    session_checked: bool,
) -> Result<Option<UserRow>, StoreError> {
    let Some(row) = row else {
        return Ok(None);
    };
    if session_checked {
        let active: bool = row
            .try_get("session_active")
            .map_err(StoreError::unavailable)?;
        if !active {
            return Err(StoreError::SessionEnded);
        }
    }
    row_to_user(&row)
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
            let session = self.session_to_check(claims)?;
            let mut lease = self.acquire().await?;
            let row = if self.rls || !self.prepared {
                // One simple-protocol message, one round trip, nothing left to undo (see
                // `read_in_one_message`). On a direct connection it executes the statement
                // prepared when the connection opened; behind a pooler it names nothing.
                let form = if self.prepared {
                    ReadForm::Prepared
                } else {
                    ReadForm::Inline
                };
                sqlx::raw_sql(AssertSqlSafe(read_in_one_message(
                    self.rls, claims, session, form,
                )))
                .fetch_all(&mut *lease)
                .await
                .map_err(StoreError::unavailable)?
                .pop()
            } else {
                // Direct connection, no RLS: one named prepared statement, the cheapest
                // query Postgres can answer; a single statement needs no explicit transaction.
                let query = match session {
                    Some(session) => sqlx::query(SELECT_PROFILE_AND_SESSION)
                        .bind(claims.sub.uuid())
                        .bind(session),
                    None => sqlx::query(SELECT_PROFILE).bind(claims.sub.uuid()),
                };
                query
                    .fetch_optional(&mut *lease)
                    .await
                    .map_err(StoreError::unavailable)?
            };
            lease.release();
            answer(row, session.is_some())
        }))
    }

    fn set_full_name<'a>(
        &'a self,
        claims: &'a Claims,
        full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(bounded(self.timeout, async move {
            let session = self.session_to_check(claims)?;
            let mut tx = self.begin_for(claims).await?;
            let row = match session {
                Some(session) => sqlx::query(UPDATE_NAME_IF_SESSION_ACTIVE)
                    .bind(claims.sub.uuid())
                    .bind(full_name)
                    .bind(session)
                    .persistent(self.prepared)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?,
                None => sqlx::query(UPDATE_NAME)
                    .bind(claims.sub.uuid())
                    .bind(full_name)
                    .persistent(self.prepared)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?,
            };
            tx.commit().await?;
            answer(row, session.is_some())
        }))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(bounded(self.timeout, async move {
            let mut lease = self.acquire().await?;
            sqlx::raw_sql("select 1")
                .execute(&mut *lease)
                .await
                .map_err(StoreError::unavailable)?;
            lease.release();
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
            max: self.pool.max_connections(),
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
