//! The built binary, started the way the image starts it: only the Dockerfile's ENV values,
//! an empty working directory, and (when this test runs as root) an unprivileged user. It
//! must serve `/healthz`, create its embedded store, answer `/name` for a minted token,
//! expose metrics on their own port, and stop cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use supabase_jwt_service::testing::DEMO_USER;

const BIN: &str = env!("CARGO_BIN_EXE_supabase-jwt-service");
/// `nobody`: an unprivileged uid/gid that exists on Debian-like systems.
const UNPRIVILEGED: u32 = 65534;
const SETPRIV: &str = "/usr/bin/setpriv";

/// `ENV` of the Dockerfile's last stage, as `KEY=VALUE` pairs.
fn dockerfile_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("Dockerfile");
    let mut joined = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                joined.push(std::mem::take(&mut pending));
            }
        }
    }
    let last_from = joined
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .expect("FROM");
    let mut env = BTreeMap::new();
    for line in &joined[last_from..] {
        let Some(args) = line.strip_prefix("ENV ") else {
            continue;
        };
        for pair in args.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    env
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// How to run the binary: through `setpriv` as `nobody` when we are root and that works
/// (the binary must be reachable by that user), else as ourselves.
fn launcher(dir: &Path) -> Vec<String> {
    if running_as_root() && Path::new(SETPRIV).exists() {
        let prefix = vec![
            SETPRIV.to_owned(),
            format!("--reuid={UNPRIVILEGED}"),
            format!("--regid={UNPRIVILEGED}"),
            "--clear-groups".to_owned(),
        ];
        let probe = Command::new(&prefix[0])
            .args(&prefix[1..])
            .arg(BIN)
            .arg("--version")
            .current_dir(dir)
            .env_clear()
            .output();
        if probe.is_ok_and(|o| o.status.success()) {
            std::os::unix::fs::chown(dir, Some(UNPRIVILEGED), Some(UNPRIVILEGED))
                .expect("hand the working directory to the service user");
            return prefix;
        }
        eprintln!("note: {BIN} is not executable by uid {UNPRIVILEGED}; running as root");
    }
    Vec::new()
}

fn command(launcher: &[String], dir: &Path, env: &BTreeMap<String, String>) -> Command {
    let mut command = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    command.current_dir(dir).env_clear().envs(env);
    command
}

/// Kills the child if the test fails before it is stopped, and removes the directory.
struct Service {
    child: Child,
    dir: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn log_field(line: &Value, name: &str) -> Option<String> {
    line.get(name).and_then(Value::as_str).map(str::to_owned)
}

#[tokio::test]
async fn binary_with_only_the_images_env_serves_from_an_empty_directory() {
    let dir = std::env::temp_dir().join(format!(
        "sjs-image-env-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let launcher = launcher(&dir);

    let mut env = dockerfile_env();
    assert_eq!(env.get("HOST").map(String::as_str), Some("0.0.0.0"));
    // On this machine: loopback, and ports the kernel picks (read back from the log).
    env.insert("HOST".into(), "127.0.0.1".into());
    env.insert("PORT".into(), "0".into());
    env.insert("METRICS_ADDR".into(), "127.0.0.1:0".into());

    let child = command(&launcher, &dir, &env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let mut service = Service {
        child,
        dir: dir.clone(),
    };
    let stderr = service.child.stderr.take().expect("stderr");
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let (mut api, mut metrics) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.is_none() || metrics.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("the binary logs `listening` and `metrics listening` within 30 s");
        let Ok(json) = serde_json::from_str::<Value>(&line) else {
            panic!("LOG_FORMAT=json, yet this line is not JSON: {line}");
        };
        match log_field(&json, "message").as_deref() {
            Some("listening") => api = log_field(&json, "addr"),
            Some("metrics listening") => metrics = log_field(&json, "addr"),
            _ => {}
        }
    }
    let (api, metrics) = (api.unwrap_or_default(), metrics.unwrap_or_default());

    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{api}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    let store =
        std::fs::metadata(dir.join("data/dev.db")).expect("the embedded store lives in ./data");
    if !launcher.is_empty() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            store.uid(),
            UNPRIVILEGED,
            "created by the unprivileged user"
        );
    }

    let minted = command(&launcher, &dir, &env)
        .args(["mint", "--sub", DEMO_USER])
        .output()
        .expect("run mint");
    assert!(minted.status.success(), "mint: {minted:?}");
    let token = String::from_utf8(minted.stdout).expect("UTF-8 token");
    let name = client
        .get(format!("http://{api}/name"))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("GET /name");
    assert_eq!(name.status(), 200);
    let body: Value = name.json().await.expect("JSON body");
    assert_eq!(body["full_name"], "Demo User");

    let scrape = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.expect("metrics text");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"route="/name""#)
            && l.contains(r#"status="200""#)),
        "{text}"
    );

    // SIGTERM (Fly's kill_signal) drains and exits 0, well inside the 10 s drain budget.
    let pid = service.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = service.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < stop_deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
}
