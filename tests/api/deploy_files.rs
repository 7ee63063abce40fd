//! fly.toml and the Dockerfile agree with the code: ports, health-check paths, the release
//! command's argv, the metrics port, the shutdown budget, a locked build with no secret in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::http::{Method, StatusCode};
use supabase_jwt_service::config::ConfigBuilder;
use supabase_jwt_service::testing::{SECRET, call, request};
use supabase_jwt_service::{App, AppState, Config};

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fly() -> toml::Table {
    repo_file("fly.toml")
        .parse()
        .expect("fly.toml is valid TOML")
}

fn table<'a>(t: &'a toml::Table, key: &str) -> &'a toml::Table {
    t.get(key)
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("fly.toml: [{key}] missing"))
}

fn int(t: &toml::Table, key: &str) -> i64 {
    t.get(key)
        .and_then(toml::Value::as_integer)
        .unwrap_or_else(|| panic!("fly.toml: {key} is not an integer"))
}

fn string<'a>(t: &'a toml::Table, key: &str) -> &'a str {
    t.get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("fly.toml: {key} is not a string"))
}

/// The settings a production deploy has: a Postgres URL and a key (no dev-mode defaults).
fn production() -> ConfigBuilder {
    Config::builder()
        .database_url("postgres://app:pw@db.example.com:5432/postgres")
        .jwt_secret(SECRET)
}

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in repo_file("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
    }
    out
}

/// The instructions of the last stage: what the shipped image is made of.
fn final_stage(all: &[Instruction]) -> &[Instruction] {
    let start = all
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("Dockerfile has a FROM");
    &all[start..]
}

fn args_of<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

