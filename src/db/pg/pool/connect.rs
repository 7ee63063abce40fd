//! Opening a connection: connect, then the set-up that tells a direct server from a pooler.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use super::{Conn, Shared};

impl Shared {
    /// A new connection with its set-up done. A set-up that fails closes the connection
    /// properly, so its backend ends rather than waits.
    ///
    /// The connection that first proves the server direct was opened without sqlx's statement
    /// cache (nothing was known yet), and sqlx cannot turn the cache on afterwards: it is
    /// closed and opened again with the cache, once per pool, rather than serving without it
    /// for its whole lifetime (a sequence of requests that all draw it would never cache).
    pub(super) async fn connect(&self) -> Result<Conn, sqlx::Error> {
        let conn = self.connect_once().await?;
        if conn.pid.is_some() && !conn.statement_cache && self.direct_options.is_some() {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.conn.close()).await;
            return self.connect_once().await;
        }
        Ok(conn)
    }

    async fn connect_once(&self) -> Result<Conn, sqlx::Error> {
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
}
