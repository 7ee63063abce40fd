//! Behind PgBouncer in transaction mode (as Supabase's pooler on port 6543, or self-hosted on
//! 6432): many more clients than server connections, no statement name that another server or
//! another client could answer, no state left on a connection. The URLs are plain, as a user
//! would paste them: the service has to find out by itself that it talks to a pooler.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use supabase_jwt_service::config::{Config, ConfigBuilder, PreparedStatements};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::helpers::*;

/// How many users, and concurrent requests, each test sends through a pool of 8 servers.
const USERS: usize = 200;

/// The pooler URL for `db`, through PgBouncer's `*` wildcard database: a random port, not
/// 6543, and no `pgbouncer=true`, so nothing in it says "pooler".
fn pooler_url(db: &TestDb) -> String {
    with_database(&pgbouncer_url(), &db.name)
}

/// A pooler configuration: more client connections than PgBouncer's `default_pool_size` (8),
/// and a generous bound on each call so a loaded 2-core runner queues rather than fails.
fn pooler_config(db: &TestDb, mutate: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Config {
    config_with(&pooler_url(db), |b| {
        mutate(
            b.db_max_connections(32)
                .db_timeout(Duration::from_secs(30))
                .request_timeout(Duration::from_secs(60)),
        )
    })
}

/// What the store says, once, when it finds itself behind a transaction-mode pooler.
const POOLER_DETECTED: &str = "transaction-mode pooler detected";

/// Captures this thread's logs at INFO until the guard drops. `#[tokio::test]` runs the
/// server on the test's thread, so the capture holds its lines alone.
fn capture_logs() -> (
    Captured,
    tracing::subscriber::DefaultGuard,
    tracing::Dispatch,
) {
    use tracing_subscriber::util::SubscriberInitExt;
    // While only one dispatcher exists, tracing-core caches a callsite's interest from
    // whichever thread hits it first; a second live dispatcher turns that shortcut off.
    let peer = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let logs = Captured::default();
    let guard = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish()
        .set_default();
    (logs, guard, peer)
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
    let config = pooler_config(&db, |b| b);
    assert!(config.db.rls && config.db.prepared_statements == PreparedStatements::Auto);
    let app = TestApp::spawn(config).await;
    let answers = get_all_at_once(&app, &users).await;
    assert_each_got_their_own_name(&answers, &users);
}

#[tokio::test]
async fn pooler_concurrent_reads_without_rls_each_answer_the_callers_own_name() {
    let db = TestDb::new().await;
    let users = seed_many(&db).await;
    let config = pooler_config(&db, |b| b.rls(false));
    assert!(!config.db.rls && config.db.prepared_statements == PreparedStatements::Auto);
    let app = TestApp::spawn(config).await;
    let answers = get_all_at_once(&app, &users).await;
    assert_each_got_their_own_name(&answers, &users);
}

#[tokio::test]
async fn pooler_concurrent_writes_each_change_only_the_callers_row() {
    let db = TestDb::new().await;
    let users = seed_many(&db).await;
    let app = TestApp::spawn(pooler_config(&db, |b| b)).await;

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
        config_with(url, |b| match setting {
            Some(setting) => b.var("DB_PREPARED_STATEMENTS", setting),
            None => b,
        })
        .db
        .prepared_statements
    };
    // Nothing in a plain 6432 URL says "pooler": auto finds out at run time.
    assert_eq!(config(url, None), PreparedStatements::Auto);
    let marked = format!("{url}?pgbouncer=true");
    assert_eq!(config(&marked, None), PreparedStatements::Off);
    assert_eq!(config(&marked, Some("auto")), PreparedStatements::Off);
    assert_eq!(config(&marked, Some("on")), PreparedStatements::On);
    assert_eq!(config(url, Some("off")), PreparedStatements::Off);
    let supabase =
        "postgres://postgres.abcd:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres";
    assert_eq!(config(supabase, None), PreparedStatements::Off);
}

/// Prepared statements on one server, as a client holding that server in a transaction sees
/// them: (named by a client library at the protocol level, named by SQL `PREPARE`).
async fn prepared_on(held: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "select count(*) filter (where not from_sql), count(*) filter (where from_sql) \
         from pg_prepared_statements",
    )
    .persistent(false)
    .fetch_one(held)
    .await
    .unwrap()
}

