//! Database outages and saturation: a private Postgres cluster that the test stops, freezes
//! and restarts, and a pool whose every connection is held by blocked queries.
//!
//! The measured times are printed; run with `--nocapture` to see them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    supabase_jwt_service::db::migrate(&pg_config(&url).db)
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
    let app = TestApp::spawn(config_with(&pg.url(), |b| {
        b.db_timeout(Duration::from_secs(2))
            .db_max_connections(pool_size as u32)
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
        // The pool, plus the one connection cancels of abandoned statements go on.
        assert!(open <= pool_size + 1, "{open} connections to Postgres");
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
    assert!(backends <= pool_size as i64 + 1, "{backends} backends");
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
    let app = TestApp::spawn(config_with(&db.url, |b| {
        b.db_timeout(Duration::from_secs(2))
            .db_max_connections(pool_size as u32)
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

// ---------------------------------------------------------------------------------------------
// Issue 12, items 1 and 6: whatever the database does, it never holds more than
// DB_MAX_CONNECTIONS + 2 backends of this service, each answer is a 503 within
// DB_TIMEOUT_SECONDS + 1 s, and a restart costs no request. Backends are counted from outside,
// in `pg_stat_activity`, from an admin connection of the test's own, once a second.

const LIMITS_POOL: u32 = 10;
const LIMITS_TIMEOUT: Duration = Duration::from_secs(3);
/// What `pg_stat_activity` may show of the service: the pool plus the small constant the issue
/// allows (the control connection cancels go on, and one more).
const BACKEND_BUDGET: i64 = LIMITS_POOL as i64 + 2;
const APP_NAME: &str = "supabase-jwt-service";

/// How long the lock, the freeze and the slow statement last: the 30 s unless
/// `SJS_TEST_FAULT_SECONDS` shortens it for a quick local run.
fn fault_duration() -> Duration {
    let seconds = std::env::var("SJS_TEST_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

fn limits_config(url: &str) -> supabase_jwt_service::config::Config {
    config_with(url, |b| {
        b.rls(true)
            .db_timeout(LIMITS_TIMEOUT)
            .db_max_connections(LIMITS_POOL)
    })
}

/// One answer of a looping client.
#[derive(Debug)]
struct Answer {
    status: u16,
    took: Duration,
}

/// `n` clients, each sending `GET /name` again as soon as it has its answer (after a 50 ms
/// pause, as a retrying client would), until `stop` is set.
fn looping_clients(
    app: &TestApp,
    token: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Answer>>> {
    (0..n)
        .map(|_| {
            let (client, url, token, stop) = (
                app.client.clone(),
                app.url("/name"),
                token.to_owned(),
                Arc::clone(stop),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                // Bounded: a client stops after 2,000 answers whatever the flag says.
                while !stop.load(Ordering::Relaxed) && answers.len() < 2_000 {
                    let started = Instant::now();
                    let status = client
                        .get(&url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    answers.push(Answer {
                        status,
                        took: started.elapsed(),
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answers
            })
        })
        .collect()
}

async fn collect(clients: Vec<tokio::task::JoinHandle<Vec<Answer>>>) -> Vec<Answer> {
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    all
}

/// Every answer is a 200 or a 503, and none took longer than DB_TIMEOUT_SECONDS + 1 s.
fn assert_fast_503s(what: &str, answers: &[Answer]) {
    let bound = LIMITS_TIMEOUT + Duration::from_secs(1);
    let unavailable = answers.iter().filter(|a| a.status == 503).count();
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    eprintln!(
        "{what}: {} answers, {unavailable} of them 503, slowest {slowest:?}",
        answers.len()
    );
    assert!(unavailable > 0, "{what}: the fault never showed");
    let wrong: Vec<&Answer> = answers
        .iter()
        .filter(|a| !matches!(a.status, 200 | 503) || a.took > bound)
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: answers off the contract: {wrong:?}"
    );
}

/// One sample of the service's backends: how many, and the age of the oldest running
/// statement among them.
#[derive(Debug, Clone, Copy)]
struct Sample {
    backends: i64,
    oldest_statement: f64,
}

/// Samples `pg_stat_activity` once a second on a connection of its own until `stop` is set
/// (and at most 200 times). A sample that does not come back within a second is skipped.
fn sample_backends(
    admin_url: String,
    database: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    use sqlx::{ConnectOptions, Connection};
    tokio::spawn(async move {
        let mut conn = admin_url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap()
            .application_name("outage-test-sampler")
            .connect()
            .await
            .unwrap();
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.load(Ordering::Relaxed) && samples.len() < 200 {
            tick.tick().await;
            let query = sqlx::query_as::<_, (i64, f64)>(
                "select count(*), coalesce(max(extract(epoch from now() - query_start)::float8) \
                     filter (where state = 'active'), 0) \
                 from pg_stat_activity where application_name = $1 and datname = $2",
            )
            .bind(APP_NAME)
            .bind(&database)
            .fetch_one(&mut conn);
            if let Ok(Ok((backends, oldest_statement))) =
                tokio::time::timeout(Duration::from_secs(1), query).await
            {
                samples.push(Sample {
                    backends,
                    oldest_statement,
                });
            }
        }
        let _ = conn.close().await;
        samples
    })
}

fn report_samples(what: &str, samples: &[Sample]) -> (i64, f64) {
    let counts: Vec<i64> = samples.iter().map(|s| s.backends).collect();
    let max = counts.iter().copied().max().unwrap_or(0);
    let oldest = samples
        .iter()
        .map(|s| s.oldest_statement)
        .fold(0.0, f64::max);
    eprintln!(
        "{what}: service backends each second {counts:?}; max {max} (budget {BACKEND_BUDGET}); \
         oldest running statement {oldest:.1} s"
    );
    (max, oldest)
}

/// The time until `GET /name` answers 200 (polled every 20 ms, at most 5 s).
async fn time_to_200(app: &TestApp, token: &str) -> Duration {
    let started = Instant::now();
    for _ in 0..250 {
        if app.get_with_token("/name", token).await.status() == 200 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no 200 within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_table_never_exhausts_the_database() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let app = TestApp::spawn(limits_config(&db.url)).await;
    let token = token_for(user);
    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_backends(admin_url(), db.name.clone(), Arc::clone(&stop));
    // What an `ALTER TABLE` queued behind a long transaction, or `VACUUM FULL`, does.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("lock table public.users in access exclusive mode")
        .execute(&mut *locker)
        .await
        .unwrap();
    let clients = looping_clients(&app, &token, 8, &stop);
    sqlx::query("select pg_sleep($1)")
        .bind(fault_duration().as_secs_f64())
        .execute(&mut *locker)
        .await
        .unwrap();
    locker.commit().await.unwrap();
    let recovered = time_to_200(&app, &token).await;
    stop.store(true, Ordering::Relaxed);
    let answers = collect(clients).await;
    let (max, oldest) = report_samples("lock", &sampler.await.unwrap());
    eprintln!("lock: 200 again {recovered:?} after the lock's release");
    assert_fast_503s("lock", &answers);
    assert!(max <= BACKEND_BUDGET, "{max} backends");
    assert!(oldest <= (LIMITS_TIMEOUT + Duration::from_secs(1)).as_secs_f64());
    assert!(recovered <= Duration::from_secs(1), "{recovered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_statement_is_ended_by_the_server_within_the_timeout() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let app = TestApp::spawn(limits_config(&db.url)).await;
    let token = token_for(user);
    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);

    // A policy that makes the service's own read slow, as an expensive policy or a
    // function behind a view would: every read of the row sleeps for a minute.
    sqlx::raw_sql(
        "create function public.slow_gate() returns boolean language plpgsql as \
             $$ begin perform pg_sleep(60); return true; end $$; \
         create policy slow_gate on public.users as restrictive for select to authenticated \
             using (public.slow_gate())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_backends(admin_url(), db.name.clone(), Arc::clone(&stop));
    let clients = looping_clients(&app, &token, 8, &stop);
    // Half the fault time is enough to see statements outlive the timeout, or not.
    tokio::time::sleep(fault_duration() / 2).await;
    // Dropping the policy waits for the statements reading the table: it returns once the
    // server has ended them.
    let dropped = Instant::now();
    sqlx::query("drop policy slow_gate on public.users")
        .execute(&db.pool)
        .await
        .unwrap();
    let drop_waited = dropped.elapsed();
    let recovered = time_to_200(&app, &token).await;
    stop.store(true, Ordering::Relaxed);
    let answers = collect(clients).await;
    let (max, oldest) = report_samples("slow statement", &sampler.await.unwrap());
    eprintln!(
        "slow statement: dropping the policy waited {drop_waited:?}; 200 again {recovered:?} after"
    );
    assert_fast_503s("slow statement", &answers);
    assert!(max <= BACKEND_BUDGET, "{max} backends");
    assert!(
        oldest <= (LIMITS_TIMEOUT + Duration::from_secs(1)).as_secs_f64(),
        "a statement ran {oldest:.1} s"
    );
    assert!(recovered <= Duration::from_secs(1), "{recovered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_never_collects_more_connections_than_the_pool() {
    let (mut pg, user) = seeded_private_pg().await;
    let app = TestApp::spawn(limits_config(&pg.url())).await;
    let token = token_for(user);
    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = looping_clients(&app, &token, 8, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.freeze();
    // Frozen, Postgres answers no query: count our own sockets to it instead.
    let mut sockets = Vec::new();
    let frozen_until = Instant::now() + fault_duration();
    while Instant::now() < frozen_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sockets.push(open_connections_to(pg.port));
    }
    pg.thaw();
    // Whatever the freeze left queued (half-made connections, abandoned statements) shows up
    // as the server catches up.
    let after = Arc::new(AtomicBool::new(false));
    let sampler = sample_backends(pg.url(), "postgres".into(), Arc::clone(&after));
    let thawed = Instant::now();
    let mut recovered = None;
    for _ in 0..100 {
        if app.get_with_token("/name", &token).await.status() == 200 {
            recovered = Some(thawed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(thawed.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    after.store(true, Ordering::Relaxed);
    let answers = collect(clients).await;
    let (max, _) = report_samples("frozen, after the thaw", &sampler.await.unwrap());
    let max_sockets = sockets.iter().copied().max().unwrap_or(0);
    eprintln!(
        "frozen: our sockets to Postgres each second {sockets:?}, max {max_sockets}; \
         200 again {recovered:?} after the thaw"
    );
    assert_fast_503s("frozen", &answers);
    assert!(
        max_sockets as i64 <= BACKEND_BUDGET,
        "{max_sockets} sockets"
    );
    assert!(max <= BACKEND_BUDGET, "{max} backends after the thaw");
    assert!(recovered.is_some(), "no 200 within 5 s of the thaw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_costs_no_request() {
    let (pg, user) = seeded_private_pg().await;
    let config = limits_config(&pg.url());
    let state = supabase_jwt_service::AppState::build(config).await.unwrap();
    // A warm pool: every slot holds an idle connection to the server about to restart.
    let mut open = Vec::new();
    for _ in 0..LIMITS_POOL {
        open.push(state.db().begin_as_service().await.unwrap());
    }
    for tx in open {
        tx.rollback().await.unwrap();
    }
    let idle: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where application_name = $1 and state = 'idle'",
    )
    .bind(APP_NAME)
    .fetch_one(&app_pool(&pg).await)
    .await
    .unwrap();
    assert_eq!(idle, i64::from(LIMITS_POOL));
    let app = TestApp::spawn_state(state).await;
    let token = token_for(user);

    pg.stop();
    pg.pg_ctl_start();
    // `pg_ctl -w` returns once the server accepts; check it from outside too.
    let mut accepting = false;
    for _ in 0..100 {
        if sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&pg.url())
            .await
            .is_ok()
        {
            accepting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepting, "Postgres did not come back");

    // Reads and writes alike: a write whose `BEGIN` met a dead connection is retried too.
    let mut requests = Vec::new();
    for i in 0..30 {
        let (client, url, token) = (app.client.clone(), app.url("/name"), token.clone());
        requests.push(tokio::spawn(async move {
            let request = if i % 2 == 0 {
                client.get(url)
            } else {
                client
                    .put(url)
                    .json(&serde_json::json!({"full_name": format!("Ada {i}")}))
            };
            request
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    eprintln!(
        "restart: 10 idle connections before, 30 concurrent requests after (15 GET, 15 PUT): \
         {failed} not 200"
    );
    assert_eq!(failed, 0, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_statement_is_cancelled_on_the_server() {
    use supabase_jwt_service::Profile;
    let db = TestDb::new().await;
    let config = limits_config(&db.url);
    let store = supabase_jwt_service::Db::connect(&config.db).await.unwrap();
    let claims = verified(&config, &token_for(Uuid::new_v4())).await;
    let pid = pooled_backend_pid(&store).await;
    // The built-in read (`GET /name`'s) meets a table another session has locked: its
    // statement waits inside Postgres, as a slow one would.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("lock table public.users in access exclusive mode")
        .execute(&mut *locker)
        .await
        .unwrap();
    // A caller that gives up mid-statement, well before any server-side timeout.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        supabase_jwt_service::UserRow::load(&claims, &store),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the statement was meant to outlast the caller"
    );
    let dropped = Instant::now();
    let mut state = String::new();
    for _ in 0..60 {
        state =
            sqlx::query_scalar("select coalesce(state, '') from pg_stat_activity where pid = $1")
                .bind(pid)
                .fetch_optional(&db.pool)
                .await
                .unwrap()
                .unwrap_or_else(|| "gone".into());
        if state != "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = dropped.elapsed();
    let backends: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where application_name = $1 and datname = $2",
    )
    .bind(APP_NAME)
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    locker.commit().await.unwrap();
    eprintln!(
        "cancel: the abandoned read ended {ended:?} after its caller gave up \
         (backend now {state:?}); service backends {backends} (one pooled, one control)"
    );
    assert_eq!(state, "idle", "{ended:?} after the drop");
    assert!(ended < Duration::from_millis(1500), "{ended:?}");
    assert!(backends <= 2, "{backends} backends");
    // Cancelled, drained, and back in the pool rather than closed: the next caller gets that
    // very backend.
    assert_eq!(pooled_backend_pid(&store).await, pid);
}

/// The backend of the connection the pool lends next, read in a transaction as the service.
async fn pooled_backend_pid(store: &supabase_jwt_service::Db) -> i32 {
    let mut tx = store.begin_as_service().await.unwrap();
    let pid = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cancel_goes_through_a_pooler() {
    // PgBouncer in transaction mode on a port of its own, with a plain URL and prepared
    // statements forced on: the process id read at connect names a server connection that
    // PgBouncer lends to everyone, so a cancel sent to it could end a stranger's statement.
    use supabase_jwt_service::Profile;
    let db = TestDb::new().await;
    let config = config_with(&with_database(&pgbouncer_url(), &db.name), |b| {
        b.rls(false)
            .prepared_statements(supabase_jwt_service::config::PreparedStatements::On)
            .db_timeout(Duration::from_secs(3))
    });
    let store = supabase_jwt_service::Db::connect(&config.db).await.unwrap();
    let claims = verified(&config, &token_for(Uuid::new_v4())).await;
    // The built-in read meets a locked table and waits inside Postgres.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("lock table public.users in access exclusive mode")
        .execute(&mut *locker)
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        supabase_jwt_service::UserRow::load(&claims, &store),
    )
    .await;
    assert!(abandoned.is_err());
    // Past the pool's grace before it cancels (100 ms), the statement still runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let running: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and state = 'active' and wait_event_type = 'Lock' and query like '%public.users%' \
         and pid <> pg_backend_pid()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    locker.commit().await.unwrap();
    eprintln!("pooler: abandoned statements still running 700 ms after the drop: {running}");
    assert_eq!(
        running, 1,
        "the abandoned statement was cancelled through the pooler"
    );
}
