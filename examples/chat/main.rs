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

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use supabase_jwt_service::config::{Config, RawConfig};
use supabase_jwt_service::{
    App, build_state, log_startup, serve, shutdown_signal, spawn_metrics_listener, telemetry,
};

use crate::local::LocalModel;
use crate::quota::{Limits, Streams};
use crate::routes::ChatState;
use crate::upstream::{ApiKey, Model, Upstream};

/// The chat example: the service's settings plus the model's and the quota's. No `Debug`:
/// it holds the upstream's API key as text.
#[derive(Parser)]
#[command(name = "chat", about, long_about = None)]
struct Cli {
    /// `migrate`: apply the service's and the chat's migrations and exit (fly.toml's
    /// release_command); without it, serve (the chat's own migrations are applied at start).
    #[command(subcommand)]
    command: Option<ChatCommand>,
    #[command(flatten)]
    config: RawConfig,
    #[command(flatten)]
    chat: ChatArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ChatCommand {
    /// Apply the service's migrations and the chat's to DIRECT_DATABASE_URL (or DATABASE_URL), then exit.
    Migrate,
}

#[derive(clap::Args)]
struct ChatArgs {
    /// OpenAI-compatible API base, e.g. https://api.openai.com/v1 or http://127.0.0.1:11434/v1 [default: the built-in local model]
    #[arg(long, env = "LLM_BASE_URL", hide_env_values = true)]
    llm_base_url: Option<String>,
    /// The upstream's API key (sent as a Bearer token, never logged)
    #[arg(long, env = "LLM_API_KEY", hide_env_values = true)]
    llm_api_key: Option<String>,
    /// Model name sent upstream
    #[arg(
        long,
        env = "LLM_MODEL",
        default_value = "gpt-4o-mini",
        hide_env_values = true
    )]
    llm_model: String,
    /// Longest an answer may stream, in seconds
    #[arg(
        long,
        env = "CHAT_MAX_SECONDS",
        default_value_t = 120,
        hide_env_values = true
    )]
    chat_max_seconds: u64,
    /// Longest wait for the upstream's response headers, in seconds
    #[arg(
        long,
        env = "CHAT_FIRST_BYTE_SECONDS",
        default_value_t = 30,
        hide_env_values = true
    )]
    chat_first_byte_seconds: u64,
    /// Requests per minute per signed-in user
    #[arg(long, env = "CHAT_RPM", default_value_t = 10, hide_env_values = true)]
    chat_rpm: u32,
    /// Requests per minute per anonymous user; 0 refuses them
    #[arg(
        long,
        env = "CHAT_ANON_RPM",
        default_value_t = 2,
        hide_env_values = true
    )]
    chat_anon_rpm: u32,
    /// Tokens (prompt and completion) per user and UTC day
    #[arg(
        long,
        env = "CHAT_TOKENS_PER_DAY",
        default_value_t = 20_000,
        hide_env_values = true
    )]
    chat_tokens_per_day: u64,
    /// Answers one user may stream at once (per instance)
    #[arg(long, env = "CHAT_MAX_STREAMS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), hide_env_values = true)]
    chat_max_streams: u32,
    /// Longest answer, in tokens: sent upstream as `max_tokens`, and reserved from the day's
    /// tokens at admission
    #[arg(long, env = "CHAT_MAX_OUTPUT_TOKENS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..), hide_env_values = true)]
    chat_max_output_tokens: u32,
    /// Earlier messages of the conversation sent upstream with a new one, in bytes of their
    /// text, newest first
    #[arg(
        long,
        env = "CHAT_MAX_HISTORY_BYTES",
        default_value_t = 16_384,
        hide_env_values = true
    )]
    chat_max_history_bytes: u32,
    /// The local model's delay before each word, in milliseconds
    #[arg(
        long,
        env = "CHAT_LOCAL_DELAY_MS",
        default_value_t = 60,
        hide_env_values = true
    )]
    chat_local_delay_ms: u64,
}

/// Connecting to the upstream: a refused or black-holed address answers fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let config = match Config::from_raw(&cli.config, std::io::stderr().is_terminal()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chat: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, std::io::stderr);
    let result = match cli.command {
        Some(ChatCommand::Migrate) => migrate_all(&config).await,
        None => run(config, cli.chat).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::from(1)
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
async fn migrate_all(config: &Config) -> Result<(), String> {
    supabase_jwt_service::migrate(config)
        .await
        .map_err(|e| e.to_string())?;
    db::migrate(config, None).await?;
    tracing::info!("chat migrations applied");
    Ok(())
}

async fn run(config: Config, args: ChatArgs) -> Result<(), String> {
    let model = model(&args)?;
    let state = build_state(config).await.map_err(|e| e.to_string())?;
    let config = state.config.clone();
    // The chat's tables, on the app's own database: the same pool serves every route.
    db::migrate(&config, Some(&state.db().map_err(|e| e.to_string())?)).await?;
    spawn_metrics_listener(&state)
        .await
        .map_err(|e| e.to_string())?;
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

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    log_startup(&config, addr);
    // Tests and scripts read the bound address (PORT=0) from this line.
    println!("chat listening on http://{addr}");
    serve(listener, app, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
