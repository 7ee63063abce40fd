//! fly.toml, the Dockerfile and .dockerignore agree with the code: ports, health-check paths,
//! the release command's argv, the metrics port, the shutdown budget, a non-root image.

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

#[test]
fn image_runs_as_non_root_with_a_writable_store_and_no_secrets() {
    let all = dockerfile();
    let stage = final_stage(&all);
    let from = args_of(stage, "FROM")[0];
    assert!(
        from.starts_with("gcr.io/distroless/cc-debian12")
            || from.starts_with("debian:bookworm-slim"),
        "small runtime image, got {from}"
    );
    let user = *args_of(stage, "USER")
        .last()
        .expect("USER in the final stage");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(!matches!(uid, "" | "0" | "root"), "runs as {user}");

    // The embedded store's default path is relative to the working directory.
    // Dev mode (no DATABASE_URL) names it.
    let dev = Config::builder().build().expect("dev-mode config");
    let relative = dev
        .db
        .url
        .expose()
        .strip_prefix("sqlite://./")
        .expect("relative default");
    let data_dir = Path::new(relative).parent().expect("data folder");
    let workdir = *args_of(stage, "WORKDIR").last().expect("WORKDIR");
    let writable = Path::new(workdir).join(data_dir);
    let owned_by_user = args_of(stage, "COPY").iter().any(|args| {
        args.contains(&format!("--chown={uid}"))
            && args.split_whitespace().last() == Some(writable.to_str().unwrap_or_default())
    });
    assert!(
        owned_by_user,
        "{} must be owned by {uid}",
        writable.display()
    );

    assert!(
        all.iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("cargo build --release --locked")),
        "a locked release build"
    );
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

#[test]
fn the_image_ships_the_binary_stripped_and_keeps_its_line_tables_behind() {
    const BUILT: &str = "/out/supabase-jwt-service";
    let all = dockerfile();
    let build_step = all
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build --release"))
        .expect("a RUN that builds the release binary");
    // Shell steps: split at `&&` and `;`, with the `if`/`else` words around them dropped, so
    // a build that picks its target by `APP` is read step by step too.
    let steps: Vec<&str> = build_step
        .args
        .split("&&")
        .flat_map(|s| s.split(';'))
        .map(|s| {
            let s = s.trim();
            ["then ", "else "]
                .iter()
                .find_map(|kw| s.strip_prefix(kw))
                .unwrap_or(s)
                .trim()
        })
        .collect();
    let installed = steps
        .iter()
        .position(|s| s.starts_with("install") && s.ends_with(BUILT))
        .expect("the binary is installed into /out");
    // A strip after the install, of that very file, removing the debug sections at least.
    let stripped = steps[installed + 1..].iter().any(|step| {
        let words: Vec<&str> = step.split_whitespace().collect();
        let strips = match words.first().copied() {
            Some("strip") => true,
            Some("objcopy") => words.iter().any(|w| {
                matches!(
                    *w,
                    "--strip-all" | "--strip-debug" | "--strip-unneeded" | "-S" | "-g"
                )
            }),
            _ => false,
        };
        strips && words.last() == Some(&BUILT)
    });
    assert!(
        stripped,
        "{BUILT} is not stripped after install: {steps:#?}"
    );

    // The runtime stage copies that stripped file, not target/release nor the debug file.
    let stage = final_stage(&all);
    let binary_copies: Vec<&str> = args_of(stage, "COPY")
        .into_iter()
        .filter(|a| a.ends_with("/usr/local/bin/supabase-jwt-service"))
        .collect();
    assert_eq!(binary_copies.len(), 1, "{binary_copies:?}");
    let sources: Vec<&str> = binary_copies[0]
        .split_whitespace()
        .filter(|w| !w.starts_with("--"))
        .collect();
    assert_eq!(sources, [BUILT, "/usr/local/bin/supabase-jwt-service"]);
    for args in args_of(stage, "COPY") {
        assert!(!args.contains(".debug"), "debug info shipped: {args}");
    }
}

#[test]
fn dockerignore_keeps_builds_databases_and_secrets_out() {
    let ignore = repo_file(".dockerignore");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for needed in ["target", ".env", "data", "node_modules"] {
        assert!(entries.contains(&needed), ".dockerignore lacks {needed}");
    }
}

