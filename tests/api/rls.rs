//! Row-level security and sessions on the real Postgres: what `Db::begin_as` sets, that the
//! policies (not the queries' `where`) keep users apart, that nothing outlives a request, and
//! that `SESSION_CHECK=on` makes a logout take effect at once.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use supabase_jwt_service::config::{Config, ConfigBuilder};
use supabase_jwt_service::{AppState, Claims, Db, Profile, StartError, UserRow};
use uuid::Uuid;

use crate::helpers::*;

/// A configuration with a single pooled connection, so every check after a request sees the
/// very connection that request used.
fn one_connection_config(
    db: &TestDb,
    mutate: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> Config {
    config_with(&db.url, |b| mutate(b.db_max_connections(1)))
}

/// What a pooled connection carries between requests: `(current_user, role, backends of the
/// service left inside a transaction)`. The first two are read on the connection the pool
/// lends next, in a transaction as the service itself (no role switch: a role left behind
/// shows); the third is counted from outside, in `pg_stat_activity`. (The caller's claims are
/// not among them: every way in through the public API sets `request.jwt.claims` for its own
/// transaction first, so none can read what a connection carried before.)
async fn connection_context(test_db: &TestDb, db: &Db) -> (String, String, i64) {
    let in_transaction = service_backends_in_transaction(test_db).await;
    let mut tx = db.begin_as_service().await.unwrap();
    let row = sqlx::query("select current_user::text, current_setting('role')")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    (row.get(0), row.get(1), in_transaction)
}

/// The service's backends on `db` that sit inside a transaction, as the server sees them. A
/// connection the service closed takes its backend a moment to notice: allowed 1 s, well
/// under the 3 s `idle_in_transaction_session_timeout` that would end a leaked one anyway.
async fn service_backends_in_transaction(db: &TestDb) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and application_name = 'supabase-jwt-service' and state like 'idle in transaction%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if n == 0 || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ada (with Bob and Cy) in `db`, her verified claims, and a store over a single connection.
async fn ada_on_one_connection(db: &TestDb) -> (Db, Claims) {
    let [ada, ..] = three_users(db).await;
    let config = one_connection_config(db, |b| b);
    let store = Db::connect(&config.db).await.unwrap();
    let claims = verified(&config, &token_for(ada)).await;
    (store, claims)
}

/// One value, read on the connection the pool lends next (in a transaction as the service
/// itself, rolled back).
async fn one_value<T>(store: &Db, sql: &'static str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut tx = store.begin_as_service().await.unwrap();
    let value = sqlx::query_scalar(sql).fetch_one(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    value
}

/// The server process behind the store's (single) pooled connection.
async fn backend_pid(store: &Db) -> i32 {
    one_value(store, "select pg_backend_pid()").await
}

/// Starts `work` while `backend` is frozen, gives up on it after 300 ms, then thaws the
/// backend: the server still runs what it was sent, after the caller stopped waiting.
async fn give_up_while_frozen<T>(backend: i32, work: impl std::future::Future<Output = T>) {
    signal_backend(backend, "STOP");
    let gave_up = tokio::time::timeout(Duration::from_millis(300), work).await;
    signal_backend(backend, "CONT");
    assert!(gave_up.is_err(), "the frozen backend cannot have answered");
}

/// The defaults of a connection as the superuser the tests connect as.
fn defaults() -> (String, String, i64) {
    ("postgres".into(), "none".into(), 0)
}

async fn three_users(db: &TestDb) -> [Uuid; 3] {
    let users = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    for (user, name) in users.iter().zip(["Ada", "Bob", "Cy"]) {
        db.seed_user(*user, Some(name)).await;
    }
    users
}

#[tokio::test]
async fn rls_policy_hides_other_users_rows_even_without_a_where() {
    let db = TestDb::new().await;
    let [ada, ..] = three_users(&db).await;
    let config = pg_config(&db.url);
    let store = Db::connect(&config.db).await.unwrap();
    let claims = verified(&config, &token_for(ada)).await;

    let mut tx = store.begin_as(&claims).await.unwrap();
    let count: i64 = sqlx::query_scalar("select count(*) from public.users")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from public.users")
        .fetch_all(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((count, ids), (1, vec![ada]));

    let all: i64 = sqlx::query_scalar("select count(*) from public.users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(all, 3, "the other rows exist; only the policy hides them");
}

#[tokio::test]
async fn rls_begin_as_sets_auth_uid_jwt_and_role_from_the_token() {
    let db = TestDb::new().await;
    let [ada, ..] = three_users(&db).await;
    let config = pg_config(&db.url);
    let store = Db::connect(&config.db).await.unwrap();
    let claims = verified(&config, &token_for(ada)).await;

    let mut tx = store.begin_as(&claims).await.unwrap();
    let row =
        sqlx::query("select auth.uid(), auth.jwt() ->> 'email', auth.role(), current_user::text")
            .fetch_one(&mut tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(row.get::<Option<Uuid>, _>(0), Some(ada));
    assert_eq!(
        row.get::<Option<String>, _>(1),
        Some(format!("{ada}@example.com"))
    );
    assert_eq!(
        row.get::<Option<String>, _>(2).as_deref(),
        Some("authenticated")
    );
    assert_eq!(row.get::<String, _>(3), "authenticated");
}

#[tokio::test]
async fn rls_claims_reach_the_database_intact_whatever_characters_they_hold() {
    // Users write their own user_metadata, and the claims travel inside the SQL text of the
    // begin statement: quotes, backslashes and dollar signs must neither break nor escape it.
    let db = TestDb::new().await;
    let [ada, ..] = three_users(&db).await;
    let config = pg_config(&db.url);
    let store = Db::connect(&config.db).await.unwrap();
    let mut payload = claims(ada);
    payload["user_metadata"] = json!({
        "name": "O'Brien \\' \\\\ '' $$ $claims$ \"quoted\"",
        "sql": "'); drop table public.users; --",
        "e": "E'\\x41'",
        "unicode": "café 🦀 \u{7f} \u{1}",
    });
    let claims = verified(&config, &sign(&payload)).await;

    let mut tx = store.begin_as(&claims).await.unwrap();
    let jwt: Value = sqlx::query_scalar("select auth.jwt()::json")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(jwt, payload);
    assert_eq!(db.full_name(ada).await.as_deref(), Some("Ada"));
}

#[tokio::test]
async fn rls_context_ends_with_the_transaction() {
    let db = TestDb::new().await;
    let (store, claims) = ada_on_one_connection(&db).await;

    store
        .begin_as(&claims)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    assert_eq!(connection_context(&db, &store).await, defaults());
    store
        .begin_as(&claims)
        .await
        .unwrap()
        .rollback()
        .await
        .unwrap();
    assert_eq!(connection_context(&db, &store).await, defaults());
    drop(store.begin_as(&claims).await.unwrap());
    assert_eq!(connection_context(&db, &store).await, defaults());
}

#[tokio::test]
async fn rls_connection_is_back_to_defaults_after_every_kind_of_answer() {
    let db = TestDb::new().await;
    let [ada, bob, _] = three_users(&db).await;
    let (ada_session, bob_session) = (Uuid::new_v4(), Uuid::new_v4());
    db.seed_session(ada_session, ada, None).await;
    db.seed_session(bob_session, bob, Some(-60.0)).await;
    let config = one_connection_config(&db, |b| b.session_check(true));
    let app = TestApp::spawn(config).await;
    // The app's own pool: the checks below see the connection the requests used.
    let store = app.state.db().clone();
    let ada_token = sign(&claims_in_session(ada, ada_session));

    let r = app.get_with_token("/name", &ada_token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(connection_context(&db, &store).await, defaults());

    let r = app
        .put_name(&ada_token, &json!({"full_name": "Ada K"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(connection_context(&db, &store).await, defaults());

    let bob_token = sign(&claims_in_session(bob, bob_session));
    assert_invalid_token(app.get_with_token("/name", &bob_token).await).await;
    assert_eq!(connection_context(&db, &store).await, defaults());
    assert_invalid_token(app.put_name(&bob_token, &json!({"full_name": "x"})).await).await;
    assert_eq!(connection_context(&db, &store).await, defaults());

    let stranger = Uuid::new_v4();
    let stranger_session = Uuid::new_v4();
    db.seed_auth_user_only(stranger).await;
    db.seed_session(stranger_session, stranger, None).await;
    let r = app
        .get_with_token(
            "/name",
            &sign(&claims_in_session(stranger, stranger_session)),
        )
        .await;
    assert_error(r, 404, "profile_not_found").await;
    assert_eq!(connection_context(&db, &store).await, defaults());
}

#[tokio::test]
async fn rls_failed_role_switch_leaves_the_pooled_connection_usable() {
    // A database user that may not become `authenticated`: the begin statement fails, and the
    // pool must not keep a connection stuck in an aborted transaction.
    let db = TestDb::new().await;
    let [ada, ..] = three_users(&db).await;
    let role = format!("t_norole_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("create role {role} login")))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    let config = one_connection_config(&db, |b| b.database_url(url.as_str()));
    let store = Db::connect(&config.db).await.unwrap();
    let claims = verified(&config, &token_for(ada)).await;

    // The start-up check sees it, naming DB_RLS.
    match AppState::build(config.clone()).await {
        Err(StartError::Config(e)) => assert_eq!(e.var, "DB_RLS", "{e}"),
        other => panic!("the start-up role check let it pass: {other:?}"),
    }
    assert!(store.begin_as(&claims).await.is_err());
    let who: String = one_value(&store, "select current_user::text").await;
    assert_eq!(who, role);
}

#[tokio::test]
async fn rls_put_name_changes_only_the_callers_row() {
    let db = TestDb::new().await;
    let [ada, bob, cy] = three_users(&db).await;
    let app = TestApp::spawn(pg_config(&db.url)).await;

    let r = app
        .put_name(&token_for(ada), &json!({"full_name": "Ada K"}))
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"full_name": "Ada K"})
    );
    assert_eq!(db.full_name(ada).await.as_deref(), Some("Ada K"));
    assert_eq!(db.full_name(bob).await.as_deref(), Some("Bob"));
    assert_eq!(db.full_name(cy).await.as_deref(), Some("Cy"));
}

#[tokio::test]
async fn rls_crafted_put_name_requests_cannot_reach_another_users_row() {
    let db = TestDb::new().await;
    let [ada, bob, _] = three_users(&db).await;
    let app = TestApp::spawn(pg_config(&db.url)).await;
    let token = token_for(ada);

    // The body names no row: an extra `id` is refused, a query string is ignored.
    let r = app
        .put_name(
            &token,
            &json!({"full_name": "pwned", "id": bob.to_string()}),
        )
        .await;
    assert_error(r, 422, "invalid_body").await;
    let r = app
        .client
        .put(app.url(&format!("/name?id={bob}")))
        .bearer_auth(&token)
        .json(&json!({"full_name": "Ada via query"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(db.full_name(ada).await.as_deref(), Some("Ada via query"));
    assert_eq!(db.full_name(bob).await.as_deref(), Some("Bob"));

    // A token for Bob signed with another secret is no way in either.
    let forged = sign_with(&claims(bob), "not-the-secret-but-long-enough-0123456789");
    assert_invalid_token(app.put_name(&forged, &json!({"full_name": "pwned"})).await).await;
    assert_eq!(db.full_name(bob).await.as_deref(), Some("Bob"));
}

#[tokio::test]
async fn rls_policy_and_grants_stop_writes_to_other_rows_at_the_database() {
    // What the policies allow Ada, whatever SQL a route (ours or a user's own) sends.
    let db = TestDb::new().await;
    let [ada, bob, cy] = three_users(&db).await;
    let config = pg_config(&db.url);
    let store = Db::connect(&config.db).await.unwrap();
    let claims = verified(&config, &token_for(ada)).await;

    let mut tx = store.begin_as(&claims).await.unwrap();
    let targeted = sqlx::query("update public.users set full_name = 'pwned' where id = $1")
        .bind(bob)
        .execute(&mut tx)
        .await
        .unwrap();
    let unfiltered = sqlx::query("update public.users set full_name = 'everyone'")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (targeted.rows_affected(), unfiltered.rows_affected()),
        (0, 1)
    );
    assert_eq!(db.full_name(ada).await.as_deref(), Some("everyone"));
    assert_eq!(db.full_name(bob).await.as_deref(), Some("Bob"));
    assert_eq!(db.full_name(cy).await.as_deref(), Some("Cy"));

    // Moving one's row onto another id, or deleting and inserting rows, is not granted at all.
    for sql in [
        "update public.users set id = gen_random_uuid()",
        "delete from public.users",
        "insert into public.users (id, full_name) values (gen_random_uuid(), 'x')",
    ] {
        let mut tx = store.begin_as(&claims).await.unwrap();
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut tx)
            .await
            .unwrap_err();
        let code = err
            .as_database_error()
            .and_then(|e| e.code().map(|c| c.into_owned()));
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    let all: i64 = sqlx::query_scalar("select count(*) from public.users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(all, 3);
}

#[tokio::test]
async fn rls_off_still_serves_and_updates_by_id() {
    let db = TestDb::new().await;
    let [ada, bob, cy] = three_users(&db).await;
    let config = config_with(&db.url, |b| b.rls(false));
    assert!(!config.db.rls);
    let app = TestApp::spawn(config).await;

    for (user, name) in [(ada, "Ada"), (bob, "Bob"), (cy, "Cy")] {
        let r = app.get_with_token("/name", &token_for(user)).await;
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"full_name": name}));
    }
    let r = app
        .put_name(&token_for(bob), &json!({"full_name": "Robert"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(db.full_name(bob).await.as_deref(), Some("Robert"));
    assert_eq!(db.full_name(ada).await.as_deref(), Some("Ada"));
    assert_eq!(db.full_name(cy).await.as_deref(), Some("Cy"));
    let r = app
        .get_with_token("/name", &token_for(Uuid::new_v4()))
        .await;
    assert_error(r, 404, "profile_not_found").await;
}

/// Whether `GET /name` answers under the table's policies, on every request: the read is a
/// statement prepared once per connection as the connecting superuser, and Postgres must
/// re-plan it for `authenticated` (and keep doing so once it switches to a generic plan, after
/// five runs). A restrictive policy that hides rows named "hidden" tells the two apart: with
/// `DB_RLS=off` the service reads as the superuser and the policy does not apply.
async fn get_name_statuses_under_a_hiding_policy(rls: &str, session_check: &str) -> Vec<u16> {
    let db = TestDb::new().await;
    let [ada, bob, _] = three_users(&db).await;
    let (ada_session, bob_session) = (Uuid::new_v4(), Uuid::new_v4());
    db.seed_session(ada_session, ada, None).await;
    db.seed_session(bob_session, bob, None).await;
    sqlx::raw_sql(
        "create policy \"test: hidden rows\" on public.users as restrictive for select \
         to authenticated using (full_name is distinct from 'hidden'); \
         update public.users set full_name = 'hidden' where full_name = 'Ada'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let config = one_connection_config(&db, |b| {
        b.var("DB_RLS", rls).var("SESSION_CHECK", session_check)
    });
    let app = TestApp::spawn(config).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        for (user, session) in [(ada, ada_session), (bob, bob_session)] {
            let token = sign(&claims_in_session(user, session));
            statuses.push(app.get_with_token("/name", &token).await.status().as_u16());
        }
    }
    statuses
}

#[tokio::test]
async fn rls_policies_decide_get_name_on_every_request() {
    let hidden_then_shown = [404, 200].repeat(8);
    assert_eq!(
        get_name_statuses_under_a_hiding_policy("on", "off").await,
        hidden_then_shown
    );
    assert_eq!(
        get_name_statuses_under_a_hiding_policy("on", "on").await,
        hidden_then_shown
    );
    assert_eq!(
        get_name_statuses_under_a_hiding_policy("off", "off").await,
        vec![200; 16],
        "with DB_RLS=off the policies are not in play"
    );
}

/// An app with `SESSION_CHECK=on` (or off) and `DB_RLS` as given, over `db`.
async fn session_app(db: &TestDb, session_check: bool, rls: bool) -> TestApp {
    TestApp::spawn(config_with(&db.url, |b| {
        b.session_check(session_check).rls(rls)
    }))
    .await
}

#[tokio::test]
async fn session_logged_out_is_rejected_at_once_when_the_check_is_on() {
    for rls in [true, false] {
        let db = TestDb::new().await;
        let [ada, ..] = three_users(&db).await;
        let session = Uuid::new_v4();
        db.seed_session(session, ada, Some(3600.0)).await;
        let app = session_app(&db, true, rls).await;
        let token = sign(&claims_in_session(ada, session));

        assert_eq!(
            app.get_with_token("/name", &token).await.status(),
            200,
            "rls={rls}"
        );
        assert_eq!(app.get_with_token("/me", &token).await.status(), 200);
        db.end_session(session).await;
        assert_invalid_token(app.get_with_token("/name", &token).await).await;
        assert_invalid_token(app.get_with_token("/me", &token).await).await;
        assert_invalid_token(app.put_name(&token, &json!({"full_name": "x"})).await).await;
        assert_eq!(db.full_name(ada).await.as_deref(), Some("Ada"));
    }
}

#[tokio::test]
async fn session_past_its_not_after_is_rejected_when_the_check_is_on() {
    for rls in [true, false] {
        let db = TestDb::new().await;
        let [ada, ..] = three_users(&db).await;
        let session = Uuid::new_v4();
        db.seed_session(session, ada, Some(-1.0)).await;
        let app = session_app(&db, true, rls).await;
        let token = sign(&claims_in_session(ada, session));

        assert_invalid_token(app.get_with_token("/name", &token).await).await;
        assert_invalid_token(app.put_name(&token, &json!({"full_name": "x"})).await).await;
        assert_eq!(db.full_name(ada).await.as_deref(), Some("Ada"), "rls={rls}");
    }
}

#[tokio::test]
async fn session_ended_tokens_are_accepted_when_the_check_is_off() {
    let db = TestDb::new().await;
    let [ada, bob, _] = three_users(&db).await;
    let expired = Uuid::new_v4();
    db.seed_session(expired, bob, Some(-60.0)).await;
    let app = session_app(&db, false, true).await;

    let logged_out = sign(&claims_in_session(ada, Uuid::new_v4()));
    assert_eq!(app.get_with_token("/name", &logged_out).await.status(), 200);
    let past = sign(&claims_in_session(bob, expired));
    assert_eq!(app.get_with_token("/name", &past).await.status(), 200);
    let r = app.put_name(&past, &json!({"full_name": "Robert"})).await;
    assert_eq!(r.status(), 200);
    let mut no_session = claims(ada);
    no_session.as_object_mut().unwrap().remove("session_id");
    assert_eq!(
        app.get_with_token("/name", &sign(&no_session))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn session_check_rejects_a_token_without_session_id() {
    let db = TestDb::new().await;
    let [ada, ..] = three_users(&db).await;
    let app = session_app(&db, true, true).await;
    let mut payload = claims(ada);
    payload.as_object_mut().unwrap().remove("session_id");
    let token = sign(&payload);
    assert_invalid_token(app.get_with_token("/name", &token).await).await;
    assert_invalid_token(app.put_name(&token, &json!({"full_name": "x"})).await).await;
    payload["session_id"] = json!("not-a-uuid");
    assert_invalid_token(app.get_with_token("/name", &sign(&payload)).await).await;
}

#[tokio::test]
async fn session_of_another_user_does_not_count() {
    for rls in [true, false] {
        let db = TestDb::new().await;
        let [ada, bob, _] = three_users(&db).await;
        let ada_session = Uuid::new_v4();
        db.seed_session(ada_session, ada, None).await;
        let app = session_app(&db, true, rls).await;
        let token = sign(&claims_in_session(bob, ada_session));
        assert_invalid_token(app.get_with_token("/name", &token).await).await;
        assert_invalid_token(app.put_name(&token, &json!({"full_name": "x"})).await).await;
        assert_eq!(db.full_name(bob).await.as_deref(), Some("Bob"), "rls={rls}");
    }
}

#[tokio::test]
async fn session_active_in_the_database_is_served_with_the_check_on() {
    let db = TestDb::new().await;
    let [ada, ..] = three_users(&db).await;
    let session = Uuid::new_v4();
    db.seed_session(session, ada, None).await;
    let app = session_app(&db, true, true).await;
    let token = sign(&claims_in_session(ada, session));
    let r = app.put_name(&token, &json!({"full_name": "Ada K"})).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"full_name": "Ada K"})
    );
    let r = app.get_with_token("/name", &token).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"full_name": "Ada K"})
    );
    let stranger = Uuid::new_v4();
    let stranger_session = Uuid::new_v4();
    db.seed_auth_user_only(stranger).await;
    db.seed_session(stranger_session, stranger, None).await;
    let token = sign(&claims_in_session(stranger, stranger_session));
    assert_error(
        app.put_name(&token, &json!({"full_name": "x"})).await,
        404,
        "profile_not_found",
    )
    .await;
}

/// Sends `signal` (`STOP`, `CONT`) to a Postgres backend process.
fn signal_backend(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test]
async fn rls_context_is_not_left_behind_when_a_request_gives_up_during_begin() {
    // A client that disconnects, or a store call that times out, drops the begin future after
    // the begin statement was sent and before its answer came back. The server still runs it;
    // the connection must not go back to the pool inside that transaction, as the user.
    let db = TestDb::new().await;
    let (store, claims) = ada_on_one_connection(&db).await;
    let backend = backend_pid(&store).await;
    give_up_while_frozen(backend, store.begin_as(&claims)).await;

    assert_eq!(connection_context(&db, &store).await, defaults());
    // The pool never hands on a connection whose work was cut short: that backend ends
    // instead of idling inside the transaction, as the user.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state: Option<String> =
            sqlx::query_scalar("select state from pg_stat_activity where pid = $1")
                .bind(backend)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        match state {
            None => break,
            Some(state) => assert!(
                std::time::Instant::now() < deadline,
                "the abandoned connection is still open ({state})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rls_a_read_given_up_mid_flight_is_drained_then_reused_as_it_was() {
    // A read is one message with nothing left open after it, so the pool waits for its answer
    // and keeps the connection (no reconnect per disconnecting client) in its default state.
    // The built-in read, as `GET /name` and `ValidUser` run it.
    let db = TestDb::new().await;
    let (store, claims) = ada_on_one_connection(&db).await;
    let backend = backend_pid(&store).await;
    give_up_while_frozen(backend, UserRow::load(&claims, &store)).await;

    assert_eq!(connection_context(&db, &store).await, defaults());
    assert_eq!(backend_pid(&store).await, backend);
    let row = UserRow::load(&claims, &store).await.unwrap().unwrap();
    assert_eq!(row.full_name.as_deref(), Some("Ada"));
}

#[tokio::test]
async fn rls_a_connection_released_inside_a_transaction_is_closed_not_reused() {
    // Work of one's own that drops its transaction, acting as the user, without a commit or
    // a rollback: the pool must not hand it to the next request.
    let db = TestDb::new().await;
    let (store, claims) = ada_on_one_connection(&db).await;
    let mut tx = store.begin_as(&claims).await.unwrap();
    let inside: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    drop(tx);

    assert_ne!(
        backend_pid(&store).await,
        inside,
        "released inside a transaction, yet reused"
    );
    assert_eq!(connection_context(&db, &store).await, defaults());
}
