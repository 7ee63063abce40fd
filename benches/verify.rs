//! `Verifier::verify` per algorithm and on its common failure paths, with keys already loaded
//! (a fixed key set: no network), so the figures are verifications per second on one core.
//!
//! `cargo bench --bench verify -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use supabase_jwt_service::Config;
use supabase_jwt_service::auth::AuthError;
use supabase_jwt_service::auth::KeySet;
use supabase_jwt_service::auth::Verifier;

const SECRET: &str = "bench-secret-for-hs256-0123456789abcdefgh";
const ISSUER: &str = "http://127.0.0.1:54321/auth/v1";
const USER: &str = "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f";

fn claims(exp_offset: i64) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    let exp = now.saturating_add_signed(exp_offset);
    json!({
        "iss": ISSUER, "sub": USER, "aud": "authenticated", "role": "authenticated",
        "exp": exp, "iat": now - 60, "email": "demo@example.com", "aal": "aal1",
        "session_id": "0e6d1c3a-6f0e-4b8e-8d51-2f7c9a1b3c4d", "is_anonymous": false,
    })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// Flips one character in the middle of the signature, keeping the token well-formed.
fn corrupt_signature(token: &str) -> String {
    let dot = token.rfind('.').expect("three parts");
    let mut bytes = token.as_bytes().to_vec();
    let at = dot + (bytes.len() - dot) / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

/// A verifier over the fixture key set; `cache` turns the verified-token cache on or off.
fn build_verifier(cache: bool) -> Verifier {
    let config = Config::builder()
        .database_url("postgres://bench-unused@127.0.0.1:1/unused")
        .jwt_secret(SECRET)
        .issuer(ISSUER)
        // Every iteration verifies the same token: with the cache on, all but the first would
        // be lookups, not verifications.
        .token_cache_size(if cache { 4096 } else { 0 })
        .build()
        .expect("config");
    let key_set = KeySet::from_jwks_json(
        format!("{ISSUER}/.well-known/jwks.json")
            .parse()
            .expect("url"),
        include_str!("../tests/fixtures/jwks/jwks.json"),
    )
    .expect("fixture key set");
    Verifier::new(&config.auth, Some(Arc::clone(&key_set)))
}

fn bench_verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let verifier = build_verifier(false);
    let pem = |name: &str| -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/jwks/keys/{name}.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture key")
    };
    let es256 = EncodingKey::from_ec_pem(&pem("es256")).expect("es256");
    let rs256 = EncodingKey::from_rsa_pem(&pem("rs256")).expect("rs256");
    let eddsa = EncodingKey::from_ed_pem(&pem("eddsa")).expect("eddsa");
    let hs256 = EncodingKey::from_secret(SECRET.as_bytes());
    let valid = claims(3600);

    let cases: Vec<(&str, String, Option<AuthError>)> = vec![
        (
            "hs256",
            sign(Algorithm::HS256, "legacy", &hs256, &valid),
            None,
        ),
        (
            "es256",
            sign(Algorithm::ES256, "es256-key", &es256, &valid),
            None,
        ),
        (
            "rs256",
            sign(Algorithm::RS256, "rs256-key", &rs256, &valid),
            None,
        ),
        (
            "eddsa",
            sign(Algorithm::EdDSA, "eddsa-key", &eddsa, &valid),
            None,
        ),
        (
            "es256_expired",
            sign(Algorithm::ES256, "es256-key", &es256, &claims(-3600)),
            Some(AuthError::Expired),
        ),
        (
            "es256_bad_signature",
            corrupt_signature(&sign(Algorithm::ES256, "es256-key", &es256, &valid)),
            Some(AuthError::BadSignature),
        ),
        (
            "hs256_bad_signature",
            corrupt_signature(&sign(Algorithm::HS256, "legacy", &hs256, &valid)),
            Some(AuthError::BadSignature),
        ),
        (
            "es256_unknown_kid",
            sign(Algorithm::ES256, "no-such-kid", &es256, &valid),
            Some(AuthError::UnknownKid),
        ),
    ];

    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    for (name, token, expected_error) in &cases {
        // Measure only what was meant: each token gets the outcome its name says.
        let outcome = runtime.block_on(verifier.verify(token));
        assert_eq!(outcome.as_ref().err(), expected_error.as_ref(), "{name}");
        group.bench_function(*name, |b| {
            b.to_async(&runtime)
                .iter(|| async { black_box(verifier.verify(black_box(token)).await) });
        });
    }

    // For comparison: the same ES256 token answered from the verified-token cache.
    let cached = build_verifier(true);
    let (_, es256_token, _) = &cases[1];
    assert!(runtime.block_on(cached.verify(es256_token)).is_ok());
    group.bench_function("es256_cache_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cached.verify(black_box(es256_token)).await) });
    });
    let (_, hs256_token, _) = &cases[0];
    assert!(runtime.block_on(cached.verify(hs256_token)).is_ok());
    group.bench_function("hs256_cache_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cached.verify(black_box(hs256_token)).await) });
    });
    // A token as large as the service accepts, most of it user_metadata: what a hit costs
    // when users fill their own metadata (the cache clones the claims on every hit).
    let mut fat = claims(3600);
    fat["user_metadata"] = json!({
        "bio": "I like building things with Supabase. ".repeat(25),
        "recent_item_ids": (0..1250).map(|n| n % 97).collect::<Vec<_>>(),
    });
    let fat_token = sign(Algorithm::ES256, "es256-key", &es256, &fat);
    assert!(runtime.block_on(cached.verify(&fat_token)).is_ok());
    group.bench_function("es256_cache_hit_fat_metadata", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cached.verify(black_box(&fat_token)).await) });
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
