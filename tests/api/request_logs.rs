//! Production logs: one JSON object per line carrying the request id, route, status,
//! latency and user id, never the token; and `x-request-id` on every answer.
//!
//! The subscriber is installed for this test's thread only (`set_default`), and
//! `#[tokio::test]` runs server and client on that thread, so the capture holds exactly
//! this test's lines.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use supabase_jwt_service::config::LogFormat;
use supabase_jwt_service::testing::{DEMO_USER, SECRET};
use supabase_jwt_service::{App, AppState, Config, serve, telemetry};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// A log writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).expect("logs are UTF-8")
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

struct Running {
    base: String,
    config: Config,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start() -> Running {
    let dir = std::env::temp_dir().join(format!(
        "sjs-logs-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = crate::helpers::config_with(&format!("sqlite://{}/t.db", dir.display()), |b| b);
    let state = AppState::build(config.clone()).await.expect("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let app = App::new(state).with_profile_routes();
    tokio::spawn(serve(listener, app, std::future::pending()));
    Running {
        base: format!("http://{addr}"),
        config,
        dir,
    }
}

fn token(config: &Config, ttl_seconds: i64) -> String {
    crate::helpers::mint_demo_token(config, ttl_seconds)
}

fn completion_line(lines: &[Value], request_id: &str) -> Value {
    lines
        .iter()
        .find(|l| l["message"] == "request completed" && l["span"]["request_id"] == request_id)
        .cloned()
        .unwrap_or_else(|| panic!("no completion line for {request_id} in {lines:#?}"))
}

#[tokio::test]
async fn json_lines_carry_request_id_route_status_latency_and_user_but_never_the_token() {
    // While only one dispatcher exists, tracing-core takes a shortcut: a callsite first hit
    // on another test's thread gets its interest from that thread's (empty) default and
    // stays disabled for everyone. A second live dispatcher turns the shortcut off.
    let _peer = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let captured = Captured::default();
    let subscriber =
        telemetry::subscriber(LogFormat::Json, EnvFilter::new("debug"), captured.clone());
    let _logs = tracing::subscriber::set_default(subscriber);

    let app = start().await;
    let client = reqwest::Client::new();
    let good = token(&app.config, 3600);
    let expired = token(&app.config, -3600);

    let ok = client
        .get(format!("{}/name", app.base))
        .bearer_auth(&good)
        .header("x-request-id", "req-ok-1")
        .send()
        .await
        .expect("GET /name");
    assert_eq!(ok.status(), 200);
    let refused = client
        .get(format!("{}/name", app.base))
        .bearer_auth(&expired)
        .header("x-request-id", "req-expired-1")
        .send()
        .await
        .expect("GET /name expired");
    assert_eq!(refused.status(), 401);

    let text = captured.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();

    let done = completion_line(&lines, "req-ok-1");
    assert_eq!(done["level"], "INFO");
    assert!(done["timestamp"].is_string());
    assert_eq!(done["status"], 200);
    assert!(done["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert_eq!(done["span"]["route"], "/name");
    assert_eq!(done["span"]["method"], "GET");
    assert_eq!(done["span"]["user.id"], DEMO_USER);

    let refused = completion_line(&lines, "req-expired-1");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["error.code"], "invalid_token");
    assert!(refused["span"].get("user.id").is_none());

    for secret in [&good, &expired] {
        let signature = secret.rsplit('.').next().expect("three parts");
        assert!(!text.contains(secret.as_str()), "a token was logged");
        assert!(!text.contains(signature), "a token signature was logged");
    }
    assert!(!text.contains(SECRET));
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_keeps_the_callers() {
    let app = start().await;
    let client = reqwest::Client::new();
    let cases = [
        (client.get(format!("{}/healthz", app.base)), 200),
        (client.get(format!("{}/name", app.base)), 401),
        (client.get(format!("{}/nowhere", app.base)), 404),
        (client.delete(format!("{}/name", app.base)), 405),
        (
            client
                .get(format!("{}/name", app.base))
                .header("authorization", "Bearer a")
                .header("authorization", "Bearer b"),
            400,
        ),
    ];
    for (request, status) in cases {
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), status);
        let id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            uuid::Uuid::try_parse(id).is_ok(),
            "{status}: request id {id:?}"
        );
    }

    let echoed = client
        .get(format!("{}/nowhere", app.base))
        .header("x-request-id", "caller-chosen-id")
        .send()
        .await
        .expect("request");
    assert_eq!(echoed.headers()["x-request-id"], "caller-chosen-id");
}

#[tokio::test]
async fn server_timing_is_sent_only_when_switched_on() {
    let app = start().await;
    let plain = reqwest::get(format!("{}/readyz", app.base))
        .await
        .expect("readyz");
    assert!(plain.headers().get("server-timing").is_none());

    let dir = std::env::temp_dir().join(format!(
        "sjs-timing-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = crate::helpers::config_with(&format!("sqlite://{}/t.db", dir.display()), |b| {
        b.server_timing(true)
    });
    let good = token(&config, 3600);
    let state = AppState::build(config).await.expect("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = App::new(state).with_profile_routes();
    tokio::spawn(serve(listener, app, std::future::pending()));

    let timed = reqwest::Client::new()
        .get(format!("http://{addr}/name"))
        .bearer_auth(good)
        .send()
        .await
        .expect("GET /name");
    assert_eq!(timed.status(), 200);
    let value = timed.headers()["server-timing"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(value.starts_with("auth;dur="), "{value}");
    assert!(value.contains(", db;dur="), "{value}");
    assert!(value.contains(", total;dur="), "{value}");
    let _ = std::fs::remove_dir_all(dir);
}
