//! A small pool of Postgres connections that takes a connection back without a round trip,
//! and never lets the server hold more of our backends than it has slots.
//!
//! sqlx's pool tests every connection it takes back with a ping, on a task of its own, because
//! it cannot know whether the caller finished with it: a future dropped mid-query leaves the
//! connection owing answers, or inside a transaction. On the service's hot path that ping is
//! one of the two exchanges each request costs both the service and Postgres.
//!
//! Here the caller says so. A [`Lease`] handed back with [`Lease::release`] finished its last
//! exchange and goes straight back to the idle list. A lease dropped any other way (an error,
//! a timeout, a client gone mid-query) may still owe answers, so a background task waits for
//! the server to finish what it was sent (the same ping sqlx uses) before the connection is
//! reused; when that takes longer than a round trip it first asks the server to cancel the
//! statement ([`PoolSettings::cancel_abandoned`]). A connection that may be inside an explicit
//! transaction ([`Lease::enter_transaction`]) is closed after that instead: whether its `BEGIN`
//! ran cannot be told from outside sqlx, and a transaction left open would carry one user's
//! role and claims to the next request.
//!
//! The rule that bounds the server's side: a slot is free only once its backend is known to be
//! idle or gone. A dropped lease keeps its slot while it drains. A new connection and its set-up
//! run on a task of their own that holds the slot, so a caller that gives up mid-connect does not
//! leave a backend behind that the pool no longer counts (before, a set-up statement waiting on a
//! locked table kept its backend after the caller's timeout dropped the socket, and the next
//! caller opened another). Where the state of a backend cannot be known (a connect or a drain
//! that timed out), the slot stays taken for [`PoolSettings::retire_wait`], past the point where
//! the server-side timeouts must have ended whatever it ran. While connects time out, only one
//! attempt at a time goes out, so a server that has stopped answering does not collect a queue
//! of half-made connections to serve when it wakes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// How long a dropped lease's drain ping may take before the pool cancels the statement the
/// connection is still running: a connection that owes nothing answers within a round trip.
const CANCEL_AFTER: Duration = Duration::from_millis(100);
/// How often idle connections past their idle timeout or lifetime are closed.
const REAP_EVERY: Duration = Duration::from_secs(30);

