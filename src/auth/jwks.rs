//! The project's key set (`/auth/v1/.well-known/jwks.json`): fetched, cached and refreshed.
//!
//! How it stays off the request path:
//! - Readers look a `kid` up in an immutable snapshot (`Arc<Keys>`); the `RwLock` around it is
//!   held only long enough to clone that `Arc`. A new snapshot is built completely, then swapped.
//! - One background task per key set does every fetch: on a schedule taken from the answer's
//!   `Cache-Control` (at most [`MAX_CACHE`], at least [`MIN_REFRESH`]), after failures with a
//!   short backoff, on [`KeySet::refresh`], and when a reader meets an unknown `kid`.
//!   Fetches therefore never run two at a time, and a reader whose request is cancelled cannot
//!   cancel a fetch other readers wait on.
//! - A reader with an unknown `kid` asks the task for a fetch and waits on a `watch` channel for
//!   its outcome. Unknown-`kid` fetches happen at most once per [`UNKNOWN_KID_COOLDOWN`]; inside
//!   the cooldown the reader is answered at once: `503` with the seconds left in the cooldown
//!   when the last fetch succeeded (the key may have been rotated in seconds ago), `503` as an
//!   outage when it failed.
//! - A failed fetch keeps the last good snapshot serving.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use reqwest::header::{ACCEPT, AGE, CACHE_CONTROL, HeaderMap};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::AuthError;
use super::cache::Thumbprint;
use crate::telemetry::metrics;

/// The `tracing` target of every key-set event.
const TARGET: &str = "supabase_jwt_service::jwks";

/// The longest a fetched key set is used before it is refetched (the contract's 10 minutes).
pub const MAX_CACHE: Duration = Duration::from_secs(600);
/// The shortest interval between scheduled refreshes, whatever `Cache-Control` says.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// At most one refetch per this interval is caused by tokens with unknown `kid`s.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Upper bound on one fetch, over the HTTP client's own timeouts (a custom client may have none).
const FETCH_LIMIT: Duration = Duration::from_secs(10);
/// Upper bound on a reader's wait for a fetch: one fetch and some slack.
const WAIT_LIMIT: Duration = Duration::from_secs(12);
/// A key set is a few kilobytes; refuse to buffer anything much larger.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// The smallest RSA modulus accepted (RFC 7518 section 3.3 asks for 2048 bits or more).
const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus the crypto backend verifies.
const MAX_RSA_BITS: usize = 8192;
/// After this many consecutive failures a warning is repeated (others log at debug).
const WARN_EVERY_FAILURES: u32 = 10;

/// base64url without padding, the canonical form for thumbprints (RFC 7638 section 3).
const B64URL_NO_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false),
);

/// base64url as JWKs use it (RFC 7515 section 2: no padding); padding is tolerated.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One verifying key from the key set, with the one algorithm it may verify.
pub struct VerifyingKey {
    /// The only algorithm this key verifies, decided from its `kty`/`crv`/`alg`.
    pub alg: Algorithm,
    /// The key material.
    pub key: DecodingKey,
    /// The RFC 7638 JWK thumbprint (SHA-256) of the public key: what a verified token
    /// remembers, so that new material published under an old `kid` does not inherit trust.
    pub thumbprint: Thumbprint,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why the key set could not be fetched (or refreshed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// The request did not complete: connection refused, timeout, TLS, reset.
    #[error("request failed: {0}")]
    Request(String),
    /// The server answered with a non-success status.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body is not a JWK set (`{"keys": [...]}`).
    #[error("not a JWK set: {0}")]
    Document(String),
    /// The body is larger than a key set has any reason to be.
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// No answer in time (the HTTP client's timeouts, or the fetch limit).
    #[error("no answer in time")]
    Timeout,
    /// No background task fetches this key set (created outside a Tokio runtime).
    #[error("no refresher is running for this key set")]
    NotRunning,
    /// A key set built from fixed keys; it is never fetched.
    #[error("this key set has fixed keys and is never fetched")]
    Fixed,
}

impl KeySetError {
    /// A fixed label for the `jwks_fetches_total` counter.
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Request(_) => "error",
            Self::Status(_) => "http_error",
            Self::Document(_) | Self::TooLarge => "invalid",
            Self::Timeout => "timeout",
            Self::NotRunning | Self::Fixed => "not_fetched",
        }
    }
}

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
    /// The latest `generation` bump finished a fetch (rather than answering readers who
    /// raced into the cooldown without one).
    fetched: bool,
}

