//! The project's key set (`/auth/v1/.well-known/jwks.json`): fetched, cached and refreshed.
//!
//! How it stays off the request path:
//! - Readers look a `kid` up in an immutable snapshot (`Arc<Keys>`); the `RwLock` around it is
//!   held only long enough to clone that `Arc`. A new snapshot is built completely, then swapped.
//! - One background task per key set does every fetch: on a schedule taken from the answer's
//!   `Cache-Control` (at most [`MAX_CACHE`](freshness::MAX_CACHE), at least [`MIN_REFRESH`](freshness::MIN_REFRESH)), after failures with a
//!   short backoff, on [`KeySet::refresh`], and when a reader meets an unknown `kid`.
//!   Fetches therefore never run two at a time, and a reader whose request is cancelled cannot
//!   cancel a fetch other readers wait on.
//! - A reader with an unknown `kid` asks the task for a fetch, or joins the one under way, and
//!   waits (bounded) on a `watch` channel for its outcome. Unknown-`kid` fetches happen at most
//!   once per [`UNKNOWN_KID_COOLDOWN`]; inside the cooldown the reader is answered at once from
//!   the latest fetch.
//! - Either way the latest fetch decides what an unknown `kid` is: after a success, a token
//!   the project's set does not vouch for ([`AuthError::UnknownKid`], 401); only when no fetch
//!   has succeeded yet, or the latest failed, an outage ([`AuthError::KeySetUnavailable`], 503).
//!   The `kid` is chosen by whoever sent the token, so it is never the reason for a 5xx: Supabase
//!   publishes a standby key long before it signs with it, and the set is refreshed at least every
//!   [`MAX_CACHE`](freshness::MAX_CACHE), so a `kid` the latest good fetch lacks is almost always a bad token.
//! - A failed fetch keeps the last good snapshot serving.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use reqwest::Url;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::AuthError;
use super::cache::Thumbprint;

mod error;
mod freshness;
mod jwk;
mod refresher;

pub use error::KeySetError;

pub(crate) use jwk::VerifyingKey;
use jwk::{log_skipped, parse_jwk_set};
use refresher::{MAX_BODY_BYTES, refresher};

/// The `tracing` target of every key-set event.
const TARGET: &str = "supabase_jwt_service::jwks";

/// At most one refetch per this interval is caused by tokens with unknown `kid`s.
pub(crate) const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Upper bound on a reader's wait for a fetch: one fetch and some slack.
const WAIT_LIMIT: Duration = Duration::from_secs(12);

/// One immutable snapshot of the usable keys.
#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    fetched_at: Option<Instant>,
}

/// What the refresher publishes after each step; readers wait on it for fresh answers.
#[derive(Debug, Clone, Default)]
struct Status {
    /// Bumped each time a fetch finishes, or waiting readers are answered without one.
    generation: u64,
    /// A fetch is under way.
    in_flight: bool,
    /// At least one fetch has succeeded.
    loaded: bool,
    /// The outcome of the latest fetch (number of usable keys), if any finished.
    last: Option<Result<usize, KeySetError>>,
    /// When the latest unknown-`kid` fetch started, for the cooldown.
    on_demand_started: Option<Instant>,
}

impl Status {
    /// The answer for a `kid` the snapshot does not have, once no (further) fetch will be made
    /// for it: the latest fetch read the project's set, so the token names no key of the
    /// project's; or no fetch has succeeded yet or the latest failed, so it cannot be judged.
    fn unknown_kid(&self) -> AuthError {
        match self.last {
            Some(Ok(_)) => AuthError::UnknownKid,
            _ => AuthError::KeySetUnavailable,
        }
    }
}

