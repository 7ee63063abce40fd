//! A bounded cache of verified tokens, so a token seen again skips signature and claim checks.
//!
//! Keyed by SHA-256 of the token's bytes (a hit means the very same token), an entry never
//! outlives the token's `exp` (plus leeway), and an entry from the key set is trusted only while
//! the key set's key of its `kid` still has the material that verified it (its thumbprint).
//! PostgREST keeps a JWT cache on the same terms.
//!
//! The cache is bounded twice: in entries (`JWT_CACHE_SIZE`) and in bytes (`JWT_CACHE_BYTES`),
//! because users write their own `user_metadata` and every refresh mints a new token, so the
//! size of an entry is theirs to choose. Each entry's heap footprint is estimated (payload
//! text, typed fields, key id, hash-map slot, allocator rounding); an entry larger than
//! 1/64 of the budget (and never more than [`MAX_ENTRY_BYTES`]) is not cached at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{SHA256, digest};

use super::Claims;

const SHARDS: usize = 16;

/// The largest entry ever cached, whatever the budget: a token this big is verified each time.
pub(super) const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// An entry may take at most this fraction of the byte budget.
const ENTRY_FRACTION: usize = 64;

/// What the allocator adds to each allocation, on average (size classes and headers).
const ALLOCATION_OVERHEAD: usize = 16;

type Key = [u8; 32];

/// SHA-256 over a key's algorithm and public material.
pub(super) type Thumbprint = [u8; 32];

/// The key-set key that verified a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRef {
    /// The key's `kid`.
    pub kid: Arc<str>,
    /// The thumbprint of the material under that `kid` at verification time.
    pub thumbprint: Thumbprint,
}

struct Entry {
    claims: Claims,
    /// Seconds since the epoch after which the token is expired even with leeway.
    valid_until: u64,
    /// The key set's key that verified it; `None` for the HS256 secret, which cannot change
    /// while the process runs.
    key: Option<KeyRef>,
    /// This entry's estimated footprint, counted in its shard's total.
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry>,
    /// Sum of the entries' `bytes`.
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.map.remove(key) {
            self.bytes -= entry.bytes;
        }
    }
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A verified, unexpired token; `key` names the key-set key to re-check, if any.
    Hit(Claims, Option<KeyRef>),
    /// Not cached (or no longer valid): verify it.
    Miss(Key),
}

/// The cache. A capacity or a byte budget of 0 disables it.
pub(crate) struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    shard_bytes: usize,
    max_entry: usize,
}

fn cache_key(token: &str) -> Key {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    key
}

/// Estimated heap bytes of one entry: its hash-map slot (at the map's 7/8 load factor, with
/// its control byte), the claims' own allocations, the key id, and allocator rounding.
fn footprint(claims: &Claims, key: Option<&KeyRef>) -> usize {
    let slot = (std::mem::size_of::<(Key, Entry)>() + 1) * 8 / 7;
    let kid = key.map_or(0, |k| 2 * std::mem::size_of::<usize>() + k.kid.len());
    let allocations = 1
        + usize::from(key.is_some())
        + usize::from(!claims.role.is_empty())
        + usize::from(claims.email.is_some())
        + usize::from(claims.phone.is_some())
        + usize::from(claims.aal.is_some());
    slot + claims.heap_bytes() + kid + allocations * ALLOCATION_OVERHEAD
}

