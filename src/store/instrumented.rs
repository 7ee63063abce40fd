//! A [`UserStore`] wrapper that times every call, for `db_query_duration_seconds` and the
//! `db` entry of `Server-Timing`.

use std::future::Future;
use std::time::Instant;

use super::{PoolStats, StoreError, StoreFuture, UserRow, UserStore};
use crate::auth::Claims;
use crate::telemetry::{metrics, server_timing};

/// Wraps a store so each call is timed; behaves exactly like the store it wraps.
#[derive(Debug, Clone)]
pub struct Instrumented<S>(S);

impl<S: UserStore> Instrumented<S> {
    /// Times every call to `store`.
    pub fn new(store: S) -> Self {
        Self(store)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.0
    }
}

async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    let elapsed = started.elapsed();
    metrics::db_query(op, elapsed);
    server_timing::add_db(elapsed);
    result
}

impl<S: UserStore> UserStore for Instrumented<S> {
    fn profile<'a>(&'a self, claims: &'a Claims) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(timed("profile", self.0.profile(claims)))
    }

    fn set_full_name<'a>(
        &'a self,
        claims: &'a Claims,
        full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>> {
        Box::pin(timed(
            "set_full_name",
            self.0.set_full_name(claims, full_name),
        ))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(timed("ping", self.0.ping()))
    }

    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    fn db(&self) -> Option<crate::db::Db> {
        self.0.db()
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        self.0.pool_stats()
    }
}
