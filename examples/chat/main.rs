//! `cargo run --example chat`: an AI chat endpoint next to Supabase. Streamed answers from any
//! OpenAI-compatible server (or a built-in local model), a per-user quota that holds across
//! machines, and the history stored as the user under row-level security. See `docs/chat.md`.
//!
//! Same configuration as the service (and the same embedded default: nothing to install),
//! plus `LLM_*` and `CHAT_*` variables (`--help` lists them).

// `unreachable_pub` is for the library's API; in an example binary `pub` only shares code
// between its modules.
#![allow(unreachable_pub)]

mod db;
mod history;
mod local;
mod quota;
mod routes;
mod upstream;

use std::process::ExitCode;
use std::time::Duration;

use supabase_jwt_service::{App, AppState, Config, StartError, serve, shutdown_signal, telemetry};

use crate::local::LocalModel;
use crate::quota::{Limits, Streams};
use crate::routes::ChatState;
use crate::upstream::{ApiKey, Model, Upstream};

/// The chat's own settings, from the environment (the service's are read by
/// `Config::from_env`). No `Debug`: it holds the upstream's API key as text.
struct ChatArgs {
    /// `LLM_BASE_URL`: an OpenAI-compatible API base; unset: the built-in local model.
    llm_base_url: Option<String>,
    /// `LLM_API_KEY`: sent as a Bearer token, never logged.
    llm_api_key: Option<String>,
    /// `LLM_MODEL`: the model name sent upstream.
    llm_model: String,
    /// `CHAT_MAX_SECONDS`: longest an answer may stream.
    chat_max_seconds: u64,
    /// `CHAT_FIRST_BYTE_SECONDS`: longest wait for the upstream's response headers.
    chat_first_byte_seconds: u64,
    /// `CHAT_RPM`: requests per minute per signed-in user.
    chat_rpm: u32,
    /// `CHAT_ANON_RPM`: requests per minute per anonymous user; 0 refuses them.
    chat_anon_rpm: u32,
    /// `CHAT_TOKENS_PER_DAY`: tokens (prompt and completion) per user and UTC day.
    chat_tokens_per_day: u64,
    /// `CHAT_MAX_STREAMS`: answers one user may stream at once (per instance).
    chat_max_streams: u32,
    /// `CHAT_MAX_OUTPUT_TOKENS`: longest answer in tokens, sent upstream as `max_tokens` and
    /// reserved from the day's tokens at admission.
    chat_max_output_tokens: u32,
    /// `CHAT_MAX_HISTORY_BYTES`: earlier messages sent upstream with a new one, in bytes of
    /// their text, newest first.
    chat_max_history_bytes: u32,
    /// `CHAT_LOCAL_DELAY_MS`: the local model's delay before each word.
    chat_local_delay_ms: u64,
}

/// `--help`: the chat's variables; the service's are in the README.
const HELP: &str = "chat: an AI chat endpoint next to Supabase (docs/chat.md)

usage: chat [migrate]

  (no argument)  apply the chat's migrations, then serve
  migrate        apply the service's and the chat's migrations and exit

Settings come from the environment (and .env): every variable of the service (README),
plus LLM_BASE_URL, LLM_API_KEY, LLM_MODEL (gpt-4o-mini), CHAT_MAX_SECONDS (120),
CHAT_FIRST_BYTE_SECONDS (30), CHAT_RPM (10), CHAT_ANON_RPM (2), CHAT_TOKENS_PER_DAY (20000),
CHAT_MAX_STREAMS (2), CHAT_MAX_OUTPUT_TOKENS (1024), CHAT_MAX_HISTORY_BYTES (16384),
CHAT_LOCAL_DELAY_MS (60).";

/// A chat setting that is wrong: the variable and what is wrong with it (never its value,
/// which for `LLM_API_KEY` is a secret).
struct SettingError(&'static str, String);

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A whole number from `min` to `max`, or `default` when unset.
fn number<T>(name: &'static str, default: T, min: T, max: T) -> Result<T, SettingError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<T>()
            .ok()
            .filter(|v| *v >= min && *v <= max)
            .ok_or_else(|| {
                SettingError(name, format!("must be a whole number from {min} to {max}"))
            }),
    }
}

