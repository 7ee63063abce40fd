//! One way to act as the caller: every entry point that runs SQL for a request (the built-in
//! read and write, a `Tx`, a `DbTx` begun in a handler, a `ValidUser<P>` profile) presents the
//! same identity to Postgres: the same `current_user`, the same `request.jwt.claims`, and the
//! same server-side bounds (`statement_timeout`, `lock_timeout`,
//! `idle_in_transaction_session_timeout`). Each is read from inside the database, by a function
//! that records what it sees: called by the route's own query, or by a restrictive policy on
//! `public.users` for the built-in read and write, whose SQL is the crate's.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};
use supabase_jwt_service::{ApiError, App, AppState, Claims, Profile, Tx, ValidUser};
use uuid::Uuid;

use crate::helpers::*;

/// A table anyone may insert into, and the function that records the caller's view in it.
const RECORDER: &str = r#"
create table public.caller_seen (
  entry text not null,
  who text not null,
  claims text,
  statement_timeout text not null,
  lock_timeout text not null,
  idle text not null
);
grant insert on public.caller_seen to authenticated;
create function public.record_caller(entry text) returns boolean
language sql volatile as $$
  insert into public.caller_seen values (
    entry, current_user, current_setting('request.jwt.claims', true),
    current_setting('statement_timeout'), current_setting('lock_timeout'),
    current_setting('idle_in_transaction_session_timeout'))
  returning true
$$;
grant execute on function public.record_caller(text) to authenticated;
-- Restrictive: and-ed with the owner policies, so it runs for every row they let through.
create policy "record reads" on public.users as restrictive for select to authenticated
  using (public.record_caller('built-in read'));
create policy "record writes" on public.users as restrictive for update to authenticated
  using (public.record_caller('built-in write'));
"#;

/// A profile of the user's own whose query records what it runs as.
#[derive(sqlx::FromRow)]
struct Seen {
    #[allow(dead_code)]
    recorded: bool,
}

impl Profile for Seen {
    const SELECT: &'static str =
        "select public.record_caller('ValidUser<P>') as recorded from public.users where id = $1";
    const SQLITE_SELECT: &'static str = "select 1 as recorded";
}

async fn via_tx(mut tx: Tx) -> Result<&'static str, ApiError> {
    sqlx::query("select public.record_caller('Tx')")
        .execute(&mut tx)
        .await?;
    Ok("ok")
}

async fn via_db_tx(
    State(state): State<AppState>,
    claims: Claims,
) -> Result<&'static str, ApiError> {
    let mut tx = state.db().begin_as(&claims).await?;
    sqlx::query("select public.record_caller('DbTx')")
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    Ok("ok")
}

async fn via_profile(_user: ValidUser<Seen>) -> &'static str {
    "ok"
}

/// What the recorder saw, by entry point.
#[derive(Debug, Clone, PartialEq)]
struct View {
    who: String,
    claims: Value,
    statement_ms: u64,
    lock_ms: u64,
    idle_ms: u64,
}

/// Postgres prints a timeout as `2700ms` or `3s`.
fn millis(setting: &str) -> u64 {
    if let Some(ms) = setting.strip_suffix("ms") {
        ms.parse().unwrap()
    } else if let Some(s) = setting.strip_suffix('s') {
        s.parse::<u64>().unwrap() * 1000
    } else {
        panic!("unexpected timeout setting {setting:?}")
    }
}