/// The cached key set. Readers never wait on the network except to refetch for an unknown `kid`.
pub struct KeySet {
    url: Url,
    current: RwLock<Arc<Keys>>,
    status: watch::Receiver<Status>,
    /// Wakes the refresher: a reader wants a fetch, `refresh()` was called, or the set is dropped.
    wake: Arc<Notify>,
    /// The latest moment (in [`KeySet::ticks`]) a reader asked for a fetch for an unknown `kid`.
    wanted: AtomicU64,
    /// `refresh()` asked for a fetch regardless of schedule and cooldown.
    forced: AtomicBool,
    epoch: Instant,
    fixed: bool,
    /// At most one unknown-`kid` fetch per this interval ([`UNKNOWN_KID_COOLDOWN`] by default).
    cooldown: Duration,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("url", &self.url.as_str())
            .field("fixed", &self.fixed)
            .field("keys", &self.snapshot().by_kid.len())
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// A key set fetched from `url` with `client`.
    ///
    /// Called inside a Tokio runtime, this starts the background refresher, whose first fetch
    /// begins at once without blocking the caller; the task ends when the last `Arc` is dropped.
    /// Outside a runtime nothing is fetched and unknown `kid`s answer
    /// [`AuthError::KeySetUnavailable`].
    pub fn new(url: Url, client: reqwest::Client) -> Arc<Self> {
        Self::with_cooldown(url, client, UNKNOWN_KID_COOLDOWN)
    }

