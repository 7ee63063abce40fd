//! A small pool of Postgres connections that takes a connection back without a round trip.
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
//! reused, holding the connection's slot until then so that the server never sees more than
//! `max` connections from this pool, even while a locked table or a frozen server keeps them
//! busy. A connection that may be inside an explicit transaction
//! ([`Lease::enter_transaction`]) is closed instead: whether its `BEGIN` ran cannot be told
//! from outside sqlx, and a transaction left open would carry one user's role and claims to the
//! next request.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a retired connection may take to finish what it was sent before it is cut off.
/// Its slot stays taken meanwhile, which is what keeps a stuck server from collecting one new
/// connection per timed-out request.
const RETIRE_WAIT: Duration = Duration::from_secs(30);
/// How often idle connections past their idle timeout or lifetime are closed.
const REAP_EVERY: Duration = Duration::from_secs(30);

/// Sizes and lifetimes of a [`ConnPool`].
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
    /// message (for example `PREPARE`s); a failure fails the acquire.
    pub after_connect: Option<String>,
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
    settings: PoolSettings,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    open: AtomicU32,
    reaper_started: AtomicBool,
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
    conn: PgConnection,
    created: Instant,
    since: Instant,
}

impl ConnPool {
    /// A pool that opens nothing until the first [`acquire`](Self::acquire).
    pub fn new(options: PgConnectOptions, settings: PoolSettings) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_connections as usize));
        Self {
            shared: Arc::new(Shared {
                options,
                settings,
                slots,
                idle: Mutex::new(Vec::new()),
                open: AtomicU32::new(0),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// A connection for one piece of work: the most recently used idle one, else a new one.
    ///
    /// Fails with [`sqlx::Error::PoolTimedOut`] when every slot stays taken for the whole
    /// acquire timeout. Cancelling it is safe at any point.
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
                    return Ok(Lease {
                        conn: Some(idle.conn),
                        created: idle.created,
                        permit: Some(permit),
                        shared: Arc::clone(shared),
                        in_transaction: false,
                    });
                }
                Some(stale) => shared.close_in_background(stale.conn),
                None => break,
            }
        }
        // No idle connection, and the permit guarantees room for one more.
        let mut conn = shared.options.connect().await?;
        if let Some(sql) = &shared.settings.after_connect {
            sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                .execute(&mut conn)
                .await?;
        }
        shared.open.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            conn: Some(conn),
            created: Instant::now(),
            permit: Some(permit),
            shared: Arc::clone(shared),
            in_transaction: false,
        })
    }

    /// Open connections: busy, idle, or being retired.
    pub fn size(&self) -> u32 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Idle connections ready for the next acquire.
    pub fn num_idle(&self) -> usize {
        self.shared.lock_idle().len()
    }

    /// The most connections the pool opens.
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
                    shared.close_in_background(conn.conn);
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

    fn make_idle(&self, conn: PgConnection, created: Instant) {
        self.lock_idle().push(Idle {
            conn,
            created,
            since: Instant::now(),
        });
    }

    fn is_fresh(&self, idle: &Idle, now: Instant) -> bool {
        now.duration_since(idle.since) < self.settings.idle_timeout
            && now.duration_since(idle.created) < self.settings.max_lifetime
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

/// A connection borrowed from a [`ConnPool`]; dereferences to the [`PgConnection`].
///
/// Call [`release`](Self::release) once the work finished without error. Dropping the lease
/// instead drains the connection before reuse, or closes it after
/// [`enter_transaction`](Self::enter_transaction).
pub struct Lease {
    conn: Option<PgConnection>,
    created: Instant,
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
            if self.in_transaction || conn.is_in_transaction() {
                // Drop closes it.
                self.conn = Some(conn);
                self.in_transaction = true;
                return;
            }
            self.shared.make_idle(conn, self.created);
        }
        // The permit is dropped after the push, so a waiter finds the connection idle.
    }
}

impl std::ops::Deref for Lease {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        // Only `release` and `drop` take the connection, and both consume the lease.
        self.conn
            .as_ref()
            .expect("a live lease holds its connection")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a live lease holds its connection")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let permit = self.permit.take();
        let shared = Arc::clone(&self.shared);
        let (created, in_transaction) = (self.created, self.in_transaction);
        let retire = async move {
            // Waiting for the server to answer everything it was sent means the backend is
            // done with our work (and any rollback sqlx queued ran) before the slot is reused.
            let drained = matches!(
                tokio::time::timeout(RETIRE_WAIT, conn.ping()).await,
                Ok(Ok(()))
            );
            if drained && !in_transaction {
                shared.make_idle(conn, created);
            } else {
                if drained {
                    // The backend ends the transaction, whatever state it is in, on Terminate.
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                } else {
                    let _ = conn.close_hard().await;
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
