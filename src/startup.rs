//! Start-up: building the state (the database, its `DB_RLS` role check, the verifier and its key
//! set), the metrics listener, the start-up log, and the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::{KeySetError, Verifier};
use crate::config::{Config, ConfigError, INSECURE_LOCAL_DEFAULTS_ON_NETWORK, Secret};
use crate::db::{Db, DbError, Store};
use crate::state::AppState;

/// Why the service could not start (or a migration could not finish).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is wrong: exit status 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened or migrated.
    #[error("database: {}{}", .0, cause_of(.0))]
    Db(#[from] DbError),
    /// The key set's HTTP client could not be built.
    #[error("key set: {0}")]
    KeySet(#[from] KeySetError),
    /// A listener could not be bound.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// The process-wide metrics recorder is someone else's (set `METRICS_ADDR=off`).
    #[error(
        "metrics: another metrics recorder is already installed in this process; set METRICS_ADDR=off to keep it"
    )]
    Metrics,
}

/// A database failure's cause, after its kind: what happened, without a password (sqlx's
/// messages name the host and user, never the URL's credentials).
fn cause_of(e: &DbError) -> String {
    std::error::Error::source(e)
        .map(|cause| format!(": {cause}"))
        .unwrap_or_default()
}

impl StartError {
    /// The process exit status for this error: 2 for a configuration error, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 2,
            _ => 1,
        }
    }
}

impl AppState {
    /// Opens what `config` names: the database (Postgres lazily, so the service starts while
    /// it is down; the embedded store opened and migrated now), the verifier with the
    /// project's key set fetched in the background, and, under `DB_RLS=on`, a check that the
    /// database user may switch to each of `JWT_ALLOWED_ROLES` (a refusal is a configuration
    /// error naming `DB_RLS`; a database that does not answer only a warning). It does not
    /// migrate Postgres: run [`db::migrate`](crate::db::migrate) for that.
    ///
    /// ```no_run
    /// use supabase_jwt_service::{App, AppState, Config, serve, shutdown_signal};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = Config::from_env()?;
    /// let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    /// let app = App::new(AppState::build(config).await?).with_profile_routes();
    /// serve(listener, app, shutdown_signal()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let db = Db::connect(&config.db).await?;
        match db.store() {
            Store::Postgres(pg) if config.db.rls => {
                match pg.role_switch_problem(&config.auth.allowed_roles).await {
                    Ok(None) => {}
                    Ok(Some(problem)) => return Err(ConfigError::new("DB_RLS", problem).into()),
                    // The database being down at start must not stop the service: it answers
                    // 503 and recovers on its own. The check runs again on the next start.
                    Err(e) => tracing::warn!(
                        error = %e,
                        "could not check the role switch for DB_RLS=on; database not answering"
                    ),
                }
            }
            Store::Postgres(_) => {}
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) if config.db.session_check => tracing::warn!(
                "SESSION_CHECK=on needs Postgres (auth.sessions); the embedded store ignores it"
            ),
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => {}
        }
        // The process-wide recorder goes in before anything is counted: the key set's first
        // fetch starts with the verifier, and a fetch that finished before `serve` installed
        // the recorder would be counted nowhere.
        #[cfg(feature = "prometheus")]
        if config.telemetry.metrics_addr.is_some() {
            crate::telemetry::metrics::install().map_err(|_| StartError::Metrics)?;
        }
        let verifier = Arc::new(Verifier::from_config(&config.auth)?);
        Ok(Self::from_parts(config, verifier, db))
    }
}

/// Resolves when the process receives Ctrl-C or SIGTERM: the `shutdown` to give
/// [`serve`](crate::serve).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Starts the Prometheus listener on `METRICS_ADDR`, its own socket and never the public one:
/// installs the process-wide recorder, binds, and serves `GET /metrics` in a background task
/// for the life of the runtime. `None` when `METRICS_ADDR=off` (then nothing is recorded but
/// by a recorder of your own).
#[cfg(feature = "prometheus")]
pub(crate) async fn spawn_metrics_listener(
    state: &AppState,
) -> Result<Option<SocketAddr>, StartError> {
    use crate::telemetry::metrics;
    let Some(addr) = state.config().telemetry.metrics_addr else {
        return Ok(None);
    };
    let handle = metrics::install().map_err(|_| StartError::Metrics)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("METRICS_ADDR {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let db = state.db().clone();
    let pool: metrics::PoolSampler = Arc::new(move || Some(db.pool_stats()));
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = metrics::serve(listener, handle, pool, forever).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics listening");
    Ok(Some(bound))
}

/// The start-up log: where it listens, which store and keys, and loud warnings when the
/// Supabase CLI's published local secret is in use (the secret itself is never logged).
pub(crate) fn log_startup(config: &Config, addr: SocketAddr) {
    tracing::info!(
        %addr,
        store = %config.db.url.masked(),
        rls = config.db.rls,
        prepared_statements = %config.db.prepared_statements,
        issuer = config.auth.issuer.as_deref().unwrap_or("(not checked)"),
        key_set = config.auth.jwks_url.as_ref().map(|u| u.as_str()).unwrap_or("(none)"),
        hs256 = config.auth.jwt_secret.is_some(),
        "listening"
    );
    let on_network = !addr.ip().to_canonical().is_loopback();
    if config.auth.local_stack_defaults {
        tracing::warn!(
            "no SUPABASE_JWT_SECRET or SUPABASE_URL set: using the Supabase CLI local stack's defaults (its published secret and http://127.0.0.1:54321); never do this in production"
        );
        if on_network {
            tracing::warn!(
                %addr,
                "INSECURE: {INSECURE_LOCAL_DEFAULTS_ON_NETWORK}=on serves the Supabase CLI's PUBLISHED secret on a non-loopback address: anyone who can reach {addr} can mint a token for any user; use this only in a throwaway local container"
            );
        }
    } else if config
        .auth
        .jwt_secret
        .as_ref()
        .is_some_and(Secret::is_published_local_secret)
        && (on_network || config.db.url.is_postgres())
    {
        tracing::warn!(
            %addr,
            "INSECURE: SUPABASE_JWT_SECRET is the Supabase CLI's PUBLISHED local secret, which anyone can sign tokens with; set the project's own JWT secret from the dashboard"
        );
    }
}