async fn views(db: &TestDb, rls: bool) -> BTreeMap<String, View> {
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let config = config_with(&db.url, |b| b.rls(rls));
    let state = AppState::build(config).await.expect("state");
    let routes: Router<AppState> = Router::new()
        .route("/tx", get(via_tx))
        .route("/db-tx", get(via_db_tx))
        .route("/profile", get(via_profile));
    let app = TestApp::spawn_app(App::new(state).with_profile_routes().merge(routes)).await;
    let token = token_for(user);
    for path in ["/name", "/tx", "/db-tx", "/profile"] {
        let r = app.get_with_token(path, &token).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    let r = app.put_name(&token, &json!({"full_name": "Grace"})).await;
    assert_eq!(r.status(), 200, "PUT /name");

    let rows: Vec<(String, String, Option<String>, String, String, String)> = sqlx::query_as(
        "select entry, who, claims, statement_timeout, lock_timeout, idle from public.caller_seen",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(entry, who, claims, statement, lock, idle)| {
            let claims = claims
                .filter(|c| !c.is_empty())
                .map(|c| serde_json::from_str(&c).unwrap())
                .unwrap_or(Value::Null);
            let view = View {
                who,
                claims,
                statement_ms: millis(&statement),
                lock_ms: millis(&lock),
                idle_ms: millis(&idle),
            };
            (entry, view)
        })
        .collect()
}

fn assert_one_meaning(seen: &BTreeMap<String, View>, expected_entries: &[&str], who: &str) {
    let entries: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(entries, expected_entries, "{seen:#?}");
    let first = seen.values().next().unwrap();
    for (entry, view) in seen {
        assert_eq!(view.who, who, "{entry}: {seen:#?}");
        assert_eq!(view.claims, first.claims, "{entry}: the claims differ");
        assert!(view.claims["sub"].is_string(), "{entry}: no claims");
        // Nine tenths of DB_TIMEOUT_SECONDS (3 s), less what the call already spent; the idle
        // bound is the whole of it.
        for (bound, ms) in [("statement", view.statement_ms), ("lock", view.lock_ms)] {
            assert!(
                (2000..=2700).contains(&ms),
                "{entry}: {bound} timeout {ms} ms"
            );
        }
        assert_eq!(view.idle_ms, 3000, "{entry}: idle in transaction");
    }
}

#[tokio::test]
async fn every_entry_point_acts_as_the_same_caller_under_rls() {
    let db = TestDb::new().await;
    sqlx::raw_sql(RECORDER).execute(&db.pool).await.unwrap();
    let seen = views(&db, true).await;
    assert_one_meaning(
        &seen,
        &[
            "DbTx",
            "Tx",
            "ValidUser<P>",
            "built-in read",
            "built-in write",
        ],
        "authenticated",
    );
}

/// With `DB_RLS=off` the role stays the connecting user's (here a superuser, which policies do
/// not bind, so only the routes' own queries record), and the claims and bounds are the same.
#[tokio::test]
async fn every_entry_point_acts_as_the_same_caller_without_rls() {
    let db = TestDb::new().await;
    sqlx::raw_sql(RECORDER).execute(&db.pool).await.unwrap();
    let seen = views(&db, false).await;
    assert_one_meaning(&seen, &["DbTx", "Tx", "ValidUser<P>"], "postgres");
}

/// A caller's transaction whose handle is lost with its connection still open (a leaked task,
/// a frozen process: nothing on our side will ever end it) is ended by Postgres itself after
/// `DB_TIMEOUT_SECONDS` idle, because every transaction sets
/// `idle_in_transaction_session_timeout`. Through a transaction-mode pooler too, where no
/// session-level setting can be made: counted in `pg_stat_activity` on both paths.
#[tokio::test]
async fn an_abandoned_transaction_is_ended_by_the_server() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let through_pooler = with_database(&pgbouncer_url(), &db.name);
    for (path, url) in [("direct", db.url.clone()), ("PgBouncer", through_pooler)] {
        let config = config_with(&url, |b| b.db_timeout(std::time::Duration::from_secs(1)));
        let state = AppState::build(config).await.expect("state");
        let claims = verified(state.config(), &token_for(user)).await;
        let mut tx = state.db().begin_as(&claims).await.expect("begin");
        sqlx::query("select 1")
            .execute(&mut tx)
            .await
            .expect("query");
        // Lost: no commit, no rollback, no drop; its socket stays open.
        std::mem::forget(tx);

        let idle_in_transaction = || async {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from pg_stat_activity where datname = current_database() \
                 and state = 'idle in transaction' and pid <> pg_backend_pid()",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap()
        };
        assert_eq!(
            idle_in_transaction().await,
            1,
            "{path}: the transaction is open"
        );
        let started = std::time::Instant::now();
        while idle_in_transaction().await > 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{path}: still idle in transaction after 10 s: nothing bounds it on the server"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        eprintln!(
            "{path}: abandoned transaction ended by the server after {:?}",
            started.elapsed()
        );
    }
}

/// A body that stops arriving is answered `408 request_timeout` in the JSON shape once
/// `BODY_READ_TIMEOUT_SECONDS` has passed since the handler began reading it, well before the
/// request timeout.
#[tokio::test]
async fn a_body_that_stops_arriving_is_408_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let config = config_with(&db.url, |b| {
        b.body_read_timeout(std::time::Duration::from_secs(1))
            .request_timeout(std::time::Duration::from_secs(30))
    });
    let app = TestApp::spawn(config).await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "PUT /name HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"full",
        token_for(user)
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("an answer before the request timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(db.full_name(user).await.as_deref(), Some("Ada"));
}
