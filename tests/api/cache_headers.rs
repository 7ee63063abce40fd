//! Every answer to a request that carried `Authorization` is that caller's alone:
//! `Cache-Control: no-store` and `Vary: Authorization`, whatever the status.

use reqwest::header::{CACHE_CONTROL, HeaderMap, VARY};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

fn varies_on_authorization(headers: &HeaderMap) -> bool {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case("authorization"))
}

fn assert_private(headers: &HeaderMap, case: &str) {
    assert_eq!(
        headers.get(CACHE_CONTROL).and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "{case}: {headers:?}"
    );
    assert!(varies_on_authorization(headers), "{case}: {headers:?}");
}

#[tokio::test]
async fn authenticated_answers_are_never_cacheable_whatever_their_status() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let config = config_with(&db.url, |b| {
        b.cors_allowed_origins(["https://app.example.com"])
    });
    let app = TestApp::spawn(config).await;
    let token = token_for(user);

    for path in ["/name", "/me"] {
        let r = app.get_with_token(path, &token).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_private(r.headers(), path);
    }
    let r = app.put_name(&token, &json!({"full_name": "Ada L."})).await;
    assert_eq!(r.status(), 200);
    assert_private(r.headers(), "PUT /name");

    // Errors to a request with credentials: bad token, no profile, unknown route, bad scheme.
    let cases = [
        ("/name", "Bearer not-a-token".to_owned(), 401),
        (
            "/name",
            format!("Bearer {}", token_for(Uuid::new_v4())),
            404,
        ),
        ("/nowhere", format!("Bearer {token}"), 404),
        ("/name", "Basic dXNlcjpwYXNz".to_owned(), 401),
    ];
    for (path, authorization, status) in cases {
        let r = app
            .client
            .get(app.url(path))
            .header("authorization", &authorization)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), status, "{path} {authorization}");
        assert_private(r.headers(), &format!("{path} -> {status}"));
    }

    // A cross-origin request: CORS's own Vary stays, Authorization joins it.
    let r = app
        .client
        .get(app.url("/name"))
        .bearer_auth(&token)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_private(r.headers(), "cross-origin");
    assert!(
        r.headers()
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("origin")),
        "{:?}",
        r.headers()
    );

    // No credentials sent: nothing per-user to protect, so no Vary on Authorization.
    let r = app.get("/healthz").await;
    assert!(!varies_on_authorization(r.headers()), "{:?}", r.headers());
}
