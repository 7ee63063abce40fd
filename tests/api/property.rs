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
        .block_on(supabase_jwt_service::AppState::build(sqlite_config(dir)))
        .unwrap();
    supabase_jwt_service::App::new(state)
        .with_profile_routes()
        .into_router()
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

fn verifier() -> supabase_jwt_service::auth::Verifier {
    let config = config_with("sqlite://unused.db", |b| b);
    supabase_jwt_service::auth::Verifier::new(&config.auth, None)
}

fn verify(
    rt: &tokio::runtime::Runtime,
    verifier: &supabase_jwt_service::auth::Verifier,
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
        if let Ok(token) = supabase_jwt_service::testing::bearer_token(&headers) {
            prop_assert!(!token.is_empty() && token.len() <= supabase_jwt_service::testing::MAX_TOKEN_LEN);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));
        }
    }
}

// --- against a live key set ---------------------------------------------------------------------
//
// The tests above verify HS256 only. These run a service whose key set is fetched from a local
// server, as with SUPABASE_URL: tokens naming a `kid` reach the refetch and its cooldown.

/// The service over a key set fetched from a local server, built once and shared by every case,
/// so that the unknown-kid cooldown one case starts still runs for the next.
struct LiveKeySet {
    router: axum::Router,
    jwks: crate::jwks::JwksServer,
    issuer: String,
    _dir: tempfile::TempDir,
    // Last, so it shuts down after everything that runs on it.
    rt: tokio::runtime::Runtime,
}

impl LiveKeySet {
    fn start() -> Self {
        use crate::jwks::{JwksServer, Mode, fixture_jwks};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jwks = rt.block_on(JwksServer::start(Mode::Serve(fixture_jwks())));
        let config = config_with(&format!("sqlite://{}/t.db", dir.path().display()), |b| {
            b.supabase_url(&jwks.base)
        });
        let issuer = config.auth.issuer.clone().unwrap();
        let state = rt
            .block_on(supabase_jwt_service::AppState::build(config))
            .unwrap();
        let key_set = state.verifier().key_set().unwrap().clone();
        assert!(rt.block_on(key_set.wait_until_ready(std::time::Duration::from_secs(30))));
        Self {
            router: supabase_jwt_service::App::new(state)
                .with_profile_routes()
                .into_router(),
            jwks,
            issuer,
            _dir: dir,
            rt,
        }
    }

    /// A valid ES256 token for the demo user, signed by the set's `es256-key`.
    fn es256_token(&self) -> String {
        let mut claims = claims(DEMO_USER.parse().unwrap());
        claims["iss"] = serde_json::json!(self.issuer);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("es256-key".into());
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(crate::jwks::ES256_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn status(&self, token: &[u8]) -> StatusCode {
        let mut header = b"Bearer ".to_vec();
        header.extend_from_slice(token);
        status_for(&self.rt, &self.router, Some(header))
    }
}

/// How a case changes a valid ES256 token.
#[derive(Debug, Clone)]
enum Mutation {
    /// One byte replaced, anywhere in the token.
    Byte { position: usize, replacement: u8 },
    /// A new header (the payload and signature kept): another `kid`, `alg`, or a key of the
    /// token's own choosing (`jku`, `x5u`, an embedded `jwk`, `x5c`).
    Header(serde_json::Value),
}

fn header_mutation() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let alg = proptest::sample::select(vec!["ES256", "RS256", "EdDSA", "HS256", "none"]);
    let kid = prop_oneof![
        Just(None),
        Just(Some(json!("es256-key"))),
        "[a-zA-Z0-9_-]{0,40}".prop_map(|k| Some(json!(k))),
        any::<String>().prop_map(|k| Some(json!(k))),
        // Up to past the bearer limit: the kid is the header's bulk.
        (0usize..10_000).prop_map(|n| Some(json!("k".repeat(n)))),
        any::<i64>().prop_map(|n| Some(json!(n))),
    ];
    let standby: Value = serde_json::from_str::<Value>(include_str!(
        "../fixtures/jwks/tokens.json"
    ))
    .unwrap()["standby_jwk"]
        .clone();
    let own_key = prop_oneof![
        Just(None),
        Just(Some(("jku", json!("http://127.0.0.1:1/jwks.json")))),
        Just(Some(("x5u", json!("http://127.0.0.1:1/cert.pem")))),
        Just(Some(("jwk", standby))),
        Just(Some((
            "x5c",
            json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"])
        ))),
    ];
    (alg, kid, own_key).prop_map(|(alg, kid, own_key)| {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid;
        }
        if let Some((name, value)) = own_key {
            header[name] = value;
        }
        header
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(position, replacement)| Mutation::Byte {
            position,
            replacement
        }),
        header_mutation().prop_map(Mutation::Header),
    ]
}