/// What one server switch did: statements the first request left on server X (see
/// [`prepared_on`]), the second request's status, and whether the store noticed the pooler
/// (it says so in its log).
#[derive(Debug, PartialEq)]
struct Switch {
    named_on_x: (i64, i64),
    second: u16,
    detected: bool,
}

/// What happens when PgBouncer hands the app's one connection a different server between two
/// requests, as it may at any transaction boundary:
/// 1. a first `GET /name` runs on server X (the database's only server so far);
/// 2. another client opens a transaction and so holds X (it is the only idle server), and
///    counts the named statements X holds;
/// 3. a second `GET /name` has to run on a new server.
///
/// Returns the app's log lines beside it.
async fn requests_across_a_server_switch(prepared: &str, rls: &str) -> (Switch, String) {
    let (logs, _capture, _peer) = capture_logs();
    // A database of its own: its PgBouncer pool starts with no server.
    let db = &TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let config = pooler_config(db, |b| {
        b.db_max_connections(1)
            .var("DB_PREPARED_STATEMENTS", prepared)
            .var("DB_RLS", rls)
    });
    let app = TestApp::spawn(config).await;
    let token = token_for(user);

    // The read is one message, one transaction: PgBouncer hands server X back when it ends,
    // before the answer reaches the app.
    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);

    let mut other = sqlx::postgres::PgConnection::connect(&pooler_url(db))
        .await
        .unwrap();
    let mut held = other.begin().await.unwrap();
    let named_on_x = prepared_on(&mut held).await;

    let second = app.get_with_token("/name", &token).await;
    let second = (
        second.status().as_u16(),
        second.json::<Value>().await.unwrap(),
    );
    held.rollback().await.unwrap();
    other.close().await.unwrap();
    if second.0 == 200 {
        assert_eq!(second.1, json!({"full_name": "Ada"}));
    }
    let logs = logs.text();
    let switch = Switch {
        named_on_x,
        second: second.0,
        detected: logs.contains(POOLER_DETECTED),
    };
    (switch, logs)
}

/// A log writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn pooler_auto_detects_the_pooler_when_a_read_lands_on_another_server() {
    let mut logs = String::new();
    for rls in ["on", "off"] {
        let (switch, said) = requests_across_a_server_switch("auto", rls).await;
        logs.push_str(&said);
        // X holds the read this connection prepared, under its own name, and nothing sqlx
        // named; on the new server it is missing, which tells the store it is behind a pooler.
        assert_eq!(
            switch,
            Switch {
                named_on_x: (0, 1),
                second: 200,
                detected: true
            },
            "DB_RLS={rls}"
        );
    }
    // Said once per store, at INFO, and without the claims the failed message carried.
    let said: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("transaction-mode pooler detected"))
        .collect();
    assert_eq!(said.len(), 2, "{logs}");
    assert!(said.iter().all(|l| l.contains("INFO")), "{said:?}");
    assert!(!logs.contains("@example.com"), "{logs}");
}

#[tokio::test]
async fn pooler_off_names_nothing_on_the_server() {
    for rls in ["on", "off"] {
        let (switch, _) = requests_across_a_server_switch("off", rls).await;
        assert_eq!(
            switch,
            Switch {
                named_on_x: (0, 0),
                second: 200,
                detected: false
            },
            "DB_RLS={rls}"
        );
    }
}

#[tokio::test]
async fn pooler_named_prepared_statements_fail_once_pgbouncer_switches_servers() {
    // Why `on` is only for connections that keep their server: PgBouncer 1.18 in transaction
    // mode does not carry a statement prepared on one server to the next, and `on` does not
    // fall back.
    let (switch, _) = requests_across_a_server_switch("on", "off").await;
    assert_eq!(
        switch,
        Switch {
            named_on_x: (0, 1),
            second: 503,
            detected: false
        }
    );
}

/// One request of the mixed traffic, and the answer only the right SQL for the right user
/// gives.
#[derive(Debug, Clone)]
enum Call {
    GetName(Uuid, String),
    GetMe(Uuid, String),
    PutName(Uuid, String),
}

