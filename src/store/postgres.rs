//! The Postgres store: row-level security per transaction, statements safe behind any
//! transaction-mode pooler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};
use uuid::Uuid;

use super::pool::{ConnPool, Lease, PoolSettings};
use super::{PoolStats, StoreError, StoreFuture, UserRow, UserStore, bounded};
use crate::auth::Claims;
use crate::config::{Config, PreparedStatements};

const UPDATE_NAME: &str = "update public.users set full_name = $2, updated_at = now() \
     where id = $1 returning id, full_name, avatar_url";
/// The update and the session check in one statement: the update touches the row only while
/// the session is active, and the answer tells a missing row from an ended session.
const UPDATE_NAME_IF_SESSION_ACTIVE: &str = "with s as (select jwt_service.session_active($3, $1) as active), \
     u as (update public.users set full_name = $2, updated_at = now() \
           where id = $1 and (select active from s) returning id, full_name, avatar_url) \
     select s.active as session_active, u.id, u.full_name, u.avatar_url from s left join u on true";

/// The statements that switch to the verified user for the rest of the transaction, as
/// PostgREST does: `role` becomes the token's role and `request.jwt.claims` its payload, both
/// `SET LOCAL`, so they end with the transaction whatever happens. The role is one the
/// configuration allows (the verifier refuses others) and is quoted as an identifier anyway;
/// the claims are a literal, see [`quote_literal`].
///
/// The role switch is a statement of its own, never part of a user query, on purpose: a
/// policy is applied when a statement is planned, under the role current then.
fn rls_context_sql(role: &str, claims_json: &str) -> String {
    let mut sql = String::with_capacity(80 + role.len() + claims_json.len());
    sql.push_str("set local role ");
    sql.push_str(&quote_ident(role));
    sql.push_str("; set local request.jwt.claims = ");
    sql.push_str(&quote_literal(claims_json));
    sql.push_str("; ");
    sql
}

/// The message that opens a user's transaction under row-level security: the context of
/// [`rls_context_sql`], then `begin`, all in one simple-protocol message, so it costs one round
/// trip instead of two (`BEGIN`, then a bound `set_config`, which is itself two round trips as
/// an unnamed statement).
///
/// Why this order: the settings run in the message's implicit transaction, which `begin` turns
/// into the explicit one (PostgreSQL protocol docs, "Multiple Statements in a Simple Query"),
/// so they last until `commit`. Were `begin` first, a refused role switch would leave the
/// connection in an aborted transaction; this way a failure aborts only the implicit one.
fn begin_as_sql(role: &str, claims_json: &str) -> String {
    let mut sql = rls_context_sql(role, claims_json);
    sql.push_str("begin");
    sql
}

/// The profile read, with the session's state when `session` is given, over `sub` and
/// `session` as SQL expressions: `$1` and `$2` when it is prepared, literals when it is inline,
/// so both forms run the same text. With the session check, one round trip answers both: the
/// left join keeps the session's answer even when the profile row is missing.
fn profile_select(sub: &str, session: Option<&str>) -> String {
    match session {
        Some(session) => format!(
            "select jwt_service.session_active({session}, {sub}) as session_active, \
             u.id, u.full_name, u.avatar_url \
             from (select 1) as one left join public.users u on u.id = {sub}"
        ),
        None => format!("select id, full_name, avatar_url from public.users where id = {sub}"),
    }
}

/// The profile read with bind parameters, for sqlx's own named statements (see
/// [`PoolSettings::direct_statement_cache`]): the same text every other read form runs.
static BOUND_PROFILE: LazyLock<String> = LazyLock::new(|| profile_select("$1", None));
static BOUND_PROFILE_AND_SESSION: LazyLock<String> =
    LazyLock::new(|| profile_select("$1", Some("$2")));

/// The name of a connection's prepared read: `tag` is random and drawn afresh for every
/// attempt to prepare one, so no two connections (nor two attempts on one connection) share a
/// name, and an `execute` can only ever run the statement this connection prepared under it.
/// SQL-level prepared statements share their namespace with the protocol-level ones sqlx names
/// `sqlx_s_N`, hence the prefix.
fn read_statement_name(tag: u64, session_check: bool) -> String {
    let suffix = if session_check { "_session" } else { "" };
    format!("sjs_{tag:016x}_profile{suffix}")
}