/// `token` changed by `mutation`, and whether the result may still verify: unchanged, or
/// changed only in the padding-equivalent bits of the signature's last characters.
fn mutate(token: &str, mutation: &Mutation) -> (Vec<u8>, bool) {
    match mutation {
        Mutation::Byte {
            position,
            replacement,
        } => {
            let mut bytes = token.as_bytes().to_vec();
            let i = position % bytes.len();
            let may_verify = bytes[i] == *replacement || i >= bytes.len() - 2;
            bytes[i] = *replacement;
            (bytes, may_verify)
        }
        Mutation::Header(header) => {
            let rest = token.split_once('.').map_or("", |(_, rest)| rest);
            let mutated = format!("{}.{rest}", crate::errors::base64_helpers::b64(header));
            let unchanged = mutated == token;
            (mutated.into_bytes(), unchanged)
        }
    }
}

#[test]
fn mutated_es256_tokens_never_get_a_5xx_from_a_service_with_a_live_key_set() {
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    let live = LiveKeySet::start();
    let token = live.es256_token();
    assert_eq!(
        live.status(token.as_bytes()),
        StatusCode::OK,
        "mutations start from a token the service accepts"
    );
    let tally: RefCell<BTreeMap<u16, usize>> = RefCell::default();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 2000,
        ..RunnerConfig::default()
    });
    let outcome = runner.run(&mutation(), |mutation| {
        let (mutated, may_verify) = mutate(&token, &mutation);
        let status = live.status(&mutated);
        *tally.borrow_mut().entry(status.as_u16()).or_default() += 1;
        prop_assert!(
            status.as_u16() < 500,
            "{status} for {:.300}",
            String::from_utf8_lossy(&mutated)
        );
        prop_assert!(
            status != StatusCode::OK || may_verify,
            "{mutation:?} verified"
        );
        Ok(())
    });
    eprintln!(
        "property: mutated ES256 tokens against a live key set: statuses {:?}, {} key-set fetches",
        tally.borrow(),
        live.jwks.fetches()
    );
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    assert!(
        live.jwks.fetches() <= 3,
        "unknown kids refetch at most once per cooldown: {} fetches",
        live.jwks.fetches()
    );
}

/// The fuzz target's secret (`fuzz/fuzz_targets/verify_token.rs`): its signed mode's seeds
/// are signed with it.
const FUZZ_SECRET: &str = "fuzz-secret-for-the-verify-target-0123456789";

/// The `Authorization` value the fuzz target builds from `seed` (its first byte picks the
/// mode; see the target's comment), or `None` when the target would not build one either.
fn fuzz_authorization(seed: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (&mode, rest) = seed.split_first()?;
    match mode % 3 {
        0 => Some(rest.to_vec()),
        1 => std::str::from_utf8(rest)
            .ok()
            .map(|token| format!("Bearer {token}").into_bytes()),
        _ => {
            let (header, payload): (&[u8], &[u8]) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (br#"{"alg":"HS256","typ":"JWT"}"#, rest),
            };
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes()),
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap();
            Some(format!("Bearer {message}.{signature}").into_bytes())
        }
    }
}

#[tokio::test]
async fn the_fuzz_seed_corpus_gets_no_5xx_over_http_from_a_service_with_a_live_key_set() {
    use crate::jwks::{JwksServer, Mode, fixture_jwks};
    use std::collections::BTreeMap;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/verify_token");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    let asymmetric = seeds
        .iter()
        .filter(|(_, seed)| {
            let text = String::from_utf8_lossy(seed);
            ["ES256", "RS256", "EdDSA", "eyJhbGciOiJFUzI1NiIs"]
                .iter()
                .any(|alg| text.contains(alg))
        })
        .count();
    assert!(
        seeds.len() >= 12 && asymmetric >= 6,
        "the corpus reaches the key set: {} seeds, {asymmetric} asymmetric",
        seeds.len()
    );

    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let data = tempfile::tempdir().unwrap();
    let config = config_with(&format!("sqlite://{}/t.db", data.path().display()), |b| {
        b.supabase_url(&jwks.base).jwt_secret(FUZZ_SECRET)
    });
    let app = TestApp::spawn(config).await;
    let key_set = app.state.verifier().key_set().unwrap();
    assert!(
        key_set
            .wait_until_ready(std::time::Duration::from_secs(30))
            .await
    );

    let mut tally: BTreeMap<u16, usize> = BTreeMap::new();
    let mut server_errors = Vec::new();
    // Twice: the second round meets the unknown-kid cooldown the first one started.
    for round in 1..=2 {
        for (name, seed) in &seeds {
            let Some(value) = fuzz_authorization(seed)
                .and_then(|v| reqwest::header::HeaderValue::from_bytes(&v).ok())
            else {
                continue;
            };
            let response = app
                .client
                .get(app.url("/name"))
                .header(reqwest::header::AUTHORIZATION, value)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            *tally.entry(status).or_default() += 1;
            if status >= 500 {
                server_errors.push(format!("{name} (round {round}): {status}"));
            }
        }
    }
    eprintln!(
        "property: fuzz seed corpus ({} seeds, twice) over HTTP with a live key set: statuses \
         {tally:?}, {} key-set fetches",
        seeds.len(),
        jwks.fetches()
    );
    assert!(server_errors.is_empty(), "{server_errors:?}");
    assert!(tally.values().sum::<usize>() >= 2 * (seeds.len() - 1));
}
