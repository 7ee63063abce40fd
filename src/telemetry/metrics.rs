//! Prometheus metrics: the recorder, the private `/metrics` listener, and one small function per
//! thing we count, so every metric name and label set lives in this one file.
//!
//! Recording goes through the `metrics` facade. Nothing is kept until a recorder is installed:
//! the binary installs the process-wide one with [`install`] when `METRICS_ADDR` is not `off`;
//! a test can build its own with [`recorder`] and make it the thread's default
//! (`metrics::set_default_local_recorder`) on a current-thread runtime, so tests running side by
//! side in one process never see each other's counts.

// Without the exporter nothing samples the gauges; the names and the sampler stay defined.
#![cfg_attr(not(feature = "prometheus"), allow(dead_code))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{Method, StatusCode};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
// The exporter and its listener: feature `prometheus`. The facade above stays, so the counts
// reach whatever recorder a library user installs (none: every count is a no-op).
#[cfg(feature = "prometheus")]
use {
    axum::Router,
    axum::extract::State,
    axum::http::{HeaderValue, header},
    axum::response::{IntoResponse, Response},
    axum::routing::get,
    metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder},
    std::future::Future,
    std::sync::{Mutex, PoisonError},
    tokio::net::TcpListener,
};

/// Requests answered, by `method`, `route` and `status`.
pub(crate) const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Time to answer a request, by `route`.
pub(crate) const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Token verifications, by `result` (`ok` or an `AuthError::reason()` label).
pub(crate) const AUTH_OUTCOMES_TOTAL: &str = "auth_outcomes_total";
/// Verified-token cache lookups, by result (`hit`, `miss`).
pub(crate) const JWT_CACHE_LOOKUPS_TOTAL: &str = "jwt_cache_lookups_total";
/// Time spent in one store call, by `op`.
pub(crate) const DB_QUERY_DURATION_SECONDS: &str = "db_query_duration_seconds";
/// Store failures, by `kind`.
pub(crate) const DB_ERRORS_TOTAL: &str = "db_errors_total";
/// Open connections in the store's pool, sampled at scrape time.
pub(crate) const DB_POOL_SIZE: &str = "db_pool_size";
/// Idle connections in the store's pool, sampled at scrape time.
pub(crate) const DB_POOL_IDLE: &str = "db_pool_idle";
/// The pool's upper bound (`DB_MAX_CONNECTIONS`), to read `db_pool_size` against.
pub(crate) const DB_POOL_MAX: &str = "db_pool_max";
/// Key-set fetches, by `result`.
pub(crate) const JWKS_FETCHES_TOTAL: &str = "jwks_fetches_total";
/// Keys in the key set now in use.
pub(crate) const JWKS_KEYS_LOADED: &str = "jwks_keys_loaded";
/// Seconds since the key set now in use was fetched.
pub(crate) const JWKS_AGE_SECONDS: &str = "jwks_age_seconds";

/// The `route` label of a request that matched no route. Never the raw URI: a scanner trying
/// a million paths must not make a million time series.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// Histogram buckets in seconds, 1 ms to 10 s: most answers take a few milliseconds, and the
/// slowest ones are bounded by `DB_TIMEOUT_SECONDS` and `REQUEST_TIMEOUT_SECONDS`.
#[cfg(feature = "prometheus")]
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes, so memory
/// stays bounded (the exporter leaves this to its caller when it does not own the listener).
#[cfg(feature = "prometheus")]
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the process-wide recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("another metrics recorder is already installed in this process")]
pub(crate) struct InstallError;

