//! `/readyz` needs no token, so a flood of it must not cost the pool the connections real
//! requests need: one store probe at a time, a healthy result reused for about a second.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::helpers::*;

/// The store probes the service sent so far, as the server logged them: each `/readyz` ping
/// is one `select 1` (each ping is one pooled round trip).
fn pings_logged(pg: &PrivatePg) -> usize {
    pg.statements("supabase-jwt-service")
        .iter()
        .filter(|(_, text)| text == "select 1")
        .count()
}

#[tokio::test]
async fn a_flood_of_readyz_probes_the_store_once_a_second_and_leaves_name_its_pool() {
    // A cluster of the test's own, whose log holds only this test's statements.
    let pg = tokio::task::spawn_blocking(PrivatePg::start_logging_statements)
        .await
        .unwrap();
    let url = pg.url();
    supabase_jwt_service::db::migrate(&pg_config(&url).db)
        .await
        .expect("migrate");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let user = Uuid::new_v4();
    sqlx::query("insert into auth.users (id) values ($1)")
        .bind(user)
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("insert into public.users (id, full_name) values ($1, 'Ada')")
        .bind(user)
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let before = pings_logged(&pg);
    let config = config_with(&url, |b| b.db_max_connections(2));
    let state = supabase_jwt_service::AppState::build(config)
        .await
        .expect("state");
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
    // The log is written as the server goes: give the last lines a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pings = pings_logged(&pg) - before;
    assert!(pings >= 1, "no probe in the server log: {}", pg.log());
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
