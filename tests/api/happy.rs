//! The happy path on both stores, CORS, and readiness.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn postgres_name_and_me_answer_the_callers_profile() {
    let db = TestDb::new().await;
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.seed_user(ada, Some("Ada Lovelace")).await;
    db.seed_user(bob, None).await;
    let app = TestApp::spawn(pg_config(&db.url)).await;

    let r = app.get_with_token("/name", &token_for(ada)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"full_name": "Ada Lovelace"})
    );

    let r = app.get_with_token("/name", &token_for(bob)).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"full_name": null}));

    let me: Value = app
        .get_with_token("/me", &token_for(ada))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], json!(ada.to_string()));
    assert_eq!(me["email"], json!(format!("{ada}@example.com")));
    assert_eq!(me["role"], json!("authenticated"));
    assert_eq!(me["full_name"], json!("Ada Lovelace"));
}

#[tokio::test]
async fn postgres_put_name_updates_only_the_callers_row() {
    let db = TestDb::new().await;
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.seed_user(ada, Some("Ada")).await;
    db.seed_user(bob, Some("Bob")).await;
    let app = TestApp::spawn(pg_config(&db.url)).await;

    let r = app
        .client
        .put(app.url("/name"))
        .bearer_auth(token_for(ada))
        .json(&json!({"full_name": "  Ada King  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"full_name": "Ada King"})
    );
    assert_eq!(db.full_name(ada).await.as_deref(), Some("Ada King"));
    assert_eq!(db.full_name(bob).await.as_deref(), Some("Bob"));

    let r = app
        .client
        .put(app.url("/name"))
        .bearer_auth(token_for(ada))
        .json(&json!({"full_name": null}))
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(db.full_name(ada).await, None);

    let stranger = Uuid::new_v4();
    let r = app
        .client
        .put(app.url("/name"))
        .bearer_auth(token_for(stranger))
        .json(&json!({"full_name": "x"}))
        .send();
    assert_error(r.await.unwrap(), 404, "profile_not_found").await;
}

#[tokio::test]
async fn embedded_store_serves_the_demo_profile_and_updates_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(sqlite_config(dir.path())).await;
    let demo: Uuid = DEMO_USER.parse().unwrap();
    let r = app.get_with_token("/name", &token_for(demo)).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"full_name": "Demo User"})
    );
    let r = app
        .client
        .put(app.url("/name"))
        .bearer_auth(token_for(demo))
        .json(&json!({"full_name": "Grace"}))
        .send();
    assert_eq!(
        r.await.unwrap().json::<Value>().await.unwrap(),
        json!({"full_name": "Grace"})
    );
    let me: Value = app
        .get_with_token("/me", &token_for(demo))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["full_name"], json!("Grace"));
    assert_error(
        app.get_with_token("/name", &token_for(Uuid::new_v4()))
            .await,
        404,
        "profile_not_found",
    )
    .await;
    assert!(dir.path().join("t.db").exists());
}

#[tokio::test]
async fn health_and_readiness_on_a_healthy_store() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(pg_config(&db.url)).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["store"], "postgres");
}

#[tokio::test]
async fn readiness_turns_503_once_shutdown_begins() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = TestApp::spawn(sqlite_config(dir.path())).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    // Probes half sent when shutdown begins: the server still answers them while it drains.
    let mut ready = half_sent_get(&app, "/readyz").await;
    let mut live = half_sent_get(&app, "/healthz").await;
    // Accepted before the listener closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.begin_shutdown().await;
    let ready = finish_get(&mut ready).await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains(r#""error":"unavailable""#), "{ready}");
    let live = finish_get(&mut live).await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
}

/// A connection that has sent `GET path` without the blank line that ends the head.
async fn half_sent_get(app: &TestApp, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Ends the head `half_sent_get` began and reads the answer to the end.
async fn finish_get(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"Connection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let config = config_with(&url, |b| b.cors_allowed_origins(["http://localhost:3000"]));
    let app = TestApp::spawn(config).await;

    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/name"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let r = preflight("http://localhost:3000").await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");

    let r = preflight("https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    // Error answers carry the header too, so the browser lets the page read the 401.
    let r = app
        .client
        .get(app.url("/name"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let r = app
        .client
        .get(app.url("/name"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn without_cors_config_no_cors_headers_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(sqlite_config(dir.path())).await;
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/name"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn request_id_from_the_client_is_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(sqlite_config(dir.path())).await;
    let r = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn verified_tokens_are_cached_and_bad_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(sqlite_config(dir.path())).await;
    let demo: Uuid = DEMO_USER.parse().unwrap();
    let token = token_for(demo);
    for _ in 0..3 {
        assert_eq!(app.get_with_token("/name", &token).await.status(), 200);
    }
    assert_eq!(app.state.verifier().cached_tokens(), 1);
    let bad = sign_with(&claims(demo), "another-secret-of-sufficient-length-0123456");
    assert_eq!(app.get_with_token("/name", &bad).await.status(), 401);
    assert_eq!(app.state.verifier().cached_tokens(), 1);
}

#[tokio::test]
async fn optional_extractors_are_none_only_without_a_header() {
    use axum::{Router, routing::get};
    use supabase_jwt_service::ValidUser;

    async fn whoami(user: Option<ValidUser>) -> String {
        user.map_or_else(
            || "anonymous".to_owned(),
            |u| u.profile.full_name.unwrap_or_default(),
        )
    }

    let dir = tempfile::tempdir().unwrap();
    let state = supabase_jwt_service::AppState::build(sqlite_config(dir.path()))
        .await
        .unwrap();
    let app = supabase_jwt_service::App::new(state)
        .with_profile_routes()
        .merge(Router::new().route("/whoami", get(whoami)))
        .into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/whoami");
    let c = client();

    assert_eq!(
        c.get(&url).send().await.unwrap().text().await.unwrap(),
        "anonymous"
    );
    let demo: Uuid = DEMO_USER.parse().unwrap();
    let r = c
        .get(&url)
        .bearer_auth(token_for(demo))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "Demo User");
    // A bad token is still rejected rather than treated as anonymous.
    assert_invalid_token(c.get(&url).bearer_auth("not.a.token").send().await.unwrap()).await;
    assert_error(
        c.get(&url)
            .header("authorization", "Basic eDp5")
            .send()
            .await
            .unwrap(),
        401,
        "missing_token",
    )
    .await;
}