/// Prepares the read for [`ReadForm::Prepare`]. It runs in the read's own message, the first
/// time a connection reads, rather than when the connection opens: parsing it takes a lock on
/// `public.users`, which must wait inside a bounded request, not in the pool's connect. Postgres
/// re-plans a prepared statement when the role it runs under changes the table's row-level
/// security (plancache.c, `dependsOnRLS`), so the policies apply whichever role executes it.
fn prepare_read_sql(tag: u64, session_check: bool) -> String {
    let name = read_statement_name(tag, session_check);
    if session_check {
        format!(
            "prepare {name}(uuid, uuid) as {}",
            profile_select("$1", Some("$2"))
        )
    } else {
        format!("prepare {name}(uuid) as {}", profile_select("$1", None))
    }
}

/// Runs the read that [`prepare_read_sql`] prepared under `tag`.
fn execute_read_sql(tag: u64, sub: &str, session: Option<&str>) -> String {
    let name = read_statement_name(tag, session.is_some());
    match session {
        Some(session) => format!("execute {name}('{sub}', '{session}')"),
        None => format!("execute {name}('{sub}')"),
    }
}

/// How [`read_in_one_message`] states the select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadForm {
    /// The select's text inline: nothing named, as a transaction-mode pooler needs.
    Inline,
    /// `prepare` under a fresh tag, then `execute`: the first read on a connection.
    Prepare(u64),
    /// `execute` of the statement this connection prepared under that tag.
    Execute(u64),
}

/// The read of one request as a single simple-protocol message: under `DB_RLS=on` it first
/// switches to the user ([`rls_context_sql`]), then selects the profile (and the session's
/// state). The statements of one simple `Query` message run as one implicit transaction
/// (PostgreSQL protocol docs, "Multiple Statements in a Simple Query"), so the settings hold
/// for the select and end with it, an error rolls back everything, and no state can outlive
/// the message but a `PREPARE` (which is not transactional, and named for this connection
/// alone). That makes it one round trip with nothing to clean up; through a transaction-mode
/// pooler the message is one transaction on one backend.
///
/// Only values we produced or checked are inlined: the ids are canonical UUIDs (parsed, then
/// printed by `uuid`), and the claims go through [`quote_literal`].
fn read_in_one_message(
    rls: bool,
    claims: &Claims,
    session: Option<Uuid>,
    form: ReadForm,
) -> String {
    let mut sql = if rls {
        rls_context_sql(&claims.role, claims.raw_json())
    } else {
        String::with_capacity(256)
    };
    let sub = claims.sub.uuid().hyphenated().to_string();
    let session = session.map(|s| s.hyphenated().to_string());
    match form {
        ReadForm::Inline => {
            let sub = format!("'{sub}'::uuid");
            let session = session.map(|s| format!("'{s}'::uuid"));
            sql.push_str(&profile_select(&sub, session.as_deref()));
        }
        ReadForm::Prepare(tag) => {
            sql.push_str(&prepare_read_sql(tag, session.is_some()));
            sql.push_str("; ");
            sql.push_str(&execute_read_sql(tag, &sub, session.as_deref()));
        }
        ReadForm::Execute(tag) => {
            sql.push_str(&execute_read_sql(tag, &sub, session.as_deref()));
        }
    }
    sql
}

/// True for the errors a prepared read meets behind a transaction-mode pooler: the statement
/// is missing on the server that answered (`26000`, invalid_sql_statement_name), or a name
/// this connection prepared is already there (`42P05`, duplicate_prepared_statement).
fn names_not_kept(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("26000" | "42P05")),
        _ => false,
    }
}

/// Server-side bounds for what follows in the same message or transaction: `statement_timeout`
/// and `lock_timeout` of `limit`, set transaction-locally (`SET LOCAL`). That is what holds
/// behind a transaction-mode pooler, which ignores startup options and hands the session to
/// others while a message or a transaction runs whole on one backend; and it leaves nothing on
/// a server connection that a pooler we did not detect could lend to another client.
///
/// Both, because a backend waiting on a lock or running a slow statement does not notice its
/// client leaving: without a bound on the server, every request given up at
/// `DB_TIMEOUT_SECONDS` would leave work running there.
fn server_limits_sql(limit: Duration) -> String {
    let ms = limit.as_millis().clamp(1, i32::MAX as u128);
    format!("set local statement_timeout = {ms}; set local lock_timeout = {ms}; ")
}

/// The server-side bound for work that has `left` of the caller's budget: a tenth less, so
/// that the server gives up first and answers with an error, which leaves the connection
/// clean and reusable, rather than the caller dropping a connection still at work.
fn server_limit(left: Duration) -> Duration {
    left.mul_f64(0.9)
}

