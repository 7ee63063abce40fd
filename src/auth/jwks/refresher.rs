//! The background task that does every fetch of one key set, and the fetch itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::ACCEPT;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::freshness::{freshness_lifetime, refresh_interval, retry_interval};
use super::jwk::{Skip, VerifyingKey, log_skipped, parse_jwk_set, summarize};
use super::{KeySet, KeySetError, Keys, Status, TARGET, cooling_down};
use crate::telemetry::metrics;

/// Upper bound on one fetch, over the HTTP client's own timeouts (a custom client may have none).
const FETCH_LIMIT: Duration = Duration::from_secs(10);
/// A key set is a few kilobytes; refuse to buffer anything much larger.
pub(super) const MAX_BODY_BYTES: usize = 256 * 1024;
/// After this many consecutive failures a warning is repeated (others log at debug).
const WARN_EVERY_FAILURES: u32 = 10;

/// The background task that does every fetch of one key set.
pub(super) async fn refresher(
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
        if on_demand && cooling_down(last_on_demand, now, key_set.cooldown) {
            // Readers raced past their own cooldown check: they answer from the latest outcome,
            // as those who met the cooldown did.
            handled = key_set.ticks();
            status.send_modify(|s| s.generation += 1);
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