/// A recorder with our histogram buckets, not installed anywhere.
#[cfg(feature = "prometheus")]
pub(crate) fn recorder() -> PrometheusRecorder {
    let builder = PrometheusBuilder::new();
    // Only an empty bucket list is refused, and ours is not empty; should it ever be,
    // histograms fall back to summaries rather than failing start-up.
    builder
        .set_buckets(LATENCY_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder()
}

/// Installs the process-wide recorder (once; later calls return the same handle) and
/// describes every metric. The handle renders the Prometheus text that `/metrics` serves.
#[cfg(feature = "prometheus")]
pub(crate) fn install() -> Result<PrometheusHandle, InstallError> {
    static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| InstallError)?;
    describe();
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Gives every metric its `# HELP` text on the current recorder.
pub(crate) fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by method, matched route (or `unmatched`) and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request, by matched route"
    );
    describe_counter!(
        AUTH_OUTCOMES_TOTAL,
        "Bearer token verifications, by result: ok, or why the token was refused"
    );
    describe_counter!(
        JWT_CACHE_LOOKUPS_TOTAL,
        "Verified-token cache lookups, by result: hit (signature check skipped) or miss"
    );
    describe_histogram!(
        DB_QUERY_DURATION_SECONDS,
        Unit::Seconds,
        "Time spent in one store call (pool wait included), by operation"
    );
    describe_counter!(
        DB_ERRORS_TOTAL,
        "Store calls that failed, by kind (acquire_timeout: pool saturated)"
    );
    describe_gauge!(DB_POOL_SIZE, "Open connections in the database pool");
    describe_gauge!(DB_POOL_IDLE, "Idle connections in the database pool");
    describe_gauge!(
        DB_POOL_MAX,
        "Upper bound on the database pool (DB_MAX_CONNECTIONS)"
    );
    describe_counter!(JWKS_FETCHES_TOTAL, "Key-set fetches, by result");
    describe_gauge!(JWKS_KEYS_LOADED, "Keys in the key set in use");
    describe_gauge!(
        JWKS_AGE_SECONDS,
        Unit::Seconds,
        "Seconds since the key set in use was fetched"
    );
}

/// Counts one answered request and its duration. `route` is the matched path, `None` when
/// nothing matched.
pub(crate) fn http_request(
    method: &Method,
    route: Option<&str>,
    status: StatusCode,
    elapsed: Duration,
) {
    let route = route.unwrap_or(UNMATCHED_ROUTE).to_owned();
    counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method_label(method),
        "route" => route.clone(),
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route).record(elapsed.as_secs_f64());
}

/// Any client can send any method name; only the standard ones become label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts one finished token verification: `ok`, or the `AuthError::reason()` label.
pub(crate) fn auth_outcome(result: &'static str) {
    counter!(AUTH_OUTCOMES_TOTAL, "result" => result).increment(1);
}

/// Counts one verified-token cache lookup: `hit` or `miss`.
pub(crate) fn jwt_cache_lookup(result: &'static str) {
    counter!(JWT_CACHE_LOOKUPS_TOTAL, "result" => result).increment(1);
}

/// Records the duration of one store call (`op`: `profile`, `set_full_name`, `ping`).
pub(crate) fn db_query(op: &'static str, elapsed: Duration) {
    histogram!(DB_QUERY_DURATION_SECONDS, "op" => op).record(elapsed.as_secs_f64());
}

/// Counts one store failure of `kind` (`acquire_timeout`, `timeout`, `connection`, …).
pub(crate) fn db_error(kind: &'static str) {
    counter!(DB_ERRORS_TOTAL, "kind" => kind).increment(1);
}

/// Counts one key-set fetch; `result` is a fixed label such as `ok`, `error`, `timeout`,
/// `not_modified`. For the key-set code to call.
pub(crate) fn jwks_fetch(result: &'static str) {
    counter!(JWKS_FETCHES_TOTAL, "result" => result).increment(1);
}

/// How full the database pool is, sampled for the `db_pool_*` gauges at each scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolStats {
    /// `postgres` or `sqlite`: the gauges' `store` label.
    pub(crate) store: &'static str,
    /// Open connections, busy or idle.
    pub(crate) size: u32,
    /// Open connections waiting for work.
    pub(crate) idle: usize,
    /// The most connections the pool will open.
    pub(crate) max: u32,
}

/// What a scrape samples the pool with: the database layer's answer, handed in by the app.
pub(crate) type PoolSampler = Arc<dyn Fn() -> Option<PoolStats> + Send + Sync>;

