//! The library as a foundation: `examples/notes` over real HTTP (its own process, on Postgres,
//! through PgBouncer and on the embedded store), and the `Tx` extractor's guarantees, measured
//! on the database (rows, backends, transaction state) rather than read off status codes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use supabase_jwt_service::config::ConfigBuilder;
use supabase_jwt_service::{ApiError, App, AppState, Claims, Tx, serve};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::helpers::{
    SECRET, TestDb, claims_in_session, client, config_with, example_binary, pgbouncer_url, sign,
    token_for, with_database,
};

/// The example's own migration, applied by the in-process tests the way the example does.
const NOTES_SQL: &str = include_str!("../../examples/notes/migrations/20261202000001_notes.sql");

/// The example running as its own process, on an address it picked (port 0).
struct Notes {
    child: Child,
    addr: SocketAddr,
}

impl Notes {
    /// Starts the example with the service's variables and waits (at most 60 s) for its
    /// "listening" log line.
    fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(example_binary("notes"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("METRICS_ADDR", "off")
            .env("LOG_FORMAT", "json")
            .env("SUPABASE_JWT_SECRET", SECRET)
            .env("CORS_ALLOWED_ORIGINS", "http://localhost:3000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start the notes example");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["addr"].as_str().map(str::to_owned))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                // After start-up nobody listens: the example's log goes to the test's output,
                // which the harness shows when the test fails.
                if tx.send((line.clone(), addr)).is_err() {
                    eprintln!("notes: {line}");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, Some(addr))) => {
                    drop(rx);
                    return Self { child, addr };
                }
                Ok((line, None)) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the notes example did not start: {seen:#?}");
                }
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM, then the exit status within 20 s.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("the notes example did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Notes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post_note(base: &str, token: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/notes"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn list(base: &str, token: &str) -> Vec<Value> {
    let response = client()
        .get(format!("{base}/notes"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["notes"].as_array().expect("notes array").clone()
}

async fn delete(base: &str, token: &str, id: &str) -> reqwest::Response {
    client()
        .delete(format!("{base}/notes/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

/// The example's whole HTTP contract, for two users, against `notes`.
async fn exercise_contract(notes: &Notes) {
    let base = notes.url("");
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (ta, tb) = (token_for(alice), token_for(bob));

    let created = post_note(&base, &ta, &json!({"body": "alice 1"})).await;
    assert_eq!(created.status(), 201);
    let first: Value = created.json().await.expect("json");
    assert_eq!(first["body"], "alice 1");
    assert!(Uuid::try_parse(first["id"].as_str().expect("id")).is_ok());
    assert!(
        first["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(
        post_note(&base, &ta, &json!({"body": "alice 2"}))
            .await
            .status(),
        201
    );
    assert_eq!(
        post_note(&base, &tb, &json!({"body": "bob 1"}))
            .await
            .status(),
        201
    );

    let mine = list(&base, &ta).await;
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(
        mine.iter()
            .all(|n| n["body"].as_str().is_some_and(|b| b.starts_with("alice")))
    );
    let theirs = list(&base, &tb).await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");

    // Bad bodies: 422 invalid_body, never a 500.
    for bad in [
        json!({}),
        json!({"body": ""}),
        json!({"body": "   "}),
        json!({"body": 5}),
        json!({"body": "x", "owner": bob}),
        json!({"body": "é".repeat(2001)}),
    ] {
        let r = post_note(&base, &ta, &bad).await;
        crate::helpers::assert_error(r, 422, "invalid_body").await;
    }
    assert_eq!(
        post_note(&base, &ta, &json!({"body": "é".repeat(2000)}))
            .await
            .status(),
        201
    );

    // Bob cannot delete Alice's note; unknown and malformed ids are 404 too.
    let id = first["id"].as_str().expect("id");
    crate::helpers::assert_error(delete(&base, &tb, id).await, 404, "not_found").await;
    let unknown = Uuid::new_v4().to_string();
    crate::helpers::assert_error(delete(&base, &ta, &unknown).await, 404, "not_found").await;
    crate::helpers::assert_error(delete(&base, &ta, "not-a-uuid").await, 404, "not_found").await;
    assert_eq!(delete(&base, &ta, id).await.status(), 204);
    assert_eq!(list(&base, &ta).await.len(), 2);
    assert_eq!(list(&base, &tb).await.len(), 1);

    // The error table: 401 with a challenge, 403 for a non-user token, JSON 404/405.
    let r = client()
        .get(notes.url("/notes"))
        .send()
        .await
        .expect("request");
    let headers = crate::helpers::assert_error(r, 401, "missing_token").await;
    assert_eq!(headers["www-authenticate"], "Bearer");
    let r = client()
        .get(notes.url("/notes"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .expect("request");
    crate::helpers::assert_invalid_token(r).await;
    let mut service = crate::helpers::claims(alice);
    service["role"] = json!("service_role");
    let r = client()
        .get(notes.url("/notes"))
        .bearer_auth(sign(&service))
        .send()
        .await
        .expect("request");
    crate::helpers::assert_error(r, 403, "insufficient_scope").await;
    let r = client()
        .put(notes.url("/notes"))
        .bearer_auth(&ta)
        .send()
        .await
        .expect("request");
    crate::helpers::assert_error(r, 405, "method_not_allowed").await;

    // CORS preflight for a browser POST with a JSON body and a token.
    let r = client()
        .request(reqwest::Method::OPTIONS, notes.url("/notes"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .expect("ascii");
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii");
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );

    // The built-in health routes stay.
    assert_eq!(
        client()
            .get(notes.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(notes.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
}

/// Fifty requests at once from two users over a one-connection pool: every answer holds only
/// its caller's notes.
async fn concurrent_isolation(notes: &Notes) {
    let base = notes.url("");
    let users: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    for (i, user) in users.iter().enumerate() {
        for n in 0..=i {
            let r = post_note(
                &base,
                &token_for(*user),
                &json!({"body": format!("{user} {n}")}),
            )
            .await;
            assert_eq!(r.status(), 201);
        }
    }
    let mut tasks = Vec::new();
    for i in 0..50 {
        let user = users[i % 2];
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let notes = list(&base, &token_for(user)).await;
            (user, i % 2 + 1, notes)
        }));
    }
    for task in tasks {
        let (user, expected, notes) = task.await.expect("task");
        assert_eq!(notes.len(), expected, "{notes:?}");
        let prefix = user.to_string();
        assert!(
            notes
                .iter()
                .all(|n| n["body"].as_str().is_some_and(|b| b.starts_with(&prefix)))
        );
    }
}

/// Backends of the service (by application name) that are inside a transaction.
async fn backends_in_transaction(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and application_name = 'supabase-jwt-service' and state like 'idle in transaction%'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test]
async fn notes_example_keeps_users_apart_on_postgres() {
    let db = TestDb::new().await;
    let notes = Notes::start(&[("DATABASE_URL", &db.url), ("DB_MAX_CONNECTIONS", "1")]);
    exercise_contract(&notes).await;
    concurrent_isolation(&notes).await;
    assert_eq!(backends_in_transaction(&db).await, 0);
    // Row-level security is on, and no owner filter is needed for it to hold.
    let rls: bool = sqlx::query_scalar(
        "select relrowsecurity from pg_class where oid = 'public.notes'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .expect("relrowsecurity");
    assert!(rls);
    let status = notes.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn notes_example_works_through_a_transaction_mode_pooler() {
    let db = TestDb::new().await;
    let pooled = format!(
        "{}?pgbouncer=true",
        with_database(&pgbouncer_url(), &db.name)
    );
    let notes = Notes::start(&[
        ("DATABASE_URL", &pooled),
        ("DIRECT_DATABASE_URL", &db.url),
        ("DB_MAX_CONNECTIONS", "4"),
    ]);
    exercise_contract(&notes).await;
    concurrent_isolation(&notes).await;
    let status = notes.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn notes_example_works_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/notes.db", dir.path().display());
    let notes = Notes::start(&[("DATABASE_URL", &url)]);
    exercise_contract(&notes).await;
    concurrent_isolation(&notes).await;
    let status = notes.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// An in-process app over real HTTP, built with the public API only.
struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Served {
    async fn start(app: App) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A migrated database with the notes table, and notes for two users inserted as superuser.
async fn notes_db() -> (TestDb, Uuid, Uuid) {
    let db = TestDb::new().await;
    sqlx::raw_sql(NOTES_SQL)
        .execute(&db.pool)
        .await
        .expect("notes migration");
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (owner, body) in [(alice, "a1"), (alice, "a2"), (bob, "b1")] {
        sqlx::query("insert into public.notes (owner, body) values ($1, $2)")
            .bind(owner)
            .bind(body)
            .execute(&db.pool)
            .await
            .expect("seed note");
    }
    (db, alice, bob)
}

async fn count_notes(db: &TestDb, body: &str) -> i64 {
    sqlx::query_scalar("select count(*) from public.notes where body = $1")
        .bind(body)
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

/// Routes written the way a user would, each probing one guarantee.
fn probe_routes() -> Router<AppState> {
    async fn unfiltered(mut tx: Tx) -> Result<axum::Json<Vec<String>>, ApiError> {
        let owners = sqlx::query_scalar("select owner::text from public.notes")
            .fetch_all(&mut tx)
            .await?;
        Ok(axum::Json(owners))
    }
    async fn whoami(mut tx: Tx) -> Result<axum::Json<Value>, ApiError> {
        let (role, uid): (String, Option<String>) =
            sqlx::query_as("select current_user::text, auth.uid()::text")
                .fetch_one(&mut tx)
                .await?;
        Ok(axum::Json(json!({"role": role, "uid": uid})))
    }
    // What the connection the pool lends next carries: read in a transaction as the service
    // itself, which switches no role, so a role left behind by an earlier request shows. (The
    // claims do not: every way in sets `request.jwt.claims` for its own transaction first.)
    async fn plain(
        axum::extract::State(state): axum::extract::State<AppState>,
    ) -> Result<axum::Json<Value>, ApiError> {
        let mut tx = state.db().begin_as_service().await?;
        let (role, setting): (String, String) =
            sqlx::query_as("select current_user::text, current_setting('role')")
                .fetch_one(&mut tx)
                .await?;
        tx.rollback().await?;
        Ok(axum::Json(json!({"role": role, "role_setting": setting})))
    }
    async fn insert_then_panic(claims: Claims, mut tx: Tx) -> StatusCode {
        let inserted =
            sqlx::query("insert into public.notes (owner, body) values ($1, 'from a panic')")
                .bind(claims.sub.uuid())
                .execute(&mut tx)
                .await;
        assert!(inserted.is_ok());
        panic!("handler bug after a write");
    }
    async fn insert_then_fail(claims: Claims, mut tx: Tx) -> Result<StatusCode, ApiError> {
        sqlx::query("insert into public.notes (owner, body) values ($1, 'from an error')")
            .bind(claims.sub.uuid())
            .execute(&mut tx)
            .await?;
        Err(ApiError::custom(
            StatusCode::CONFLICT,
            "note_locked",
            "this note is locked",
        ))
    }
    async fn insert_then_succeed(claims: Claims, mut tx: Tx) -> Result<StatusCode, ApiError> {
        sqlx::query("insert into public.notes (owner, body) values ($1, 'from a success')")
            .bind(claims.sub.uuid())
            .execute(&mut tx)
            .await?;
        Ok(StatusCode::CREATED)
    }
    async fn commit_then_fail(claims: Claims, mut tx: Tx) -> Result<StatusCode, ApiError> {
        sqlx::query("insert into public.notes (owner, body) values ($1, 'committed first')")
            .bind(claims.sub.uuid())
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Err(ApiError::custom(
            StatusCode::CONFLICT,
            "after_commit",
            "committed, then refused",
        ))
    }
    async fn slow(mut tx: Tx) -> Result<StatusCode, ApiError> {
        sqlx::query("select pg_sleep(30)").execute(&mut tx).await?;
        Ok(StatusCode::OK)
    }
    Router::new()
        .route("/unfiltered", get(unfiltered))
        .route("/whoami", get(whoami))
        .route("/plain", get(plain))
        .route("/panic", get(insert_then_panic))
        .route("/fail", get(insert_then_fail))
        .route("/succeed", get(insert_then_succeed))
        .route("/commit-then-fail", get(commit_then_fail))
        .route("/slow", get(slow))
}

async fn probe_app(db: &TestDb, mutate: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Served {
    let config = config_with(&db.url, |b| mutate(b.db_max_connections(1)));
    let state = AppState::build(config).await.expect("state");
    Served::start(App::new(state).merge(probe_routes())).await
}

#[tokio::test]
async fn tx_sees_only_the_callers_rows_without_an_owner_filter() {
    let (db, alice, bob) = notes_db().await;
    let app = probe_app(&db, |b| b).await;
    for (user, expected) in [(alice, 2), (bob, 1)] {
        let r = app.get("/unfiltered", &token_for(user)).await;
        assert_eq!(r.status(), 200);
        let owners: Vec<String> = r.json().await.expect("json");
        assert_eq!(owners.len(), expected, "{owners:?}");
        assert!(owners.iter().all(|o| *o == user.to_string()));
    }
    let r = app.get("/whoami", &token_for(alice)).await;
    let me: Value = r.json().await.expect("json");
    assert_eq!(
        (me["role"].as_str(), me["uid"].as_str()),
        (Some("authenticated"), Some(alice.to_string().as_str()))
    );
}

#[tokio::test]
async fn tx_panic_answers_json_500_rolls_back_and_leaks_nothing_to_the_next_request() {
    let (db, alice, bob) = notes_db().await;
    let app = probe_app(&db, |b| b).await;
    let r = app.get("/panic", &token_for(alice)).await;
    crate::helpers::assert_error(r, 500, "internal").await;
    assert_eq!(
        count_notes(&db, "from a panic").await,
        0,
        "the write was rolled back"
    );
    // One connection in the pool: the next requests use the one the panic left.
    assert_eq!(backends_in_transaction(&db).await, 0);
    let plain: Value = app
        .get("/plain", &token_for(bob))
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(plain["role"], "authenticated", "{plain}");
    assert_eq!(plain["role_setting"], "none", "{plain}");
    let me: Value = app
        .get("/whoami", &token_for(bob))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["uid"].as_str(), Some(bob.to_string().as_str()));
    assert_eq!(backends_in_transaction(&db).await, 0);
}

#[tokio::test]
async fn tx_commits_on_2xx_and_rolls_back_on_an_error_answer() {
    let (db, alice, _) = notes_db().await;
    let app = probe_app(&db, |b| b).await;
    let token = token_for(alice);
    crate::helpers::assert_error(app.get("/fail", &token).await, 409, "note_locked").await;
    assert_eq!(count_notes(&db, "from an error").await, 0);
    assert_eq!(app.get("/succeed", &token).await.status(), 201);
    assert_eq!(count_notes(&db, "from a success").await, 1);
    crate::helpers::assert_error(
        app.get("/commit-then-fail", &token).await,
        409,
        "after_commit",
    )
    .await;
    assert_eq!(count_notes(&db, "committed first").await, 1);
    assert_eq!(backends_in_transaction(&db).await, 0);
}

#[tokio::test]
async fn tx_refuses_an_ended_session_when_session_check_is_on() {
    let (db, alice, _) = notes_db().await;
    db.seed_auth_user_only(alice).await;
    let session = Uuid::new_v4();
    db.seed_session(session, alice, None).await;
    let app = probe_app(&db, |b| b.session_check(true)).await;
    let token = sign(&claims_in_session(alice, session));
    assert_eq!(app.get("/unfiltered", &token).await.status(), 200);
    db.end_session(session).await;
    crate::helpers::assert_invalid_token(app.get("/unfiltered", &token).await).await;
    assert_eq!(backends_in_transaction(&db).await, 0);
}

#[tokio::test]
async fn tx_statement_is_cut_off_by_the_server_within_db_timeout() {
    let (db, alice, _) = notes_db().await;
    let app = probe_app(&db, |b| {
        b.db_timeout(Duration::from_secs(1))
            .request_timeout(Duration::from_secs(20))
    })
    .await;
    let started = Instant::now();
    let r = app.get("/slow", &token_for(alice)).await;
    let elapsed = started.elapsed();
    let headers = crate::helpers::assert_error(r, 503, "unavailable").await;
    assert!(headers.contains_key("retry-after"));
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    // The server itself stopped the statement: no backend is still sleeping for us.
    let sleeping: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and query like '%pg_sleep(30)%' and state = 'active' and pid <> pg_backend_pid()",
    )
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_activity");
    assert_eq!(sleeping, 0);
}

/// A profile type of the user's own: its columns, read as the caller.
#[derive(sqlx::FromRow)]
struct Account {
    full_name: Option<String>,
    runs_as: String,
    visible_rows: i64,
}

impl supabase_jwt_service::Profile for Account {
    const SELECT: &'static str = "select full_name, current_user::text as runs_as, \
         (select count(*) from public.users) as visible_rows from public.users where id = $1";
    const SQLITE_SELECT: &'static str =
        "select full_name, 'sqlite' as runs_as, 1 as visible_rows from users where id = ?1";
}

#[tokio::test]
async fn valid_user_loads_a_profile_type_of_the_users_own_as_the_caller() {
    async fn account(user: supabase_jwt_service::ValidUser<Account>) -> axum::Json<Value> {
        let a = user.profile;
        axum::Json(
            json!({"full_name": a.full_name, "runs_as": a.runs_as, "visible_rows": a.visible_rows}),
        )
    }
    let db = TestDb::new().await;
    let (alice, bob, nobody) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    db.seed_user(alice, Some("Alice")).await;
    db.seed_user(bob, Some("Bob")).await;
    let config = config_with(&db.url, |b| b.db_max_connections(1));
    let state = AppState::build(config).await.expect("state");
    let routes: Router<AppState> = Router::new().route("/account", get(account));
    let app = Served::start(App::new(state).with_profile_routes().merge(routes)).await;

    let me: Value = app
        .get("/account", &token_for(alice))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        me,
        json!({"full_name": "Alice", "runs_as": "authenticated", "visible_rows": 1})
    );
    let r = app.get("/account", &token_for(nobody)).await;
    crate::helpers::assert_error(r, 404, "profile_not_found").await;
    // The default profile type is unchanged.
    let r = app.get("/name", &token_for(bob)).await;
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"full_name": "Bob"})
    );
    assert_eq!(backends_in_transaction(&db).await, 0);
}

#[tokio::test]
async fn tx_waits_at_most_db_timeout_for_a_connection_then_503() {
    let (db, alice, bob) = notes_db().await;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = std::sync::Arc::new(tokio::sync::Notify::new());
    let (r2, h2) = (release.clone(), held.clone());
    // Holds the pool's only connection, inside its transaction, until the test says so.
    let hold = move |mut tx: Tx| {
        let (release, held) = (r2.clone(), h2.clone());
        async move {
            sqlx::query("select 1").execute(&mut tx).await?;
            held.notify_one();
            release.notified().await;
            Ok::<_, ApiError>(StatusCode::NO_CONTENT)
        }
    };
    let config = config_with(&db.url, |b| {
        b.db_max_connections(1)
            .db_timeout(Duration::from_secs(1))
            .request_timeout(Duration::from_secs(30))
    });
    let state = AppState::build(config).await.expect("state");
    let routes = probe_routes().route("/hold", get(hold));
    let app = Served::start(App::new(state).merge(routes)).await;

    let holder = {
        let url = app.url("/hold");
        let token = token_for(alice);
        tokio::spawn(async move { client().get(url).bearer_auth(token).send().await })
    };
    tokio::time::timeout(Duration::from_secs(10), held.notified())
        .await
        .expect("the holder got the connection");
    let started = Instant::now();
    let r = app.get("/unfiltered", &token_for(bob)).await;
    let waited = started.elapsed();
    let headers = crate::helpers::assert_error(r, 503, "unavailable").await;
    assert!(headers.contains_key("retry-after"));
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
    let backends: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and application_name = 'supabase-jwt-service'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_activity");
    assert_eq!(
        backends, 1,
        "no second connection past DB_MAX_CONNECTIONS=1"
    );

    release.notify_one();
    let r = holder.await.expect("task").expect("holder answer");
    assert_eq!(r.status(), 204);
    // The pool recovers alone: the next request gets the connection.
    assert_eq!(app.get("/unfiltered", &token_for(bob)).await.status(), 200);
}

/// Routes that begin a `DbTx` on the state's database, as work outside the `Tx` extractor does.
fn user_tx_routes() -> Router<AppState> {
    use axum::extract::State;

    async fn commit(
        State(state): State<AppState>,
        claims: Claims,
    ) -> Result<axum::Json<Value>, ApiError> {
        let mut tx = state.db().begin_as(&claims).await?;
        let (role, uid): (String, Option<String>) =
            sqlx::query_as("select current_user::text, auth.uid()::text")
                .fetch_one(&mut tx)
                .await?;
        sqlx::query("insert into public.notes (owner, body) values ($1, 'user tx committed')")
            .bind(claims.sub.uuid())
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(axum::Json(json!({"role": role, "uid": uid})))
    }
    async fn dropped(
        State(state): State<AppState>,
        claims: Claims,
    ) -> Result<StatusCode, ApiError> {
        let mut tx = state.db().begin_as(&claims).await?;
        sqlx::query("insert into public.notes (owner, body) values ($1, 'user tx dropped')")
            .bind(claims.sub.uuid())
            .execute(&mut tx)
            .await?;
        // Neither committed nor rolled back, and the answer is 2xx: nothing settles a DbTx.
        drop(tx);
        Ok(StatusCode::OK)
    }
    async fn later(State(state): State<AppState>, claims: Claims) -> Result<StatusCode, ApiError> {
        let db = state.db().clone();
        tokio::spawn(async move {
            // After the answer went out, as the chat stores a streamed turn.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut tx = db.begin_as(&claims).await.expect("begin as the caller");
            sqlx::query("insert into public.notes (body) values ('user tx later')")
                .execute(&mut tx)
                .await
                .expect("insert, owner from auth.uid()");
            tx.commit().await.expect("commit");
        });
        Ok(StatusCode::ACCEPTED)
    }
    Router::new()
        .route("/user-tx/commit", get(commit))
        .route("/user-tx/dropped", get(dropped))
        .route("/user-tx/later", get(later))
}

#[tokio::test]
async fn user_tx_runs_as_the_caller_outside_the_request_and_a_dropped_one_is_never_reused() {
    let (db, alice, bob) = notes_db().await;
    // One connection: every request below reuses whatever the previous one left.
    let config = config_with(&db.url, |b| b.db_max_connections(1));
    let state = AppState::build(config).await.expect("state");
    let app = Served::start(
        App::new(state)
            .merge(probe_routes())
            .merge(user_tx_routes()),
    )
    .await;

    let me: Value = app
        .get("/user-tx/commit", &token_for(alice))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (me["role"].as_str(), me["uid"].as_str()),
        (Some("authenticated"), Some(alice.to_string().as_str()))
    );
    assert_eq!(count_notes(&db, "user tx committed").await, 1);

    assert_eq!(
        app.get("/user-tx/dropped", &token_for(alice))
            .await
            .status(),
        200
    );
    assert_eq!(
        count_notes(&db, "user tx dropped").await,
        0,
        "a dropped DbTx rolls back"
    );
    let plain: Value = app
        .get("/plain", &token_for(bob))
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(plain["role"], "authenticated", "{plain}");
    assert_eq!(plain["role_setting"], "none", "{plain}");

    assert_eq!(
        app.get("/user-tx/later", &token_for(bob)).await.status(),
        202
    );
    let mut owners: Vec<String> = Vec::new();
    for _ in 0..100 {
        owners =
            sqlx::query_scalar("select owner::text from public.notes where body = 'user tx later'")
                .fetch_all(&db.pool)
                .await
                .expect("owners");
        if !owners.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        owners,
        vec![bob.to_string()],
        "written as the caller after the answer"
    );
    assert_eq!(backends_in_transaction(&db).await, 0);
}

#[tokio::test]
async fn user_tx_refuses_an_ended_session_when_session_check_is_on() {
    let (db, alice, _) = notes_db().await;
    db.seed_auth_user_only(alice).await;
    let session = Uuid::new_v4();
    db.seed_session(session, alice, None).await;
    let config = config_with(&db.url, |b| b.db_max_connections(1).session_check(true));
    let state = AppState::build(config).await.expect("state");
    let app = Served::start(App::new(state).merge(user_tx_routes())).await;
    let token = sign(&claims_in_session(alice, session));
    assert_eq!(app.get("/user-tx/commit", &token).await.status(), 200);
    db.end_session(session).await;
    crate::helpers::assert_invalid_token(app.get("/user-tx/commit", &token).await).await;
    assert_eq!(count_notes(&db, "user tx committed").await, 1);
    assert_eq!(backends_in_transaction(&db).await, 0);
}

/// Backends of the service on `db`, whatever their state.
async fn service_backends(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and application_name = 'supabase-jwt-service'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_activity")
}

/// Opens a `POST /notes` that announces 100 bytes of body and sends 4, then keeps the socket
/// open until the server closes it, and starts over, until `stop`. One valid token is all the
/// attacker needs (an anonymous sign-in gives one).
async fn slow_body_attacker(
    addr: SocketAddr,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while !*stop.borrow() {
        let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let head = format!(
            "POST /notes HTTP/1.1\r\nHost: notes\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"bo"
        );
        if socket.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut stop = stop.clone();
        let mut sink = [0u8; 512];
        // Until the server answers or closes, or the test ends.
        tokio::select! {
            _ = socket.read(&mut sink) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Issue 17, item 6: ten connections that each send a `POST /notes` head and 4 of 100 bytes,
/// again whenever the server gives up on them, used to hold every pooled connection (a `Tx`
/// began when the head was read): another user's `GET /notes` got 503 and `/readyz` 503. Now
/// the caller's transaction begins on first use, after the body: the other user's requests
/// all succeed and the server never holds more backends than the pool.
#[tokio::test]
async fn a_slow_request_body_never_holds_a_pooled_connection() {
    let (db, alice, bob) = notes_db().await;
    let notes = Notes::start(&[
        ("DATABASE_URL", &db.url),
        ("DB_MAX_CONNECTIONS", "10"),
        ("REQUEST_TIMEOUT_SECONDS", "10"),
    ]);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let attackers: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(slow_body_attacker(
                notes.addr,
                token_for(alice),
                stopped.clone(),
            ))
        })
        .collect();
    // Let every attacker's head arrive first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut ok, mut failed, mut most_backends) = (0, Vec::new(), 0);
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let r = client()
            .get(notes.url("/notes"))
            .bearer_auth(token_for(bob))
            .send()
            .await
            .expect("request");
        match r.status().as_u16() {
            200 => ok += 1,
            other => failed.push(other),
        }
        most_backends = most_backends.max(service_backends(&db).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = client()
        .get(notes.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    let _ = stop.send(true);
    for attacker in attackers {
        let _ = attacker.await;
    }
    eprintln!(
        "slow bodies: {ok} x 200, {} other {failed:?}, at most {most_backends} backends",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "the other user got {failed:?} ({ok} x 200)"
    );
    assert_eq!(ready.status(), 200, "/readyz under the attack");
    assert!(
        most_backends <= 11,
        "{most_backends} backends for a pool of 10"
    );
    assert_eq!(backends_in_transaction(&db).await, 0);
}
