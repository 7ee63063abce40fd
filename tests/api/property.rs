//! Property tests: arbitrary Authorization headers and mutated tokens never get a 5xx.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use tower::ServiceExt;
use uuid::Uuid;

use crate::helpers::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn status_for(
    rt: &tokio::runtime::Runtime,
    app: &axum::Router,
    header: Option<Vec<u8>>,
) -> StatusCode {
    let mut req = Request::get("/name");
    if let Some(value) = header {
        req = req.header("authorization", value);
    }
    let Ok(req) = req.body(Body::empty()) else {
        // Bytes no HTTP client could send as a header value: nothing to test.
        return StatusCode::UNAUTHORIZED;
    };
    rt.block_on(app.clone().oneshot(req)).unwrap().status()
}

fn app(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> axum::Router {
    let state = rt
        .block_on(supabase_jwt_service::build_state(sqlite_config(dir)))
        .unwrap();
    supabase_jwt_service::router(state)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_authorization_bytes_never_get_a_5xx(value in proptest::collection::vec(any::<u8>(), 0..600)) {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let app = app(&rt, dir.path());
        let status = status_for(&rt, &app, Some(value));
        prop_assert!(matches!(status.as_u16(), 400 | 401 | 403 | 404), "{status}");
    }

    #[test]
    fn mutated_valid_tokens_never_get_a_5xx_or_a_200(
        position in 0usize..400,
        replacement in any::<u8>(),
        scheme in prop_oneof![Just("Bearer "), Just("bearer "), Just("BEARER  ")],
    ) {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let app = app(&rt, dir.path());
        let demo: Uuid = DEMO_USER.parse().unwrap();
        let mut token = token_for(demo).into_bytes();
        let i = position % token.len();
        prop_assume!(token[i] != replacement);
        token[i] = replacement;
        let mut header = scheme.as_bytes().to_vec();
        header.extend_from_slice(&token);
        let status = status_for(&rt, &app, Some(header));
        prop_assert!(status.as_u16() < 500, "{status}");
        // A changed byte in the signed part or signature must never verify. (A change
        // to base64 padding-equivalent bits of the last character can, hence the allowance
        // only when the decoded bytes are identical, which the signature check then proves.)
        if status == StatusCode::OK {
            prop_assert!(i >= token.len() - 2, "mutation at {i} verified");
        }
    }
}