/// `ENV A=1 B="2"` (and the legacy `ENV A 1`) of the final stage.
fn image_env() -> BTreeMap<String, String> {
    let all = dockerfile();
    let mut env = BTreeMap::new();
    for args in args_of(final_stage(&all), "ENV") {
        if !args.contains('=') {
            let (k, v) = args.split_once(' ').expect("ENV KEY VALUE");
            env.insert(k.to_owned(), v.trim().to_owned());
            continue;
        }
        for pair in args.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    env
}

fn entrypoint() -> Vec<String> {
    let all = dockerfile();
    let stage = final_stage(&all);
    let raw = args_of(stage, "ENTRYPOINT");
    assert_eq!(raw.len(), 1, "exactly one ENTRYPOINT");
    // Exec form (a JSON array): the binary is PID 1 and receives SIGTERM itself.
    serde_json::from_str(raw[0]).expect("ENTRYPOINT is in exec (JSON array) form")
}

fn temp_db_url(name: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!(
        "sjs-deploy-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}/t.db", dir.display());
    (dir, url)
}

async fn status_of(app: axum::Router, path: &str) -> StatusCode {
    call(&app, request(Method::GET, path, None, None))
        .await
        .status
}

#[test]
fn internal_port_is_the_default_port_the_image_sets_and_exposes() {
    let fly = fly();
    let internal = int(table(&fly, "http_service"), "internal_port");
    let default_port = production()
        .build()
        .expect("production config")
        .http
        .listen
        .port();
    assert_eq!(internal, i64::from(default_port));

    let env = image_env();
    assert_eq!(env.get("PORT").map(String::as_str), Some("8080"));
    assert_eq!(env["PORT"], internal.to_string());
    // Fly's proxy reaches the machine over IPv4: the image must listen on all interfaces.
    assert_eq!(env.get("HOST").map(String::as_str), Some("0.0.0.0"));

    let all = dockerfile();
    assert_eq!(args_of(final_stage(&all), "EXPOSE"), [internal.to_string()]);
}

#[tokio::test]
async fn every_health_check_path_is_a_real_route() {
    let fly = fly();
    let internal = int(table(&fly, "http_service"), "internal_port");
    let mut paths = Vec::new();
    for check in table(&fly, "http_service")
        .get("checks")
        .and_then(toml::Value::as_array)
        .expect("[[http_service.checks]]")
    {
        let check = check.as_table().expect("check table");
        paths.push(string(check, "path").to_owned());
    }
    for (name, check) in table(&fly, "checks") {
        let check = check.as_table().expect("check table");
        assert_eq!(int(check, "port"), internal, "[checks.{name}] port");
        paths.push(string(check, "path").to_owned());
    }
    assert!(
        paths.iter().any(|p| p == "/healthz"),
        "liveness on /healthz"
    );
    assert!(paths.iter().any(|p| p == "/readyz"), "readiness on /readyz");

    let (dir, url) = temp_db_url("checks");
    let state = AppState::build(crate::helpers::config_with(&url, |b| b))
        .await
        .expect("state");
    let app = App::new(state).with_profile_routes().into_router();
    // The comparison point: an unknown path is a 404, so a typo in fly.toml would show.
    assert_eq!(status_of(app.clone(), "/no-such-route").await, 404);
    for path in &paths {
        let status = status_of(app.clone(), path).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{path} answered {status}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn release_command_after_the_entrypoint_runs_migrate() {
    let entrypoint = entrypoint();
    assert_eq!(entrypoint.len(), 1, "the ENTRYPOINT is the binary alone");
    assert_eq!(
        Path::new(&entrypoint[0]).file_name(),
        Some(std::ffi::OsStr::new("supabase-jwt-service"))
    );
    // Fly sets release_command as the machine's CMD and keeps the ENTRYPOINT, so the
    // process runs ENTRYPOINT + release_command. A CMD in the image would be replaced.
    let all = dockerfile();
    assert!(args_of(final_stage(&all), "CMD").is_empty());

    let fly = fly();
    let release = string(table(&fly, "deploy"), "release_command");
    let argv: Vec<&str> = entrypoint
        .iter()
        .map(String::as_str)
        .chain(release.split_whitespace())
        .collect();
    // Run as the machine would (the binary for the ENTRYPOINT) on a bare database: it
    // migrates and exits, rather than serving.
    let db = crate::helpers::TestDb::empty().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = crate::cli::bin(dir.path());
    cmd.args(&argv[1..])
        .env("DATABASE_URL", &db.url)
        .env("SUPABASE_JWT_SECRET", SECRET)
        .stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the binary");
        // Bounded: argv that is not `migrate` starts a server that never exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .expect("task");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && logs.contains("migrations applied"),
        "{argv:?} is not the migrate subcommand: {:?} {logs}",
        out.status
    );
    let migrated: bool = sqlx::query_scalar("select to_regclass('public.users') is not null")
        .fetch_one(&db.pool)
        .await
        .expect("query");
    assert!(migrated, "{argv:?} left public.users missing");
}

#[tokio::test]
async fn fly_scrapes_the_port_that_metrics_addr_names() {
    let fly = fly();
    let metrics = table(&fly, "metrics");
    let scrape_port = int(metrics, "port");
    assert_eq!(string(metrics, "path"), "/metrics");

    let env = table(&fly, "env");
    let addr = production()
        .var("METRICS_ADDR", string(env, "METRICS_ADDR"))
        .build()
        .expect("METRICS_ADDR parses")
        .telemetry
        .metrics_addr
        .expect("metrics on in fly.toml");
    assert_eq!(i64::from(addr.port()), scrape_port);
    assert_ne!(
        scrape_port,
        int(table(&fly, "http_service"), "internal_port"),
        "metrics never on the public port"
    );

    // The binary's metrics listener serves the path fly.toml scrapes.
    let (dir, url) = temp_db_url("metrics");
    let mut cmd = crate::cli::bin(&dir);
    cmd.env("DATABASE_URL", &url)
        .env("SUPABASE_JWT_SECRET", SECRET)
        .env("HOST", "127.0.0.1")
        .env("METRICS_ADDR", "127.0.0.1:0");
    let server = tokio::task::spawn_blocking(move || crate::cli::Server::start(cmd))
        .await
        .expect("start the binary");
    let metrics_addr = server.metrics_addr();
    let scraped = reqwest::get(format!("http://{metrics_addr}{}", string(metrics, "path")))
        .await
        .expect("scrape");
    assert_eq!(scraped.status(), StatusCode::OK);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fly_waits_longer_than_the_drain_before_killing() {
    let fly = fly();
    assert_eq!(string(&fly, "kill_signal"), "SIGTERM");
    let kill_timeout = match fly.get("kill_timeout").expect("kill_timeout") {
        toml::Value::Integer(seconds) => u64::try_from(*seconds).expect("positive"),
        toml::Value::String(s) => s
            .strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .expect("kill_timeout like \"15s\""),
        other => panic!("kill_timeout: {other}"),
    };
    let drain = production()
        .build()
        .expect("production config")
        .http
        .shutdown_timeout;
    assert!(
        kill_timeout > drain.as_secs(),
        "kill_timeout {kill_timeout}s must outlast the {drain:?} drain"
    );
}

#[test]
fn http_service_limits_requests_and_forces_https() {
    let fly = fly();
    let service = table(&fly, "http_service");
    assert_eq!(
        service.get("force_https"),
        Some(&toml::Value::Boolean(true))
    );
    let concurrency = table(service, "concurrency");
    assert_eq!(string(concurrency, "type"), "requests");
    assert!(int(concurrency, "soft_limit") < int(concurrency, "hard_limit"));
}

// What the image does when built and run (uid 65532, a writable ./data, a stripped binary, the
// whole context but nothing .dockerignore keeps out) is proved by building it for real:
// scripts/image-test, which the test command runs. These read what a build cannot show.
#[test]
fn image_build_is_locked_and_declares_no_secrets() {
    let all = dockerfile();
    assert!(
        all.iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("cargo build --release --locked")),
        "a locked release build"
    );
    // ARG and ENV values are kept in the image's history for anyone who pulls it.
    for instruction in all
        .iter()
        .filter(|i| i.keyword == "ENV" || i.keyword == "ARG")
    {
        let upper = instruction.args.to_ascii_uppercase();
        for word in ["SECRET", "PASSWORD", "DATABASE_URL", "TOKEN"] {
            assert!(
                !upper.contains(word),
                "{} {}",
                instruction.keyword,
                instruction.args
            );
        }
    }
}