/// Copies `from` (a file or a folder) to `to`, skipping what .dockerignore keeps out of the
/// build context that the build stage could otherwise see (`node_modules`, `target`).
fn copy_like_docker(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == "node_modules" || name == "target" {
                continue;
            }
            copy_like_docker(&entry.path(), &to.join(name));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// The files a locked build needs: the manifest, the lock file, the source of every target the
/// manifest declares, and what the library's sources include at compile time (`include_str!`,
/// `include_bytes!`, `sqlx::migrate!`). Even `cargo fetch` refuses to start without the declared
/// test and bench sources; `cargo metadata` does not check them, so it cannot stand in.
fn files_cargo_reads_first() -> Vec<String> {
    let manifest: toml::Table = repo_file("Cargo.toml").parse().unwrap();
    let mut files = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    if let Some(lib) = manifest.get("lib").and_then(|l| l.as_table()) {
        files.push(
            lib.get("path")
                .and_then(|p| p.as_str())
                .unwrap_or("src/lib.rs")
                .to_owned(),
        );
    }
    for (kind, folder) in [("bin", "src/bin"), ("test", "tests"), ("bench", "benches")] {
        for target in manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let path = target
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_owned);
            let name = target
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            files.push(path.unwrap_or_else(|| format!("{folder}/{name}.rs")));
        }
    }
    files.extend(compile_time_inputs(Path::new("src")));
    files
}

/// What the `.rs` files under `dir` (relative to the repository) read while compiling: paths
/// in `include_str!`/`include_bytes!` (relative to the file) and in `sqlx::migrate!` (relative
/// to the manifest; each migration folder is represented by one `.sql` file in it).
fn compile_time_inputs(dir: &Path) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join(dir)).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(root).unwrap().to_path_buf();
        if path.is_dir() {
            found.extend(compile_time_inputs(&relative));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        // Comments (doc examples among them) are no input of a release build.
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (macro_name, from_file) in [
            ("include_str!(\"", true),
            ("include_bytes!(\"", true),
            ("sqlx::migrate!(\"", false),
        ] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = &text[at + macro_name.len()..];
                let literal = &rest[..rest.find('"').unwrap()];
                let base = if from_file {
                    relative.parent().unwrap()
                } else {
                    Path::new("")
                };
                let target = normalize(&base.join(literal));
                if from_file {
                    found.push(target);
                } else {
                    let sql = std::fs::read_dir(root.join(&target))
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .find(|p| p.extension().is_some_and(|e| e == "sql"))
                        .unwrap_or_else(|| panic!("no migration in {target}"));
                    found.push(normalize(sql.strip_prefix(root).unwrap()));
                }
            }
        }
    }
    found
}

/// `a/../b/./c` as `b/c`, with forward slashes.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

#[test]
fn the_build_stage_copies_everything_cargo_reads_before_it_runs_cargo() {
    // Cargo parses the whole manifest, every declared test and bench target included, before
    // it builds or fetches: a build stage that copies only Cargo.toml and src/ fails at its
    // first `cargo` line. Replay the stage's COPY lines into a folder and, at each RUN that
    // calls cargo, check that what cargo needs first is there.
    let all = dockerfile();
    let froms: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].keyword == "FROM")
        .collect();
    let build_stage = &all[froms[0]..*froms.get(1).unwrap_or(&all.len())];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let context = tempfile::tempdir().unwrap();
    let mut cargo_runs = 0;
    for instruction in build_stage {
        match instruction.keyword.as_str() {
            "COPY" => {
                let parts: Vec<&str> = instruction
                    .args
                    .split_whitespace()
                    .filter(|a| !a.starts_with("--"))
                    .collect();
                let (dest, sources) = parts.split_last().expect("COPY has a destination");
                for source in sources {
                    let target = if sources.len() > 1 || dest.ends_with('/') && *dest != "./" {
                        context.path().join(dest).join(source)
                    } else if *dest == "./" || *dest == "." {
                        context.path().join(source)
                    } else {
                        context.path().join(dest)
                    };
                    copy_like_docker(&root.join(source), &target);
                }
            }
            "RUN" if instruction.args.contains("cargo ") => {
                cargo_runs += 1;
                for needed in files_cargo_reads_first() {
                    assert!(
                        context.path().join(&needed).is_file(),
                        "`RUN {}` runs before the build stage has copied {needed}",
                        instruction.args
                    );
                }
            }
            _ => {}
        }
    }
    assert!(cargo_runs > 0, "the build stage runs cargo");
}
