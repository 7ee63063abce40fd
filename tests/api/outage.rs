//! Database outages against a private Postgres cluster that the test stops, freezes and restarts.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::helpers::*;

/// A Postgres cluster of the test's own, so stopping it disturbs no other test.
struct PrivatePg {
    dir: tempfile::TempDir,
    port: u16,
    frozen: Vec<u32>,
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
    fn start() -> Self {
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
        };
        pg.pg_ctl_start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
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

    fn stop(&self) {
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
    fn freeze(&mut self) {
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

    fn thaw(&mut self) {
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

#[tokio::test]
async fn stopped_then_frozen_database_gives_fast_503s_and_the_service_recovers_by_itself() {
    let mut pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
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

    let app = TestApp::spawn(config_with(&url, |r| {
        r.db_timeout_seconds = Some("2".into())
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
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_error(app.get("/readyz").await, 503, "unavailable").await;

    pg.pg_ctl_start();
    wait_for_status(&app, &token, 200, Duration::from_secs(20)).await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    // Frozen: connections hang. Every call is bounded, so answers still come in seconds.
    pg.freeze();
    let started = Instant::now();
    let answers = futures_join(&app, &token, 8).await;
    assert!(answers.iter().all(|s| *s == 503), "{answers:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "frozen 503s took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));

    pg.thaw();
    wait_for_status(&app, &token, 200, Duration::from_secs(20)).await;
}

/// Sends `n` concurrent `/name` requests and returns their statuses.
async fn futures_join(app: &TestApp, token: &str, n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = app.client.clone();
        let url = app.url("/name");
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
