//! Every row of the contract's error table, against a real Postgres over real HTTP.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

async fn app_with_user() -> (TestApp, TestDb, Uuid) {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada Lovelace")).await;
    (TestApp::spawn(pg_config(&db.url)).await, db, user)
}

#[tokio::test]
async fn no_authorization_header_is_missing_token_with_bare_challenge() {
    let (app, _db, _) = app_with_user().await;
    let headers = assert_error(app.get("/name").await, 401, "missing_token").await;
    assert_eq!(headers["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn another_scheme_is_missing_token() {
    let (app, _db, _) = app_with_user().await;
    let r = app
        .client
        .get(app.url("/name"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "missing_token").await;
}

#[tokio::test]
async fn bearer_scheme_is_matched_case_insensitively() {
    let (app, _db, user) = app_with_user().await;
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let r = app
            .client
            .get(app.url("/name"))
            .header("authorization", format!("{scheme} {}", token_for(user)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "scheme {scheme}");
    }
}

#[tokio::test]
async fn malformed_tokens_are_invalid_token() {
    let (app, _db, _) = app_with_user().await;
    for bad in [
        "abc",
        "a.b.c",
        "e30.e30.",
        "....",
        "Bearer",
        "eyJhbGciOiJIUzI1NiJ9.%%%.sig",
    ] {
        let r = app
            .client
            .get(app.url("/name"))
            .header("authorization", format!("Bearer {bad}"))
            .send()
            .await
            .unwrap();
        assert_invalid_token(r).await;
    }
    let r = app
        .client
        .get(app.url("/name"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_invalid_token(r).await;
}

#[tokio::test]
async fn bad_signature_is_invalid_token() {
    let (app, _db, user) = app_with_user().await;
    let token = sign_with(&claims(user), "some-other-secret-that-is-long-enough-0123");
    assert_invalid_token(app.get_with_token("/name", &token).await).await;
}

#[tokio::test]
async fn alg_none_is_invalid_token() {
    use base64_helpers::b64;
    let (app, _db, user) = app_with_user().await;
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(user))
    );
    assert_invalid_token(app.get_with_token("/name", &token).await).await;
    let token = format!("{}.{}.", b64(&json!({"alg": "None"})), b64(&claims(user)));
    assert_invalid_token(app.get_with_token("/name", &token).await).await;
}

#[tokio::test]
async fn algorithm_not_configured_is_invalid_token() {
    let (app, _db, user) = app_with_user().await;
    // HS384 with the right secret: we verify HS256 only.
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &claims(user),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_invalid_token(app.get_with_token("/name", &token).await).await;
    // ES256 without SUPABASE_URL: no key set, so no asymmetric algorithm is allowed.
    let header = base64_helpers::b64(&json!({"alg": "ES256", "kid": "k1"}));
    let token = format!("{header}.{}.c2ln", base64_helpers::b64(&claims(user)));
    assert_invalid_token(app.get_with_token("/name", &token).await).await;
}

#[tokio::test]
async fn claim_failures_are_invalid_token() {
    let (app, _db, user) = app_with_user().await;
    let now = jsonwebtoken::get_current_timestamp();
    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        ("expired", Box::new(move |c| c["exp"] = json!(now - 120))),
        (
            "not yet valid",
            Box::new(move |c| c["nbf"] = json!(now + 600)),
        ),
        (
            "issued in the future",
            Box::new(move |c| c["iat"] = json!(now + 600)),
        ),
        ("wrong aud", Box::new(|c| c["aud"] = json!("other"))),
        (
            "aud array without ours",
            Box::new(|c| c["aud"] = json!(["a", "b"])),
        ),
        (
            "missing aud",
            Box::new(|c| drop(c.as_object_mut().unwrap().remove("aud"))),
        ),
        (
            "missing exp",
            Box::new(|c| drop(c.as_object_mut().unwrap().remove("exp"))),
        ),
        (
            "missing sub",
            Box::new(|c| drop(c.as_object_mut().unwrap().remove("sub"))),
        ),
        ("non-uuid sub", Box::new(|c| c["sub"] = json!("user-42"))),
        ("numeric sub", Box::new(|c| c["sub"] = json!(42))),
        ("exp as string", Box::new(|c| c["exp"] = json!("soon"))),
    ];
    for (name, mutate) in mutations {
        let mut c = claims(user);
        mutate(&mut c);
        let r = app.get_with_token("/name", &sign(&c)).await;
        assert_eq!(r.status(), 401, "{name}");
        assert_invalid_token(r).await;
    }
}

#[tokio::test]
async fn leeway_accepts_small_clock_skew() {
    let (app, _db, user) = app_with_user().await;
    let now = jsonwebtoken::get_current_timestamp();
    let mut c = claims(user);
    c["exp"] = json!(now - 5);
    c["nbf"] = json!(now + 5);
    assert_eq!(app.get_with_token("/name", &sign(&c)).await.status(), 200);
}

#[tokio::test]
async fn wrong_issuer_is_invalid_token_when_issuer_configured() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let app = TestApp::spawn(config_with(&db.url, |b| {
        b.issuer("https://abcd.supabase.co/auth/v1")
    }))
    .await;
    let mut c = claims(user);
    c["iss"] = json!("https://evil.example/auth/v1");
    assert_invalid_token(app.get_with_token("/name", &sign(&c)).await).await;
    c["iss"] = json!("https://abcd.supabase.co/auth/v1");
    assert_eq!(app.get_with_token("/name", &sign(&c)).await.status(), 200);
}

#[tokio::test]
async fn project_api_keys_are_insufficient_scope() {
    let (app, _db, _) = app_with_user().await;
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    for role in ["anon", "service_role"] {
        let token = sign(&json!({"iss": "supabase-demo", "role": role, "exp": exp}));
        let headers = assert_error(
            app.get_with_token("/name", &token).await,
            403,
            "insufficient_scope",
        )
        .await;
        assert_eq!(
            headers["www-authenticate"],
            "Bearer error=\"insufficient_scope\""
        );
    }
}

#[tokio::test]
async fn two_authorization_headers_are_invalid_request() {
    let (app, _db, user) = app_with_user().await;
    let token = token_for(user);
    let r = app
        .client
        .get(app.url("/name"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn verified_user_without_row_is_profile_not_found() {
    let (app, db, _) = app_with_user().await;
    let stranger = Uuid::new_v4();
    assert_error(
        app.get_with_token("/name", &token_for(stranger)).await,
        404,
        "profile_not_found",
    )
    .await;
    db.seed_auth_user_only(stranger).await;
    assert_error(
        app.get_with_token("/me", &token_for(stranger)).await,
        404,
        "profile_not_found",
    )
    .await;
}

#[tokio::test]
async fn unreachable_store_is_a_fast_503_with_retry_after() {
    // Nothing listens on port 1: connections are refused at once.
    let app = TestApp::spawn(config_with(
        "postgres://postgres@127.0.0.1:1/postgres",
        |b| b,
    ))
    .await;
    let started = Instant::now();
    let headers = assert_error(
        app.get_with_token("/name", &token_for(Uuid::new_v4()))
            .await,
        503,
        "unavailable",
    )
    .await;
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_error(app.get("/readyz").await, 503, "unavailable").await;
}

#[tokio::test]
async fn unknown_route_and_wrong_method_answer_json() {
    let (app, _db, _) = app_with_user().await;
    assert_error(app.get("/nope").await, 404, "not_found").await;
    assert_error(app.get("/name/extra").await, 404, "not_found").await;
    let r = app.client.post(app.url("/name")).send().await.unwrap();
    assert_error(r, 405, "method_not_allowed").await;
    let r = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_error(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn put_name_body_errors() {
    let (app, db, user) = app_with_user().await;
    let token = token_for(user);
    let put = |body: Vec<u8>, content_type: Option<&'static str>| {
        let mut req = app
            .client
            .put(app.url("/name"))
            .bearer_auth(&token)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let json = Some("application/json");
    assert_error(
        put(b"{not json".to_vec(), json).await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        put(br#"{"full_name": 5}"#.to_vec(), json).await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        put(br#"["x"]"#.to_vec(), json).await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        put(br#"{}"#.to_vec(), json).await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    let long = format!(r#"{{"full_name": "{}"}}"#, "x".repeat(201));
    assert_error(
        put(long.into_bytes(), json).await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        put(br#"{"full_name": "a\u0000b"}"#.to_vec(), json)
            .await
            .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        put(br#"{"full_name": "x"}"#.to_vec(), Some("text/plain"))
            .await
            .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    assert_error(
        put(br#"{"full_name": "x"}"#.to_vec(), None).await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    let huge = format!(r#"{{"full_name": "{}"}}"#, "x".repeat(17 * 1024));
    assert_error(
        put(huge.into_bytes(), json).await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(
        db.full_name(user).await.as_deref(),
        Some("Ada Lovelace"),
        "nothing was written"
    );
}

#[tokio::test]
async fn put_name_checks_the_token_before_the_body() {
    let (app, _db, _) = app_with_user().await;
    let r = app
        .client
        .put(app.url("/name"))
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "missing_token").await;
}

pub mod base64_helpers {
    //! Unpadded base64url, for hand-made hostile tokens.
    pub fn b64(value: &serde_json::Value) -> String {
        b64_bytes(value.to_string().as_bytes())
    }

    pub fn b64_bytes(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