/// Sizes and lifetimes of a [`ConnPool`].
///
/// ```no_run
/// use std::time::Duration;
/// use supabase_jwt_service::store::{ConnPool, PoolSettings};
///
/// # async fn demo() -> Result<(), sqlx::Error> {
/// let settings = PoolSettings {
///     max_connections: 10,
///     acquire_timeout: Duration::from_millis(2400),
///     idle_timeout: Duration::from_secs(300),
///     max_lifetime: Duration::from_secs(1800),
///     // Bounded on the server: a set-up that waits on a locked table gives up by itself.
///     after_connect: Some("set local lock_timeout = 2700; prepare one as select 1".into()),
///     connect_timeout: Duration::from_secs(3),
///     retire_wait: Duration::from_secs(4),
///     cancel_abandoned: true,
///     session_limits: Some("set statement_timeout = 2700".to_owned()),
///     direct_statement_cache: Some(100),
/// };
/// let pool = ConnPool::new("postgres://postgres@127.0.0.1/postgres".parse()?, settings);
/// let mut lease = pool.acquire().await?;
/// sqlx::raw_sql("select 1").execute(&mut *lease).await?;
/// lease.release();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The most connections open at once, busy, idle or being retired.
    pub max_connections: u32,
    /// The longest [`ConnPool::acquire`] waits for a free slot.
    pub acquire_timeout: Duration,
    /// Idle connections older than this (since last use) are closed.
    pub idle_timeout: Duration,
    /// Connections older than this (since connecting) are closed instead of reused.
    pub max_lifetime: Duration,
    /// Statements run on every new connection before its first use, in one simple-protocol
    /// message (for example `PREPARE`s); a failure fails the acquire. They must bound
    /// themselves on the server (`statement_timeout`, `lock_timeout`): the connect is given up
    /// after [`connect_timeout`](Self::connect_timeout), but a backend waiting on a lock does not
    /// notice its client leaving.
    pub after_connect: Option<String>,
    /// The longest a new connection, its `after_connect` included, may take. The attempt runs on
    /// a task of its own, so a caller that gives up first neither cuts it short nor loses track
    /// of its backend: a connection that opens after its caller left is kept idle.
    pub connect_timeout: Duration,
    /// How long a slot stays taken when its backend's state is unknown: a dropped lease whose
    /// drain does not answer, or a connect that timed out. Set it past the longest the server
    /// lets a statement run (its `statement_timeout`), so that the slot is freed only once the
    /// backend must have ended the statement.
    pub retire_wait: Duration,
    /// Cancel the statement of a lease dropped mid-statement (`pg_cancel_backend`, sent on one
    /// extra "control" connection opened when first needed) rather than wait for it. Only for
    /// direct connections: behind a transaction-mode pooler the backend process id read at
    /// connect names whichever server connection answered, which may be serving someone else.
    /// As a second guard, a connection whose server does not listen on the port connected to
    /// (a pooler's) is never cancelled.
    pub cancel_abandoned: bool,
    /// Session-level settings for a connection that proved direct (its server listens on the
    /// port connected to, the same test that lets cancels through), sent once at set-up: for
    /// example `set statement_timeout = 2700; set lock_timeout = 2700`. A pooler in front would
    /// lend the session to other clients along with those settings, so any other connection
    /// gets none of them, and its work carries transaction-local bounds instead (see
    /// [`Lease::has_session_limits`]). Needs `cancel_abandoned`, which reads the port.
    pub session_limits: Option<String>,
    /// sqlx's statement cache size for connections opened once the server proved direct (an
    /// earlier connection of this pool found it listening on the port connected to). The
    /// first connection, and every one while that is unknown, is opened with the cache of the
    /// connect options (off, behind a possible pooler): sqlx names cached statements by a
    /// per-connection counter, which only a server of our own keeps straight.
    pub direct_statement_cache: Option<usize>,
}

/// A lazily connecting pool of [`PgConnection`]s; cheap to clone. Its `Debug` names the
/// server and user, never the password.
#[derive(Clone)]
pub struct ConnPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConnPool").field(&self.shared).finish()
    }
}

// By hand: `PgConnectOptions`' derived `Debug` prints the password.
struct Shared {
    options: PgConnectOptions,
    /// `options` with sqlx's statement cache on, for a server that proved direct.
    direct_options: Option<PgConnectOptions>,
    /// Set once a connection found the server listening on the port connected to.
    proved_direct: AtomicBool,
    settings: PoolSettings,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    open: AtomicU32,
    reaper_started: AtomicBool,
    /// Set when a connect times out, cleared when one succeeds: the server is not answering.
    unresponsive: AtomicBool,
    /// The one connect attempt allowed while `unresponsive`.
    probe: Arc<Semaphore>,
    /// The connection cancels are sent on, and when it was last used.
    control: tokio::sync::Mutex<Option<(PgConnection, Instant)>>,
}

