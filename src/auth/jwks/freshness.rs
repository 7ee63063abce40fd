//! How long a fetched key set stays fresh: `Cache-Control` and `Age`, the refresh schedule
//! taken from them, and the backoff after failures.

use std::time::Duration;

use reqwest::header::{AGE, CACHE_CONTROL, HeaderMap};

/// The longest a fetched key set is used before it is refetched (the contract's 10 minutes).
pub(crate) const MAX_CACHE: Duration = Duration::from_secs(600);
/// The shortest interval between scheduled refreshes, whatever `Cache-Control` says.
pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(30);

/// How long after a successful fetch the next one happens: a tenth before the copy expires,
/// so a slow fetch still lands in time, never later than [`MAX_CACHE`] allows, and never more
/// often than [`MIN_REFRESH`].
pub(super) fn refresh_interval(lifetime: Option<Duration>) -> Duration {
    let lifetime = lifetime.map_or(MAX_CACHE, |l| l.min(MAX_CACHE));
    (lifetime - lifetime / 10).max(MIN_REFRESH)
}

/// Backoff after `failures` consecutive failed fetches: 1 s, 2 s, 4 s, ... up to [`MIN_REFRESH`].
pub(super) fn retry_interval(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(5);
    Duration::from_secs(1u64 << exponent).min(MIN_REFRESH)
}

/// The answer's freshness lifetime (RFC 9111 section 4.2): `max-age` less `Age`;
/// `no-store`/`no-cache` make it zero. `None` when `Cache-Control` says nothing usable.
pub(super) fn freshness_lifetime(headers: &HeaderMap) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
