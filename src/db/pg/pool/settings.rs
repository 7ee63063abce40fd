//! [`PoolSettings`]: sizes, lifetimes and the rules for abandoned work of a [`ConnPool`].

use std::time::Duration;

#[cfg(doc)]
use super::ConnPool;

/// Sizes and lifetimes of a [`ConnPool`].
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    /// The most connections open at once, busy, idle or being retired.
    pub(crate) max_connections: u32,
    /// The longest [`ConnPool::acquire`] waits for a free slot.
    pub(crate) acquire_timeout: Duration,
    /// Idle connections older than this (since last use) are closed.
    pub(crate) idle_timeout: Duration,
    /// Connections older than this (since connecting) are closed instead of reused.
    pub(crate) max_lifetime: Duration,
    /// Statements run on every new connection before its first use, in one simple-protocol
    /// message (for example `PREPARE`s); a failure fails the acquire. They must bound
    /// themselves on the server (`statement_timeout`, `lock_timeout`): the connect is given up
    /// after [`connect_timeout`](Self::connect_timeout), but a backend waiting on a lock does not
    /// notice its client leaving.
    pub(crate) after_connect: Option<String>,
    /// The longest a new connection, its `after_connect` included, may take. The attempt runs on
    /// a task of its own, so a caller that gives up first neither cuts it short nor loses track
    /// of its backend: a connection that opens after its caller left is kept idle.
    pub(crate) connect_timeout: Duration,
    /// How long a slot stays taken when its backend's state is unknown: a dropped lease whose
    /// drain does not answer, or a connect that timed out. Set it past the longest the server
    /// lets a statement run (its `statement_timeout`), so that the slot is freed only once the
    /// backend must have ended the statement.
    pub(crate) retire_wait: Duration,
    /// Cancel the statement of a lease dropped mid-statement (`pg_cancel_backend`, sent on one
    /// extra "control" connection opened when first needed) rather than wait for it. Only for
    /// direct connections: behind a transaction-mode pooler the backend process id read at
    /// connect names whichever server connection answered, which may be serving someone else.
    /// As a second guard, a connection whose server does not listen on the port connected to
    /// (a pooler's) is never cancelled.
    pub(crate) cancel_abandoned: bool,
    /// Session-level settings for a connection that proved direct (its server listens on the
    /// port connected to, the same test that lets cancels through), sent once at set-up: for
    /// example `set statement_timeout = 2700; set lock_timeout = 2700`. A pooler in front would
    /// lend the session to other clients along with those settings, so any other connection
    /// gets none of them, and its work carries transaction-local bounds instead (see
    /// [`Lease::has_session_limits`](super::Lease::has_session_limits)). Needs `cancel_abandoned`, which reads the port.
    pub(crate) session_limits: Option<String>,
    /// sqlx's statement cache size for connections opened once the server proved direct (an
    /// earlier connection of this pool found it listening on the port connected to). The
    /// first connection, and every one while that is unknown, is opened with the cache of the
    /// connect options (off, behind a possible pooler): sqlx names cached statements by a
    /// per-connection counter, which only a server of our own keeps straight.
    pub(crate) direct_statement_cache: Option<usize>,
}