    /// [`KeySet::new`] with another unknown-`kid` cooldown than its 30 s: for
    /// tests, or an identity server that can take more (or fewer) refetches.
    pub fn with_cooldown(url: Url, client: reqwest::Client, cooldown: Duration) -> Arc<Self> {
        let (tx, rx) = watch::channel(Status::default());
        let mut key_set = Self::with_parts(url, rx, Keys::default(), false);
        key_set.cooldown = cooldown;
        let key_set = Arc::new(key_set);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(refresher(
                    Arc::downgrade(&key_set),
                    Arc::clone(&key_set.wake),
                    tx,
                    client,
                ));
            }
            Err(_) => tracing::warn!(
                target: TARGET,
                url = %key_set.url,
                "no Tokio runtime: the key set will not be fetched"
            ),
        }
        key_set
    }

    /// A key set holding the keys of the JWK set document `json`, as if fetched from `url`.
    /// It is never fetched or refreshed: an unknown `kid` is [`AuthError::UnknownKid`] at once.
    /// For tests, benchmarks, and deployments that pin their keys.
    pub fn from_jwks_json(url: Url, json: &str) -> Result<Arc<Self>, KeySetError> {
        let parsed = parse_jwk_set(json.as_bytes())?;
        log_skipped(&parsed.skipped, tracing::Level::WARN);
        let count = parsed.keys.len();
        let keys = Keys {
            by_kid: parsed.keys,
            fetched_at: Some(Instant::now()),
        };
        let (_, rx) = watch::channel(Status {
            loaded: true,
            last: Some(Ok(count)),
            ..Status::default()
        });
        Ok(Arc::new(Self::with_parts(url, rx, keys, true)))
    }

    fn with_parts(url: Url, status: watch::Receiver<Status>, keys: Keys, fixed: bool) -> Self {
        Self {
            url,
            current: RwLock::new(Arc::new(keys)),
            status,
            wake: Arc::new(Notify::new()),
            wanted: AtomicU64::new(0),
            forced: AtomicBool::new(false),
            epoch: Instant::now(),
            fixed,
            cooldown: UNKNOWN_KID_COOLDOWN,
        }
    }

    /// The key set's URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The key named `kid`.
    ///
    /// From the cached set when it has the `kid`. Otherwise one refetch is made (shared with
    /// every reader waiting at the same time, and at most once per [`UNKNOWN_KID_COOLDOWN`])
    /// and awaited, for a bounded time; inside the cooldown no fetch is made and the latest one
    /// answers at once. A `kid` still unknown after a successful latest fetch is
    /// [`AuthError::UnknownKid`]; when no fetch has succeeded yet, or the latest failed, it is
    /// [`AuthError::KeySetUnavailable`].
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, AuthError> {
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        if self.fixed {
            return Err(AuthError::UnknownKid);
        }
        let mut status = self.status.clone();
        let seen = status.borrow_and_update().clone();
        // A fetch may have landed between the lookup and reading the status.
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        if !seen.in_flight {
            if cooling_down(seen.on_demand_started, Instant::now(), self.cooldown) {
                // The set was read less than a cooldown ago. A key published since then signs
                // nothing yet (Supabase asks projects to let caches clear before a standby key
                // signs), and a 5xx would have clients retry, and pagers ring, for a token the
                // project does not vouch for.
                return Err(seen.unknown_kid());
            }
            tracing::debug!(target: TARGET, kid = %shorten(kid), "unknown kid: asking for a refetch");
            self.wanted.fetch_max(self.ticks(), Ordering::AcqRel);
            self.wake.notify_one();
        }
        // Either the fetch just asked for or the one under way answers (or, when another
        // reader's fetch started the cooldown first, the refresher answers from the latest
        // outcome); each is newer than what this reader saw.
        let waited = tokio::time::timeout(
            WAIT_LIMIT,
            status.wait_for(|s| s.generation > seen.generation),
        )
        .await;
        let answer = match waited {
            Ok(Ok(latest)) => latest.unknown_kid(),
            // The refresher is gone (no runtime, or shutting down) or stuck past any timeout.
            _ => return Err(AuthError::KeySetUnavailable),
        };
        self.lookup(kid).ok_or(answer)
    }

    /// Whether `kid` is in the current key set (no fetch). The token cache asks this on every
    /// hit, so a token whose key was revoked stops being accepted at the next refresh.
    pub fn has_key(&self, kid: &str) -> bool {
        self.snapshot().by_kid.contains_key(kid)
    }

    /// The thumbprint of the current key named `kid` (no fetch). The token cache compares it on
    /// every hit, so a token verified by material the set no longer holds under that `kid` is
    /// verified afresh.
    pub(crate) fn thumbprint(&self, kid: &str) -> Option<Thumbprint> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_kid
            .get(kid)
            .map(|key| key.thumbprint)
    }

    /// Whether a key set has been loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.status.borrow().loaded
    }

    /// Waits up to `limit` for the first successful load; returns whether it happened.
    pub async fn wait_until_ready(&self, limit: Duration) -> bool {
        let mut status = self.status.clone();
        matches!(
            tokio::time::timeout(limit, status.wait_for(|s| s.loaded)).await,
            Ok(Ok(_))
        )
    }

    /// How long ago the keys in use were fetched; `None` before the first successful fetch.
    pub fn age(&self) -> Option<Duration> {
        self.snapshot().fetched_at.map(|at| at.elapsed())
    }

    /// The `kid`s and algorithms of the usable keys, sorted by `kid`.
    pub fn kids(&self) -> Vec<(String, Algorithm)> {
        let mut kids: Vec<_> = self
            .snapshot()
            .by_kid
            .iter()
            .map(|(kid, key)| (kid.clone(), key.alg))
            .collect();
        kids.sort_by(|a, b| a.0.cmp(&b.0));
        kids
    }

    /// Fetches the key set now, ignoring schedule and cooldown, and returns the number of usable
    /// keys in it. The fetch runs on the background task like every other, so it never overlaps
    /// another; a failure keeps the previous keys in use.
    pub async fn refresh(&self) -> Result<usize, KeySetError> {
        if self.fixed {
            return Err(KeySetError::Fixed);
        }
        let mut status = self.status.clone();
        let seen = status.borrow_and_update().clone();
        // A fetch under way may have started before the caller's change: wait for the next one.
        let target = seen.generation + if seen.in_flight { 2 } else { 1 };
        self.forced.store(true, Ordering::Release);
        self.wake.notify_one();
        let waited =
            tokio::time::timeout(WAIT_LIMIT * 2, status.wait_for(|s| s.generation >= target)).await;
        match waited {
            Ok(Ok(latest)) => latest.last.clone().unwrap_or(Err(KeySetError::NotRunning)),
            Ok(Err(_)) => Err(KeySetError::NotRunning),
            Err(_) => Err(KeySetError::Timeout),
        }
    }

    fn snapshot(&self) -> Arc<Keys> {
        // Held only to clone the Arc; a panic elsewhere cannot leave a half-built set behind,
        // since sets are swapped whole, so a poisoned lock is still safe to read.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn lookup(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.snapshot().by_kid.get(kid).cloned()
    }

    fn swap(&self, keys: Keys) {
        let keys = Arc::new(keys);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = keys;
    }

    /// Replaces the keys with those of `json`, as a fetch would: for unit tests elsewhere in
    /// the crate that need a set whose material changes.
    #[cfg(test)]
    pub(crate) fn replace_keys(&self, json: &str) -> Result<(), KeySetError> {
        let parsed = parse_jwk_set(json.as_bytes())?;
        self.swap(Keys {
            by_kid: parsed.keys,
            fetched_at: Some(Instant::now()),
        });
        Ok(())
    }

    /// A monotonic clock in nanoseconds since this set was created, plus one (0 means "never").
    fn ticks(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

impl Drop for KeySet {
    fn drop(&mut self) {
        // Wakes the refresher so it notices the set is gone and ends.
        self.wake.notify_one();
    }
}

/// Whether the unknown-`kid` cooldown, started by the on-demand fetch of `on_demand_started`,
/// still holds further on-demand fetches back at `now`.
fn cooling_down(on_demand_started: Option<Instant>, now: Instant, cooldown: Duration) -> bool {
    on_demand_started.is_some_and(|started| now.saturating_duration_since(started) < cooldown)
}

/// A `kid` is chosen by whoever sent the token: log at most a bounded prefix of it.
fn shorten(kid: &str) -> &str {
    match kid.char_indices().nth(64) {
        Some((end, _)) => &kid[..end],
        None => kid,
    }
}

#[cfg(test)]
mod tests {
    use super::jwk::tests::{P256_X, P256_Y};
    use super::*;

    #[test]
    fn the_cooldown_runs_for_its_interval_after_an_on_demand_fetch() {
        let start = Instant::now();
        let cooldown = Duration::from_secs(30);
        assert!(!cooling_down(None, start, cooldown));
        assert!(cooling_down(Some(start), start, cooldown));
        assert!(cooling_down(
            Some(start),
            start + Duration::from_millis(29_999),
            cooldown
        ));
        assert!(!cooling_down(Some(start), start + cooldown, cooldown));
        assert!(!cooling_down(Some(start), start, Duration::ZERO));
    }

    #[test]
    fn only_an_unfetchable_set_makes_an_unknown_kid_an_outage() {
        let answer = |last| {
            Status {
                last,
                ..Status::default()
            }
            .unknown_kid()
        };
        assert_eq!(answer(Some(Ok(4))), AuthError::UnknownKid);
        assert_eq!(answer(Some(Ok(0))), AuthError::UnknownKid);
        assert_eq!(
            answer(Some(Err(KeySetError::Status(500)))),
            AuthError::KeySetUnavailable
        );
        assert_eq!(answer(None), AuthError::KeySetUnavailable);
    }

    #[test]
    fn a_logged_kid_is_at_most_64_characters() {
        let long = "k".repeat(11_000);
        assert_eq!(shorten(&long).len(), 64);
        assert_eq!(shorten("es256-key"), "es256-key");
        let wide = "\u{e9}".repeat(100);
        assert_eq!(shorten(&wide).chars().count(), 64);
    }

    #[tokio::test]
    async fn fixed_key_set_answers_unknown_kid_without_fetching() {
        let url: Url = "http://127.0.0.1:9/jwks.json".parse().expect("url");
        let json = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "ec"},
        ]})
        .to_string();
        let set = KeySet::from_jwks_json(url, &json).expect("key set");
        assert!(set.is_ready());
        assert_eq!(set.key("ec").await.map(|k| k.alg), Ok(Algorithm::ES256));
        assert_eq!(set.key("nope").await.err(), Some(AuthError::UnknownKid));
        assert_eq!(set.refresh().await, Err(KeySetError::Fixed));
    }
}
