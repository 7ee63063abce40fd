//! Graceful shutdown of the real binary under a constant load of valid requests.
//!
//! The counts are printed; run with `--nocapture` to see them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::cli::{Server, bin};
use crate::helpers::*;

/// What the clients saw, by outcome.
#[derive(Default)]
struct Tally {
    /// 200 with the caller's name.
    served: AtomicUsize,
    /// A complete 503 `unavailable` answer.
    clean_503: AtomicUsize,
    /// Connecting was refused: the listener had closed.
    refused: AtomicUsize,
    /// The connection closed before any answer began: an idle kept-alive connection that the
    /// shutdown closed as the client reused it. The server never read the request (checked
    /// below against its log); RFC 9112 section 9.3.1 lets clients retry such requests.
    closed_before_answer: AtomicUsize,
    /// An answer that began but was truncated, malformed, or not 200/503: must stay 0.
    lost: AtomicUsize,
}

async fn one_request(client: &reqwest::Client, url: &str, token: &str, tally: &Tally) -> bool {
    let response = match client.get(url).bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Err(_) => {
            tally.closed_before_answer.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    };
    let status = response.status().as_u16();
    let body: Option<Value> = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match (status, body) {
        (200, Some(b)) if b["full_name"] == "Loaded" => &tally.served,
        (503, Some(b)) if b["error"] == "unavailable" => &tally.clean_503,
        _ => &tally.lost,
    }
    .fetch_add(1, Ordering::Relaxed);
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_every_answer_and_exits_zero_within_the_drain() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Loaded")).await;
    let dir = tempfile::tempdir().unwrap();
    let drain = Duration::from_secs(10);
    let mut cmd = bin(dir.path());
    cmd.env("DATABASE_URL", &db.url)
        .env("SUPABASE_JWT_SECRET", SECRET)
        .env("HOST", "127.0.0.1")
        .env("RUST_LOG", "warn,supabase_jwt_service=info")
        .env("SHUTDOWN_TIMEOUT_SECONDS", drain.as_secs().to_string());
    let server = Server::start(cmd);
    let url = server.url("/name");
    let token = token_for(user);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap();
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // 50 clients in a loop, each stopping at its first refused connection.
    let tally = Arc::new(Tally::default());
    let give_up = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        let (tally, give_up) = (tally.clone(), give_up.clone());
        clients.push(tokio::spawn(async move {
            while !give_up.load(Ordering::Relaxed)
                && one_request(&client, &url, &token, &tally).await
            {}
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A readiness probe whose request is half sent when the signal lands.
    let mut probe = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let served_before = tally.served.load(Ordering::Relaxed);
    server.sigterm();
    let signalled = Instant::now();
    // Finish the probe once the service says shutdown has begun: sooner, it may still
    // rightly answer 200.
    while !server.logs().contains("draining") {
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "no shutdown log: {}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    probe.write_all(b"\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), probe.read_to_end(&mut answer))
        .await
        .expect("readiness answer")
        .unwrap();
    let readyz_after = signalled.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");

    let mut server = server;
    let (server, status) = tokio::task::spawn_blocking(move || {
        let status = server.wait(drain + Duration::from_secs(5));
        (server, status)
    })
    .await
    .unwrap();
    let exited_after = signalled.elapsed();
    give_up.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("client loop ends")
            .unwrap();
    }

    let count = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    eprintln!(
        "shutdown under load: served {} (of which {} before SIGTERM), clean 503 {}, refused after close {}, \
         closed before an answer {}, lost {}; /readyz 503 after {readyz_after:?}; exit {status:?} after {exited_after:?}",
        count(&tally.served),
        served_before,
        count(&tally.clean_503),
        count(&tally.refused),
        count(&tally.closed_before_answer),
        count(&tally.lost),
    );
    assert_eq!(count(&tally.lost), 0, "truncated or malformed answers");
    assert!(served_before > 50, "the load never ran: {served_before}");
    assert!(status.success(), "{status:?}: {}", server.logs());
    assert!(
        exited_after < drain + Duration::from_secs(2),
        "{exited_after:?}"
    );
    assert!(readyz_after < Duration::from_secs(2), "{readyz_after:?}");
    let logs = server.logs();
    assert!(logs.contains("draining"), "{logs}");
    // Every answer the server finished reached a client: the warm-up request, the probe, and
    // what the clients counted. So requests closed before an answer were never processed.
    let answered = logs.matches("\"request completed\"").count();
    assert_eq!(
        answered,
        count(&tally.served) + count(&tally.clean_503) + 2,
        "answers the server finished vs answers the clients received"
    );
}
