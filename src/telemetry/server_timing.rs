//! `Server-Timing` (W3C Server Timing): how long one request spent verifying its token and
//! in the store, for a developer looking at the browser's network panel.
//!
//! A request's timings live in a task-local, so the extractor and the store add to them without
//! any handle being passed around; outside [`measure`] the `add_*` functions do nothing.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

tokio::task_local! {
    static CURRENT: Arc<Timings>;
}

/// Time spent in one kind of work, and how many times it ran.
#[derive(Debug, Default)]
struct Slot {
    nanos: AtomicU64,
    count: AtomicU64,
}

impl Slot {
    fn add(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn millis(&self) -> Option<f64> {
        (self.count.load(Ordering::Relaxed) > 0)
            .then(|| self.nanos.load(Ordering::Relaxed) as f64 / 1_000_000.0)
    }
}

#[derive(Debug, Default)]
struct Timings {
    auth: Slot,
    db: Slot,
}

/// Adds `elapsed` to the current request's token verification time.
pub(crate) fn add_auth(elapsed: Duration) {
    let _ = CURRENT.try_with(|t| t.auth.add(elapsed));
}

/// Adds `elapsed` to the current request's store time.
pub(crate) fn add_db(elapsed: Duration) {
    let _ = CURRENT.try_with(|t| t.db.add(elapsed));
}

/// Runs `request` while collecting its timings, and returns its output with the
/// `Server-Timing` value: `auth` and `db` when they ran, and `total`, all in milliseconds.
pub(crate) async fn measure<F: Future>(request: F) -> (F::Output, String) {
    let timings = Arc::new(Timings::default());
    let started = Instant::now();
    let output = CURRENT.scope(timings.clone(), request).await;
    let total = started.elapsed();
    let mut value = String::new();
    for (name, millis) in [("auth", timings.auth.millis()), ("db", timings.db.millis())] {
        if let Some(millis) = millis {
            let _ = write!(value, "{name};dur={millis:.2}, ");
        }
    }
    let _ = write!(value, "total;dur={:.2}", total.as_secs_f64() * 1000.0);
    (output, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_only_the_work_that_ran() {
        let ((), value) = measure(async {
            add_db(Duration::from_micros(1500));
            add_db(Duration::from_micros(500));
        })
        .await;
        assert!(value.starts_with("db;dur=2.00, total;dur="), "{value}");
        assert!(!value.contains("auth"));
    }

    #[tokio::test]
    async fn outside_a_measured_request_nothing_is_recorded() {
        add_auth(Duration::from_secs(1));
        let ((), value) = measure(async {}).await;
        assert!(value.starts_with("total;dur="), "{value}");
    }
}