/// Unix time in milliseconds of the last key-set swap; 0 until one happens. A process-wide
/// value, like the recorder it feeds.
static JWKS_LOADED_AT_MS: AtomicU64 = AtomicU64::new(0);

/// Records that a freshly fetched key set of `keys` keys is now in use: sets `jwks_keys_loaded`
/// and restarts the clock that `jwks_age_seconds` reads at every scrape. For the key-set code
/// to call after each successful swap.
pub(crate) fn jwks_keys_loaded(keys: usize) {
    gauge!(JWKS_KEYS_LOADED).set(keys as f64);
    JWKS_LOADED_AT_MS.store(unix_millis().max(1), Ordering::Relaxed);
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sets the gauges that are read rather than counted: pool occupancy and key-set age.
pub(crate) fn sample(pool: Option<PoolStats>) {
    if let Some(pool) = pool {
        let kind = pool.store;
        gauge!(DB_POOL_SIZE, "store" => kind).set(f64::from(pool.size));
        gauge!(DB_POOL_IDLE, "store" => kind).set(pool.idle as f64);
        gauge!(DB_POOL_MAX, "store" => kind).set(f64::from(pool.max));
    }
    let loaded_at = JWKS_LOADED_AT_MS.load(Ordering::Relaxed);
    if loaded_at > 0 {
        let age_ms = unix_millis().saturating_sub(loaded_at);
        gauge!(JWKS_AGE_SECONDS).set(age_ms as f64 / 1000.0);
    }
}

#[cfg(feature = "prometheus")]
#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    pool: PoolSampler,
}

/// The metrics listener's router: `GET /metrics` samples the gauges, then renders `handle`.
#[cfg(feature = "prometheus")]
pub(crate) fn router(handle: PrometheusHandle, pool: PoolSampler) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { handle, pool })
}

#[cfg(feature = "prometheus")]
async fn scrape(State(scrape): State<Scrape>) -> Response {
    sample((scrape.pool)());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        scrape.handle.render(),
    )
        .into_response()
}

/// Serves [`router`] on `listener` until `shutdown` resolves, folding histogram samples
/// every few seconds meanwhile.
#[cfg(feature = "prometheus")]
pub(crate) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    pool: PoolSampler,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep_handle = handle.clone();
    let upkeep = async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep_handle.run_upkeep();
        }
    };
    let server = axum::serve(listener, router(handle, pool)).with_graceful_shutdown(shutdown);
    tokio::select! {
        result = server => result,
        () = upkeep => Ok(()),
    }
}

#[cfg(all(test, feature = "prometheus"))]
mod tests {
    use super::*;

    fn rendered(f: impl FnOnce()) -> String {
        let recorder = recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    #[test]
    fn unmatched_requests_get_the_fixed_route_label() {
        let text = rendered(|| {
            http_request(
                &Method::GET,
                None,
                StatusCode::NOT_FOUND,
                Duration::from_millis(2),
            );
        });
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#)
        );
        assert!(
            text.contains(
                r#"http_request_duration_seconds_bucket{route="unmatched",le="0.0025"} 1"#
            )
        );
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let text = rendered(|| {
            let brew = Method::from_bytes(b"BREW").unwrap();
            http_request(
                &brew,
                Some("/name"),
                StatusCode::METHOD_NOT_ALLOWED,
                Duration::ZERO,
            );
        });
        assert!(text.contains(r#"method="other""#));
        assert!(!text.contains("BREW"));
    }

    #[test]
    fn key_set_helpers_record_fetches_and_keys() {
        let text = rendered(|| {
            jwks_fetch("ok");
            jwks_fetch("ok");
            jwks_fetch("error");
            jwks_keys_loaded(3);
        });
        assert!(text.contains(r#"jwks_fetches_total{result="ok"} 2"#));
        assert!(text.contains(r#"jwks_fetches_total{result="error"} 1"#));
        assert!(text.contains("jwks_keys_loaded 3"));
    }
}