impl ChatArgs {
    fn from_env() -> Result<Self, SettingError> {
        Ok(Self {
            llm_base_url: var("LLM_BASE_URL"),
            llm_api_key: var("LLM_API_KEY"),
            llm_model: var("LLM_MODEL").unwrap_or_else(|| "gpt-4o-mini".to_owned()),
            chat_max_seconds: number("CHAT_MAX_SECONDS", 120, 1, 3600)?,
            chat_first_byte_seconds: number("CHAT_FIRST_BYTE_SECONDS", 30, 1, 600)?,
            chat_rpm: number("CHAT_RPM", 10, 0, 100_000)?,
            chat_anon_rpm: number("CHAT_ANON_RPM", 2, 0, 100_000)?,
            chat_tokens_per_day: number("CHAT_TOKENS_PER_DAY", 20_000, 0, u64::from(u32::MAX))?,
            chat_max_streams: number("CHAT_MAX_STREAMS", 2, 1, 1000)?,
            chat_max_output_tokens: number("CHAT_MAX_OUTPUT_TOKENS", 1024, 1, 1_000_000)?,
            chat_max_history_bytes: number("CHAT_MAX_HISTORY_BYTES", 16_384, 0, 16 * 1024 * 1024)?,
            chat_local_delay_ms: number("CHAT_LOCAL_DELAY_MS", 60, 0, 60_000)?,
        })
    }
}

/// Connecting to the upstream: a refused or black-holed address answers fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("--help" | "-h")) {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if command.as_deref().is_some_and(|c| c != "migrate") {
        eprintln!("chat: unknown command (see --help)");
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chat: {e}");
            return ExitCode::from(2);
        }
    };
    let args = match ChatArgs::from_env() {
        Ok(args) => args,
        Err(SettingError(var, problem)) => {
            eprintln!("chat: {var}: {problem}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.telemetry.log_format, std::io::stderr);
    let result = match command.as_deref() {
        Some(_) => migrate_all(&config).await,
        None => run(config, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn model(args: &ChatArgs) -> Result<Model, String> {
    let Some(base) = args.llm_base_url.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(Model::Local(LocalModel {
            delay: Duration::from_millis(args.chat_local_delay_ms),
            max_tokens: args.chat_max_output_tokens,
        }));
    };
    let key = args.llm_api_key.clone().and_then(ApiKey::new);
    let limits = upstream::Limits {
        first_byte: Duration::from_secs(args.chat_first_byte_seconds.max(1)),
        total: max_answer(args),
        max_output_tokens: args.chat_max_output_tokens,
    };
    Upstream::new(base, key, args.llm_model.clone(), CONNECT_TIMEOUT, limits).map(Model::Remote)
}

/// `CHAT_MAX_SECONDS`: the longest an answer may take, sends to the client included.
fn max_answer(args: &ChatArgs) -> Duration {
    Duration::from_secs(args.chat_max_seconds.max(1))
}

/// The service's schema first (the chat's tables reference `auth.users` and use `auth.uid()`,
/// which its migrations provide on a bare Postgres), then the chat's.
async fn migrate_all(config: &Config) -> Result<(), StartError> {
    supabase_jwt_service::db::migrate(&config.db).await?;
    db::migrate(config).await?;
    tracing::info!("chat migrations applied");
    Ok(())
}

async fn run(config: Config, args: ChatArgs) -> Result<(), StartError> {
    let model = match model(&args) {
        Ok(model) => model,
        Err(problem) => {
            return Err(supabase_jwt_service::ConfigError::new("LLM_BASE_URL", problem).into());
        }
    };
    // The chat's tables before anything serves.
    db::migrate(&config).await?;
    let listen = config.http.listen;
    let state = AppState::build(config).await?;
    let limits = Limits {
        requests_per_minute: args.chat_rpm,
        anonymous_requests_per_minute: args.chat_anon_rpm,
        tokens_per_day: args.chat_tokens_per_day,
        max_streams: usize::try_from(args.chat_max_streams).unwrap_or(usize::MAX),
    };
    match &model {
        Model::Local(_) => tracing::info!("model: the built-in local model (LLM_BASE_URL unset)"),
        Model::Remote(upstream) => {
            // Masked: a base URL may carry a key in its userinfo or query.
            tracing::info!(url = %upstream.masked_url(), model = %args.llm_model, "model: upstream")
        }
    }
    let chat = ChatState {
        model,
        limits,
        streams: Streams::new(limits.max_streams),
        max_output_tokens: args.chat_max_output_tokens,
        max_history_bytes: args.chat_max_history_bytes,
        max_answer: max_answer(&args),
    };
    // The built-in /healthz, /readyz, /name and /me and the chat routes behind the service's
    // whole stack (CORS from CORS_ALLOWED_ORIGINS, request ids, spans, metrics, the request
    // timeout, JSON 500 on a panic), served by its hardened accept loop and graceful drain.
    let app = App::new(state)
        .with_profile_routes()
        .merge(routes::routes(chat));

    let listener = tokio::net::TcpListener::bind(listen).await?;
    // Tests and scripts read the bound address (PORT=0) from this line.
    println!("chat listening on http://{}", listener.local_addr()?);
    serve(listener, app, shutdown_signal()).await
}
