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

/// What a generated part of a token should make of the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// Genuinely valid: the verifier must accept it.
    Valid,
    /// Allowed either way (e.g. a `null` nbf, which jsonwebtoken reads as absent).
    Either,
    /// Must be rejected.
    Invalid,
}

/// One field's value (`None`: absent) and what it makes of the token.
type Field = (Option<serde_json::Value>, Verdict);

/// Picks one of `cases`, a valid one six times in seven, so that whole tokens are often valid
/// and most invalid ones are wrong in one or two fields only.
fn field(cases: Vec<(Option<serde_json::Value>, Verdict)>) -> impl Strategy<Value = Field> {
    let (valid, other): (Vec<Field>, Vec<Field>) =
        cases.into_iter().partition(|(_, v)| *v == Verdict::Valid);
    prop_oneof![
        6 => proptest::sample::select(valid),
        1 => proptest::sample::select(other),
    ]
}

fn header_fields() -> impl Strategy<Value = Vec<(&'static str, Field)>> {
    use Verdict::*;
    use serde_json::json;
    let alg = field(vec![
        (Some(json!("HS256")), Valid),
        (Some(json!("HS384")), Invalid),
        (Some(json!("HS512")), Invalid),
        (Some(json!("none")), Invalid),
        (Some(json!("None")), Invalid),
        (Some(json!("hs256")), Invalid),
        (Some(json!("RS256")), Invalid),
        (Some(json!("ES256")), Invalid),
        (Some(json!("EdDSA")), Invalid),
        (Some(json!("PS256")), Invalid),
        (Some(json!(256)), Invalid),
        (None, Invalid),
    ]);
    let kid = field(vec![
        (None, Valid),
        (Some(json!("legacy-hs256-kid")), Valid),
        (Some(json!("../../etc/passwd")), Valid),
        (Some(json!(7)), Invalid),
        (Some(json!({"kid": "x"})), Invalid),
    ]);
    let crit = field(vec![
        (None, Valid),
        (Some(json!(["exp"])), Invalid),
        (Some(json!(["b64"])), Invalid),
        (Some(json!([])), Invalid),
        (Some(json!("exp")), Invalid),
    ]);
    let jku = field(vec![
        (None, Valid),
        (Some(json!("https://attacker.example/jwks.json")), Valid),
        (Some(json!("http://127.0.0.1:1/jwks.json")), Valid),
        (Some(json!(false)), Invalid),
    ]);
    let typ = field(vec![
        (Some(json!("JWT")), Valid),
        (None, Valid),
        (Some(json!(1)), Invalid),
    ]);
    (alg, kid, crit, jku, typ).prop_map(|(alg, kid, crit, jku, typ)| {
        vec![
            ("alg", alg),
            ("kid", kid),
            ("crit", crit),
            ("jku", jku),
            ("typ", typ),
        ]
    })
}

fn payload_fields(user: Uuid) -> impl Strategy<Value = Vec<(&'static str, Field)>> {
    use Verdict::*;
    use serde_json::json;
    let now = jsonwebtoken::get_current_timestamp();
    let exp = field(vec![
        (Some(json!(now + 3600)), Valid),
        (Some(json!(now as f64 + 3600.5)), Valid),
        (Some(json!(u64::MAX)), Valid),
        (Some(json!((now + 3600).to_string())), Invalid),
        (Some(json!(-1)), Invalid),
        (Some(json!(now - 3600)), Invalid),
        (Some(json!(1e300)), Invalid),
        (Some(json!(-1e300)), Invalid),
        (Some(json!(true)), Invalid),
        (Some(json!(null)), Invalid),
        (Some(json!({"at": now + 3600})), Invalid),
        (None, Invalid),
    ]);
    let aud = field(vec![
        (Some(json!("authenticated")), Valid),
        (Some(json!(["authenticated"])), Valid),
        (Some(json!(["other", "authenticated"])), Valid),
        (Some(json!({"authenticated": true})), Invalid),
        (Some(json!([["authenticated"]])), Invalid),
        (Some(json!("Authenticated")), Invalid),
        (Some(json!(5)), Invalid),
        (Some(json!([])), Invalid),
        (Some(json!(null)), Invalid),
        (None, Invalid),
    ]);
    let sub = field(vec![
        (Some(json!(user.to_string())), Valid),
        (Some(json!(user.as_u128().to_string())), Invalid),
        (Some(json!(12345)), Invalid),
        (Some(json!("bob")), Invalid),
        (Some(json!([user.to_string()])), Invalid),
        (Some(json!({"id": user.to_string()})), Invalid),
        (Some(json!(null)), Invalid),
        (None, Invalid),
    ]);
    let role = field(vec![
        (Some(json!("authenticated")), Valid),
        (Some(json!("anon")), Invalid),
        (Some(json!("service_role")), Invalid),
        (Some(json!(["authenticated"])), Invalid),
        (Some(json!(1)), Invalid),
        (None, Invalid),
    ]);
    let iat = field(vec![
        (None, Valid),
        (Some(json!(now)), Valid),
        (Some(json!(now as f64 - 0.5)), Valid),
        (Some(json!(now + 3600)), Invalid),
        (Some(json!("yesterday")), Invalid),
        (Some(json!(null)), Invalid),
    ]);
    let nbf = field(vec![
        (None, Valid),
        (Some(json!(now - 10)), Valid),
        (Some(json!(null)), Either),
        (Some(json!(now + 3600)), Invalid),
        (Some(json!("now")), Invalid),
        (Some(json!(-5)), Invalid),
    ]);
    (exp, aud, sub, role, iat, nbf).prop_map(|(exp, aud, sub, role, iat, nbf)| {
        vec![
            ("exp", exp),
            ("aud", aud),
            ("sub", sub),
            ("role", role),
            ("iat", iat),
            ("nbf", nbf),
        ]
    })
}