impl Status {
    /// The answer for a `kid` this status's snapshot does not have.
    fn unknown_kid(&self) -> AuthError {
        match self.last {
            Some(Ok(_)) => AuthError::UnknownKid,
            _ => AuthError::KeySetUnavailable,
        }
    }

    /// The answer for a `kid` this status's snapshot does not have, when no fetch may be made
    /// for `left` more: the key set may have gained that key since the last fetch, so the
    /// token is not called invalid; the client is told when a fetch will be allowed.
    fn unknown_kid_cooling_down(&self, left: Duration) -> AuthError {
        match self.last {
            Some(Ok(_)) => AuthError::UnknownKidCoolingDown(whole_seconds(left)),
            _ => AuthError::KeySetUnavailable,
        }
    }
}

/// `d` rounded up to whole seconds, at least 1 (a `Retry-After` of 0 invites a busy loop).
fn whole_seconds(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
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

    /// [`KeySet::new`] with another unknown-`kid` cooldown than [`UNKNOWN_KID_COOLDOWN`]: for
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
    /// every reader waiting at the same time, and at most once per [`UNKNOWN_KID_COOLDOWN`]):
    /// still unknown after a successful fetch is [`AuthError::UnknownKid`]; when the key set
    /// cannot be fetched it is [`AuthError::KeySetUnavailable`]. Inside the cooldown, after a
    /// successful fetch, it is [`AuthError::UnknownKidCoolingDown`] with the seconds left: a
    /// key rotated in just after that fetch must not log its users out.
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, AuthError> {
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
            if let Some(left) = cooldown_left(seen.on_demand_started, Instant::now(), self.cooldown)
            {
                return Err(seen.unknown_kid_cooling_down(left));
            }
            tracing::debug!(target: TARGET, kid = %shorten(kid), "unknown kid: asking for a refetch");
            self.wanted.fetch_max(self.ticks(), Ordering::AcqRel);
            self.wake.notify_one();
        }
        // Either the fetch just asked for or the one under way answers; both are newer than
        // what this reader saw.
        let waited = tokio::time::timeout(
            WAIT_LIMIT,
            status.wait_for(|s| s.generation > seen.generation),
        )
        .await;
        let answer = match waited {
            Ok(Ok(latest)) if latest.fetched => latest.unknown_kid(),
            // Answered without a fetch: another reader's fetch started the cooldown first.
            Ok(Ok(latest)) => latest.unknown_kid_cooling_down(
                cooldown_left(latest.on_demand_started, Instant::now(), self.cooldown)
                    .unwrap_or_default(),
            ),
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
    pub fn thumbprint(&self, kid: &str) -> Option<Thumbprint> {
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

/// How long the unknown-`kid` cooldown still runs at `now`; `None` when no fetch is held back.
fn cooldown_left(
    on_demand_started: Option<Instant>,
    now: Instant,
    cooldown: Duration,
) -> Option<Duration> {
    let elapsed = now.saturating_duration_since(on_demand_started?);
    cooldown.checked_sub(elapsed).filter(|left| !left.is_zero())
}

/// A `kid` is chosen by whoever sent the token: log at most a bounded prefix of it.
fn shorten(kid: &str) -> &str {
    match kid.char_indices().nth(64) {
        Some((end, _)) => &kid[..end],
        None => kid,
    }
}

/// The background task that does every fetch of one key set.
async fn refresher(
    key_set: Weak<KeySet>,
    wake: Arc<Notify>,
    status: watch::Sender<Status>,
    client: reqwest::Client,
) {
    let mut next = Instant::now();
    let mut failures: u32 = 0;
    // Readers who asked at or before this tick have been (or are being) answered.
    let mut handled: u64 = 0;
    // What the last good fetch loaded (`None` before the first): logged in full only on change.
    let mut previous_summary: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {}
        }
        let Some(key_set) = key_set.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due = now >= next;
        let forced = key_set.forced.swap(false, Ordering::AcqRel);
        let asked = key_set.wanted.load(Ordering::Acquire) > handled;
        if !(due || forced || asked) {
            continue;
        }
        let on_demand = asked && !due && !forced;
        let last_on_demand = status.borrow().on_demand_started;
        if on_demand && cooldown_left(last_on_demand, now, key_set.cooldown).is_some() {
            // Readers raced past their own cooldown check: answer them from the last outcome.
            handled = key_set.ticks();
            status.send_modify(|s| {
                s.generation += 1;
                s.fetched = false;
            });
            continue;
        }
        handled = key_set.ticks();
        status.send_modify(|s| {
            s.in_flight = true;
            if on_demand {
                s.on_demand_started = Some(now);
            }
        });

        let result = match tokio::time::timeout(FETCH_LIMIT, fetch(&client, &key_set.url)).await {
            Ok(result) => result,
            Err(_) => Err(KeySetError::Timeout),
        };
        let outcome = match result {
            Ok(fetched) => {
                let count = fetched.keys.len();
                let summary = summarize(&fetched.keys);
                let changed = previous_summary.as_deref() != Some(summary.as_str());
                key_set.swap(Keys {
                    by_kid: fetched.keys,
                    fetched_at: Some(Instant::now()),
                });
                let refresh_in = refresh_interval(fetched.lifetime);
                next = Instant::now() + refresh_in;
                log_skipped(
                    &fetched.skipped,
                    if changed {
                        tracing::Level::WARN
                    } else {
                        tracing::Level::DEBUG
                    },
                );
                if changed || failures > 0 {
                    tracing::info!(
                        target: TARGET,
                        url = %key_set.url,
                        keys = count,
                        kids = %summary,
                        reason = if on_demand { "unknown kid" } else if forced { "requested" } else { "scheduled" },
                        refresh_in_s = refresh_in.as_secs(),
                        "key set loaded"
                    );
                } else {
                    tracing::debug!(
                        target: TARGET,
                        keys = count,
                        refresh_in_s = refresh_in.as_secs(),
                        "key set refreshed, unchanged"
                    );
                }
                previous_summary = Some(summary);
                failures = 0;
                metrics::jwks_fetch("ok");
                metrics::jwks_keys_loaded(count);
                Ok(count)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                metrics::jwks_fetch(error.metric_label());
                let retry_in = retry_interval(failures);
                next = Instant::now() + retry_in;
                let age_s = key_set.age().map(|a| a.as_secs());
                if failures == 1 || failures.is_multiple_of(WARN_EVERY_FAILURES) {
                    tracing::warn!(
                        target: TARGET,
                        url = %key_set.url,
                        %error,
                        failures,
                        serving_age_s = age_s,
                        retry_in_s = retry_in.as_secs(),
                        "key set fetch failed; keeping the last good keys"
                    );
                } else {
                    tracing::debug!(target: TARGET, %error, failures, "key set fetch failed again");
                }
                Err(error)
            }
        };
        status.send_modify(|s| {
            s.in_flight = false;
            s.generation += 1;
            s.fetched = true;
            s.loaded |= outcome.is_ok();
            s.last = Some(outcome);
        });
    }
}

/// What one successful fetch produced.
struct Fetched {
    keys: HashMap<String, Arc<VerifyingKey>>,
    skipped: Vec<(String, Skip)>,
    /// How long the answer may be cached, from `Cache-Control` and `Age`.
    lifetime: Option<Duration>,
}

async fn fetch(client: &reqwest::Client, url: &Url) -> Result<Fetched, KeySetError> {
    let mut response = client
        .get(url.clone())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(request_error)?;
    if !response.status().is_success() {
        return Err(KeySetError::Status(response.status().as_u16()));
    }
    let lifetime = freshness_lifetime(response.headers());
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(KeySetError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(KeySetError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let parsed = parse_jwk_set(&body)?;
    Ok(Fetched {
        keys: parsed.keys,
        skipped: parsed.skipped,
        lifetime,
    })
}

fn request_error(e: reqwest::Error) -> KeySetError {
    if e.is_timeout() {
        KeySetError::Timeout
    } else {
        KeySetError::Request(e.to_string())
    }
}

/// `kid:alg` pairs, sorted: what the logs say was loaded (never key material).
fn summarize(keys: &HashMap<String, Arc<VerifyingKey>>) -> String {
    let mut pairs: Vec<String> = keys
        .iter()
        .map(|(kid, key)| format!("{}:{:?}", shorten(kid), key.alg))
        .collect();
    pairs.sort();
    pairs.join(",")
}

fn log_skipped(skipped: &[(String, Skip)], level: tracing::Level) {
    for (kid, reason) in skipped {
        let kid = shorten(kid);
        // Keys meant for something else are expected in a JWK set; the rest deserve a look.
        if level == tracing::Level::WARN && !reason.is_expected() {
            tracing::warn!(target: TARGET, kid, %reason, "key set entry skipped");
        } else {
            tracing::debug!(target: TARGET, kid, %reason, "key set entry skipped");
        }
    }
}

/// How long after a successful fetch the next one happens: a tenth before the copy expires,
/// so a slow fetch still lands in time, never later than [`MAX_CACHE`] allows, and never more
/// often than [`MIN_REFRESH`].
fn refresh_interval(lifetime: Option<Duration>) -> Duration {
    let lifetime = lifetime.map_or(MAX_CACHE, |l| l.min(MAX_CACHE));
    (lifetime - lifetime / 10).max(MIN_REFRESH)
}

/// Backoff after `failures` consecutive failed fetches: 1 s, 2 s, 4 s, ... up to [`MIN_REFRESH`].
fn retry_interval(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(5);
    Duration::from_secs(1u64 << exponent).min(MIN_REFRESH)
}

/// The answer's freshness lifetime (RFC 9111 section 4.2): `max-age` less `Age`;
/// `no-store`/`no-cache` make it zero. `None` when `Cache-Control` says nothing usable.
fn freshness_lifetime(headers: &HeaderMap) -> Option<Duration> {
    let max_age = parse_cache_control(
        headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )?;
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(Duration::from_secs(max_age.saturating_sub(age)))
}

/// The `max-age` in seconds from `Cache-Control` header values (0 for `no-store`/`no-cache`;
/// the smallest when repeated). `None` when no usable directive is present.
fn parse_cache_control<'a>(values: impl Iterator<Item = &'a str>) -> Option<u64> {
    let mut max_age: Option<u64> = None;
    for directive in values.flat_map(|v| v.split(',')) {
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(0);
        }
        if name.eq_ignore_ascii_case("max-age")
            && let Some(seconds) = value.and_then(|v| v.parse::<u64>().ok())
        {
            max_age = Some(max_age.map_or(seconds, |m| m.min(seconds)));
        }
    }
    max_age
}

/// Why a JWK was left out of the usable keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Skip {
    #[error("not a JSON object with string members: {0}")]
    Shape(String),
    #[error("no kid: tokens name their key by kid")]
    NoKid,
    #[error("kid already used by an earlier key")]
    DuplicateKid,
    #[error("use is `{0}`, not `sig`")]
    NotForSignatures(String),
    #[error("key_ops does not include `verify`")]
    NotForVerifying,
    #[error("symmetric (oct) key: HS256 comes only from SUPABASE_JWT_SECRET")]
    Symmetric,
    #[error("unsupported key type `{0}`")]
    UnsupportedType(String),
    #[error("unsupported curve `{0}` for kty {1}")]
    UnsupportedCurve(String, &'static str),
    #[error("alg `{alg}` contradicts a {kty} key, which verifies {expected:?} only")]
    AlgMismatch {
        alg: String,
        kty: &'static str,
        expected: Algorithm,
    },
    #[error("RSA modulus of {0} bits (at least {MIN_RSA_BITS} and at most {MAX_RSA_BITS} needed)")]
    RsaSize(usize),
    #[error("bad key material: {0}")]
    Material(&'static str),
}

impl Skip {
    /// Entries a healthy key set may carry that simply are not for us.
    fn is_expected(&self) -> bool {
        matches!(
            self,
            Self::NotForSignatures(_) | Self::NotForVerifying | Self::Symmetric
        )
    }
}

/// The members of a JWK we read (RFC 7517 section 4, RFC 7518 section 6, RFC 8037).
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

struct ParsedSet {
    keys: HashMap<String, Arc<VerifyingKey>>,
    skipped: Vec<(String, Skip)>,
}

/// Parses a JWK set document. Entries that are not usable verifying keys are skipped (and
/// reported) one by one; only a document that is not a JWK set at all is an error.
fn parse_jwk_set(body: &[u8]) -> Result<ParsedSet, KeySetError> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| {
        KeySetError::Document(format!(
            "expected a JSON object with a `keys` array ({})",
            e.classify_name()
        ))
    })?;
    let mut keys = HashMap::new();
    let mut skipped = Vec::new();
    for (index, value) in set.keys.into_iter().enumerate() {
        let kid_for_log = value
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("#{index}"), str::to_owned);
        let result = serde_json::from_value::<Jwk>(value)
            .map_err(|e| Skip::Shape(e.classify_name().to_owned()))
            .and_then(|jwk| {
                let kid = jwk.kid.clone().ok_or(Skip::NoKid)?;
                if keys.contains_key(&kid) {
                    return Err(Skip::DuplicateKid);
                }
                Ok((kid, verifying_key(&jwk)?))
            });
        match result {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(reason) => skipped.push((kid_for_log, reason)),
        }
    }
    Ok(ParsedSet { keys, skipped })
}

