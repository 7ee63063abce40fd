//! The `supabase-jwt-service` binary: wires the CLI, configuration and telemetry to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use supabase_jwt_service::cli::{Cli, Command};
use supabase_jwt_service::config::Config;
use supabase_jwt_service::mint::{MintRequest, mint};
#[cfg(feature = "prometheus")]
use supabase_jwt_service::spawn_metrics_listener;
use supabase_jwt_service::{
    App, StartError, build_state_with, log_startup, migrate, serve, shutdown_signal, telemetry,
};

// glibc's malloc/free and their consolidation were about a tenth of the service's CPU under
// load; mimalloc's thread-local free lists cut the in-process cost of a request by about a
// fifth (`cargo bench --bench request`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; a present one fills only variables not already set.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let config = match Config::from_raw(&cli.config, std::io::stderr().is_terminal()) {
        Ok(config) => config,
        Err(e) => return fail(&StartError::Config(e)),
    };
    telemetry::init(config.log_format, std::io::stderr);

    let result = match cli.command.unwrap_or(Command::Serve { migrate: false }) {
        Command::Serve { migrate } => run_server(config, migrate).await,
        Command::Migrate => migrate(&config).await,
        Command::Mint {
            sub,
            email,
            role,
            ttl,
        } => mint(
            &config,
            &MintRequest {
                sub,
                email,
                role,
                ttl_seconds: ttl,
            },
        )
        .map(|token| println!("{token}"))
        .map_err(StartError::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run_server(config: Config, migrate: bool) -> Result<(), StartError> {
    let listen = config.listen;
    let state = build_state_with(config, migrate).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // Without the exporter METRICS_ADDR has nothing to serve; the counts go nowhere.
    #[cfg(feature = "prometheus")]
    spawn_metrics_listener(&state).await?;
    log_startup(&state.config, listener.local_addr()?);
    let app = App::new(state).with_profile_routes();
    serve(listener, app, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn fail(e: &StartError) -> ExitCode {
    eprintln!("supabase-jwt-service: {e}");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}
