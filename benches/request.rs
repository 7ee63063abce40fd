//! One `GET /name` through the whole router (every middleware layer, the `ValidUser`
//! extractor, the handler and JSON encoding) over a store that answers from memory, so the
//! figure is the service's own CPU per request without the database or the network: what the
//! load test's "service CPU per request" is made of, apart from the kernel.
//!
//! `cargo bench --bench request -- --warm-up-time 1 --measurement-time 3`

// The same allocator as the binary, so the figure is the one the service sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::http::{Request, StatusCode, header};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use supabase_jwt_service::auth::Claims;
use supabase_jwt_service::config::LogFormat;
use supabase_jwt_service::store::{PoolStats, StoreFuture, UserRow};
use supabase_jwt_service::{
    AppState, Config, Instrumented, ShutdownFlag, UserStore, Verifier, router,
};
use tower::ServiceExt;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

const SECRET: &str = "bench-secret-for-hs256-0123456789abcdefgh";
/// As many distinct users (and tokens) as the load test rotates through.
const USERS: usize = 1000;

/// Every user has a profile, answered without I/O.
struct MemoryStore;

impl UserStore for MemoryStore {
    fn profile<'a>(&'a self, claims: &'a Claims) -> StoreFuture<'a, Option<UserRow>> {
        let row = UserRow {
            id: claims.sub.uuid(),
            full_name: Some("Ada Lovelace".to_owned()),
            avatar_url: None,
        };
        Box::pin(async move { Ok(Some(row)) })
    }

    fn set_full_name<'a>(
        &'a self,
        _claims: &'a Claims,
        _full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(async { Ok(None) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
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
    let config = Config::for_tests("sqlite://bench-unused.db", SECRET).expect("config");
    let state = AppState {
        verifier: Arc::new(Verifier::new(&config, None)),
        config: Arc::new(config),
        store: Arc::new(Instrumented::new(MemoryStore)),
        shutdown: ShutdownFlag::default(),
    };
    let app = router(state);
    let tokens: Vec<String> = (0..USERS).map(|_| token(Uuid::new_v4())).collect();
    let request = |token: &str| {
        Request::get("/name")
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
                .oneshot(request(token))
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
    let rotating = || {
        next.set((next.get() + 1) % USERS);
        request(&tokens[next.get()])
    };
    group.bench_function("get_name_rotating_hs256", |b| {
        b.to_async(&runtime).iter(|| answer(&app, rotating()));
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
        group.bench_function("get_name_rotating_hs256_info_json_log", |b| {
            b.to_async(&runtime).iter(|| answer(&app, rotating()));
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