/// A short, stable name for a serde_json error without echoing the input.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// The one algorithm a JWK may verify, from its type and curve; a contradicting `alg` skips
/// the key rather than being trusted (or ignored), and a missing `alg` takes the type's.
fn algorithm_for(kty: &str, crv: Option<&str>, alg: Option<&str>) -> Result<Algorithm, Skip> {
    let (expected, kty, accepted_names): (Algorithm, &'static str, &[&str]) = match kty {
        "EC" => match crv {
            Some("P-256") => (Algorithm::ES256, "EC P-256", &["ES256"]),
            Some(other) => return Err(Skip::UnsupportedCurve(other.to_owned(), "EC")),
            None => return Err(Skip::Material("EC key without crv")),
        },
        "RSA" => (Algorithm::RS256, "RSA", &["RS256"]),
        // RFC 9864 names Ed25519 as a fully-specified algorithm beside the older `EdDSA`.
        "OKP" => match crv {
            Some("Ed25519") => (Algorithm::EdDSA, "OKP Ed25519", &["EdDSA", "Ed25519"]),
            Some(other) => return Err(Skip::UnsupportedCurve(other.to_owned(), "OKP")),
            None => return Err(Skip::Material("OKP key without crv")),
        },
        "oct" => return Err(Skip::Symmetric),
        other => return Err(Skip::UnsupportedType(other.to_owned())),
    };
    match alg {
        None => Ok(expected),
        Some(name) if accepted_names.contains(&name) => Ok(expected),
        Some(name) => Err(Skip::AlgMismatch {
            alg: name.to_owned(),
            kty,
            expected,
        }),
    }
}

