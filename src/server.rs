//! The HTTP/1.1 accept loop: hyper connections with bounds on slow, large and numerous clients,
//! and a shutdown that stops accepting, drains in-flight requests and then closes.
//!
//! `axum::serve` would do most of this, but it exposes none of hyper's connection settings, so
//! a client could hold a connection open forever by sending its headers one byte at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::app::App;
use crate::startup::StartError;

/// Largest request head (request line and headers) accepted; a larger one is answered
/// `431 Request Header Fields Too Large` by hyper and the connection closed. Supabase access
/// tokens are under 2 KiB and a proxy adds well under 1 KiB; 16 KiB is Node's default too.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Upper bound on a connection's read buffer. Request bodies are limited to 16 KiB by the
/// router, so nothing legitimate needs more; it bounds what an idle connection can pin.
const MAX_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until `shutdown` resolves (give it
/// [`shutdown_signal`](crate::shutdown_signal) for SIGTERM and Ctrl-C). It logs the start-up
/// line (address, store, keys; loud warnings for the Supabase CLI's published secret), starts
/// the Prometheus listener on `METRICS_ADDR` (with the `prometheus` feature; `off` for none),
/// then serves. On shutdown it turns `/readyz` to 503, stops accepting (new connections are
/// refused), lets in-flight requests finish for up to `SHUTDOWN_TIMEOUT_SECONDS`, and closes
/// whatever connections remain.
///
/// Each connection must send a request's headers within `HEADER_READ_TIMEOUT_SECONDS` (this
/// also bounds how long an idle keep-alive connection stays open), in at most 16 KiB of
/// headers; at most `HTTP_MAX_CONNECTIONS` are served at once, and further clients wait in the
/// listen backlog until one ends.
///
/// ```no_run
/// use supabase_jwt_service::{App, AppState, Config, serve, shutdown_signal};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::from_env()?;
/// let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
/// serve(listener, App::new(AppState::build(config).await?), shutdown_signal()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let state = app.state().clone();
    let config = state.config().http.clone();
    let flag = state.shutdown().clone();
    #[cfg(feature = "prometheus")]
    crate::startup::spawn_metrics_listener(&state).await?;
    crate::startup::log_startup(state.config(), listener.local_addr()?);
    let app = app.into_router();

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER_BYTES)
        .keep_alive(true);

    let slots = Arc::new(Semaphore::new(connection_cap(config.max_connections)));
    let graceful = GracefulShutdown::new();
    // Flips to true when the drain time is up: connection tasks still running then stop.
    let (close_tx, close_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut at_capacity = false;

    loop {
        let (stream, slot) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots, &mut at_capacity) => accepted,
        };
        // Answers are one small write each: do not let Nagle hold them for the peer's ACK.
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())),
        );
        let mut close = close_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        // Header timeouts, oversized heads and clients that vanish end here.
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                }
                _ = close.wait_for(|closed| *closed) => {}
            }
            drop(slot);
        });
    }

    flag.begin();
    // Dropping the listener closes the socket: from here on, connecting is refused.
    drop(listener);
    let drain = config.shutdown_timeout;
    tracing::info!(?drain, "shutdown: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("shutdown: all connections closed"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!("shutdown: drain timeout reached, closing remaining connections");
            let _ = close_tx.send(true);
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// File descriptors kept free of client connections: the database pool, the metrics listener,
/// the key-set client, logs.
const RESERVED_FDS: usize = 128;

/// `HTTP_MAX_CONNECTIONS`, lowered when the process may not open that many files: past the
/// open-files limit, accepting fails and, worse, so does opening a database connection.
/// Unlike Go, Rust does not raise the soft limit by itself, and containers often start at 1024.
fn connection_cap(configured: usize) -> usize {
    let Some(soft) = open_files_limit() else {
        return configured;
    };
    let room = soft.saturating_sub(RESERVED_FDS).max(1);
    if room < configured {
        tracing::warn!(
            configured,
            open_files_limit = soft,
            cap = room,
            "HTTP_MAX_CONNECTIONS lowered to fit the open-files limit (raise `ulimit -n` to lift it)"
        );
        return room;
    }
    configured
}

/// The soft limit on open files, from `/proc/self/limits` (Linux; `None` elsewhere or when
/// unlimited).
fn open_files_limit() -> Option<usize> {
    soft_open_files(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// The soft "Max open files" value of a `/proc/<pid>/limits` text.
fn soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Waits for a free connection slot, then for a connection. Waiting for the slot first
/// leaves surplus clients in the kernel's listen backlog rather than costing us memory.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    at_capacity: &mut bool,
) -> (TcpStream, OwnedSemaphorePermit) {
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => {
            *at_capacity = false;
            slot
        }
        Err(_) => {
            if !*at_capacity {
                tracing::warn!(
                    "HTTP_MAX_CONNECTIONS reached: new connections wait until one closes"
                );
                *at_capacity = true;
            }
            match slots.clone().acquire_owned().await {
                Ok(slot) => slot,
                // The semaphore is never closed; should it be, wait for shutdown instead.
                Err(_) => std::future::pending().await,
            }
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => return (stream, slot),
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // Usually out of file descriptors: retrying at once would spin.
                tracing::error!(error = %e, "accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Errors about one connection that ended before we accepted it: nothing to wait out.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_open_files_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             127431               127431               processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(soft_open_files(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_open_files(unlimited), None);
        assert_eq!(soft_open_files(""), None);
    }
}
