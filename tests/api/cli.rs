//! The binary: exit codes, one-line config errors, `mint`, `migrate`, dev mode, shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_supabase-jwt-service");

/// The binary with a clean environment (no inherited settings), run in `dir`.
pub(crate) fn bin(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir);
    cmd.env("LOG_FORMAT", "json").env("METRICS_ADDR", "off");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run binary")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `serve`, killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub(crate) fn start(mut cmd: Command) -> Self {
        let port = free_port();
        let mut child = cmd
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let server = Self { child, port, logs };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (bounded) until the captured logs contain `needle`.
    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in logs: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Where its metrics listener listens, from the "metrics listening" log line (waits for
    /// it, bounded): start it with `METRICS_ADDR=127.0.0.1:0`.
    pub(crate) fn metrics_addr(&self) -> std::net::SocketAddr {
        self.wait_for_log("metrics listening");
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|v| v["message"] == "metrics listening")
            .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()))
            .unwrap_or_else(|| panic!("no address in the metrics log line: {}", self.logs()))
    }

    /// The process id, to read its `/proc/<pid>/status`.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub(crate) fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit in {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn version_and_help_exit_zero_without_printing_env_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin(dir.path()).arg("--version"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    let out = run(bin(dir.path())
        .arg("--help")
        .env(
            "SUPABASE_JWT_SECRET",
            "help-must-not-show-this-secret-0123456789",
        )
        .env("DATABASE_URL", "postgres://u:hunter2@db/x"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "serve",
        "migrate",
        "mint",
        "SUPABASE_JWT_SECRET",
        "DATABASE_URL",
    ] {
        assert!(help.contains(word), "help lacks {word}");
    }
    assert!(!help.contains("help-must-not-show") && !help.contains("hunter2"));
}

#[test]
fn bad_setting_exits_2_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 4] = [
        ("PORT", "eighty", "PORT"),
        ("JWT_LEEWAY_SECONDS", "lots", "JWT_LEEWAY_SECONDS"),
        (
            "CORS_ALLOWED_ORIGINS",
            "not an origin",
            "CORS_ALLOWED_ORIGINS",
        ),
        ("DB_RLS", "sometimes", "DB_RLS"),
    ];
    for (var, value, named) in cases {
        let out = run(bin(dir.path()).env(var, value));
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
}

#[test]
fn postgres_without_keys_exits_2_and_masks_nothing_it_should_not_print() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin(dir.path()).env("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/db"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SUPABASE_JWT_SECRET") && stderr.contains("SUPABASE_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"));
}

#[test]
fn settings_are_read_from_a_dotenv_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "PORT=not-a-port\n").unwrap();
    let out = run(&mut bin(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
}

#[test]
fn mint_rejects_a_non_uuid_subject() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin(dir.path()).args(["mint", "--sub", "bob"]));
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn migrate_is_idempotent_on_a_bare_database() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = run(bin(dir.path())
            .arg("migrate")
            .env("DATABASE_URL", &db.url)
            .env("SUPABASE_JWT_SECRET", SECRET));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from pg_tables where (schemaname, tablename) in (('public','users'),('auth','users'),('auth','sessions'))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
    let rls: bool = sqlx::query_scalar(
        "select relrowsecurity from pg_class where oid = 'public.users'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(rls);
}

#[tokio::test]
async fn migrate_prefers_direct_database_url() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin(dir.path())
        .arg("migrate")
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/unreachable",
        )
        .env("DIRECT_DATABASE_URL", &db.url)
        .env("SUPABASE_JWT_SECRET", SECRET));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exists: bool = sqlx::query_scalar("select to_regclass('public.users') is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(exists);
}

#[tokio::test]
async fn minted_token_is_accepted_by_serve_and_no_secret_reaches_the_logs() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Minted")).await;
    let dir = tempfile::tempdir().unwrap();
    let issuer_url = "https://abcd.supabase.co";
    let secret = "the-minting-secret-that-must-never-be-logged-42";
    let with_env = |mut cmd: Command| {
        cmd.env("DATABASE_URL", &db.url)
            .env("SUPABASE_JWT_SECRET", secret)
            .env("JWT_ISSUER", format!("{issuer_url}/auth/v1"))
            .env("HOST", "127.0.0.1");
        cmd
    };
    let out = run(with_env(bin(dir.path())).args([
        "mint",
        "--sub",
        &user.to_string(),
        "--email",
        "m@example.com",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3);

    let server = Server::start(with_env(bin(dir.path())));
    let r = client()
        .get(server.url("/name"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["full_name"], "Minted");

    let out =
        run(with_env(bin(dir.path())).args(["mint", "--sub", &user.to_string(), "--ttl=-1h"]));
    let expired = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_invalid_token(
        client()
            .get(server.url("/name"))
            .bearer_auth(&expired)
            .send()
            .await
            .unwrap(),
    )
    .await;

    let logs = server.logs();
    assert!(logs.contains("\"user.id\""), "{logs}");
    assert!(!logs.contains(secret) && !logs.contains(&token) && !logs.contains(&expired));
}

#[tokio::test]
async fn dev_mode_binds_loopback_and_logs_a_curl_command_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin(dir.path()));
    // The port accepts before the last start-up lines are written: wait for the curl line.
    server.wait_for_log("curl");
    let logs = server.logs();
    assert!(
        logs.contains(&format!("127.0.0.1:{}", server.port)),
        "{logs}"
    );
    assert!(logs.contains("local stack"), "{logs}");
    let curl_line = logs
        .lines()
        .find(|l| l.contains("curl"))
        .expect("curl line in logs");
    assert!(
        curl_line.contains("mint --sub") && !curl_line.contains("eyJ"),
        "{curl_line}"
    );
    assert!(dir.path().join("data/dev.db").exists());

    let out = run(bin(dir.path()).args(["mint", "--sub", DEMO_USER]));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = client()
        .get(server.url("/name"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["full_name"], "Demo User");
}

#[tokio::test]
async fn rls_start_up_check_exits_2_when_the_role_switch_is_not_allowed() {
    let db = TestDb::new().await;
    let role = format!("weak_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("create role {role} login")))
        .execute(&db.pool)
        .await
        .unwrap();
    let weak_url = reqwest::Url::parse(&db.url).map(|mut u| {
        u.set_username(&role).unwrap();
        u.to_string()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin(dir.path())
        .env("DATABASE_URL", weak_url.unwrap())
        .env("SUPABASE_JWT_SECRET", SECRET));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("DB_RLS"));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(bin(dir.path()));
    let token = {
        let out = run(bin(dir.path()).args(["mint", "--sub", DEMO_USER]));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    // A PUT whose body is still arriving is in flight when the signal lands.
    let body = br#"{"full_name": "Still Served"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "PUT /name HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&body[5..]).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("Still Served"), "{response}");
    let status = server.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    server.wait_for_log("draining");
}