fn decode_b64(value: Option<&String>, missing: &'static str) -> Result<Vec<u8>, Skip> {
    let value = value.ok_or(Skip::Material(missing))?;
    B64URL
        .decode(value)
        .map_err(|_| Skip::Material("member is not base64url"))
}

/// Builds the verifying key for `jwk`, checking what the crypto backend would not check until
/// a token arrives: the curve, coordinate lengths, that the point is on the curve, RSA size.
fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, Skip> {
    if let Some(use_) = jwk.use_.as_deref()
        && use_ != "sig"
    {
        return Err(Skip::NotForSignatures(use_.to_owned()));
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|op| op == "verify")
    {
        return Err(Skip::NotForVerifying);
    }
    let kty = jwk.kty.as_deref().ok_or(Skip::Material("no kty"))?;
    let alg = algorithm_for(kty, jwk.crv.as_deref(), jwk.alg.as_deref())?;
    let (key, thumbprint) = match alg {
        Algorithm::ES256 => {
            let x = decode_b64(jwk.x.as_ref(), "EC key without x")?;
            let y = decode_b64(jwk.y.as_ref(), "EC key without y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(Skip::Material("P-256 coordinates must be 32 bytes each"));
            }
            // SEC 1 uncompressed point: 0x04 || x || y, the form the verifier takes.
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .map_err(|_| Skip::Material("point is not on P-256"))?;
            let thumbprint = jwk_thumbprint(&[
                ("crv", "P-256"),
                ("kty", "EC"),
                ("x", &B64URL_NO_PAD.encode(&x)),
                ("y", &B64URL_NO_PAD.encode(&y)),
            ]);
            (DecodingKey::from_ec_der(&point), thumbprint)
        }
        Algorithm::EdDSA => {
            let x = decode_b64(jwk.x.as_ref(), "OKP key without x")?;
            if x.len() != 32 {
                return Err(Skip::Material("Ed25519 public key must be 32 bytes"));
            }
            ParsedPublicKey::new(&ED25519, &x)
                .map_err(|_| Skip::Material("not an Ed25519 public key"))?;
            let thumbprint = jwk_thumbprint(&[
                ("crv", "Ed25519"),
                ("kty", "OKP"),
                ("x", &B64URL_NO_PAD.encode(&x)),
            ]);
            (DecodingKey::from_ed_der(&x), thumbprint)
        }
        Algorithm::RS256 => {
            let n = decode_b64(jwk.n.as_ref(), "RSA key without n")?;
            let e = decode_b64(jwk.e.as_ref(), "RSA key without e")?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            let bits = bit_length(n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(Skip::RsaSize(bits));
            }
            // Public exponents are odd and small (65537 in practice); 1 would verify anything.
            if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
                return Err(Skip::Material(
                    "RSA exponent is not a usable public exponent",
                ));
            }
            let thumbprint = jwk_thumbprint(&[
                ("e", &B64URL_NO_PAD.encode(e)),
                ("kty", "RSA"),
                ("n", &B64URL_NO_PAD.encode(n)),
            ]);
            (DecodingKey::from_rsa_raw_components(n, e), thumbprint)
        }
        // algorithm_for returns only the three above.
        _ => return Err(Skip::Material("unsupported algorithm")),
    };
    Ok(VerifyingKey {
        alg,
        key,
        thumbprint,
    })
}