/// A connection with what the pool knows about it.
#[derive(Debug)]
struct Conn {
    conn: PgConnection,
    created: Instant,
    /// The backend's process id, read at connect when abandoned statements are cancelled.
    pid: Option<i32>,
    /// Whether `session_limits` were set on this connection at connect.
    session_limited: bool,
    /// Whether this connection runs with sqlx's statement cache on.
    statement_cache: bool,
    /// The tag of the SQL-level prepared statement the store's reads may `EXECUTE` here.
    prepared_read: Option<u64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("database", &self.options.get_database())
            .field("username", &self.options.get_username())
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

impl ConnPool {
    /// A pool that opens nothing until the first [`acquire`](Self::acquire).
    pub fn new(options: PgConnectOptions, settings: PoolSettings) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_connections as usize));
        Self {
            shared: Arc::new(Shared {
                direct_options: settings
                    .direct_statement_cache
                    .map(|n| options.clone().statement_cache_capacity(n)),
                proved_direct: AtomicBool::new(false),
                options,
                settings,
                slots,
                idle: Mutex::new(Vec::new()),
                open: AtomicU32::new(0),
                reaper_started: AtomicBool::new(false),
                unresponsive: AtomicBool::new(false),
                probe: Arc::new(Semaphore::new(1)),
                control: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// A connection for one piece of work: the most recently used idle one, else a new one.
    ///
    /// Fails with [`sqlx::Error::PoolTimedOut`] when every slot stays taken for the whole
    /// acquire timeout, or at once while the server does not answer connects and another
    /// attempt is already finding out whether it is back. Cancelling it is safe at any point.
    pub async fn acquire(&self) -> Result<Lease, sqlx::Error> {
        self.start_reaper();
        let shared = &self.shared;
        let permit = match tokio::time::timeout(
            shared.settings.acquire_timeout,
            shared.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(sqlx::Error::PoolClosed),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        };
        let now = Instant::now();
        loop {
            let idle = shared.lock_idle().pop();
            match idle {
                Some(idle) if shared.is_fresh(&idle, now) => {
                    return Ok(Lease::new(idle.conn, permit, shared));
                }
                Some(stale) => shared.close_in_background(stale.conn.conn),
                None => break,
            }
        }
        // No idle connection, and the permit guarantees room for one more.
        self.open_new(permit).await
    }

    /// Opens a connection on a task that owns `permit` until the connection is handed over,
    /// parked idle, or known not to exist.
    async fn open_new(&self, permit: OwnedSemaphorePermit) -> Result<Lease, sqlx::Error> {
        let shared = Arc::clone(&self.shared);
        let probe = if shared.unresponsive.load(Ordering::Relaxed) {
            match shared.probe.clone().try_acquire_owned() {
                Ok(probe) => Some(probe),
                Err(_) => return Err(sqlx::Error::PoolTimedOut),
            }
        } else {
            None
        };
        let (handover, received) = oneshot::channel();
        tokio::spawn(async move {
            let limit = shared.settings.connect_timeout;
            match tokio::time::timeout(limit, shared.connect()).await {
                Ok(Ok(conn)) => {
                    shared.unresponsive.store(false, Ordering::Relaxed);
                    shared.open.fetch_add(1, Ordering::Relaxed);
                    let lease = Lease::new(conn, permit, &shared);
                    // The caller left: the connection is new and owes nothing. (Had the
                    // receiver gone after the send, dropping the lease drains it instead.)
                    if let Err(Ok(lease)) = handover.send(Ok(lease)) {
                        lease.release();
                    }
                }
                // Refused, or answered with an error and closed: no backend is left.
                Ok(Err(e)) => {
                    let _ = handover.send(Err(e));
                }
                Err(_) => {
                    shared.unresponsive.store(true, Ordering::Relaxed);
                    let _ = handover.send(Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {limit:?}"),
                    ))));
                    // The half-made connection's socket is gone, but a backend may already
                    // exist (or start once a frozen server resumes): keep its slot until the
                    // server-side timeouts must have ended whatever it ran.
                    tokio::time::sleep(shared.settings.retire_wait).await;
                    drop(permit);
                }
            }
            drop(probe);
        });
        received.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }

    /// Closes every idle connection: for when one of them proved that the server they were
    /// opened to is gone (a restart, a failover), so the next acquire opens a fresh one instead
    /// of drawing another dead connection.
    pub fn discard_idle(&self) {
        let stale: Vec<Idle> = self.shared.lock_idle().drain(..).collect();
        for idle in stale {
            self.shared.close_in_background(idle.conn.conn);
        }
    }

    /// Open connections: busy, idle, or being retired (the control connection not counted).
    pub fn size(&self) -> u32 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Idle connections ready for the next acquire.
    pub fn num_idle(&self) -> usize {
        self.shared.lock_idle().len()
    }

    /// The most connections the pool opens, besides the one it sends cancels on.
    pub fn max_connections(&self) -> u32 {
        self.shared.settings.max_connections
    }

    /// Closes idle connections past their time every [`REAP_EVERY`], for as long as the pool
    /// exists, so that a quiet service does not hold its connections forever. Started by the
    /// first acquire, which runs inside the runtime.
    fn start_reaper(&self) {
        if self.shared.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let now = Instant::now();
                let stale: Vec<Idle> = {
                    let mut idle = shared.lock_idle();
                    let (keep, stale) = idle.drain(..).partition(|c| shared.is_fresh(c, now));
                    *idle = keep;
                    stale
                };
                for conn in stale {
                    shared.close_in_background(conn.conn.conn);
                }
                // Cancels are rare: the control connection does not outlive a quiet spell.
                if let Ok(mut control) = shared.control.try_lock()
                    && control
                        .as_ref()
                        .is_some_and(|(_, used)| now.duration_since(*used) >= REAP_EVERY)
                    && let Some((conn, _)) = control.take()
                {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                }
            }
        });
    }
}