/// The JSON object of `fields` (absent ones left out) and the verdict the worst field gives.
fn object(fields: &[(&'static str, Field)]) -> (serde_json::Value, Verdict) {
    let mut map = serde_json::Map::new();
    let mut verdict = Verdict::Valid;
    for (name, (value, v)) in fields {
        if let Some(value) = value {
            map.insert((*name).to_owned(), value.clone());
        }
        verdict = verdict.max(*v);
    }
    (serde_json::Value::Object(map), verdict)
}

/// Signs `header.payload` with HS256 and `secret` whatever the header says, as an attacker
/// holding the secret's bytes (or replaying a token) could.
fn signed(header: &serde_json::Value, payload: &serde_json::Value, secret: &str) -> String {
    use crate::errors::base64_helpers::b64;
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

fn verifier() -> supabase_jwt_service::Verifier {
    let config = supabase_jwt_service::Config::for_tests("sqlite://unused.db", SECRET).unwrap();
    supabase_jwt_service::Verifier::new(&config, None)
}

fn verify(
    rt: &tokio::runtime::Runtime,
    verifier: &supabase_jwt_service::Verifier,
    token: &str,
) -> Result<supabase_jwt_service::Claims, supabase_jwt_service::auth::AuthError> {
    rt.block_on(verifier.verify(token))
}

fn base64_segment() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 0..200)
        .prop_map(|bytes| crate::errors::base64_helpers::b64_bytes(&bytes))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn verifier_rejects_arbitrary_bytes_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..1200),
    ) {
        let rt = runtime();
        let token = String::from_utf8_lossy(&bytes);
        prop_assert!(verify(&rt, &verifier(), &token).is_err());
    }

    #[test]
    fn verifier_rejects_three_arbitrary_base64_segments(
        parts in (base64_segment(), base64_segment(), base64_segment()),
    ) {
        let rt = runtime();
        let token = format!("{}.{}.{}", parts.0, parts.1, parts.2);
        prop_assert!(verify(&rt, &verifier(), &token).is_err());
    }

    #[test]
    fn verifier_accepts_exactly_the_genuinely_valid_tokens(
        header in header_fields(),
        payload in payload_fields(DEMO_USER.parse().unwrap()),
        right_key in proptest::bool::weighted(0.9),
    ) {
        let rt = runtime();
        let (header, header_verdict) = object(&header);
        let (payload, payload_verdict) = object(&payload);
        let secret = if right_key { SECRET } else { "an-attackers-guess-at-the-secret-0123456789" };
        let token = signed(&header, &payload, secret);
        let expected = if right_key { header_verdict.max(payload_verdict) } else { Verdict::Invalid };
        let got = verify(&rt, &verifier(), &token);
        match expected {
            Verdict::Valid => prop_assert!(got.is_ok(), "{header} {payload}: {got:?}"),
            Verdict::Invalid => prop_assert!(got.is_err(), "{header} {payload}: accepted"),
            Verdict::Either => {}
        }
        if let Ok(claims) = got {
            prop_assert_eq!(claims.sub.to_string(), DEMO_USER);
        }
    }

    #[test]
    fn bearer_parser_never_panics_and_returns_only_token68(
        value in proptest::collection::vec(any::<u8>(), 0..10_000),
    ) {
        let Ok(value) = axum::http::HeaderValue::from_bytes(&value) else {
            return Ok(());
        };
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::AUTHORIZATION, value);
        if let Ok(token) = supabase_jwt_service::auth::bearer::token(&headers) {
            prop_assert!(!token.is_empty() && token.len() <= supabase_jwt_service::auth::bearer::MAX_TOKEN_LEN);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));
        }
    }
}