/// RFC 7638: SHA-256 of the JSON object of a key's required members, in lexicographic order,
/// without whitespace. `members` come sorted; their values are base64url or fixed names, which
/// need no JSON escaping.
fn jwk_thumbprint(members: &[(&str, &str)]) -> Thumbprint {
    let mut json = String::with_capacity(200);
    json.push('{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        for part in ["\"", name, "\":\"", value, "\""] {
            json.push_str(part);
        }
    }
    json.push('}');
    let mut thumbprint = [0u8; 32];
    thumbprint.copy_from_slice(digest(&SHA256, json.as_bytes()).as_ref());
    thumbprint
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn bit_length(big_endian: &[u8]) -> usize {
    match big_endian.first() {
        None => 0,
        Some(first) => (big_endian.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_p256_maps_to_es256_with_or_without_alg() {
        assert_eq!(
            algorithm_for("EC", Some("P-256"), None),
            Ok(Algorithm::ES256)
        );
        assert_eq!(
            algorithm_for("EC", Some("P-256"), Some("ES256")),
            Ok(Algorithm::ES256)
        );
    }

    #[test]
    fn rsa_maps_to_rs256_with_or_without_alg() {
        assert_eq!(algorithm_for("RSA", None, None), Ok(Algorithm::RS256));
        assert_eq!(
            algorithm_for("RSA", None, Some("RS256")),
            Ok(Algorithm::RS256)
        );
    }

    #[test]
    fn okp_ed25519_maps_to_eddsa_with_either_name_or_none() {
        for alg in [None, Some("EdDSA"), Some("Ed25519")] {
            assert_eq!(
                algorithm_for("OKP", Some("Ed25519"), alg),
                Ok(Algorithm::EdDSA)
            );
        }
    }

    #[test]
    fn alg_contradicting_the_key_type_is_skipped() {
        for (kty, crv, alg) in [
            ("RSA", None, "ES256"),
            ("RSA", None, "HS256"),
            ("RSA", None, "PS256"),
            ("EC", Some("P-256"), "RS256"),
            ("EC", Some("P-256"), "ES384"),
            ("OKP", Some("Ed25519"), "ES256"),
        ] {
            assert!(
                matches!(
                    algorithm_for(kty, crv, Some(alg)),
                    Err(Skip::AlgMismatch { .. })
                ),
                "{kty} {crv:?} {alg}"
            );
        }
    }

    #[test]
    fn symmetric_keys_other_curves_and_types_are_skipped() {
        assert_eq!(
            algorithm_for("oct", None, Some("HS256")),
            Err(Skip::Symmetric)
        );
        assert!(matches!(
            algorithm_for("EC", Some("P-384"), Some("ES384")),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("EC", Some("secp256k1"), None),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("OKP", Some("Ed448"), Some("EdDSA")),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("OKP", Some("X25519"), None),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("AKP", None, None),
            Err(Skip::UnsupportedType(_))
        ));
    }

    // The P-256 generator point and RFC 8037's Ed25519 example key: real keys, made-up kids.
    const P256_X: &str = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
    const P256_Y: &str = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";
    const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn parse(json: serde_json::Value) -> ParsedSet {
        parse_jwk_set(json.to_string().as_bytes()).expect("a JWK set")
    }

    #[test]
    fn usable_keys_load_and_others_are_skipped_one_by_one() {
        let set = parse(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "ec", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED25519_X, "kid": "ed", "alg": "EdDSA"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "enc", "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_X, "kid": "off-curve"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "ec"},
            "not an object",
        ]}));
        let mut kids: Vec<_> = set.keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["ec", "ed"]);
        assert_eq!(set.keys["ec"].alg, Algorithm::ES256);
        assert_eq!(set.keys["ed"].alg, Algorithm::EdDSA);
        let reasons: Vec<_> = set.skipped.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(reasons.len(), 6);
        assert_eq!(reasons[0], Skip::NotForSignatures("enc".into()));
        assert_eq!(reasons[1], Skip::Symmetric);
        assert_eq!(reasons[2], Skip::NoKid);
        assert_eq!(reasons[3], Skip::Material("point is not on P-256"));
        assert_eq!(reasons[4], Skip::DuplicateKid);
        assert!(matches!(reasons[5], Skip::Shape(_)));
    }

    #[test]
    fn small_rsa_modulus_is_skipped() {
        let n_1024 = B64URL.encode([0xc5u8; 128]);
        let set = parse(serde_json::json!({"keys": [
            {"kty": "RSA", "n": n_1024, "e": "AQAB", "kid": "weak"},
        ]}));
        assert!(set.keys.is_empty());
        assert_eq!(set.skipped[0].1, Skip::RsaSize(1024));
    }

    #[test]
    fn rsa_leading_zero_does_not_count_towards_size() {
        let mut n = vec![0u8];
        n.extend_from_slice(&[0xc5u8; 256]);
        let set = parse(serde_json::json!({"keys": [
            {"kty": "RSA", "n": B64URL.encode(&n), "e": "AQAB", "kid": "ok"},
            {"kty": "RSA", "n": B64URL.encode(&n), "e": "AQ", "kid": "e-is-one"},
        ]}));
        assert_eq!(set.keys["ok"].alg, Algorithm::RS256);
        assert!(!set.keys.contains_key("e-is-one"));
    }

    #[test]
    fn a_document_without_keys_is_an_error_and_an_empty_set_is_not() {
        assert!(parse_jwk_set(b"{}").is_err());
        assert!(parse_jwk_set(b"<html>").is_err());
        assert!(parse_jwk_set(br#"{"keys": []}"#).is_ok_and(|s| s.keys.is_empty()));
    }

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(
            parse_cache_control(["public, max-age=300"].into_iter()),
            Some(300)
        );
        assert_eq!(
            parse_cache_control(["Max-Age=\"120\", must-revalidate"].into_iter()),
            Some(120)
        );
        assert_eq!(
            parse_cache_control(["max-age=600", "max-age=60"].into_iter()),
            Some(60)
        );
    }

    #[test]
    fn cache_control_no_store_or_no_cache_means_zero() {
        assert_eq!(
            parse_cache_control(["no-store, max-age=600"].into_iter()),
            Some(0)
        );
        assert_eq!(parse_cache_control(["no-cache"].into_iter()), Some(0));
    }

    #[test]
    fn cache_control_without_usable_directive_is_none() {
        assert_eq!(parse_cache_control(["public"].into_iter()), None);
        assert_eq!(parse_cache_control(["max-age=soon"].into_iter()), None);
        assert_eq!(parse_cache_control(std::iter::empty()), None);
    }

    #[test]
    fn freshness_subtracts_age() {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, "max-age=600".parse().expect("header"));
        headers.insert(AGE, "100".parse().expect("header"));
        assert_eq!(freshness_lifetime(&headers), Some(Duration::from_secs(500)));
    }

    #[test]
    fn refresh_interval_is_capped_floored_and_early() {
        assert_eq!(refresh_interval(None), Duration::from_secs(540));
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(86_400))),
            Duration::from_secs(540)
        );
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(300))),
            Duration::from_secs(270)
        );
        assert_eq!(refresh_interval(Some(Duration::ZERO)), MIN_REFRESH);
        assert_eq!(refresh_interval(Some(Duration::from_secs(5))), MIN_REFRESH);
    }

    #[test]
    fn retry_backs_off_up_to_the_refresh_floor() {
        let secs: Vec<u64> = (1..=8).map(|n| retry_interval(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn thumbprint_is_rfc_7638s_example() {
        // RFC 7638 section 3.1: this RSA key's thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let set = parse(serde_json::json!({"keys": [
            {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"},
        ]}));
        let expected = B64URL
            .decode("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
            .expect("base64url");
        assert_eq!(
            set.keys["2011-04-29"].thumbprint.as_slice(),
            expected.as_slice()
        );
    }

    #[test]
    fn thumbprints_follow_the_material_not_the_kid_or_padding() {
        let set = parse(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "a"},
            {"kty": "EC", "crv": "P-256", "x": format!("{P256_X}="), "y": P256_Y, "kid": "b"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED25519_X, "kid": "c"},
        ]}));
        assert_eq!(set.keys["a"].thumbprint, set.keys["b"].thumbprint);
        assert_ne!(set.keys["a"].thumbprint, set.keys["c"].thumbprint);
    }

    #[test]
    fn cooldown_left_is_rounded_up_to_whole_seconds() {
        let start = Instant::now();
        let cooldown = Duration::from_secs(30);
        assert_eq!(cooldown_left(None, start, cooldown), None);
        let left = cooldown_left(Some(start), start + Duration::from_millis(4_500), cooldown);
        assert_eq!(left, Some(Duration::from_millis(25_500)));
        assert_eq!(whole_seconds(Duration::from_millis(25_500)), 26);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(cooldown_left(Some(start), start + cooldown, cooldown), None);
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