impl Shared {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The list is consistent after every push and pop, so a panic elsewhere while it was
        // held leaves nothing to repair.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn make_idle(&self, conn: Conn) {
        self.lock_idle().push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    fn is_fresh(&self, idle: &Idle, now: Instant) -> bool {
        now.duration_since(idle.since) < self.settings.idle_timeout
            && now.duration_since(idle.conn.created) < self.settings.max_lifetime
    }

    /// Closes an idle connection (it owes nothing, so it ends at once).
    fn close_in_background(self: &Arc<Self>, conn: PgConnection) {
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// A new connection with its set-up done. A set-up that fails closes the connection
    /// properly, so its backend ends rather than waits.
    async fn connect(&self) -> Result<Conn, sqlx::Error> {
        let cached = match &self.direct_options {
            Some(direct) if self.proved_direct.load(Ordering::Relaxed) => Some(direct),
            _ => None,
        };
        let mut conn = cached.unwrap_or(&self.options).connect().await?;
        match self.set_up(&mut conn).await {
            Ok((pid, session_limited)) => {
                // The port test passed: the pool's later connections may cache statements.
                if pid.is_some() {
                    self.proved_direct.store(true, Ordering::Relaxed);
                } else if cached.is_some() {
                    // Opened with the cache on, and the server no longer passes the test
                    // (the address now leads to a pooler): never use it; start over.
                    self.proved_direct.store(false, Ordering::Relaxed);
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                    return Err(sqlx::Error::Protocol(
                        "the server stopped answering on the port connected to; reconnecting"
                            .into(),
                    ));
                }
                Ok(Conn {
                    conn,
                    created: Instant::now(),
                    pid,
                    session_limited,
                    // This connection itself passed the same test, or it would not cache.
                    statement_cache: cached.is_some() && pid.is_some(),
                    prepared_read: None,
                })
            }
            Err(e) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                Err(e)
            }
        }
    }

    /// Runs `after_connect` and, when cancels are on, reads the backend's process id in the
    /// same message: one round trip either way.
    ///
    /// The id is kept only when the server listens on the port we connected to. A pooler in
    /// front (PgBouncer on 6432, Supavisor on 6543, or any other port) shows the port of the
    /// server behind it, and there the id names a server connection the pooler lends to others,
    /// whose statements a cancel must never reach. A port mapping that changes the number on a
    /// direct connection only costs the cancel; the drain still frees the slot.
    async fn set_up(&self, conn: &mut PgConnection) -> Result<(Option<i32>, bool), sqlx::Error> {
        let mut sql = self.settings.after_connect.clone().unwrap_or_default();
        if self.settings.cancel_abandoned {
            if !sql.is_empty() {
                sql.push_str("; ");
            }
            sql.push_str("select pg_backend_pid(), inet_server_port()");
        }
        if sql.is_empty() {
            return Ok((None, false));
        }
        let rows = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?;
        let Some(row) = rows.last().filter(|_| self.settings.cancel_abandoned) else {
            return Ok((None, false));
        };
        let pid: i32 = row.try_get(0)?;
        let port: Option<i32> = row.try_get(1)?;
        if port != Some(i32::from(self.options.get_port())) {
            return Ok((None, false));
        }
        // Only now is the session known to be ours alone.
        let session_limited = match &self.settings.session_limits {
            Some(limits) => {
                sqlx::raw_sql(AssertSqlSafe(limits.clone()))
                    .execute(&mut *conn)
                    .await?;
                true
            }
            None => false,
        };
        Ok((Some(pid), session_limited))
    }

