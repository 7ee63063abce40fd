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

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

mod connect;
mod lease;
mod settings;

pub(crate) use lease::Lease;
pub(crate) use settings::PoolSettings;

/// How long a dropped lease's drain ping may take before the pool cancels the statement the
/// connection is still running: a connection that owes nothing answers within a round trip.
const CANCEL_AFTER: Duration = Duration::from_millis(100);
/// How often idle connections past their idle timeout or lifetime are closed.
const REAP_EVERY: Duration = Duration::from_secs(30);

/// A lazily connecting pool of [`PgConnection`]s; cheap to clone. Its `Debug` names the
/// server and user, never the password.
#[derive(Clone)]
pub(crate) struct ConnPool {
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
    pub(crate) fn new(options: PgConnectOptions, settings: PoolSettings) -> Self {
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
    pub(crate) async fn acquire(&self) -> Result<Lease, sqlx::Error> {
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
    pub(crate) fn discard_idle(&self) {
        let stale: Vec<Idle> = self.shared.lock_idle().drain(..).collect();
        for idle in stale {
            self.shared.close_in_background(idle.conn.conn);
        }
    }

    /// Open connections: busy, idle, or being retired (the control connection not counted).
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn size(&self) -> u32 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Idle connections ready for the next acquire.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn num_idle(&self) -> usize {
        self.shared.lock_idle().len()
    }

    /// The most connections the pool opens, besides the one it sends cancels on.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn max_connections(&self) -> u32 {
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
