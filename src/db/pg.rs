//! The Postgres store: a pool that bounds the server's side, callers' work opened by
//! [`caller`](super::caller), statements safe behind any transaction-mode pooler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions};

use super::caller::{Caller, CallerRules, session_bounds_sql};
use super::error::{DbError, bounded};
use crate::config::{DatabaseUrl, DbConfig, PreparedStatements};
use crate::telemetry::metrics::{self, PoolStats};

mod pool;
pub(crate) mod read;
mod roles;

pub(crate) use pool::Lease;
use pool::{ConnPool, PoolSettings};
use read::{CallerRead, ReadForm, names_not_kept};

/// How every connection of ours to Postgres starts, from `url`: named for `pg_stat_activity`,
/// with statements never logged (the caller's settings carry the verified claims, email
/// included, in their SQL text), and without the `extra_float_digits` startup parameter. sqlx
/// sends that one by default, and a PgBouncer left at its defaults (no
/// `ignore_startup_parameters`) refuses every connection that carries it. Postgres 12 and later
/// print floats exactly without it (the default, 1, selects the shortest exact form), and sqlx
/// reads them in binary anyway wherever it prepares.
pub(crate) fn connect_options(url: &DatabaseUrl) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = url.expose().parse().map_err(DbError::unavailable)?;
    Ok(options
        .application_name("supabase-jwt-service")
        .extra_float_digits(None)
        .disable_statement_logging())
}

/// The Postgres store. Its `Debug` never shows the password.
#[derive(Clone)]
pub(crate) struct PgDb {
    pool: ConnPool,
    rules: CallerRules,
    prepared: PreparedStatements,
    /// Set by the first read that met a transaction-mode pooler, for every clone of the store.
    pooler_detected: Arc<AtomicBool>,
}

