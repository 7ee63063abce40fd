//! Database outages and saturation: a private Postgres cluster that the test stops, freezes
//! and restarts, and a pool whose every connection is held by blocked queries.
//!
//! The measured times are printed; run with `--nocapture` to see them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::helpers::*;

async fn wait_for_status(app: &TestApp, token: &str, status: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let r = app.get_with_token("/name", token).await;
        if r.status().as_u16() == status {
            return started.elapsed();
        }
        assert!(r.status().as_u16() != 500, "never a 500");
        assert!(
            started.elapsed() < limit,
            "no {status} within {limit:?}, last {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private cluster, migrated, with one user who has a profile.
async fn seeded_private_pg() -> (PrivatePg, Uuid) {
    let pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
    let url = pg.url();
    supabase_jwt_service::run_migrations(
        &supabase_jwt_service::config::DatabaseUrl::parse("DATABASE_URL", &url).unwrap(),
    )
    .await
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let user = Uuid::new_v4();
    sqlx::query("insert into auth.users (id) values ($1)")
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("insert into public.users (id, full_name) values ($1, 'Ada')")
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    (pg, user)
}

/// Open TCP connections from this process to `port` on loopback: the sockets behind our
/// file descriptors (not ones already closed and lingering in the kernel).
fn open_connections_to(port: u16) -> usize {
    let mut ours = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                ours.insert(inode.to_owned());
            }
        }
    }
    let wanted = format!(":{port:04X}");
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9 && fields[2].ends_with(&wanted) && ours.contains(fields[9]) {
                count += 1;
            }
        }
    }
    count
}

/// A client that opens a fresh connection per request, so idle keep-alive connections do not
/// show up in the task counts.
fn one_shot_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .unwrap()
}

/// Sends `n` concurrent `/name` requests; returns each answer's status and how long it took
/// (status 0: no answer at all).
async fn concurrent_names(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    n: usize,
) -> Vec<(u16, Duration)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = client.clone();
        let url = url.to_owned();
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let status = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (status, started.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn slowest(answers: &[(u16, Duration)]) -> Duration {
    answers.iter().map(|(_, d)| *d).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_then_frozen_database_gives_fast_503s_and_the_service_recovers_by_itself() {
    let (mut pg, user) = seeded_private_pg().await;
    let pool_size = 4;
    let app = TestApp::spawn(config_with(&pg.url(), |r| {
        r.db_timeout_seconds = Some("2".into());
        r.db_max_connections = Some(pool_size.to_string());
    }))
    .await;
    let token = token_for(user);
    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);

    // Stopped: refused connections.
    pg.stop();
    let started = Instant::now();
    let headers = assert_error(
        app.get_with_token("/name", &token).await,
        503,
        "unavailable",
    )
    .await;
    let time_to_503 = started.elapsed();
    assert!(headers.contains_key("retry-after"));
    assert!(
        time_to_503 < Duration::from_secs(5),
        "503 took {time_to_503:?}"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_error(app.get("/readyz").await, 503, "unavailable").await;

    pg.pg_ctl_start();
    let time_to_recover = wait_for_status(&app, &token, 200, Duration::from_secs(20)).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    eprintln!(
        "outage/stopped: time to 503 {time_to_503:?}, time to recover after restart {time_to_recover:?}"
    );

    // Frozen: connections hang. Every call is bounded, so answers still come in seconds, and
    // waves of requests leave neither tasks nor database connections behind.
    let client = one_shot_client();
    let url = app.url("/name");
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    pg.freeze();
    let mut residue = Vec::new();
    for wave in 1..=2 {
        let started = Instant::now();
        let answers = concurrent_names(&client, &url, &token, 100).await;
        let took = started.elapsed();
        assert!(answers.iter().all(|(s, _)| *s == 503), "{answers:?}");
        let worst = slowest(&answers);
        assert!(worst < Duration::from_secs(8), "frozen 503s took {worst:?}");
        let open = open_connections_to(pg.port);
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        eprintln!(
            "outage/frozen wave {wave}: 100 concurrent requests all 503, slowest {worst:?}, wave {took:?}; \
             open connections to Postgres {open} (pool {pool_size}); alive tasks {tasks} (before freeze {tasks_before})"
        );
        assert!(open <= pool_size, "{open} connections to Postgres");
        residue.push(tasks.saturating_sub(tasks_before));
    }
    // What a wave leaves behind is bounded by the pool (connections waiting to be returned),
    // not by the number of requests: the second wave adds nothing to the first.
    assert!(
        residue.iter().all(|r| *r <= 2 * pool_size + 8),
        "tasks left behind per wave: {residue:?}"
    );
    assert!(residue[1] <= residue[0] + 2, "{residue:?}");
    let started = Instant::now();
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));

    pg.thaw();
    let time_to_recover = wait_for_status(&app, &token, 200, Duration::from_secs(20)).await;
    eprintln!("outage/frozen: time to recover after thaw {time_to_recover:?}");
    let backends: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where application_name = 'supabase-jwt-service'",
    )
    .fetch_one(&app_pool(&pg).await)
    .await
    .unwrap();
    assert!(backends <= pool_size as i64, "{backends} backends");
}

async fn app_pool(pg: &PrivatePg) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_pool_fails_fast_with_503_and_healthz_stays_fast() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let pool_size = 2;
    let app = TestApp::spawn(config_with(&db.url, |r| {
        r.db_timeout_seconds = Some("2".into());
        r.db_max_connections = Some(pool_size.to_string());
    }))
    .await;
    let token = token_for(user);
    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);

    // Another session takes the table: every profile query the service sends now blocks
    // inside Postgres, holding its pool connection, as a slow query would.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("lock table public.users in access exclusive mode")
        .execute(&mut *locker)
        .await
        .unwrap();

    let client = one_shot_client();
    let url = app.url("/name");
    let blockers = {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tokio::spawn(async move { concurrent_names(&client, &url, &token, pool_size).await })
    };
    // Wait until both pool connections are stuck behind the lock.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = $1 \
             and application_name = 'supabase-jwt-service' and wait_event_type = 'Lock'",
        )
        .bind(&db.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting >= pool_size as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "queries never blocked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let healthz = app.get("/healthz").await.status();
    let healthz_took = started.elapsed();
    assert_eq!(healthz, 200);
    assert!(healthz_took < Duration::from_secs(1), "{healthz_took:?}");

    let answers = concurrent_names(&client, &url, &token, 20).await;
    let worst = slowest(&answers);
    assert!(answers.iter().all(|(s, _)| *s == 503), "{answers:?}");
    assert!(
        worst < Duration::from_secs(6),
        "saturated 503s took {worst:?}"
    );
    let blocked = blockers.await.unwrap();
    assert!(blocked.iter().all(|(s, _)| *s == 503), "{blocked:?}");
    let connections: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = $1 and application_name = 'supabase-jwt-service'",
    )
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(connections <= pool_size as i64, "{connections} connections");
    eprintln!(
        "saturation: pool {pool_size} held by blocked queries; 20 more requests all 503, slowest {worst:?}; \
         the blocked ones 503 after {:?}; /healthz {healthz_took:?}; service connections {connections}",
        slowest(&blocked)
    );

    locker.commit().await.unwrap();
    let time_to_recover = wait_for_status(&app, &token, 200, Duration::from_secs(20)).await;
    eprintln!("saturation: time to recover after the lock is released {time_to_recover:?}");
}