    /// Waits until the server answered everything `conn` was sent; `false` if it did not within
    /// the retire wait, or the connection failed. A statement still running after a round trip
    /// is cancelled first, when the pool cancels.
    async fn drain(&self, conn: &mut PgConnection, pid: Option<i32>) -> bool {
        let mut answered = {
            let mut ping = std::pin::pin!(conn.ping());
            match tokio::time::timeout(CANCEL_AFTER, &mut ping).await {
                Ok(answered) => answered,
                Err(_) => {
                    if let Some(pid) = pid {
                        self.cancel(pid).await;
                    }
                    match tokio::time::timeout(self.settings.retire_wait, ping).await {
                        Ok(answered) => answered,
                        Err(_) => return false,
                    }
                }
            }
        };
        // An error the server answered (the cancelled statement's, say) ends sqlx's ping before
        // the rest of what is owed arrived; the connection is alive and in step once a ping
        // gets through. Each error answers one message sent before, so a few tries suffice.
        for _ in 0..3 {
            match answered {
                Ok(()) => return true,
                Err(sqlx::Error::Database(_)) => {
                    answered =
                        match tokio::time::timeout(self.settings.retire_wait, conn.ping()).await {
                            Ok(answered) => answered,
                            Err(_) => return false,
                        };
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Asks the server to cancel what backend `pid` runs, on the control connection (opened
    /// now if need be). Best effort: the drain that follows is what frees the slot. The
    /// protocol's own CancelRequest needs the backend's secret key, which sqlx keeps private;
    /// `pg_cancel_backend` from a connection of the same role does the same.
    async fn cancel(&self, pid: i32) {
        let mut control = self.control.lock().await;
        // A server that accepts no connection takes no cancel either; trying would only add
        // half-made connections.
        if self.unresponsive.load(Ordering::Relaxed) {
            return;
        }
        let limit = self.settings.connect_timeout;
        if control.is_none() {
            match tokio::time::timeout(limit, self.options.connect()).await {
                Ok(Ok(conn)) => *control = Some((conn, Instant::now())),
                Ok(Err(_)) => return,
                Err(_) => {
                    self.unresponsive.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some((conn, used)) = control.as_mut() else {
            return;
        };
        *used = Instant::now();
        // The pid is an integer we read from the server, not text from a request.
        let sql = format!("select pg_cancel_backend({pid})");
        let sent =
            tokio::time::timeout(limit, sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn));
        if !matches!(sent.await, Ok(Ok(_)))
            && let Some((conn, _)) = control.take()
        {
            let _ = conn.close_hard().await;
        }
    }
}

/// A connection borrowed from a [`ConnPool`]; dereferences to the [`PgConnection`].
///
/// Call [`release`](Self::release) once the work finished without error. Dropping the lease
/// instead drains the connection before reuse (cancelling a statement still running), or
/// closes it after [`enter_transaction`](Self::enter_transaction).
pub struct Lease {
    conn: Option<Conn>,
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    in_transaction: bool,
}

// By hand, like `Shared`'s: nothing of the connect options but where they point.
impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Lease {
    fn new(conn: Conn, permit: OwnedSemaphorePermit, shared: &Arc<Shared>) -> Self {
        Self {
            conn: Some(conn),
            permit: Some(permit),
            shared: Arc::clone(shared),
            in_transaction: false,
        }
    }

    /// The random tag of the SQL-level prepared statement the store's reads may `EXECUTE` on
    /// this connection (see [`set_prepared_read`](Self::set_prepared_read)); `None` when none
    /// is known.
    pub(crate) fn prepared_read(&self) -> Option<u64> {
        self.conn.as_ref().and_then(|c| c.prepared_read)
    }

    /// Whether [`PoolSettings::session_limits`] hold on this connection: it proved direct at
    /// connect, so its own statements are bounded on the server without per-message settings.
    pub fn has_session_limits(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.session_limited)
    }

    /// Whether this connection runs with sqlx's statement cache on (see
    /// [`PoolSettings::direct_statement_cache`]): plain `sqlx::query`s on it are prepared once
    /// and reused, as sqlx does by default.
    pub fn has_statement_cache(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.statement_cache)
    }

    /// Records which SQL-level prepared statement the store's reads may `EXECUTE` on this
    /// connection, by the random tag in its name. It stays with the connection across leases,
    /// since a prepared statement lives as long as the session, whatever transaction it was
    /// prepared in.
    pub(crate) fn set_prepared_read(&mut self, tag: Option<u64>) {
        if let Some(conn) = self.conn.as_mut() {
            conn.prepared_read = tag;
        }
    }

    /// Call before sending anything that may open an explicit transaction (`BEGIN`): until
    /// [`transaction_ended`](Self::transaction_ended), the connection is never reused, whether
    /// the lease is released or dropped; it is closed, which ends the transaction on the server.
    pub fn enter_transaction(&mut self) {
        self.in_transaction = true;
    }

    /// Call once a `COMMIT` or `ROLLBACK` sent after [`enter_transaction`](Self::enter_transaction)
    /// has succeeded: the connection is outside any transaction again.
    pub fn transaction_ended(&mut self) {
        self.in_transaction = false;
    }

    /// Gives the connection back for reuse, for work that completed without error. A
    /// connection that may still be inside a transaction (one sqlx counts as open, or one
    /// entered with [`enter_transaction`](Self::enter_transaction) and not ended) is closed
    /// instead.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            if self.in_transaction || conn.conn.is_in_transaction() {
                // Drop closes it.
                self.conn = Some(conn);
                self.in_transaction = true;
                return;
            }
            self.shared.make_idle(conn);
        }
        // The permit is dropped after the push, so a waiter finds the connection idle.
    }
}

impl std::ops::Deref for Lease {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        // Only `release` and `drop` take the connection, and both consume the lease.
        &self
            .conn
            .as_ref()
            .expect("a live lease holds its connection")
            .conn
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self
            .conn
            .as_mut()
            .expect("a live lease holds its connection")
            .conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let permit = self.permit.take();
        let shared = Arc::clone(&self.shared);
        let in_transaction = self.in_transaction;
        let retire = async move {
            // Waiting for the server to answer everything it was sent means the backend is
            // done with our work (and any rollback sqlx queued ran) before the slot is reused.
            let drained = shared.drain(&mut conn.conn, conn.pid).await;
            if drained && !in_transaction {
                shared.make_idle(conn);
            } else {
                if drained {
                    // The backend ends the transaction, whatever state it is in, on Terminate.
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.conn.close()).await;
                } else {
                    // Not answered within the retire wait, past the server-side timeouts: the
                    // backend has ended the statement or is gone with the server.
                    let _ = conn.conn.close_hard().await;
                }
                shared.open.fetch_sub(1, Ordering::Relaxed);
            }
            drop(permit);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(retire);
            }
            // Outside a runtime (a lease dropped during shutdown) the socket just closes.
            Err(_) => {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: u32) -> PoolSettings {
        PoolSettings {
            max_connections: max,
            acquire_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(1800),
            after_connect: None,
            connect_timeout: Duration::from_secs(1),
            retire_wait: Duration::from_secs(2),
            cancel_abandoned: false,
            session_limits: None,
            direct_statement_cache: None,
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_and_frees_its_slot() {
        // Port 1 on loopback refuses at once.
        let options: PgConnectOptions = "postgres://nobody@127.0.0.1:1/none".parse().unwrap();
        let pool = ConnPool::new(options, settings(1));
        for _ in 0..3 {
            let err = pool.acquire().await.unwrap_err();
            assert!(matches!(err, sqlx::Error::Io(_)), "{err:?}");
        }
        assert_eq!((pool.size(), pool.num_idle()), (0, 0));
    }
}
