//! Behind PgBouncer in transaction mode (as Supabase's pooler on port 6543): many more clients
//! than server connections, no named prepared statements, no state left on a connection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use supabase_jwt_service::PgStore;
use supabase_jwt_service::config::{Config, RawConfig};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::helpers::*;

/// How many users, and concurrent requests, each test sends through a pool of 8 servers.
const USERS: usize = 200;

/// The pooler URL for `db`, through PgBouncer's `*` wildcard database, marked as a
/// transaction-mode pooler the way Supabase's docs do.
fn pooler_url(db: &TestDb) -> String {
    format!(
        "{}?pgbouncer=true",
        with_database(&pgbouncer_url(), &db.name)
    )
}

/// A pooler configuration: more client connections than PgBouncer's `default_pool_size` (8),
/// and a generous bound on each call so a loaded 2-core runner queues rather than fails.
fn pooler_config(db: &TestDb, mutate: impl FnOnce(&mut RawConfig)) -> Config {
    config_with(&pooler_url(db), |raw| {
        raw.db_max_connections = Some("32".into());
        raw.db_timeout_seconds = Some("30".into());
        raw.request_timeout_seconds = Some("60".into());
        mutate(raw);
    })
}

/// Seeds [`USERS`] users, each with a name of their own.
async fn seed_many(db: &TestDb) -> Vec<(Uuid, String)> {
    let users: Vec<(Uuid, String)> = (0..USERS)
        .map(|i| (Uuid::new_v4(), format!("User {i:03}")))
        .collect();
    db.seed_users(&users).await;
    users
}

/// Sends one `GET /name` per user, all at once, and returns each user's answer.
async fn get_all_at_once(app: &TestApp, users: &[(Uuid, String)]) -> HashMap<Uuid, (u16, Value)> {
    let mut requests = JoinSet::new();
    for (user, _) in users {
        let (client, url, user) = (app.client.clone(), app.url("/name"), *user);
        requests.spawn(async move {
            let r = client
                .get(url)
                .bearer_auth(token_for(user))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (user, (status, r.json::<Value>().await.unwrap()))
        });
    }
    requests.join_all().await.into_iter().collect()
}

fn assert_each_got_their_own_name(answers: &HashMap<Uuid, (u16, Value)>, users: &[(Uuid, String)]) {
    assert_eq!(answers.len(), users.len());
    let wrong: Vec<_> = users
        .iter()
        .filter(|(user, name)| answers[user] != (200, json!({"full_name": name})))
        .map(|(user, name)| format!("{name}: {:?}", answers[user]))
        .collect();
    assert!(wrong.is_empty(), "{} wrong answers: {wrong:?}", wrong.len());
}

#[tokio::test]
async fn pooler_concurrent_reads_under_rls_each_answer_the_callers_own_name() {
    let db = TestDb::new().await;
    let users = seed_many(&db).await;
    let config = pooler_config(&db, |_| {});
    assert!(config.db_rls && !config.prepared_statements);
    let app = TestApp::spawn(config).await;
    let answers = get_all_at_once(&app, &users).await;
    assert_each_got_their_own_name(&answers, &users);
}

#[tokio::test]
async fn pooler_concurrent_reads_without_rls_each_answer_the_callers_own_name() {
    let db = TestDb::new().await;
    let users = seed_many(&db).await;
    let config = pooler_config(&db, |raw| raw.db_rls = Some("off".into()));
    assert!(!config.db_rls && !config.prepared_statements);
    let app = TestApp::spawn(config).await;
    let answers = get_all_at_once(&app, &users).await;
    assert_each_got_their_own_name(&answers, &users);
}

#[tokio::test]
async fn pooler_concurrent_writes_each_change_only_the_callers_row() {
    let db = TestDb::new().await;
    let users = seed_many(&db).await;
    let app = TestApp::spawn(pooler_config(&db, |_| {})).await;

    let renamed: Vec<(Uuid, String)> = users
        .iter()
        .map(|(user, name)| (*user, format!("{name} renamed")))
        .collect();
    let mut requests = JoinSet::new();
    for (user, name) in &renamed {
        let (client, url, user) = (app.client.clone(), app.url("/name"), *user);
        let body = json!({"full_name": name});
        requests.spawn(async move {
            let r = client
                .put(url)
                .bearer_auth(token_for(user))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (user, (status, r.json::<Value>().await.unwrap()))
        });
    }
    let answers: HashMap<Uuid, (u16, Value)> = requests.join_all().await.into_iter().collect();
    assert_each_got_their_own_name(&answers, &renamed);

    let stored: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("select id, full_name from public.users")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(stored, renamed.iter().cloned().collect());
    assert_each_got_their_own_name(&get_all_at_once(&app, &renamed).await, &renamed);
}

