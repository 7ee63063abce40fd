//! Hostile clients at the connection level: slow headers, oversized headers, idle
//! connections by the hundred, connections past the cap, bodies that never end.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The embedded store with short connection bounds, so the tests do not wait for long.
async fn app_with(
    dir: &std::path::Path,
    mutate: impl FnOnce(
        supabase_jwt_service::config::ConfigBuilder,
    ) -> supabase_jwt_service::config::ConfigBuilder,
) -> TestApp {
    let url = format!("sqlite://{}/t.db", dir.display());
    TestApp::spawn(config_with(&url, mutate)).await
}

/// Reads until the server closes the connection (or `limit` passes); returns what came back.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// Sends `request` on a fresh connection and returns the raw answer.
async fn exchange(app: &TestApp, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .0
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| {
        c.header_read_timeout(Duration::from_secs(1))
    })
    .await;

    // Slowloris: a header line every 200 ms, never the blank line that ends them.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut cut_after = None;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow
            .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            cut_after = Some(started.elapsed());
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut byte)).await
        {
            cut_after = Some(started.elapsed());
            break;
        }
    }
    let cut_after = cut_after.expect("slow client was never cut off");
    assert!(cut_after < Duration::from_secs(5), "{cut_after:?}");

    // A client that connects and sends nothing is closed the same way.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let (answer, silent_after) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(answer.is_empty(), "{answer}");
    eprintln!(
        "hostile: slowloris cut after {cut_after:?}, silent connection after {silent_after:?} (timeout 1 s)"
    );

    // Honest clients on the same server are untouched.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| {
        c.header_read_timeout(Duration::from_secs(1))
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, after) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(after < Duration::from_secs(4), "{after:?}");
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| c).await;

    let big = "a".repeat(20 * 1024);
    let answer = exchange(
        &app,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");

    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = exchange(
        &app,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");

    // A long but reasonable head (a large cookie) is still served.
    let fine = "a".repeat(12 * 1024);
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("cookie", fine)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn request_bodies_are_bounded_whatever_the_framing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| c).await;
    let token = token_for(DEMO_USER.parse().unwrap());

    // Announces 100 MB and sends none of it: refused without waiting for the body.
    let started = Instant::now();
    let answer = exchange(
        &app,
        format!(
            "PUT /name HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Chunked, no length: cut off once past the limit.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "PUT /name HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 4096, " ".repeat(4096));
    for _ in 0..8 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
}

#[tokio::test]
async fn a_body_trickled_in_is_bounded_by_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| c.request_timeout(Duration::from_secs(2))).await;
    let token = token_for(DEMO_USER.parse().unwrap());
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "PUT /name HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:.300}");
    assert!(started.elapsed() < Duration::from_secs(6));
    trickle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_do_not_starve_active_ones() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| c).await;
    let token = token_for(DEMO_USER.parse().unwrap());

    // 500 connections that never finish a request: half silent, half mid-header.
    let mut idle = Vec::new();
    for i in 0..500 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        if i % 2 == 0 {
            stream
                .write_all(b"GET /name HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(stream);
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let request = app.client.get(app.url("/name")).bearer_auth(&token);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let status = request.send().await.unwrap().status().as_u16();
            (status, started.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (status, took) = t.await.unwrap();
        assert_eq!(status, 200);
        slowest = slowest.max(took);
    }
    eprintln!(
        "hostile: 20 requests beside 500 idle connections, slowest {slowest:?}, all in {:?}",
        started.elapsed()
    );
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_slot_and_are_then_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| {
        c.http_max_connections(4)
            .header_read_timeout(Duration::from_secs(1))
    })
    .await;

    // Four silent clients take every slot ...
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... so the next client waits in the backlog until the header timeout frees one.
    let started = Instant::now();
    let r = app.get("/healthz").await;
    let waited = started.elapsed();
    assert_eq!(r.status(), 200);
    eprintln!("hostile: at the cap of 4, a new client was served after {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(
        waited >= Duration::from_millis(300),
        "served at once: the cap did not hold ({waited:?})"
    );
    drop(silent);
}