/// Whether `e` says the connection or its server is gone (I/O, a closed socket, an
/// administrator or crash shutdown, a server still starting, SQLSTATE class 08), as opposed to
/// an answer about the statement. On a restarted server every idle connection fails this way.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "57P05")
        }),
        _ => false,
    }
}

/// Quotes `name` as a PostgreSQL identifier: inside double quotes, with every double quote
/// doubled, so the identifier ends exactly where we end it and keeps its case.
fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Quotes `text` as a PostgreSQL escape-string literal, `E'…'`: every backslash and quote is
/// doubled, so the literal ends exactly where we end it, whatever the text holds. The `E` form
/// reads backslashes the same way whatever `standard_conforming_strings` says; sqlx connects
/// with `client_encoding` UTF8, where neither byte can occur inside a multi-byte character; and
/// the text comes from `serde_json`, which escapes control characters, so it holds no NUL.
pub(crate) fn quote_literal(text: &str) -> String {
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

/// How every connection of ours to Postgres starts, from `url`: named for `pg_stat_activity`,
/// with statements never logged (the RLS context carries the verified claims, email included,
/// in its SQL text), and without the `extra_float_digits` startup parameter. sqlx sends that one
/// by default, and a PgBouncer left at its defaults (no `ignore_startup_parameters`) refuses
/// every connection that carries it. Postgres 12 and later print floats exactly without it
/// (the default, 1, selects the shortest exact form), and sqlx reads them in binary anyway
/// wherever it prepares.
pub(crate) fn connect_options(
    url: &crate::config::DatabaseUrl,
) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url.expose().parse().map_err(StoreError::unavailable)?;
    Ok(options
        .application_name("supabase-jwt-service")
        .extra_float_digits(None)
        .disable_statement_logging())
}