#[test]
fn pooler_prepared_statements_auto_turns_off_for_the_pooler_url() {
    let url = "postgres://postgres@127.0.0.1:6432/t_x";
    let config = |url: &str, setting: Option<&str>| {
        config_with(url, |raw| {
            raw.db_prepared_statements = setting.map(str::to_owned);
        })
    };
    assert!(config(url, None).prepared_statements);
    assert!(!config(&format!("{url}?pgbouncer=true"), None).prepared_statements);
    assert!(!config(&format!("{url}?pgbouncer=true"), Some("auto")).prepared_statements);
    assert!(config(&format!("{url}?pgbouncer=true"), Some("on")).prepared_statements);
    let supabase =
        "postgres://postgres.abcd:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres";
    assert!(!config(supabase, None).prepared_statements);
}

/// What happens when PgBouncer hands the app's one connection a different server between two
/// requests, as it may at any transaction boundary:
/// 1. a first `GET /name` runs on server X (the database's only server so far);
/// 2. another client opens a transaction and so holds X (it is the only idle server), and
///    counts the named statements X holds;
/// 3. a second `GET /name` has to run on a new server.
///
/// Returns the count from step 2 and the status of step 3.
async fn requests_across_a_server_switch(db: &TestDb, prepared: &str, rls: &str) -> (i64, u16) {
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let config = pooler_config(db, |raw| {
        raw.db_max_connections = Some("1".into());
        raw.db_prepared_statements = Some(prepared.into());
        raw.db_rls = Some(rls.into());
    });
    let store = PgStore::connect_lazy(&config).unwrap();
    let app = TestApp::spawn_over(config, store.clone()).await;
    let token = token_for(user);

    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);
    // The connection is back in the pool before the answer is sent; waiting for it costs
    // nothing and keeps this independent of that order.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.pool().num_idle() < 1 {
        assert!(Instant::now() < deadline, "connection never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut other = sqlx::postgres::PgConnection::connect(&pooler_url(db))
        .await
        .unwrap();
    let mut held = other.begin().await.unwrap();
    let named: i64 =
        sqlx::query_scalar("select count(*) from pg_prepared_statements where not from_sql")
            .persistent(false)
            .fetch_one(&mut *held)
            .await
            .unwrap();

    let second = app.get_with_token("/name", &token).await.status().as_u16();
    held.rollback().await.unwrap();
    other.close().await.unwrap();
    (named, second)
}

#[tokio::test]
async fn pooler_auto_uses_unnamed_statements_that_survive_a_server_switch() {
    let db = TestDb::new().await;
    for rls in ["on", "off"] {
        let (named, second) = requests_across_a_server_switch(&db, "auto", rls).await;
        assert_eq!(
            (named, second),
            (0, 200),
            "DB_RLS={rls}: auto left named statements, or the second request failed"
        );
    }
}

#[tokio::test]
async fn pooler_named_prepared_statements_fail_once_pgbouncer_switches_servers() {
    // Why auto turns them off: PgBouncer 1.18 in transaction mode does not carry a statement
    // prepared on one server to the next, so the cached statement is missing there.
    let db = TestDb::new().await;
    // DB_RLS=off on a direct-looking setting takes the named-statement fast path.
    let (named, second) = requests_across_a_server_switch(&db, "on", "off").await;
    assert!(
        named >= 1,
        "the first request should have prepared a named statement"
    );
    assert_eq!(
        second, 503,
        "the cached statement is missing on the new server"
    );
}

#[tokio::test]
async fn pooler_connection_state_does_not_leak_between_clients() {
    // After requests through the pooler, other clients on the same servers see no role or
    // claims: everything the service set was transaction-local.
    let db = TestDb::new().await;
    let users = seed_many(&db).await;
    let app = TestApp::spawn(pooler_config(&db, |_| {})).await;
    assert_each_got_their_own_name(&get_all_at_once(&app, &users).await, &users);

    // Eight clients at once, each in a transaction, occupy every server of the pool.
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let mut conn = sqlx::postgres::PgConnection::connect(&pooler_url(&db))
            .await
            .unwrap();
        conn.execute("begin").await.unwrap();
        let row: (String, String, String) = sqlx::query_as(
            "select current_user::text, current_setting('role'), \
             coalesce(current_setting('request.jwt.claims', true), '')",
        )
        .persistent(false)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        seen.push(row);
        clients.push(conn);
    }
    for mut conn in clients {
        conn.execute("rollback").await.unwrap();
    }
    assert!(
        seen.iter()
            .all(|row| *row == ("postgres".into(), "none".into(), String::new())),
        "{seen:?}"
    );
}
