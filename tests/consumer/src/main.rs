//! `todos`: serves the todos API; `todos migrate` applies the migrations only;
//! `todos mint --sub UUID [--email E] [--ttl SECONDS]` prints a token for curl.

use std::process::ExitCode;
use std::time::Duration;

use supabase_jwt_service::{
    AccessToken, App, AppState, Config, StartError, serve, shutdown_signal, telemetry,
};

fn mint(config: &Config, args: &[String]) -> Result<String, String> {
    let mut sub: Option<uuid::Uuid> = None;
    let mut email = None;
    let mut ttl: i64 = 3600;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--sub" => sub = Some(val()?.parse().map_err(|e| format!("--sub: {e}"))?),
            "--email" => email = Some(val()?.clone()),
            "--ttl" => ttl = val()?.parse().map_err(|e| format!("--ttl: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let sub = sub.unwrap_or_else(uuid::Uuid::new_v4);
    let mut token = AccessToken::for_user(sub);
    if let Some(email) = email {
        token = token.email(email);
    }
    token = if ttl >= 0 {
        token.ttl(Duration::from_secs(ttl.unsigned_abs()))
    } else {
        token.expired(Duration::from_secs(ttl.unsigned_abs()))
    };
    token.sign(&config.auth).map_err(|e| e.to_string())
}

async fn run(config: Config) -> Result<(), StartError> {
    todos::migrate_all(&config).await?;
    let listen = config.http.listen;
    let state = AppState::build(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "todos: serving GET/POST /todos, PATCH/DELETE /todos/{{id}} on http://{} \
         (token for curl: `cargo run -q -- mint --sub <uuid>`)",
        listener.local_addr()?
    );
    serve(
        listener,
        App::new(state).merge(todos::routes()),
        shutdown_signal(),
    )
    .await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("todos: {e}");
            return ExitCode::from(2);
        }
    };
    match args.first().map(String::as_str) {
        Some("mint") => match mint(&config, &args[1..]) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("todos mint: {e}");
                ExitCode::from(2)
            }
        },
        Some("migrate") => {
            telemetry::init(config.telemetry.log_format, std::io::stderr);
            match todos::migrate_all(&config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("todos migrate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            telemetry::init(config.telemetry.log_format, std::io::stderr);
            match run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("todos: {e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                }
            }
        }
        Some(other) => {
            eprintln!(
                "todos: unknown command {other} (expected: mint, migrate, or nothing to serve)"
            );
            ExitCode::from(2)
        }
    }
}
