//! One request through the whole router (every middleware layer, the extractors, the handler
//! and JSON encoding), in process, so the figure is the service's own CPU per request without
//! the network: `GET /claims` (a route of your own taking `Claims`: everything but the
//! database) and `GET /name` on the embedded store (the built-in read, SQLite in process).
//! What the load test's "service CPU per request" is made of, apart from the kernel and
//! Postgres.
//!
//! `cargo bench --bench request -- --warm-up-time 1 --measurement-time 3`

// The same allocator as the binary, so the figure is the one the service sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use supabase_jwt_service::config::LogFormat;
use supabase_jwt_service::{App, AppState, Claims, Config, Json};
use tower::ServiceExt;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

const SECRET: &str = "bench-secret-for-hs256-0123456789abcdefgh";
/// As many distinct users (and tokens) as the load test rotates through.
const USERS: usize = 1000;

/// A route of your own with the verified caller and no database.
async fn claims(claims: Claims) -> Json<serde_json::Value> {
    Json(json!({"sub": claims.sub}))
}

fn token(sub: Uuid) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "sub": sub,
        "aud": "authenticated",
        "role": "authenticated",
        "email": "ada@example.com",
        "iat": now,
        "exp": now + 3600,
        "session_id": Uuid::new_v4(),
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// One request through the router, its body read to the end.
async fn answer(app: &Router, req: Request<Body>) -> Bytes {
    let response = app.clone().oneshot(req).await.expect("infallible");
    black_box(to_bytes(response.into_body(), 1024).await.expect("body"))
}

fn bench_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::builder()
        .database_url(&format!("sqlite://{}/bench.db", dir.path().display()))
        .jwt_secret(SECRET)
        .listen(([127, 0, 0, 1], 0).into())
        .metrics_addr(None)
        .build()
        .expect("config");
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    let app = runtime.block_on(async {
        let state = AppState::build(config).await.expect("state");
        let pool =
            sqlx::SqlitePool::connect(&format!("sqlite://{}/bench.db", dir.path().display()))
                .await
                .expect("seed pool");
        for user in &users {
            sqlx::query("insert into users (id, full_name) values (?1, 'Ada Lovelace')")
                .bind(user.to_string())
                .execute(&pool)
                .await
                .expect("seed");
        }
        App::new(state)
            .with_profile_routes()
            .merge(Router::new().route("/claims", get(claims)))
            .into_router()
    });
    let tokens: Vec<String> = users.iter().map(|u| token(*u)).collect();
    let request = |path: &str, token: &str| {
        Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ORIGIN, "http://localhost:3000")
            .body(Body::empty())
            .expect("request")
    };
    // Measure only what was meant: every request is a 200 with the name.
    runtime.block_on(async {
        for token in &tokens {
            let response = app
                .clone()
                .oneshot(request("/name", token))
                .await
                .expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
            let body = to_bytes(response.into_body(), 1024).await.expect("body");
            assert_eq!(&body[..], br#"{"full_name":"Ada Lovelace"}"#);
        }
    });

    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    // The load test's case: rotating tokens, each already in the verified-token cache.
    let next = std::cell::Cell::new(0);
    let rotating = |path: &str| {
        next.set((next.get() + 1) % USERS);
        request(path, &tokens[next.get()])
    };
    group.bench_function("get_claims_rotating_hs256", |b| {
        b.to_async(&runtime)
            .iter(|| answer(&app, rotating("/claims")));
    });
    group.bench_function("get_name_sqlite_rotating_hs256", |b| {
        b.to_async(&runtime)
            .iter(|| answer(&app, rotating("/name")));
    });
    // The same with the production log setting (`RUST_LOG=info`, `LOG_FORMAT=json`): the
    // request span and one JSON line per request, written to a sink.
    {
        let subscriber = supabase_jwt_service::telemetry::subscriber(
            LogFormat::Json,
            EnvFilter::new("info"),
            std::io::sink,
        );
        let _default = tracing::subscriber::set_default(subscriber);
        group.bench_function("get_claims_rotating_hs256_info_json_log", |b| {
            b.to_async(&runtime)
                .iter(|| answer(&app, rotating("/claims")));
        });
    }
    group.bench_function("no_token_401", |b| {
        b.to_async(&runtime).iter(|| {
            answer(
                &app,
                Request::get("/name").body(Body::empty()).expect("request"),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, bench_request);
criterion_main!(benches);
