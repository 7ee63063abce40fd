//! A bounded cache of verified tokens, so a token seen again skips signature and claim checks.
//!
//! Keyed by SHA-256 of the token's bytes (a hit means the very same token), an entry never
//! outlives the token's `exp` (plus leeway), and an entry from the key set is dropped as soon as
//! its `kid` leaves the key set. PostgREST keeps a JWT cache on the same terms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{SHA256, digest};

use super::Claims;

const SHARDS: usize = 16;

type Key = [u8; 32];

struct Entry {
    claims: Claims,
    /// Seconds since the epoch after which the token is expired even with leeway.
    valid_until: u64,
    /// The key set's key that verified it; `None` for the HS256 secret.
    kid: Option<Arc<str>>,
}

/// What a lookup found.
pub enum Lookup {
    /// A verified, unexpired token; `kid` names the key-set key to re-check, if any.
    Hit(Claims, Option<Arc<str>>),
    /// Not cached (or no longer valid): verify it.
    Miss(Key),
}

/// The cache. `capacity` 0 disables it.
pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    /// A cache holding about `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Entry>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// Looks `token` up at time `now` (seconds since the epoch).
    pub fn get(&self, token: &str, now: u64) -> Lookup {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        let Ok(mut shard) = self.shard(&key).lock() else {
            return Lookup::Miss(key);
        };
        match shard.get(&key) {
            Some(entry) if entry.valid_until >= now => {
                Lookup::Hit(entry.claims.clone(), entry.kid.clone())
            }
            Some(_) => {
                shard.remove(&key);
                Lookup::Miss(key)
            }
            None => Lookup::Miss(key),
        }
    }

    /// Remembers a verified token until `valid_until`.
    pub fn insert(
        &self,
        key: Key,
        claims: &Claims,
        valid_until: u64,
        kid: Option<Arc<str>>,
        now: u64,
    ) {
        if !self.enabled() {
            return;
        }
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.valid_until >= now);
        }
        if shard.len() >= self.per_shard {
            // Still full of live tokens: drop a quarter; which ones matters little for a cache
            // whose misses only cost a verification.
            let drop: Vec<Key> = shard
                .keys()
                .take(self.per_shard.div_ceil(4))
                .copied()
                .collect();
            for k in drop {
                shard.remove(&k);
            }
        }
        shard.insert(
            key,
            Entry {
                claims: claims.clone(),
                valid_until,
                kid,
            },
        );
    }

    /// Forgets one token (its key-set key went away).
    pub fn remove(&self, token: &str) {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        if let Ok(mut shard) = self.shard(&key).lock() {
            shard.remove(&key);
        }
    }

    /// Number of cached tokens (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserId;
    use serde_json::Map;

    fn claims() -> Claims {
        let sub = UserId::parse("5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f").unwrap();
        Claims::from_payload(sub, 100, Map::new())
    }

    fn key_of(lookup: Lookup) -> Key {
        match lookup {
            Lookup::Miss(k) => k,
            Lookup::Hit(..) => panic!("expected a miss"),
        }
    }

    #[test]
    fn hit_until_valid_until_then_miss() {
        let cache = TokenCache::new(16);
        let key = key_of(cache.get("a.b.c", 10));
        cache.insert(key, &claims(), 50, None, 10);
        assert!(matches!(cache.get("a.b.c", 50), Lookup::Hit(..)));
        assert!(matches!(cache.get("a.b.d", 50), Lookup::Miss(_)));
        assert!(matches!(cache.get("a.b.c", 51), Lookup::Miss(_)));
        assert!(cache.is_empty(), "the expired entry was dropped");
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new(64);
        for i in 0..10_000 {
            let token = format!("token-{i}");
            let key = key_of(cache.get(&token, 0));
            cache.insert(key, &claims(), 1_000, None, 0);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = TokenCache::new(0);
        let key = key_of(cache.get("t", 0));
        cache.insert(key, &claims(), 10, None, 0);
        assert!(matches!(cache.get("t", 0), Lookup::Miss(_)));
    }
}
