//! Requests of each outcome show up in `/metrics` with bounded labels.
//!
//! Each test scrapes the metrics listener of a binary of its own (`METRICS_ADDR=127.0.0.1:0`,
//! the address read from its "metrics listening" log line): the recorder is process-wide, so
//! counts from other tests in this process would otherwise mix into these.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use supabase_jwt_service::Config;
use supabase_jwt_service::testing::SECRET;
use tokio::net::TcpListener;

use crate::cli::{Server, bin};
use crate::helpers::config_with;

struct Running {
    api: SocketAddr,
    metrics: SocketAddr,
    config: Config,
    _server: Server,
    _dir: tempfile::TempDir,
}

/// The binary on the embedded store in a fresh folder, with its metrics listener, both on
/// loopback.
async fn start() -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let (server, api, metrics) = spawn(&url, dir.path());
    Running {
        api,
        metrics,
        config: config_with(&url, |b| b),
        _server: server,
        _dir: dir,
    }
}

/// Runs the binary on `database_url` with the test kit's secret and a metrics listener on
/// loopback port 0; returns it with the API's address and the metrics listener's.
fn spawn(database_url: &str, dir: &std::path::Path) -> (Server, SocketAddr, SocketAddr) {
    let mut cmd = bin(dir);
    cmd.env("DATABASE_URL", database_url)
        .env("SUPABASE_JWT_SECRET", SECRET)
        .env("HOST", "127.0.0.1")
        .env("METRICS_ADDR", "127.0.0.1:0");
    let server = Server::start(cmd);
    let api = SocketAddr::from(([127, 0, 0, 1], server.port));
    let metrics = server.metrics_addr();
    (server, api, metrics)
}

fn token(config: &Config, ttl_seconds: i64) -> String {
    crate::helpers::mint_demo_token(config, ttl_seconds)
}

/// One sample of the exposition text: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().expect("numeric value");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test]
async fn each_outcome_is_counted_by_route_status_and_auth_result() {
    let app = start().await;
    let base = format!("http://{}", app.api);
    let client = reqwest::Client::new();
    let good = token(&app.config, 3600);
    let expired = token(&app.config, -3600);

    let ok = client
        .get(format!("{base}/name"))
        .bearer_auth(&good)
        .send()
        .await
        .expect("GET /name");
    assert_eq!(ok.status(), 200);
    let missing = client
        .get(format!("{base}/name"))
        .send()
        .await
        .expect("no token");
    assert_eq!(missing.status(), 401);
    let stale = client
        .get(format!("{base}/name"))
        .bearer_auth(&expired)
        .send()
        .await
        .expect("expired token");
    assert_eq!(stale.status(), 401);
    let unknown = client
        .get(format!("{base}/wp-admin/secret-probe"))
        .send()
        .await
        .expect("unknown route");
    assert_eq!(unknown.status(), 404);
    let wrong_method = client
        .delete(format!("{base}/name"))
        .send()
        .await
        .expect("DELETE /name");
    assert_eq!(wrong_method.status(), 405);

    let scrape = client
        .get(format!("http://{}/metrics", app.metrics))
        .send()
        .await
        .expect("scrape");
    assert_eq!(scrape.status(), 200);
    assert!(
        scrape
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4"))
    );
    let text = scrape.text().await.expect("body");
    let samples = parse(&text);
    let requests = |method: &str, route: &str, status: &str| {
        value(
            &samples,
            "http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("GET", "/name", "200"), 1.0, "{text}");
    assert_eq!(requests("GET", "/name", "401"), 2.0, "{text}");
    assert_eq!(requests("GET", "unmatched", "404"), 1.0, "{text}");
    assert_eq!(requests("DELETE", "/name", "405"), 1.0, "{text}");
    // The raw URI of an unmatched request never becomes a label.
    assert!(!text.contains("wp-admin"));

    let auth = |result: &str| value(&samples, "auth_outcomes_total", &[("result", result)]);
    assert_eq!(auth("ok"), 1.0, "{text}");
    assert_eq!(auth("missing"), 1.0, "{text}");
    assert_eq!(auth("expired"), 1.0, "{text}");
    // The valid and the expired token were each looked up once and missed; none was cached
    // twice.
    let cache = |result: &str| value(&samples, "jwt_cache_lookups_total", &[("result", result)]);
    assert_eq!(cache("miss"), 2.0, "{text}");

    assert_eq!(
        value(
            &samples,
            "http_request_duration_seconds_count",
            &[("route", "/name")]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "db_query_duration_seconds_count",
            &[("op", "profile")]
        ),
        1.0,
        "{text}"
    );
    assert!(
        samples
            .iter()
            .any(|(n, l, _)| n == "db_pool_size"
                && l.get("store").map(String::as_str) == Some("sqlite")),
        "{text}"
    );
    assert!(text.contains("# HELP http_requests_total"));
}

#[tokio::test]
async fn metrics_are_not_served_on_the_public_port() {
    let app = start().await;
    let response = reqwest::get(format!("http://{}/metrics", app.api))
        .await
        .expect("GET /metrics on the API port");
    assert_eq!(response.status(), 404);
}

/// A store error is counted once, where it is answered: each failed request and each failed
/// readiness probe adds one to `db_errors_total`, by kind, and nothing else does.
#[tokio::test]
async fn each_failed_store_call_is_counted_once_by_kind() {
    // A loopback port nothing listens on: every connection is refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let config = config_with(&url, |b| b);
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, api, metrics) = spawn(&url, dir.path());
    let client = reqwest::Client::new();
    let good = token(&config, 3600);

    for _ in 0..3 {
        let r = client
            .get(format!("http://{api}/name"))
            .bearer_auth(&good)
            .send()
            .await
            .expect("GET /name");
        assert_eq!(r.status(), 503);
    }
    let ready = client
        .get(format!("http://{api}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 503);

    let text = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let samples = parse(&text);
    assert_eq!(value(&samples, "db_errors_total", &[]), 4.0, "{text}");
    assert_eq!(
        value(&samples, "db_errors_total", &[("kind", "connection")]),
        4.0,
        "{text}"
    );
}