impl Call {
    async fn send(&self, client: &reqwest::Client, base: &str) -> (u16, Value) {
        let (request, user) = match self {
            Self::GetName(user, _) => (client.get(format!("{base}/name")), user),
            Self::GetMe(user, _) => (client.get(format!("{base}/me")), user),
            Self::PutName(user, name) => (
                client
                    .put(format!("{base}/name"))
                    .json(&json!({ "full_name": name })),
                user,
            ),
        };
        let r = request.bearer_auth(token_for(*user)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    }

    /// True when `body` is exactly this call's answer: the shape tells which statement ran,
    /// the values whose row it read.
    fn is_answered_by(&self, body: &Value) -> bool {
        match self {
            Self::GetName(_, name) | Self::PutName(_, name) => {
                *body == json!({ "full_name": name })
            }
            Self::GetMe(user, name) => {
                body["id"] == json!(user.to_string())
                    && body["email"] == json!(format!("{user}@example.com"))
                    && body["role"] == "authenticated"
                    && body["full_name"] == json!(name)
                    && body
                        .as_object()
                        .is_some_and(|o| o.contains_key("avatar_url"))
            }
        }
    }
}

/// 300 concurrent requests through PgBouncer with a plain URL and the default
/// `DB_PREPARED_STATEMENTS`: a third `GET /name`, a third `GET /me`, a third `PUT /name`, each
/// for a user of its own with a distinct name. Asserts that every answer is the caller's own
/// and of the right shape, that every write reached its row and no other, and measures what
/// the servers were left holding.
async fn mixed_traffic_through_a_plain_pooler_url(rls: &str) {
    let db = TestDb::new().await;
    let mut users = Vec::new();
    let mut calls = Vec::new();
    for i in 0..300 {
        let (user, name) = (Uuid::new_v4(), format!("User {i:03}"));
        users.push((user, name.clone()));
        calls.push(match i % 3 {
            0 => Call::GetName(user, name),
            1 => Call::GetMe(user, name),
            _ => Call::PutName(user, format!("{name} renamed")),
        });
    }
    db.seed_users(&users).await;
    let (logs, _capture, _peer) = capture_logs();
    let config = pooler_config(&db, |b| b.var("DB_RLS", rls));
    assert_eq!(config.db.prepared_statements, PreparedStatements::Auto);
    let max_connections = i64::from(config.db.max_connections);
    let app = TestApp::spawn(config).await;

    let mut requests = JoinSet::new();
    for call in calls.iter().cloned() {
        let (client, base) = (app.client.clone(), app.url(""));
        requests.spawn(async move {
            let answer = call.send(&client, &base).await;
            (call, answer)
        });
    }
    let answers = requests.join_all().await;
    let failed: Vec<_> = answers.iter().filter(|(_, (s, _))| *s >= 500).collect();
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(call, (status, body))| *status != 200 || !call.is_answered_by(body))
        .collect();
    assert!(
        failed.is_empty() && wrong.is_empty(),
        "DB_RLS={rls}: {} of 300 answered 5xx, {} wrong, e.g. {:?}",
        failed.len(),
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>()
    );

    let expected: HashMap<Uuid, String> = calls
        .iter()
        .map(|call| match call {
            Call::GetName(user, name) | Call::GetMe(user, name) | Call::PutName(user, name) => {
                (*user, name.clone())
            }
        })
        .collect();
    let stored: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("select id, full_name from public.users")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        stored, expected,
        "DB_RLS={rls}: rows differ from the writes"
    );
    assert!(
        logs.text().contains(POOLER_DETECTED),
        "DB_RLS={rls}: never noticed the pooler"
    );

    // Holding every server of the database's PgBouncer pool (8) at once shows what they
    // hold: the reads prepared before the store noticed the pooler, at most one per client
    // connection, and nothing sqlx named.
    let mut clients = Vec::new();
    let (mut by_sqlx, mut by_sql) = (0, 0);
    let mut sqlx_named: Vec<(String, String)> = Vec::new();
    for _ in 0..8 {
        let mut conn = sqlx::postgres::PgConnection::connect(&pooler_url(&db))
            .await
            .unwrap();
        conn.execute("begin").await.unwrap();
        let (protocol, sql) = prepared_on(&mut conn).await;
        (by_sqlx, by_sql) = (by_sqlx + protocol, by_sql + sql);
        sqlx_named.extend(
            sqlx::query_as::<_, (String, String)>(
                "select name, statement from pg_prepared_statements where not from_sql",
            )
            .persistent(false)
            .fetch_all(&mut conn)
            .await
            .unwrap(),
        );
        clients.push(conn);
    }
    for mut conn in clients {
        conn.execute("rollback").await.unwrap();
    }
    println!(
        "DB_RLS={rls}: statements left on the servers: {by_sql} by PREPARE, {by_sqlx} by sqlx"
    );
    assert_eq!(by_sqlx, 0, "DB_RLS={rls}: {sqlx_named:?}");
    assert!(by_sql <= max_connections, "DB_RLS={rls}: {by_sql} prepared");
}