/// Profiles in Postgres (Supabase, or any Postgres 14+ migrated by `migrate`). Its `Debug`
/// never shows the password.
#[derive(Clone)]
pub struct PgStore {
    pool: ConnPool,
    rls: bool,
    prepared: PreparedStatements,
    /// Set by the first read that met a transaction-mode pooler, for every clone of the store.
    pooler_detected: Arc<AtomicBool>,
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
        let mut options = connect_options(&config.database_url)?;
        if config.prepared_statements != PreparedStatements::On {
            // Behind a transaction-mode pooler a statement sqlx names on one backend is
            // missing on the next, or is another client connection's statement of the same
            // name: sqlx must name nothing unless told the server stays the same. Reads name
            // their statements themselves (see `ReadForm`), writes run unnamed statements
            // inside their transaction.
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
            // Nothing that could wait on a table lock runs at connect: the store's read is
            // prepared by the connection's first read, under the same server-side bounds as
            // every read. The pool adds the read of the backend's process id for cancels.
            after_connect: None,
            connect_timeout: config.db_timeout,
            // Past the longest the server lets one of our messages or transactions run (their
            // bounds are at most nine tenths of the timeout), plus a margin.
            retire_wait: config.db_timeout + Duration::from_secs(1),
            // Behind a pooler a backend's process id names whichever client's work it runs now.
            cancel_abandoned: config.prepared_statements != PreparedStatements::Off,
            // On a connection that proved direct the bounds are set once, for the session, so
            // that a read is the one statement it was; elsewhere each read carries them.
            // Auto: once the server proved direct, later connections cache statements as sqlx
            // does by default (`on` has the cache in its options already).
            direct_statement_cache: (config.prepared_statements == PreparedStatements::Auto)
                .then_some(100),
            session_limits: (config.prepared_statements != PreparedStatements::Off).then(|| {
                server_limits_sql(server_limit(config.db_timeout)).replace("set local ", "set ")
            }),
        };
        Ok(Self {
            pool: ConnPool::new(options, settings),
            rls: config.db_rls,
            prepared: config.prepared_statements,
            pooler_detected: Arc::new(AtomicBool::new(false)),
            session_check: config.session_check,
            timeout: config.db_timeout,
        })
    }

    /// The pool, for metrics and tests.
    pub fn pool(&self) -> &ConnPool {
        &self.pool
    }

    /// How a caller's transaction on this store begins (see [`crate::db`]).
    pub(crate) fn tx_settings(&self) -> crate::db::TxSettings {
        crate::db::TxSettings {
            rls: self.rls,
            wipe_statements: self.prepared != PreparedStatements::On,
            session_check: self.session_check,
            timeout: self.timeout,
        }
    }

    /// True once a read found that the connection does not keep its server between
    /// transactions (a transaction-mode pooler such as PgBouncer or Supavisor on 6543), so
    /// that reads now carry their SQL inline. Always false unless `DB_PREPARED_STATEMENTS` is
    /// `auto` and the URL did not already say so.
    ///
    /// ```
    /// use supabase_jwt_service::PgStore;
    /// use supabase_jwt_service::config::{Config, PreparedStatements};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A PgBouncer on its default port: nothing in the URL says "transaction mode".
    /// let url = "postgres://app@127.0.0.1:6432/app";
    /// let config = Config::for_tests(url, "a-test-secret-of-at-least-32-bytes-long")?;
    /// assert_eq!(config.prepared_statements, PreparedStatements::Auto);
    /// let store = PgStore::connect_lazy(&config)?;
    /// assert!(!store.pooler_detected(), "nothing has been read yet");
    /// # Ok(())
    /// # }
    /// ```
    pub fn pooler_detected(&self) -> bool {
        self.pooler_detected.load(Ordering::Relaxed)
    }

    /// The form of the next read on `lease`.
    fn read_form(&self, lease: &Lease) -> ReadForm {
        let inline = match self.prepared {
            PreparedStatements::Off => true,
            PreparedStatements::Auto => self.pooler_detected(),
            PreparedStatements::On => false,
        };
        if inline {
            return ReadForm::Inline;
        }
        match lease.prepared_read() {
            Some(tag) => ReadForm::Execute(tag),
            None => {
                let (high, low) = Uuid::new_v4().as_u64_pair();
                ReadForm::Prepare(high ^ low)
            }
        }
    }

    /// Sends one read message, bounded on the server: on a connection that proved direct by
    /// the session's own limits (set once at connect, so the read stays one statement), else
    /// by transaction-local ones of what is left until `deadline`. Remembers a statement it
    /// prepared on the connection.
    async fn read(
        &self,
        lease: &mut Lease,
        claims: &Claims,
        session: Option<Uuid>,
        form: ReadForm,
        deadline: Instant,
    ) -> Result<Option<sqlx::postgres::PgRow>, sqlx::Error> {
        if !self.rls && lease.has_statement_cache() && !self.pooler_detected() {
            // A server of our own with sqlx's cache on: the select as a named statement over
            // the extended protocol, prepared once per connection and then one round trip with
            // binary results; the session's limits bound it on the server.
            let sub = claims.sub.uuid();
            let query = match session {
                Some(session) => sqlx::query(BOUND_PROFILE_AND_SESSION.as_str())
                    .bind(sub)
                    .bind(session),
                None => sqlx::query(BOUND_PROFILE.as_str()).bind(sub),
            };
            return query.fetch_optional(&mut **lease).await;
        }
        // A session-level bound holds only where the session is ours alone; once a pooler
        // showed itself, every read carries its own.
        let mut sql = if lease.has_session_limits() && !self.pooler_detected() {
            String::new()
        } else {
            server_limits_sql(server_limit(
                deadline.saturating_duration_since(Instant::now()),
            ))
        };
        sql.push_str(&read_in_one_message(self.rls, claims, session, form));
        let row = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut **lease)
            .await?
            .pop();
        if let ReadForm::Prepare(tag) = form {
            // Only now is the statement known to exist. Had the message failed, the tag is
            // forgotten and the next read prepares under a new one, so a name whose fate is
            // unknown is never executed nor prepared again.
            lease.set_prepared_read(Some(tag));
        }
        Ok(row)
    }

    /// Switches every later read to the inline form, and says so once.
    fn note_pooler(&self, error: &sqlx::Error) {
        if !self.pooler_detected.swap(true, Ordering::Relaxed) {
            tracing::info!(
                target: "supabase_jwt_service::store",
                %error,
                "transaction-mode pooler detected: the server that answered lacks this connection's prepared statement; reads now carry their SQL inline (DB_PREPARED_STATEMENTS=off skips this check)"
            );
        }
    }

    /// A pooled connection, for queries of your own; hand it back with [`Lease::release`]
    /// once they succeeded. The caller bounds it in time, and should bound its statements on
    /// the server too (`SET LOCAL statement_timeout` in its transaction): a lease dropped
    /// mid-statement has the statement cancelled on a direct connection, but behind a pooler
    /// its slot is freed [`PoolSettings::retire_wait`] after the drop whatever still runs.
    pub async fn acquire(&self) -> Result<Lease, StoreError> {
        self.pool.acquire().await.map_err(StoreError::unavailable)
    }

    /// Begins a transaction acting as the verified user: `role` is the token's role
    /// (`authenticated` for a signed-in user) and `request.jwt.claims` holds `claims` until
    /// the transaction ends, so `auth.uid()`,
    /// `auth.jwt()` and the tables' row-level security policies apply to every statement run
    /// on it, as in Supabase's Data API. Nothing outlives the transaction: `commit` and
    /// `rollback` end it, and a transaction dropped while open takes its connection with it.
    ///
    /// This is the path the store's writes take when `DB_RLS=on`; your own routes can use it
    /// too. It costs one round trip. Every statement of the transaction is bounded on the
    /// server by `statement_timeout` and `lock_timeout` of nine tenths of `DB_TIMEOUT_SECONDS`
    /// (transaction-local). The caller bounds it in time (the pool's acquire timeout bounds
    /// only the wait for a connection); giving up early is safe.
    pub async fn begin_as(&self, claims: &Claims) -> Result<UserTransaction, StoreError> {
        self.begin_with(Some(claims), Instant::now() + self.timeout)
            .await
    }

    /// Begins the transaction for one write: as the user under `DB_RLS=on`, else a plain one
    /// whose statements filter by the verified id themselves. Writes run inside an explicit
    /// transaction: through a transaction-mode pooler, sqlx's unnamed statement is two
    /// exchanges that another backend could answer the second of. Its statements are bounded on
    /// the server by what is left until `deadline`.
    ///
    /// A `BEGIN` that fails because the connection is dead (a restarted server) is retried once
    /// on a fresh connection: nothing was committed, as nothing ran.
    async fn begin_with(
        &self,
        claims: Option<&Claims>,
        deadline: Instant,
    ) -> Result<UserTransaction, StoreError> {
        let mut retried = false;
        loop {
            let mut lease = self.acquire().await?;
            lease.enter_transaction();
            let limits = server_limits_sql(server_limit(
                deadline.saturating_duration_since(Instant::now()),
            ));
            let sql = match claims {
                Some(claims) => limits + &begin_as_sql(&claims.role, claims.raw_json()),
                None => limits + "begin",
            };
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *lease).await {
                Ok(_) => return Ok(UserTransaction { lease }),
                Err(e) if !retried && connection_lost(&e) => {
                    retried = true;
                    self.after_connection_lost();
                }
                Err(e) => return Err(StoreError::unavailable(e)),
            }
        }
    }

    /// A connection proved dead: its idle siblings were opened to the same server, so they are
    /// closed before the retry draws one.
    fn after_connection_lost(&self) {
        crate::telemetry::metrics::db_error("connection");
        self.pool.discard_idle();
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

    async fn begin_for(
        &self,
        claims: &Claims,
        deadline: Instant,
    ) -> Result<UserTransaction, StoreError> {
        self.begin_with(self.rls.then_some(claims), deadline).await
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
            let deadline = Instant::now() + self.timeout;
            // A read commits nothing, so one that failed on a dead connection (the server
            // restarted since it was opened) is retried once on a fresh one.
            let mut retried = false;
            let (lease, row) = loop {
                let mut lease = self.acquire().await?;
                let form = self.read_form(&lease);
                let read = match self.read(&mut lease, claims, session, form, deadline).await {
                    Err(e) if self.prepared == PreparedStatements::Auto && names_not_kept(&e) => {
                        // A transaction-mode pooler put this read on another server than the
                        // one that holds the statement. The error ended the message's
                        // transaction and left the connection ready, so the read is retried
                        // inline on it, once.
                        lease.set_prepared_read(None);
                        self.note_pooler(&e);
                        self.read(&mut lease, claims, session, ReadForm::Inline, deadline)
                            .await
                    }
                    read => read,
                };
                match read {
                    Ok(row) => break (lease, row),
                    Err(e) if !retried && connection_lost(&e) => {
                        retried = true;
                        drop(lease);
                        self.after_connection_lost();
                    }
                    Err(e) => return Err(StoreError::unavailable(e)),
                }
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
            let mut tx = self
                .begin_for(claims, Instant::now() + self.timeout)
                .await?;
            let row = match session {
                Some(session) => sqlx::query(UPDATE_NAME_IF_SESSION_ACTIVE)
                    .bind(claims.sub.uuid())
                    .bind(full_name)
                    .bind(session)
                    .persistent(self.prepared == PreparedStatements::On)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::unavailable)?,
                None => sqlx::query(UPDATE_NAME)
                    .bind(claims.sub.uuid())
                    .bind(full_name)
                    .persistent(self.prepared == PreparedStatements::On)
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
            // Like a read, retried once after a dead connection: `/readyz` should not report
            // a database that is back as down.
            let mut retried = false;
            loop {
                let mut lease = self.acquire().await?;
                match sqlx::raw_sql("select 1").execute(&mut *lease).await {
                    Ok(_) => {
                        lease.release();
                        return Ok(());
                    }
                    Err(e) if !retried && connection_lost(&e) => {
                        retried = true;
                        drop(lease);
                        self.after_connection_lost();
                    }
                    Err(e) => return Err(StoreError::unavailable(e)),
                }
            }
        }))
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn db(&self) -> Option<crate::db::Db> {
        Some(crate::db::Db::Postgres(self.clone()))
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
pub(crate) fn migrator() -> sqlx::migrate::Migrator {
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
    fn quote_ident_doubles_double_quotes_and_keeps_case() {
        assert_eq!(quote_ident("authenticated"), r#""authenticated""#);
        assert_eq!(quote_ident("Mixed Case"), r#""Mixed Case""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_ident(r#"""#), r#""""""#);
        assert_eq!(
            quote_ident(r#"x"; drop table t; --"#),
            r#""x""; drop table t; --""#
        );
        assert_eq!(quote_ident(""), r#""""#);
    }

    #[test]
    fn begin_as_sql_sets_the_tokens_role_and_claims_before_it_begins() {
        let sql = begin_as_sql(r#"editor"x"#, r#"{"sub":"x','y"}"#);
        assert_eq!(
            sql,
            r#"set local role "editor""x"; set local request.jwt.claims = E'{"sub":"x'',''y"}'; begin"#
        );
    }

    fn claims(role: &str) -> Claims {
        Claims::from_payload_json(&serde_json::json!({
            "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "role": role, "exp": 0,
        }))
        .expect("claims")
    }

    #[test]
    fn read_in_one_message_switches_to_the_tokens_role_first() {
        let sql = read_in_one_message(true, &claims("support"), None, ReadForm::Inline);
        assert!(
            sql.starts_with(r#"set local role "support"; set local request.jwt.claims = E'{"#),
            "{sql}"
        );
        let sql = read_in_one_message(false, &claims("support"), None, ReadForm::Inline);
        assert!(sql.starts_with("select id, full_name"), "{sql}");
    }

    #[test]
    fn every_read_form_runs_the_same_select() {
        let sub = "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f";
        let session = Uuid::nil();
        let c = claims("authenticated");
        for checked in [None, Some(session)] {
            let inline = read_in_one_message(false, &c, checked, ReadForm::Inline);
            let first = read_in_one_message(false, &c, checked, ReadForm::Prepare(0xab));
            let next = read_in_one_message(false, &c, checked, ReadForm::Execute(0xab));
            let name = read_statement_name(0xab, checked.is_some());
            assert!(name.starts_with("sjs_00000000000000ab_profile"), "{name}");
            assert!(name.len() < 64, "Postgres truncates names at 63 bytes");
            let (prepare, execute) = first.split_once("; ").unwrap();
            assert_eq!(execute, next);
            assert!(
                next.starts_with(&format!("execute {name}('{sub}'")),
                "{next}"
            );
            // The prepared text is the inline one with its literals as parameters.
            let params = if checked.is_some() {
                "(uuid, uuid)"
            } else {
                "(uuid)"
            };
            let expected = inline
                .replace(&format!("'{sub}'::uuid"), "$1")
                .replace(&format!("'{session}'::uuid"), "$2");
            assert_eq!(prepare, format!("prepare {name}{params} as {expected}"));
        }
    }

    #[test]
    fn server_limits_bound_statements_and_lock_waits() {
        assert_eq!(
            server_limits_sql(Duration::from_millis(2700)),
            "set local statement_timeout = 2700; set local lock_timeout = 2700; "
        );
        // Zero would mean "no limit" to Postgres.
        assert!(server_limits_sql(Duration::ZERO).contains("statement_timeout = 1;"));
        assert!(server_limit(Duration::from_secs(3)) < Duration::from_secs(3));
    }

    #[test]
    fn only_a_lost_connection_is_retried() {
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(connection_lost(&sqlx::Error::Io(eof)));
        assert!(!connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
    }
}
