//! The Supabase CLI's published local secret serves only on loopback: any other listener
//! without a key setting exits 2 before it binds, unless the throwaway-container opt-in is
//! set; the published secret set on purpose warns. Run over the binary, as an operator would.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use supabase_jwt_service::config::LOCAL_STACK_JWT_SECRET;

const LOCAL_DEFAULTS_ON_NETWORK_VAR: &str = "INSECURE_LOCAL_DEFAULTS_ON_NETWORK";

use crate::cli::{Server, bin};
use crate::helpers::*;

/// How a start-up ended: exit code, stderr, and whether the port ever accepted.
struct Attempt {
    code: Option<i32>,
    stderr: String,
    listened: bool,
}

/// Runs `cmd` on a free port until it exits (at most 15 s, then it is killed), probing the
/// port on loopback meanwhile.
fn attempt(mut cmd: Command) -> Attempt {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = cmd
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut listened = false;
    let status = loop {
        listened |= TcpStream::connect(("127.0.0.1", port)).is_ok();
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    Attempt {
        code: status.and_then(|s| s.code()),
        stderr,
        listened,
    }
}

#[test]
fn a_network_listener_without_keys_exits_2_naming_both_settings_and_never_listens() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/app.db", dir.path().display());
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        // `docker run supabase-jwt-service` with no environment: the image sets HOST=0.0.0.0.
        ("the image's defaults", vec![("HOST", "0.0.0.0")], &[]),
        ("IPv6 any", vec![("HOST", "::")], &[]),
        // An explicit embedded store and no HOST: the production default, 0.0.0.0.
        ("explicit sqlite URL", vec![("DATABASE_URL", &sqlite)], &[]),
        (
            "postgres on 0.0.0.0",
            vec![
                ("HOST", "0.0.0.0"),
                ("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/db"),
            ],
            &[],
        ),
        // `fly deploy` before `fly secrets set`: the release command runs with the image's
        // env and fly.toml's, and must stop the deploy.
        (
            "fly's release_command",
            vec![("HOST", "0.0.0.0"), ("LOG_FORMAT", "json")],
            &["migrate"],
        ),
    ];
    for (case, env, args) in cases {
        let mut cmd = bin(dir.path());
        cmd.envs(env).args(args);
        let run = attempt(cmd);
        assert_eq!(run.code, Some(2), "{case}: {}", run.stderr);
        assert!(!run.listened, "{case}: a listener came up");
        let line = run.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "{case}: {line}");
        assert!(
            line.contains("SUPABASE_JWT_SECRET") && line.contains("SUPABASE_URL"),
            "{case}: {line}"
        );
        assert!(!line.contains("hunter2"), "{case}: {line}");
    }
    assert!(
        !dir.path().join("app.db").exists(),
        "refused before opening the store"
    );
}

#[tokio::test]
async fn the_throwaway_container_opt_in_serves_the_local_defaults_with_a_loud_warning() {
    let dir = tempfile::tempdir().unwrap();
    let with_env = |mut cmd: Command| {
        cmd.env("HOST", "0.0.0.0")
            .env(LOCAL_DEFAULTS_ON_NETWORK_VAR, "on");
        cmd
    };
    let server = Server::start(with_env(bin(dir.path())));
    let out = with_env(bin(dir.path()))
        .args(["mint", "--sub", DEMO_USER])
        .output()
        .expect("mint");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = client()
        .get(server.url("/name"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let logs = server.logs();
    let warning = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("INSECURE") && m.contains("PUBLISHED"))
        });
    assert!(warning.is_some(), "{logs}");
    assert!(!logs.contains(LOCAL_STACK_JWT_SECRET), "{logs}");
}

#[tokio::test]
async fn the_published_secret_set_with_postgres_starts_with_a_loud_warning() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.env("HOST", "127.0.0.1")
        .env("DATABASE_URL", &db.url)
        .env("SUPABASE_JWT_SECRET", LOCAL_STACK_JWT_SECRET);
    let server = Server::start(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.logs().contains("PUBLISHED") {
        assert!(Instant::now() < deadline, "no warning: {}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = server.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"WARN\"") && l.contains("SUPABASE_JWT_SECRET")),
        "{logs}"
    );
    assert!(!logs.contains(LOCAL_STACK_JWT_SECRET), "{logs}");

    // The same secret on loopback with the embedded store is ordinary local development.
    let mut cmd = bin(dir.path());
    cmd.env("SUPABASE_JWT_SECRET", LOCAL_STACK_JWT_SECRET);
    let local = Server::start(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !local.logs().contains("\"listening\"") {
        assert!(Instant::now() < deadline, "{}", local.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!local.logs().contains("PUBLISHED"), "{}", local.logs());
}

/// A `.env` pasted from `supabase status` onto a server: a Postgres URL, the CLI's published
/// secret set explicitly, `HOST=0.0.0.0`. Refused (exit 2, one line naming the variable) unless
/// the throwaway-container opt-in is on; on loopback it is the `supabase start` workflow.
#[tokio::test]
async fn the_published_secret_set_explicitly_never_serves_the_network() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let published = |host: &str| {
        let mut cmd = bin(dir.path());
        cmd.env("HOST", host)
            .env("DATABASE_URL", &db.url)
            .env("SUPABASE_JWT_SECRET", LOCAL_STACK_JWT_SECRET);
        cmd
    };

    for (case, host, supabase_url) in [
        ("IPv4 any, secret only", "0.0.0.0", None),
        ("IPv6 any", "::", None),
        (
            "with a project URL too",
            "0.0.0.0",
            Some("https://abcd.supabase.co"),
        ),
    ] {
        let mut cmd = published(host);
        if let Some(url) = supabase_url {
            cmd.env("SUPABASE_URL", url);
        }
        let run = attempt(cmd);
        assert_eq!(run.code, Some(2), "{case}: {}", run.stderr);
        assert!(!run.listened, "{case}: a listener came up");
        let line = run.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "{case}: {line}");
        assert!(line.contains("SUPABASE_JWT_SECRET"), "{case}: {line}");
        assert!(
            line.contains(LOCAL_DEFAULTS_ON_NETWORK_VAR),
            "{case}: {line}"
        );
        assert!(!line.contains(LOCAL_STACK_JWT_SECRET), "{case}: {line}");
    }

    // The opt-in serves it, loudly; loopback serves it as ordinary local development.
    db.seed_user(DEMO_USER.parse().unwrap(), Some("Demo")).await;
    for (case, host, opt_in) in [
        ("opt-in on 0.0.0.0", "0.0.0.0", true),
        ("loopback", "127.0.0.1", false),
    ] {
        let mut cmd = published(host);
        if opt_in {
            cmd.env(LOCAL_DEFAULTS_ON_NETWORK_VAR, "on");
        }
        let server = Server::start(cmd);
        let token = {
            let out = published("127.0.0.1")
                .args(["mint", "--sub", DEMO_USER])
                .output()
                .expect("mint");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let r = client()
            .get(server.url("/name"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{case}: {}", server.logs());
        assert!(
            server.logs().contains("PUBLISHED"),
            "{case}: {}",
            server.logs()
        );
        assert!(!server.logs().contains(LOCAL_STACK_JWT_SECRET), "{case}");
    }
}
