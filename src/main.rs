//! The `supabase-jwt-service` binary: wires the command line, configuration and telemetry to
//! the library, as any user's binary would.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use supabase_jwt_service::{
    AccessToken, App, AppState, Config, StartError, db, serve, shutdown_signal, telemetry,
};

mod cli;

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
    let (action, config) = cli::parse();
    let config = match config {
        Ok(config) => config,
        Err(e) => return fail(&StartError::Config(e)),
    };
    telemetry::init(config.telemetry.log_format, std::io::stderr);

    let result = match action {
        cli::Action::Serve { migrate } => run_server(config, migrate).await,
        cli::Action::Migrate => db::migrate(&config.db).await.map_err(StartError::from),
        cli::Action::Mint {
            sub,
            email,
            role,
            ttl,
        } => {
            let mut token = AccessToken::for_user(sub).role(role);
            if let Some(email) = email {
                token = token.email(email);
            }
            token = if ttl < 0 {
                token.expired(Duration::from_secs(ttl.unsigned_abs()))
            } else {
                token.ttl(Duration::from_secs(ttl.unsigned_abs()))
            };
            token
                .sign(&config.auth)
                .map(|token| println!("{token}"))
                .map_err(StartError::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run_server(config: Config, migrate: bool) -> Result<(), StartError> {
    if migrate && config.db.url.is_postgres() {
        db::migrate(&config.db).await?;
    }
    let listen = config.http.listen;
    let state = AppState::build(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    log_try_it(state.config(), listener.local_addr()?);
    serve(
        listener,
        App::new(state).with_profile_routes(),
        shutdown_signal(),
    )
    .await
}

/// On the embedded store, a curl command for the demo profile that calls `mint` (the token
/// itself is never logged).
fn log_try_it(config: &Config, addr: SocketAddr) {
    if config.db.url.is_postgres() {
        return;
    }
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let exe = std::env::current_exe()
        .ok()
        .and_then(|path| {
            let cwd = std::env::current_dir().ok()?;
            Some(
                path.strip_prefix(&cwd)
                    .map(|relative| format!("./{}", relative.display()))
                    .unwrap_or_else(|_| path.display().to_string()),
            )
        })
        .unwrap_or_else(|| "supabase-jwt-service".to_owned());
    tracing::info!(
        "try it: curl -H \"Authorization: Bearer $({exe} mint --sub 5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f)\" http://{ip}:{port}/name",
        port = addr.port()
    );
}

fn fail(e: &StartError) -> ExitCode {
    eprintln!("supabase-jwt-service: {e}");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}