impl TokenCache {
    /// A cache holding at most about `capacity` tokens and `budget_bytes` bytes.
    pub(crate) fn new(capacity: usize, budget_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            shard_bytes: budget_bytes / SHARDS,
            max_entry: (budget_bytes / ENTRY_FRACTION).min(MAX_ENTRY_BYTES),
        }
    }

    /// Whether the cache is on.
    pub(crate) fn enabled(&self) -> bool {
        self.per_shard > 0 && self.max_entry > 0
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// Looks `token` up at time `now` (seconds since the epoch).
    pub(crate) fn get(&self, token: &str, now: u64) -> Lookup {
        let key = cache_key(token);
        let Ok(mut shard) = self.shard(&key).lock() else {
            return Lookup::Miss(key);
        };
        match shard.map.get(&key) {
            Some(entry) if entry.valid_until >= now => {
                Lookup::Hit(entry.claims.clone(), entry.key.clone())
            }
            Some(_) => {
                shard.remove(&key);
                Lookup::Miss(key)
            }
            None => Lookup::Miss(key),
        }
    }

    /// Remembers a verified token until `valid_until`, unless it is too large to be worth its
    /// share of the budget.
    pub(crate) fn insert(
        &self,
        key: Key,
        claims: &Claims,
        valid_until: u64,
        key_ref: Option<KeyRef>,
        now: u64,
    ) {
        if !self.enabled() {
            return;
        }
        let bytes = footprint(claims, key_ref.as_ref());
        if bytes > self.max_entry {
            return;
        }
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        // Two requests with the same new token may both have missed.
        shard.remove(&key);
        let full = |s: &Shard| s.map.len() >= self.per_shard || s.bytes + bytes > self.shard_bytes;
        if full(&shard) {
            let before = shard.map.len();
            shard.map.retain(|_, e| e.valid_until >= now);
            if shard.map.len() != before {
                shard.bytes = shard.map.values().map(|e| e.bytes).sum();
            }
        }
        if full(&shard) {
            // Still full of live tokens: free a quarter of the room at once, so that a stream
            // of new tokens does not evict on every insert. Which entries go matters little
            // for a cache whose misses only cost a verification.
            let keep_len = self.per_shard - self.per_shard.div_ceil(4);
            let keep_bytes = (self.shard_bytes - self.shard_bytes / 4).saturating_sub(bytes);
            let (mut len, mut total) = (shard.map.len(), shard.bytes);
            let mut evict = Vec::new();
            for (k, e) in &shard.map {
                if len <= keep_len && total <= keep_bytes {
                    break;
                }
                evict.push(*k);
                len -= 1;
                total -= e.bytes;
            }
            for k in &evict {
                shard.remove(k);
            }
        }
        shard.bytes += bytes;
        shard.map.insert(
            key,
            Entry {
                claims: claims.clone(),
                valid_until,
                key: key_ref,
                bytes,
            },
        );
    }

    /// Forgets one token (its key-set key went away or changed).
    pub(crate) fn remove(&self, token: &str) {
        let key = cache_key(token);
        if let Ok(mut shard) = self.shard(&key).lock() {
            shard.remove(&key);
        }
    }

    /// Number of cached tokens (for tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
            .sum()
    }

    /// Whether nothing is cached.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The estimated heap bytes of all cached entries (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.bytes).unwrap_or(0))
            .sum()
    }

    /// The byte budget, as configured (rounded down to whole shards).
    #[cfg(test)]
    pub(crate) fn budget_bytes(&self) -> usize {
        self.shard_bytes * SHARDS
    }

    /// The largest entry this cache keeps.
    #[cfg(test)]
    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.max_entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f";

    fn claims_with_metadata(bytes: usize) -> Claims {
        Claims::from_payload_json(&serde_json::json!({
            "sub": USER, "exp": 100, "role": "authenticated",
            "user_metadata": {"bio": "x".repeat(bytes)},
        }))
        .expect("claims")
    }

    fn claims() -> Claims {
        claims_with_metadata(0)
    }

    fn key_of(lookup: Lookup) -> Key {
        match lookup {
            Lookup::Miss(k) => k,
            Lookup::Hit(..) => panic!("expected a miss"),
        }
    }

    const MIB: usize = 1024 * 1024;

    #[test]
    fn hit_until_valid_until_then_miss() {
        let cache = TokenCache::new(16, MIB);
        let key = key_of(cache.get("a.b.c", 10));
        cache.insert(key, &claims(), 50, None, 10);
        assert!(matches!(cache.get("a.b.c", 50), Lookup::Hit(..)));
        assert!(matches!(cache.get("a.b.d", 50), Lookup::Miss(_)));
        assert!(matches!(cache.get("a.b.c", 51), Lookup::Miss(_)));
        assert!(cache.is_empty(), "the expired entry was dropped");
        assert_eq!(cache.bytes(), 0, "and its bytes with it");
    }

    #[test]
    fn stays_bounded_in_entries() {
        let cache = TokenCache::new(64, 16 * MIB);
        for i in 0..10_000 {
            let token = format!("token-{i}");
            let key = key_of(cache.get(&token, 0));
            cache.insert(key, &claims(), 1_000, None, 0);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(cache.len() >= 16, "eviction keeps most of the room in use");
    }

    #[test]
    fn stays_under_the_byte_budget_whatever_the_entries_weigh() {
        // The tokens: about 6 KiB of user_metadata each, far more of them than fit.
        let cache = TokenCache::new(1_000_000, MIB);
        let heavy = claims_with_metadata(6 * 1024);
        let mut payload_bytes_seen = 0;
        for i in 0..4_096 {
            let token = format!("token-{i}");
            let key = key_of(cache.get(&token, 0));
            cache.insert(key, &heavy, 1_000, None, 0);
            payload_bytes_seen += heavy.raw_json().len();
            assert!(cache.bytes() <= MIB, "after {i}: {}", cache.bytes());
        }
        assert!(payload_bytes_seen > 20 * MIB);
        let len = cache.len();
        assert!(len >= 64, "the budget is used, not emptied: {len}");
        assert!(
            len * heavy.raw_json().len() <= MIB,
            "the estimate counts at least the payload text: {len} entries"
        );
        assert_eq!(cache.budget_bytes(), MIB);
    }

    #[test]
    fn the_estimate_counts_text_fields_and_slot() {
        let light = footprint(&claims(), None);
        let heavy = footprint(&claims_with_metadata(6 * 1024), None);
        assert!(heavy >= light + 6 * 1024, "{light} {heavy}");
        assert!(light > claims().raw_json().len() + std::mem::size_of::<Entry>());
        let key = KeyRef {
            kid: Arc::from("es256-key"),
            thumbprint: [0; 32],
        };
        assert!(footprint(&claims(), Some(&key)) > light + "es256-key".len());
    }

    #[test]
    fn entries_over_a_sixty_fourth_of_the_budget_or_64_kib_are_not_cached() {
        // 64 KiB budget: entries up to 1 KiB.
        let small = TokenCache::new(100, 64 * 1024);
        assert_eq!(small.max_entry_bytes(), 1024);
        let key = key_of(small.get("light", 0));
        small.insert(key, &claims(), 1_000, None, 0);
        let key = key_of(small.get("heavy", 0));
        small.insert(key, &claims_with_metadata(2048), 1_000, None, 0);
        assert!(matches!(small.get("light", 0), Lookup::Hit(..)));
        assert!(matches!(small.get("heavy", 0), Lookup::Miss(_)));

        // A large budget still refuses anything over 64 KiB.
        let large = TokenCache::new(100, 1024 * MIB);
        assert_eq!(large.max_entry_bytes(), MAX_ENTRY_BYTES);
        let key = key_of(large.get("huge", 0));
        large.insert(key, &claims_with_metadata(70 * 1024), 1_000, None, 0);
        assert!(large.is_empty());
    }

    #[test]
    fn the_same_token_inserted_twice_is_counted_once() {
        let cache = TokenCache::new(16, MIB);
        // Concurrent requests with the same new token all miss, then all insert.
        let key = key_of(cache.get("t", 0));
        for _ in 0..3 {
            cache.insert(key, &claims(), 10, None, 0);
            cache.remove("other");
        }
        let once = footprint(&claims(), None);
        assert_eq!((cache.len(), cache.bytes()), (1, once));
    }

    #[test]
    fn a_hit_returns_the_key_that_verified_it() {
        let cache = TokenCache::new(16, MIB);
        let key = KeyRef {
            kid: Arc::from("k1"),
            thumbprint: [7; 32],
        };
        let k = key_of(cache.get("t", 0));
        cache.insert(k, &claims(), 10, Some(key.clone()), 0);
        match cache.get("t", 0) {
            Lookup::Hit(_, found) => assert_eq!(found, Some(key)),
            Lookup::Miss(_) => panic!("expected a hit"),
        }
    }

    #[test]
    fn zero_capacity_or_zero_bytes_caches_nothing() {
        for cache in [TokenCache::new(0, MIB), TokenCache::new(16, 0)] {
            assert!(!cache.enabled());
            let key = key_of(cache.get("t", 0));
            cache.insert(key, &claims(), 10, None, 0);
            assert!(matches!(cache.get("t", 0), Lookup::Miss(_)));
        }
    }
}
