//! Fuzzes what a client controls: the `Authorization` header, through `testing::bearer_token`
//! and `Verifier::verify` (HS256 with a fixed secret, and ES256/RS256/EdDSA with the key set of
//! `tests/fixtures/jwks/jwks.json`, loaded once and never refetched). The first input byte picks
//! a mode:
//!
//! - 0: the bytes are the header value;
//! - 1: the bytes are the token;
//! - 2: the bytes are header JSON, a 0x00, then payload JSON (or payload JSON alone), which
//!   the target signs with the secret, so the fuzzer reaches the claim checks behind the
//!   signature.
//!
//! Besides "never panics", every rejection must be a client error (4xx): with the key set
//! loaded, no token (an unknown `kid`, a `jku` or embedded `jwk`, a kid of thousands of bytes)
//! may be answered as an outage. And any token the verifier accepts is checked against the
//! rules independently: HS256 without `crit` (the target signs nothing else), `role`
//! authenticated, `aud` containing authenticated, a `sub` equal to the returned id (ignoring
//! case), `exp` not in the past.
#![no_main]

use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use supabase_jwt_service::auth::{KeySet, Verifier};
use supabase_jwt_service::testing::{MAX_TOKEN_LEN, bearer_token};
use supabase_jwt_service::{ApiError, Claims, Config};

const SECRET: &str = "fuzz-secret-for-the-verify-target-0123456789";
/// The default `JWT_LEEWAY_SECONDS`.
const LEEWAY: u64 = 30;
/// The integration tests' key set: ES256, RS256 and EdDSA keys (`es256-key`, `rs256-key`,
/// `eddsa-key`, `es256-noalg`) beside entries that are skipped.
const JWKS: &str = include_str!("../../tests/fixtures/jwks/jwks.json");

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let config = Config::builder()
        .database_url("postgres://unused@127.0.0.1:1/unused")
        .jwt_secret(SECRET)
        .build()
        .expect("config");
    // Fixed keys: an unknown kid is answered at once, never by a fetch, so one poll finishes
    // every verification.
    let key_set = KeySet::from_jwks_json(
        "http://127.0.0.1:9/auth/v1/.well-known/jwks.json"
            .parse()
            .expect("url"),
        JWKS,
    )
    .expect("fixture key set");
    Verifier::new(&config.auth, Some(key_set))
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => header_value(rest),
        1 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                check(token);
            }
        }
        _ => signed(rest),
    }
});

fn header_value(bytes: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(bytes) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    if let Ok(token) = bearer_token(&headers) {
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
        check(token);
    }
}

fn signed(bytes: &[u8]) {
    let (header, payload): (&[u8], &[u8]) = match bytes.iter().position(|b| *b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (br#"{"alg":"HS256","typ":"JWT"}"#, bytes),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HS256 signing cannot fail");
    check(&format!("{message}.{signature}"));
}

/// Verifies `token`; when rejected, checks the answer is a client error; when accepted,
/// checks that it deserved to be.
fn check(token: &str) {
    let claims = match verify(token) {
        None => panic!("verification waited, which a fixed key set never should"),
        Some(Err(reason)) => {
            let status = ApiError::from(reason).status();
            assert!(
                status.is_client_error(),
                "{reason:?} answered {status}: a token may never cause a 5xx"
            );
            return;
        }
        Some(Ok(claims)) => claims,
    };
    let mut parts = token.split('.');
    let header = parts
        .next()
        .and_then(decode)
        .expect("accepted: header is JSON");
    let payload = parts
        .next()
        .and_then(decode)
        .expect("accepted: payload is JSON");
    assert_eq!(header["alg"], "HS256", "accepted with {header}");
    assert!(header.get("crit").is_none(), "accepted with crit: {header}");
    assert_eq!(payload["role"], "authenticated", "accepted: {payload}");
    let aud_ok = match &payload["aud"] {
        Value::String(a) => a == "authenticated",
        Value::Array(items) => items.iter().any(|a| a == "authenticated"),
        _ => false,
    };
    assert!(aud_ok, "accepted with aud {}", payload["aud"]);
    // UUIDs compare without regard to case (RFC 9562 section 4); the id comes back lowercase.
    let sub = payload["sub"].as_str().expect("accepted: sub is a string");
    assert!(
        sub.eq_ignore_ascii_case(&claims.sub.to_string()),
        "accepted: sub {sub} differs from the returned id {}",
        claims.sub
    );
    let now = jsonwebtoken::get_current_timestamp();
    let exp = payload["exp"].as_f64().expect("accepted: exp is a number");
    assert!(
        exp + (LEEWAY as f64) >= now as f64,
        "accepted expired: {exp}"
    );
}

fn decode(segment: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Polls the verification once: with HS256 or a fixed key set it never waits (no key-set
/// fetch), so one poll finishes it. `None` if it would wait, which no input here should cause.
fn verify(token: &str) -> Option<Result<Claims, supabase_jwt_service::auth::AuthError>> {
    let mut future = std::pin::pin!(VERIFIER.verify(token));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}
