//! The verified-token cache under what users put in their own tokens (issue 12, item 2): the
//! real service binary, 4,096 distinct valid tokens for one user, each carrying about 6 KiB of
//! `user_metadata` (users write it with `supabase.auth.updateUser({ data })`, and every refresh
//! mints a new token), each sent once. The resource is measured, not inferred: the process's
//! peak resident memory (`VmHWM` in `/proc/<pid>/status`) must stay below 64 MiB.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::cli::{Server, bin};

const SECRET: &str = "token-cache-memory-test-hs256-secret-0123456789";
/// The embedded store's demo profile (migrations/sqlite).
const USER: &str = "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f";
const TOKENS: usize = 4_096;
const LIMIT_MIB: u64 = 64;

/// About 6 KiB of JSON shaped like what apps store: a profile, preferences, and lists of ids.
fn user_metadata(i: usize) -> Value {
    let preferences: serde_json::Map<String, Value> = (0..40)
        .map(|k| (format!("pref_{k}"), json!(k % 3 == 0)))
        .collect();
    json!({
        "display_name": format!("User number {i}"),
        "bio": "I like building things with Supabase. ".repeat(25),
        "preferences": preferences,
        "recent_item_ids": (0..1450).map(|n| n % 97).collect::<Vec<_>>(),
        "tags": (0..60).map(|n| format!("t{n}")).collect::<Vec<_>>(),
    })
}

fn token(i: usize, now: u64) -> String {
    let claims = json!({
        "sub": USER, "aud": "authenticated", "role": "authenticated",
        "exp": now + 3600, "iat": now, "session_id": uuid::Uuid::new_v4(),
        "email": "demo@example.com", "aal": "aal1", "is_anonymous": false,
        "user_metadata": user_metadata(i),
        "app_metadata": {"provider": "email", "providers": ["email"]},
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test]
async fn four_thousand_fat_tokens_keep_the_service_under_64_mib() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = bin(dir.path());
    cmd.env(
        "DATABASE_URL",
        format!("sqlite://{}/cache.db", dir.path().display()),
    )
    .env("SUPABASE_JWT_SECRET", SECRET)
    .env("HOST", "127.0.0.1");
    let server = Server::start(cmd);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .expect("client");

    let now = jsonwebtoken::get_current_timestamp();
    let sample = token(0, now);
    let metadata_bytes = user_metadata(0).to_string().len();
    assert!(
        (6 * 1024..8 * 1024).contains(&metadata_bytes),
        "about 6 KiB of metadata: {metadata_bytes}"
    );
    assert!(
        sample.len() <= supabase_jwt_service::testing::MAX_TOKEN_LEN,
        "the largest token the service accepts, not larger: {}",
        sample.len()
    );
    // The first request warms the process (store, allocator) so "before" is its resting size.
    let first = client
        .get(server.url("/name"))
        .bearer_auth(&sample)
        .send()
        .await
        .expect("request");
    assert_eq!(first.status(), 200, "{}", server.logs());
    let (hwm_before, rss_before) = memory_kib(server.pid());

    for i in 1..TOKENS {
        let response = client
            .get(server.url("/name"))
            .bearer_auth(token(i, now))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "token {i}");
    }
    let (hwm_after, rss_after) = memory_kib(server.pid());
    println!(
        "{TOKENS} tokens, {metadata_bytes} B of user_metadata each ({} B token): \
         VmHWM {} -> {} MiB, VmRSS {} -> {} MiB",
        sample.len(),
        hwm_before / 1024,
        hwm_after / 1024,
        rss_before / 1024,
        rss_after / 1024,
    );
    assert!(
        hwm_after < LIMIT_MIB * 1024,
        "peak RSS {} MiB is over {LIMIT_MIB} MiB",
        hwm_after / 1024
    );
}
