//! `/readyz` needs no token, so a flood of it must not cost the pool the connections real
//! requests need: one store probe at a time, a healthy result reused for about a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use supabase_jwt_service::auth::Claims;
use supabase_jwt_service::store::{PoolStats, StoreFuture, UserRow};
use supabase_jwt_service::{AppState, UserStore, build_state};
use uuid::Uuid;

use crate::helpers::*;

/// The real Postgres store, counting the probes it is asked for: what the database sees of
/// `/readyz` (each ping is one pooled round trip).
struct CountingPings {
    inner: Arc<dyn UserStore>,
    pings: AtomicUsize,
}

impl UserStore for CountingPings {
    fn profile<'a>(&'a self, claims: &'a Claims) -> StoreFuture<'a, Option<UserRow>> {
        self.inner.profile(claims)
    }
    fn set_full_name<'a>(
        &'a self,
        claims: &'a Claims,
        full_name: Option<&'a str>,
    ) -> StoreFuture<'a, Option<UserRow>> {
        self.inner.set_full_name(claims, full_name)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.inner.ping()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn pool_stats(&self) -> Option<PoolStats> {
        self.inner.pool_stats()
    }
}

#[tokio::test]
async fn a_flood_of_readyz_probes_the_store_once_a_second_and_leaves_name_its_pool() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let config = config_with(&db.url, |r| r.db_max_connections = Some("2".into()));
    let mut state: AppState = build_state(config).await.expect("state");
    let counting = Arc::new(CountingPings {
        inner: state.store.clone(),
        pings: AtomicUsize::new(0),
    });
    state.store = counting.clone();
    let app = TestApp::spawn_state(state).await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    let started = Instant::now();
    let flood: Vec<_> = (0..500)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/readyz"));
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Real requests during the flood, over the same two pooled connections.
    let token = token_for(user);
    let mut name_statuses = Vec::new();
    for _ in 0..20 {
        name_statuses.push(app.get_with_token("/name", &token).await.status().as_u16());
    }
    let mut ready = 0;
    for request in flood {
        if request.await.expect("task").expect("answer") == 200 {
            ready += 1;
        }
    }
    let elapsed = started.elapsed();
    let pings = counting.pings.load(Ordering::SeqCst);
    eprintln!(
        "readyz flood: 500 requests in {elapsed:?}, {ready} answered 200, store probed {pings} times (1 before); /name {name_statuses:?}"
    );
    assert!(name_statuses.iter().all(|s| *s == 200), "{name_statuses:?}");
    assert_eq!(ready, 500);
    // One probe per started second of the flood, plus the one before it and one spare.
    let bound = elapsed.as_secs() as usize + 3;
    assert!(
        pings <= bound,
        "{pings} probes for 501 /readyz in {elapsed:?}"
    );
}