#[tokio::test]
async fn pooler_mixed_traffic_under_rls_with_a_plain_url_gets_every_answer_right() {
    mixed_traffic_through_a_plain_pooler_url("on").await;
}

#[tokio::test]
async fn pooler_mixed_traffic_without_rls_with_a_plain_url_gets_every_answer_right() {
    mixed_traffic_through_a_plain_pooler_url("off").await;
}

/// A private cluster that logs every statement (see [`PrivatePg::start_logging_statements`]),
/// migrated, with Ada: what the service sends to it, and on which backend, is read from its
/// log, since a connection's prepared statements are visible to that session alone.
async fn logged_pg_with_ada() -> (PrivatePg, Uuid) {
    let pg = tokio::task::spawn_blocking(PrivatePg::start_logging_statements)
        .await
        .unwrap();
    supabase_jwt_service::db::migrate(&pg_config(&pg.url()).db)
        .await
        .unwrap();
    let mut admin = sqlx::postgres::PgConnection::connect(&pg.url())
        .await
        .unwrap();
    let user = Uuid::new_v4();
    sqlx::query("insert into auth.users (id) values ($1)")
        .bind(user)
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("insert into public.users (id, full_name) values ($1, 'Ada')")
        .bind(user)
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    (pg, user)
}

/// What the service sent so far, as `(backend pid, text)` (see [`PrivatePg::statements`]).
fn service_statements(pg: &PrivatePg) -> Vec<(u32, String)> {
    pg.statements("supabase-jwt-service")
}

/// The statements the service's messages after the first `skip` name, per backend, from the
/// server's log: `(pid, name) -> times executed`, for the store's own prepared read
/// (`prepare sjs_…` in a message, then `execute sjs_…(…)`) and for sqlx's named statements
/// (`execute sqlx_s_…: …`). `skip` leaves out what came before the app, such as the
/// migrations, which connect under the same application name.
fn named_statements(pg: &PrivatePg, skip: usize) -> BTreeMap<(u32, String), i64> {
    let mut named = BTreeMap::new();
    for (pid, text) in service_statements(pg).into_iter().skip(skip) {
        if let Some(rest) = text.strip_prefix("execute sqlx_s_") {
            let number = rest.split(':').next().unwrap_or_default();
            *named.entry((pid, format!("sqlx_s_{number}"))).or_insert(0) += 1;
            continue;
        }
        for part in text.split("; ") {
            if let Some(rest) = part.strip_prefix("prepare sjs_") {
                let name = format!("sjs_{}", rest.split('(').next().unwrap_or_default());
                named.entry((pid, name)).or_insert(0);
            } else if let Some(rest) = part.strip_prefix("execute sjs_") {
                let name = format!("sjs_{}", rest.split('(').next().unwrap_or_default());
                *named.entry((pid, name)).or_insert(0) += 1;
            }
        }
    }
    named
}

/// Reads on a direct connection with the default setting: (statements the connection holds
/// as `(name, times executed)`, whether the store took it for a pooler).
async fn reads_on_one_direct_connection(rls: &str, reads: usize) -> (Vec<(String, i64)>, bool) {
    let (pg, user) = logged_pg_with_ada().await;
    let before = service_statements(&pg).len();
    let (logs, _capture, _peer) = capture_logs();
    let config = config_with(&pg.url(), |b| b.db_max_connections(1).var("DB_RLS", rls));
    assert_eq!(config.db.prepared_statements, PreparedStatements::Auto);
    let app = TestApp::spawn(config).await;
    let token = token_for(user);
    for _ in 0..reads {
        let r = app.get_with_token("/name", &token).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"full_name": "Ada"})
        );
    }
    // The pool's one connection: every read above ran on it.
    let named = named_statements(&pg, before);
    let pids: BTreeSet<u32> = named.keys().map(|(pid, _)| *pid).collect();
    assert_eq!(pids.len(), 1, "DB_RLS={rls}: reads on {pids:?}");
    let held = named
        .into_iter()
        .map(|((_, name), executed)| (name, executed))
        .collect();
    (held, logs.text().contains(POOLER_DETECTED))
}

