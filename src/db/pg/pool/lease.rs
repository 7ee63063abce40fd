//! [`Lease`]: a connection out of the pool, and how it comes back: at once when the caller
//! says its work finished, else drained (its statement cancelled if need be) or closed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use tokio::sync::OwnedSemaphorePermit;

use super::{CANCEL_AFTER, Conn, Shared};

impl Shared {
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

/// A connection borrowed from a [`ConnPool`](super::ConnPool); dereferences to the [`PgConnection`].
///
/// Call [`release`](Self::release) once the work finished without error. Dropping the lease
/// instead drains the connection before reuse (cancelling a statement still running), or
/// closes it after [`enter_transaction`](Self::enter_transaction).
pub(crate) struct Lease {
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
    pub(super) fn new(conn: Conn, permit: OwnedSemaphorePermit, shared: &Arc<Shared>) -> Self {
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

    /// Whether [`PoolSettings::session_limits`](super::PoolSettings::session_limits) hold on this connection: it proved direct at
    /// connect, so its own statements are bounded on the server without per-message settings.
    pub(crate) fn has_session_limits(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.session_limited)
    }

    /// Whether this connection runs with sqlx's statement cache on (see
    /// [`PoolSettings::direct_statement_cache`](super::PoolSettings::direct_statement_cache)): plain `sqlx::query`s on it are prepared once
    /// and reused, as sqlx does by default.
    pub(crate) fn has_statement_cache(&self) -> bool {
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
    pub(crate) fn enter_transaction(&mut self) {
        self.in_transaction = true;
    }

    /// Call once a `COMMIT` or `ROLLBACK` sent after [`enter_transaction`](Self::enter_transaction)
    /// has succeeded: the connection is outside any transaction again.
    pub(crate) fn transaction_ended(&mut self) {
        self.in_transaction = false;
    }

    /// Ends the transaction on this connection with `statement` (`commit` or `rollback`),
    /// dropping every prepared statement in the same message when `wipe` (a connection without
    /// sqlx's statement cache, see `PgDb::begin`). The lease may then go back to the pool.
    pub(crate) async fn end(
        &mut self,
        statement: &'static str,
        wipe: bool,
    ) -> Result<(), sqlx::Error> {
        // After the end, in the same message: the end then behaves exactly as alone (a commit
        // of a failed transaction is a rollback, not an error), and a pooler hands the server
        // to another client only once the whole message has been answered.
        let sql = match (wipe, statement) {
            (true, "commit") => "commit; deallocate all",
            (true, _) => "rollback; deallocate all",
            (false, statement) => statement,
        };
        sqlx::raw_sql(sql).execute(&mut **self).await?;
        self.transaction_ended();
        if wipe {
            self.set_prepared_read(None);
        }
        Ok(())
    }

    /// Gives the connection back for reuse, for work that completed without error. A
    /// connection that may still be inside a transaction (one sqlx counts as open, or one
    /// entered with [`enter_transaction`](Self::enter_transaction) and not ended) is closed
    /// instead.
    pub(crate) fn release(mut self) {
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