// By hand, so that no field added later can print connect options through a derive.
impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDb")
            .field("pool", &self.pool)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl PgDb {
    /// A store over a lazily connecting pool: the service starts even while the database is
    /// down, and reports it through `/readyz` and 503s until it returns.
    pub(crate) fn connect_lazy(config: &DbConfig) -> Result<Self, DbError> {
        Self::with_options(connect_options(&config.url)?, config)
    }

    /// [`connect_lazy`](Self::connect_lazy) with connect options of your own (the test kit's,
    /// from `#[sqlx::test]`); the rest of `config` applies as usual.
    pub(crate) fn with_options(
        mut options: PgConnectOptions,
        config: &DbConfig,
    ) -> Result<Self, DbError> {
        options = options
            .application_name("supabase-jwt-service")
            .extra_float_digits(None)
            .disable_statement_logging();
        if config.prepared_statements != PreparedStatements::On {
            // Behind a transaction-mode pooler a statement sqlx names on one backend is
            // missing on the next, or is another client connection's statement of the same
            // name: sqlx must name nothing unless told the server stays the same.
            options = options.statement_cache_capacity(0);
        }
        let timeout = config.timeout;
        let named = config.prepared_statements != PreparedStatements::Off;
        let settings = PoolSettings {
            max_connections: config.max_connections,
            // A little shorter than the bound on the whole call, so that a saturated pool
            // surfaces as its own error (db_errors_total{kind="acquire_timeout"}) rather than
            // as the generic timeout; both answer 503 within DB_TIMEOUT_SECONDS.
            acquire_timeout: timeout.mul_f64(0.8),
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(1800),
            // Nothing that could wait on a table lock runs at connect: the read is prepared by
            // the connection's first read, under the same server-side bounds as every read.
            after_connect: None,
            connect_timeout: timeout,
            // Past the longest the server lets one of our messages or transactions run (their
            // bounds are at most nine tenths of the timeout), plus a margin.
            retire_wait: timeout + Duration::from_secs(1),
            // Behind a pooler a backend's process id names whichever client's work it runs now.
            cancel_abandoned: named,
            // Auto: once the server proved direct, later connections cache statements as sqlx
            // does by default (`on` has the cache in its options already).
            direct_statement_cache: (config.prepared_statements == PreparedStatements::Auto)
                .then_some(100),
            // On a connection that proved direct the bounds are set once, for the session, so
            // that a read is the one statement it was; elsewhere each read carries them.
            session_limits: named.then(|| session_bounds_sql(timeout)),
        };
        Ok(Self {
            pool: ConnPool::new(options, settings),
            rules: CallerRules {
                rls: config.rls,
                session_check: config.session_check,
                timeout,
            },
            prepared: config.prepared_statements,
            pooler_detected: Arc::new(AtomicBool::new(false)),
        })
    }

    /// `DB_RLS`, `SESSION_CHECK` and `DB_TIMEOUT_SECONDS`.
    pub(crate) fn rules(&self) -> CallerRules {
        self.rules
    }

    /// The pool's occupancy, for the metrics listener.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn pool_stats(&self) -> PoolStats {
        PoolStats {
            store: "postgres",
            size: self.pool.size(),
            idle: self.pool.num_idle(),
            max: self.pool.max_connections(),
        }
    }

    /// True once a read found that the connection does not keep its server between
    /// transactions (a transaction-mode pooler such as PgBouncer or Supavisor on 6543), so that
    /// reads now carry their SQL inline. Always false unless `DB_PREPARED_STATEMENTS` is `auto`
    /// and the URL did not already say so.
    pub(crate) fn pooler_detected(&self) -> bool {
        self.pooler_detected.load(Ordering::Relaxed)
    }

    /// A connection from the pool.
    async fn acquire(&self) -> Result<Lease, DbError> {
        self.pool.acquire().await.map_err(DbError::unavailable)
    }

    /// Opens a transaction acting as `caller` (see [`caller`](super::caller)), in one round
    /// trip, within `DB_TIMEOUT_SECONDS`. From its first message until a `COMMIT` or `ROLLBACK`
    /// succeeds, the connection is closed rather than reused, whatever happens. A first message
    /// that fails because the connection is dead (a restarted server) is retried once on a
    /// fresh one: nothing ran.
    ///
    /// The `bool` says whether the transaction's statements must be wiped when it ends: unless
    /// sqlx's statement cache is on for this connection (a server that proved direct, or
    /// `DB_PREPARED_STATEMENTS=on`), sqlx names every statement it prepares (`sqlx_s_N`) and
    /// never closes it. Behind a transaction-mode pooler the server connection goes to other
    /// clients after the commit, where a leftover `sqlx_s_1` collides with theirs; so the
    /// statements go in the same message as the end, and, in case an earlier transaction could
    /// not end that way, in the same message as the begin too.
    pub(crate) async fn begin(&self, caller: &Caller<'_>) -> Result<(Lease, bool), DbError> {
        let deadline = Instant::now() + self.rules.timeout;
        bounded(self.rules.timeout, async {
            let mut retried = false;
            loop {
                let mut lease = self.acquire().await?;
                lease.enter_transaction();
                let wipe = self.prepared != PreparedStatements::On && !lease.has_statement_cache();
                if wipe {
                    // The store's own prepared read goes with the rest; the connection's next
                    // read prepares it again.
                    lease.set_prepared_read(None);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let sql = caller.begin_message(left, wipe);
                match sqlx::raw_sql(AssertSqlSafe(sql))
                    .fetch_all(&mut *lease)
                    .await
                {
                    Ok(rows) => {
                        if caller.session_is_active(rows.first())? {
                            return Ok((lease, wipe));
                        }
                        lease
                            .end("rollback", false)
                            .await
                            .map_err(DbError::unavailable)?;
                        lease.release();
                        return Err(DbError::SessionEnded);
                    }
                    Err(e) if !retried && connection_lost(&e) => {
                        retried = true;
                        drop(lease);
                        self.after_connection_lost();
                    }
                    Err(e) => return Err(DbError::unavailable(e)),
                }
            }
        })
        .await
    }

    /// Reads one row as `caller` in a single message (see [`read`]): `None` without a row, and
    /// [`DbError::SessionEnded`] when the session is checked and gone.
    pub(crate) async fn read(
        &self,
        caller: &Caller<'_>,
        read: &CallerRead,
    ) -> Result<Option<PgRow>, DbError> {
        let deadline = Instant::now() + self.rules.timeout;
        bounded(self.rules.timeout, async {
            // A read commits nothing, so one that failed on a dead connection (the server
            // restarted since it was opened) is retried once on a fresh one.
            let mut retried = false;
            loop {
                let mut lease = self.acquire().await?;
                let result = match self.read_on(&mut lease, caller, read, deadline).await {
                    Err(e) if self.prepared == PreparedStatements::Auto && names_not_kept(&e) => {
                        // A transaction-mode pooler put this read on another server than the
                        // one that holds the statement. The error ended the message's
                        // transaction and left the connection ready: retried inline, once.
                        lease.set_prepared_read(None);
                        self.note_pooler(&e);
                        self.send_read(&mut lease, caller, read, deadline, ReadForm::Inline)
                            .await
                    }
                    other => other,
                };
                match result {
                    Ok((settings, row)) => {
                        lease.release();
                        if !caller.session_is_active(settings.as_ref())? {
                            return Err(DbError::SessionEnded);
                        }
                        return Ok(row);
                    }
                    Err(e) if !retried && connection_lost(&e) => {
                        retried = true;
                        drop(lease);
                        self.after_connection_lost();
                    }
                    Err(e) => return Err(DbError::unavailable(e)),
                }
            }
        })
        .await
    }

    /// One read on `lease`, in the form the connection allows: the settings' row and the
    /// select's row.
    async fn read_on(
        &self,
        lease: &mut Lease,
        caller: &Caller<'_>,
        read: &CallerRead,
        deadline: Instant,
    ) -> Result<(Option<PgRow>, Option<PgRow>), sqlx::Error> {
        if !self.rules.rls
            && !caller.checks_session()
            && lease.has_statement_cache()
            && !self.pooler_detected()
        {
            // A server of our own with sqlx's cache on and nothing to switch to: the select as
            // sqlx's own named statement, prepared once per connection, then one round trip
            // with binary results. The session's bounds hold on the server.
            let row = sqlx::query(AssertSqlSafe((read.select)("$1")))
                .bind(caller.sub())
                .fetch_optional(&mut **lease)
                .await?;
            return Ok((None, row));
        }
        let named = match self.prepared {
            PreparedStatements::Off => false,
            PreparedStatements::Auto => !self.pooler_detected(),
            PreparedStatements::On => true,
        };
        let form = if named {
            ReadForm::named(lease.prepared_read())
        } else {
            ReadForm::Inline
        };
        self.send_read(lease, caller, read, deadline, form).await
    }

    /// Sends the read message and remembers a statement it prepared on the connection.
    async fn send_read(
        &self,
        lease: &mut Lease,
        caller: &Caller<'_>,
        read: &CallerRead,
        deadline: Instant,
        form: ReadForm,
    ) -> Result<(Option<PgRow>, Option<PgRow>), sqlx::Error> {
        // A session-level bound holds only where the session is ours alone; once a pooler
        // showed itself, every read carries its own.
        let left = if lease.has_session_limits() && !self.pooler_detected() {
            None
        } else {
            Some(deadline.saturating_duration_since(Instant::now()))
        };
        let sql = read::message(caller, read, left, form);
        let mut rows = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut **lease)
            .await?
            .into_iter();
        if let ReadForm::Prepare(tag) = form {
            // Only now is the statement known to exist. Had the message failed, the tag is
            // forgotten and the next read prepares under a new one, so a name whose fate is
            // unknown is never executed nor prepared again.
            lease.set_prepared_read(Some(tag));
        }
        // With the session checked, its state is the first row; the select's follows.
        let session = if caller.checks_session() {
            rows.next()
        } else {
            None
        };
        Ok((session, rows.next()))
    }

    /// Switches every later read to the inline form, and says so once.
    fn note_pooler(&self, error: &sqlx::Error) {
        if !self.pooler_detected.swap(true, Ordering::Relaxed) {
            tracing::info!(
                target: "supabase_jwt_service::db",
                %error,
                "transaction-mode pooler detected: the server that answered lacks this connection's prepared statement; reads now carry their SQL inline (DB_PREPARED_STATEMENTS=off skips this check)"
            );
        }
    }

    /// A connection proved dead: its idle siblings were opened to the same server, so they
    /// are closed before the retry draws one.
    fn after_connection_lost(&self) {
        metrics::db_error("connection");
        self.pool.discard_idle();
    }

    /// Whether the database answers a trivial query now. Retried once after a dead connection,
    /// like a read: `/readyz` should not report a database that is back as down.
    pub(crate) async fn ping(&self) -> Result<(), DbError> {
        bounded(self.rules.timeout, async {
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
                    Err(e) => return Err(DbError::unavailable(e)),
                }
            }
        })
        .await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_connection_is_retried() {
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(connection_lost(&sqlx::Error::Io(eof)));
        assert!(!connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
    }
}