#[tokio::test]
async fn pooler_detection_keeps_a_direct_connection_on_its_prepared_read() {
    for rls in ["on", "off"] {
        let (held, detected) = reads_on_one_direct_connection(rls, 12).await;
        assert!(
            !detected,
            "DB_RLS={rls}: a direct connection taken for a pooler"
        );
        // One statement, prepared by the first read and executed by every read: under RLS the
        // read's own (`sjs_…_profile`, after the role switch in the same message), without it
        // sqlx's cached one.
        assert_eq!(held.len(), 1, "DB_RLS={rls}: {held:?}");
        let (name, executed) = &held[0];
        if rls == "on" {
            assert!(
                name.starts_with("sjs_") && name.ends_with("_profile") && name.len() == 28,
                "DB_RLS={rls}: {name}"
            );
        } else {
            assert!(name.starts_with("sqlx_s_"), "DB_RLS={rls}: {name}");
        }
        assert_eq!(*executed, 12, "DB_RLS={rls}: {held:?}");
    }
}

#[tokio::test]
async fn pooler_connection_state_does_not_leak_between_clients() {
    // After requests through the pooler, other clients on the same servers see no role or
    // claims: everything the service set was transaction-local.
    let db = TestDb::new().await;
    let users = seed_many(&db).await;
    let app = TestApp::spawn(pooler_config(&db, |b| b)).await;
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

#[tokio::test]
async fn pooler_a_direct_server_caches_statements_from_its_first_connection_on() {
    // The pool's first connection proves the server direct and is opened again with sqlx's
    // statement cache (sqlx cannot turn it on later), so from the first request on a
    // DB_RLS=off read is one named statement over the extended protocol, and a transaction
    // keeps what sqlx cached instead of wiping it.
    let (pg, user) = logged_pg_with_ada().await;
    let before = service_statements(&pg).len();
    let (logs, _capture, _peer) = capture_logs();
    let config = config_with(&pg.url(), |b| b.db_max_connections(1).rls(false));
    let app = TestApp::spawn(config).await;
    let token = token_for(user);
    for _ in 0..13 {
        let r = app.get_with_token("/name", &token).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"full_name": "Ada"})
        );
    }
    app.state
        .db()
        .begin_as_service()
        .await
        .unwrap()
        .rollback()
        .await
        .unwrap();

    let held: Vec<(String, i64)> = named_statements(&pg, before)
        .into_iter()
        .map(|((_, name), used)| (name, used))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].0.starts_with("sqlx_s_") && held[0].1 == 13,
        "{held:?}"
    );
    let statements = service_statements(&pg);
    let begin = statements[before..]
        .iter()
        .find(|(_, text)| text.contains("set local request.jwt.claims = ''"))
        .expect("the service's transaction");
    assert!(!begin.1.contains("deallocate all"), "{}", begin.1);
    assert!(!logs.text().contains(POOLER_DETECTED));
}

/// A PgBouncer left at its defaults but for `pool_mode = transaction`: no
/// `ignore_startup_parameters`, so it refuses any startup parameter it does not track itself
/// (`extra_float_digits`, which sqlx sends unless told not to). Readiness, reads and writes
/// all work through it with a plain URL, under RLS and without.
#[tokio::test]
async fn pooler_with_default_settings_serves_reads_and_writes() {
    let bouncer = PrivateBouncer::start("");
    for rls in ["on", "off"] {
        let db = TestDb::new().await;
        let user = Uuid::new_v4();
        db.seed_user(user, Some("Ada")).await;
        let app = TestApp::spawn(config_with(&bouncer.url(&db), |b| b.var("DB_RLS", rls))).await;
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status(), 200, "DB_RLS={rls}: {}", bouncer.log());
        let r = app.get_with_token("/name", &token_for(user)).await;
        assert_eq!(r.status(), 200, "DB_RLS={rls}: {}", bouncer.log());
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"full_name": "Ada"})
        );
        let r = app
            .put_name(&token_for(user), &json!({"full_name": "Grace"}))
            .await;
        assert_eq!(r.status(), 200, "DB_RLS={rls}");
        assert_eq!(db.full_name(user).await.as_deref(), Some("Grace"));
        assert!(
            !bouncer.log().contains("unsupported startup parameter"),
            "{}",
            bouncer.log()
        );
    }
}
