//! Shared test harness: throwaway Postgres databases, a real server on 127.0.0.1:0, tokens.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, ConnectOptions};
use supabase_jwt_service::auth::Verifier;
use supabase_jwt_service::config::{Config, ConfigBuilder};
// The test kit's own: the tests use what a library user's tests use.
pub use supabase_jwt_service::testing::{DEMO_USER, SECRET, hs256_sign as sign_with};
use supabase_jwt_service::{AccessToken, App, AppState, Claims, StartError, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The Postgres superuser URL the test command exports.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts Postgres"
        )
    })
}

/// The PgBouncer (transaction mode) URL the test command exports.
pub fn pgbouncer_url() -> String {
    std::env::var("TEST_PGBOUNCER_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_PGBOUNCER_URL is not set: run the tests with scripts/test, which starts PgBouncer"
        )
    })
}

/// Replaces the database name of a postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let mut url = reqwest::Url::parse(url).expect("postgres url");
    url.set_path(db);
    url.to_string()
}

/// A fresh, migrated database on the test server, with a superuser pool for seeding.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
    /// Superuser pool (bypasses RLS) for seeding and inspection.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a database named after a random UUID.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        supabase_jwt_service::db::migrate(&pg_config(&db.url).db)
            .await
            .expect("migrate");
        db
    }

    /// Creates an empty (unmigrated) database.
    pub async fn empty() -> Self {
        let admin = admin_url();
        let name = format!("t_{}", Uuid::new_v4().simple());
        let mut conn = admin
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap()
            .connect()
            .await
            .expect("connect admin");
        sqlx::query(AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create db");
        let url = with_database(&admin, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("pool");
        Self { name, url, pool }
    }

    /// Inserts an auth user and (with `Some` name or `profile = true`) a profile row.
    pub async fn seed_user(&self, id: Uuid, full_name: Option<&str>) {
        sqlx::query("insert into auth.users (id, email) values ($1, $2)")
            .bind(id)
            .bind(format!("{id}@example.com"))
            .execute(&self.pool)
            .await
            .expect("seed auth user");
        sqlx::query("insert into public.users (id, full_name) values ($1, $2)")
            .bind(id)
            .bind(full_name)
            .execute(&self.pool)
            .await
            .expect("seed profile");
    }

    /// Inserts an auth user without a profile row.
    pub async fn seed_auth_user_only(&self, id: Uuid) {
        sqlx::query("insert into auth.users (id) values ($1)")
            .bind(id)
            .execute(&self.pool)
            .await
            .expect("seed");
    }

    /// The stored full_name of `id`, read as superuser.
    pub async fn full_name(&self, id: Uuid) -> Option<String> {
        sqlx::query_scalar("select full_name from public.users where id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("read name")
    }
}

/// A test configuration for a Postgres URL, HS256 with [`SECRET`], RLS on (the default).
pub fn pg_config(url: &str) -> Config {
    config_with(url, |b| b)
}

/// The test kit's configuration (HS256 with [`SECRET`], 127.0.0.1:0, no metrics listener,
/// JSON logs) for the database at `url`, with whatever `mutate` sets on top.
pub fn config_with(url: &str, mutate: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Config {
    mutate(supabase_jwt_service::testing::config().database_url(url))
        .build()
        .expect("config")
}

/// A real server on 127.0.0.1:0 serving the library's router.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client without connection reuse surprises: short timeouts, no proxy.
    pub client: reqwest::Client,
    /// The app's state (store, verifier, config).
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestApp {
    /// Builds the state for `config` and serves it with the profile routes, as the binary does.
    pub async fn spawn(config: Config) -> Self {
        let state = AppState::build(config).await.expect("build state");
        Self::spawn_state(state).await
    }

    /// Serves an already built state with the profile routes, as the binary does.
    pub async fn spawn_state(state: AppState) -> Self {
        Self::spawn_app(App::new(state).with_profile_routes()).await
    }

    /// Serves `app` as it is.
    pub async fn spawn_app(app: App) -> Self {
        let state = app.state().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, app, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            client: client(),
            state,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET path` with a bearer token.
    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// `GET path` without credentials.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Triggers graceful shutdown and returns once the server has begun it: `/readyz` turned
    /// 503 and new connections are refused (the listener is closed right after).
    pub async fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "still accepting 5 s after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Triggers graceful shutdown and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), handle).await;
        }
    }
}

/// A reqwest client with bounded timeouts so a hang fails the test instead of stalling it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .expect("client")
}

/// Valid Supabase-shaped claims for `user`, expiring in an hour.
pub fn claims(user: Uuid) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "sub": user.to_string(),
        "email": format!("{user}@example.com"),
        "phone": "",
        "role": "authenticated",
        "aal": "aal1",
        "session_id": Uuid::new_v4().to_string(),
        "is_anonymous": false,
    })
}

/// Signs `claims` with HS256 and [`SECRET`].
pub fn sign(claims: &Value) -> String {
    sign_with(claims, SECRET)
}

/// A valid token for `user`.
pub fn token_for(user: Uuid) -> String {
    sign(&claims(user))
}

/// Asserts an error answer: status, JSON body `{error, message}` with `code`, no-store.
pub async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> reqwest::header::HeaderMap {
    let headers = response.headers().clone();
    let got = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "body: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message missing: {body}"
    );
    assert!(
        headers
            .get("content-type")
            .is_some_and(|v| v == "application/json")
    );
    headers
}

/// Asserts the RFC 6750 challenge of an invalid token.
pub async fn assert_invalid_token(response: reqwest::Response) {
    let headers = assert_error(response, 401, "invalid_token").await;
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
}

/// A SQLite config in `dir`.
pub fn sqlite_config(dir: &std::path::Path) -> Config {
    config_with(&format!("sqlite://{}/t.db", dir.display()), |b| b)
}

impl TestDb {
    /// Inserts many auth users with profiles in one statement (the pooler tests seed hundreds).
    pub async fn seed_users(&self, users: &[(Uuid, String)]) {
        let ids: Vec<Uuid> = users.iter().map(|(id, _)| *id).collect();
        let names: Vec<String> = users.iter().map(|(_, name)| name.clone()).collect();
        sqlx::query(
            "with a as (insert into auth.users (id, email) \
                 select id, id || '@example.com' from unnest($1::uuid[]) as id) \
             insert into public.users (id, full_name) select * from unnest($1::uuid[], $2::text[])",
        )
        .bind(&ids)
        .bind(&names)
        .execute(&self.pool)
        .await
        .expect("seed users");
    }

    /// Inserts an `auth.sessions` row, as Supabase Auth does at sign-in; `expires_in` (seconds,
    /// negative for the past) sets `not_after`, `None` leaves it null (no time limit).
    pub async fn seed_session(&self, id: Uuid, user: Uuid, expires_in: Option<f64>) {
        sqlx::query(
            "insert into auth.sessions (id, user_id, not_after) \
             values ($1, $2, now() + make_interval(secs => $3))",
        )
        .bind(id)
        .bind(user)
        .bind(expires_in)
        .execute(&self.pool)
        .await
        .expect("seed session");
    }

    /// Deletes a session row, as Supabase Auth does at sign-out.
    pub async fn end_session(&self, id: Uuid) {
        sqlx::query("delete from auth.sessions where id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .expect("end session");
    }
}

/// Valid claims for `user` whose `session_id` is `session`.
pub fn claims_in_session(user: Uuid, session: Uuid) -> Value {
    let mut claims = claims(user);
    claims["session_id"] = json!(session.to_string());
    claims
}

/// The verified [`Claims`] of `token` under `config`, as a handler would receive them.
pub async fn verified(config: &Config, token: &str) -> Claims {
    Verifier::new(&config.auth, None)
        .verify(token)
        .await
        .expect("token verifies")
}

impl TestApp {
    /// `PUT /name` with a bearer token and a JSON body.
    pub async fn put_name(&self, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url("/name"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }
}

/// A Postgres cluster of the test's own, so stopping it disturbs no other test.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
    frozen: Vec<u32>,
    /// Server options beyond the defaults, on every start.
    options: String,
}

fn pg_command(program: &str) -> Command {
    let bin_dir =
        PathBuf::from(std::env::var("TEST_PG_BIN_DIR").expect("TEST_PG_BIN_DIR: run scripts/test"));
    let run_as = std::env::var("TEST_PG_RUN_AS").unwrap_or_default();
    let mut words = run_as.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut cmd = Command::new(first);
            cmd.args(words).arg(bin_dir.join(program));
            cmd
        }
        None => Command::new(bin_dir.join(program)),
    }
}

fn check(cmd: &mut Command) {
    let out = cmd.output().expect("run postgres tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    /// Creates and starts a cluster on a free loopback port.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A cluster that logs every statement, each line prefixed with `[application] [pid] `:
    /// what the service sent, on which backend, read from outside with [`Self::statements`].
    pub fn start_logging_statements() -> Self {
        Self::start_with("-c log_statement=all -c log_line_prefix='[%a] [%p] '")
    }

    fn start_with(options: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("sjs-pg").tempdir().unwrap();
        // The server runs as an unprivileged user when the tests run as root.
        let _ = Command::new("chmod")
            .args(["777", dir.path().to_str().unwrap()])
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.path().join("data");
        check(pg_command("initdb").args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]));
        let pg = Self {
            dir,
            port,
            frozen: Vec::new(),
            options: options.to_owned(),
        };
        pg.pg_ctl_start();
        pg
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
    }

    /// The statements `application` sent so far, in order, as `(backend pid, text)`: a simple
    /// query's whole text, or `execute <name>: <query>` for a named or unnamed statement of
    /// the extended protocol. Needs [`Self::start_logging_statements`].
    pub fn statements(&self, application: &str) -> Vec<(u32, String)> {
        let prefix = format!("[{application}] [");
        self.log()
            .lines()
            .filter_map(|line| {
                let (pid, rest) = line.strip_prefix(&prefix)?.split_once("] ")?;
                let text = rest.strip_prefix("LOG:  statement: ").or_else(|| {
                    rest.strip_prefix("LOG:  ")
                        .filter(|r| r.starts_with("execute "))
                })?;
                Some((pid.parse().ok()?, text.to_owned()))
            })
            .collect()
    }

    /// Superuser URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts (or restarts) the server.
    pub fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        let log = self.dir.path().join("pg.log");
        check(pg_command("pg_ctl").args([
            "-D",
            self.data().to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-o",
            &opts,
            "start",
        ]));
    }

    /// Stops the server at once (`-m immediate`): clients see refused connections.
    pub fn stop(&self) {
        check(pg_command("pg_ctl").args([
            "-D",
            self.data().to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
    }

    /// SIGSTOP the postmaster and every backend: connections hang instead of failing.
    pub fn freeze(&mut self) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster.to_string()])
            .output()
            .unwrap();
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok()),
        );
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
        }
        self.frozen = pids;
    }

    /// Resumes every process `freeze` stopped.
    pub fn thaw(&mut self) {
        for pid in self.frozen.drain(..) {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.thaw();
        let _ = pg_command("pg_ctl")
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

/// A token for the demo profile minted by the service's own `mint`, valid for `ttl_seconds`
/// (negative: already expired).
pub fn mint_demo_token(config: &Config, ttl_seconds: i64) -> String {
    let demo = supabase_jwt_service::UserId::parse(DEMO_USER).expect("uuid");
    let ttl = Duration::from_secs(ttl_seconds.unsigned_abs());
    let token = if ttl_seconds < 0 {
        AccessToken::for_user(demo).expired(ttl)
    } else {
        AccessToken::for_user(demo).ttl(ttl)
    };
    token.sign(&config.auth).expect("mint")
}

/// `target/<profile>/examples/<name>`, next to this test binary's `deps/` folder: the tests of
/// an example run its binary, which `scripts/test` builds first (`cargo build --examples`).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --example {name}` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A PgBouncer of the test's own in transaction mode in front of the test server, with
/// `extra` appended to its `[pgbouncer]` section: by default nothing else, as a self-hosted
/// or platform pooler is often left (no `ignore_startup_parameters`). Stopped on drop.
pub struct PrivateBouncer {
    dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
}

impl PrivateBouncer {
    /// Starts one forwarding every database to the server of `TEST_DATABASE_URL`.
    pub fn start(extra: &str) -> Self {
        let bin =
            std::env::var("TEST_PGBOUNCER_BIN").expect("TEST_PGBOUNCER_BIN: run scripts/test");
        let upstream = reqwest::Url::parse(&admin_url()).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("sjs-bouncer")
            .tempdir()
            .unwrap();
        // PgBouncer runs as an unprivileged user when the tests run as root.
        let _ = Command::new("chmod")
            .args(["777", dir.path().to_str().unwrap()])
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             logfile = {log}\npidfile = {pid}\n{extra}\n",
            upstream_port = upstream.port().unwrap_or(5432),
            users = path("userlist.txt"),
            log = path("pgbouncer.log"),
            pid = path("pgbouncer.pid"),
        );
        std::fs::write(path("pgbouncer.ini"), ini).unwrap();
        for file in ["pgbouncer.ini", "userlist.txt"] {
            let _ = Command::new("chmod").args(["666", &path(file)]).status();
        }
        let run_as = std::env::var("TEST_PG_RUN_AS").unwrap_or_default();
        let mut words = run_as.split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut cmd = Command::new(first);
                cmd.args(words).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        check(cmd.args(["-d", &path("pgbouncer.ini")]));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not start: {}",
                std::fs::read_to_string(path("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { dir, port }
    }

    /// `db`'s URL through this pooler: plain, nothing in it says "pooler".
    pub fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PrivateBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}
