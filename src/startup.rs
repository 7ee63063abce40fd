//! Start-up: opening and migrating the store, the key-set HTTP client, the `DB_RLS` role
//! check, the shutdown signal, the metrics listener and the start-up log with its curl hint.
//! The binary and the examples share these; `lib.rs` re-exports the public ones.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "prometheus")]
use tokio::net::TcpListener;

#[cfg(feature = "sqlite")]
use crate::store::SqliteStore;
use crate::store::{Instrumented, PgStore, UserStore};
use crate::{
    AppState, Config, ConfigError, ShutdownFlag, Verifier, auth, config, store, telemetry,
};

/// Why the service could not start (or `migrate` could not finish).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong: exit status 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or migrated.
    #[error("store: {0}")]
    Store(String),
    /// The listener could not be bound.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(#[from] telemetry::metrics::InstallError),
}

impl StartError {
    /// A store that could not be opened, with its cause: the store's message names only the
    /// kind of failure, the cause says what happened.
    fn store(e: store::StoreError) -> Self {
        match std::error::Error::source(&e) {
            Some(cause) => Self::Store(format!("{e}: {cause}")),
            None => Self::Store(e.to_string()),
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Most redirects the key-set client follows, all on the key set's own origin.
const MAX_KEY_SET_REDIRECTS: usize = 3;

/// The key-set HTTP client: bounded connect and total time, so a slow identity server can
/// never hold a request for long. It follows a redirect only within the origin (scheme, host,
/// port) it was sent to, at most [`MAX_KEY_SET_REDIRECTS`] times: the keys must come from the
/// configured project, not from wherever a misconfigured or compromised proxy points. A refused
/// redirect is answered as a failed fetch (the 3xx status), and the last good keys stay in use.
fn http_client() -> Result<reqwest::Client, StartError> {
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let origin = attempt.previous().first().map(reqwest::Url::origin);
        if attempt.previous().len() > MAX_KEY_SET_REDIRECTS
            || origin.is_some_and(|o| o != attempt.url().origin())
        {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .redirect(same_origin)
        .user_agent(concat!("supabase-jwt-service/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartError::Store(format!("http client: {e}")))
}

/// Opens the store (migrating the embedded one, and Postgres when `migrate_postgres`), loads
/// the keys and returns the state the router needs.
pub async fn build_state_with(
    config: Config,
    migrate_postgres: bool,
) -> Result<AppState, StartError> {
    let store: Arc<dyn UserStore> = if config.database_url.is_postgres() {
        if migrate_postgres {
            run_migrations(&config.database_url).await?;
        }
        let pg = PgStore::connect_lazy(&config).map_err(StartError::store)?;
        if config.db_rls {
            match role_switch_problem(&pg, &config.allowed_roles, config.db_timeout).await {
                Ok(None) => {}
                Ok(Some(problem)) => return Err(ConfigError::new("DB_RLS", problem).into()),
                // The database being down at start must not stop the service: it answers 503
                // and recovers on its own. The role check runs again on the next start.
                Err(e) => {
                    tracing::warn!(error = %e, "could not check the role switch for DB_RLS=on; database not answering")
                }
            }
        }
        Arc::new(Instrumented::new(pg))
    } else {
        if config.session_check {
            tracing::warn!(
                "SESSION_CHECK=on needs Postgres (auth.sessions); the embedded store ignores it"
            );
        }
        open_embedded(&config.database_url, config.db_timeout).await?
    };

    let key_set = match &config.jwks_url {
        Some(url) => Some(auth::jwks::KeySet::new(url.clone(), http_client()?)),
        None => None,
    };
    let verifier = Arc::new(Verifier::new(&config, key_set));
    Ok(AppState {
        config: Arc::new(config),
        verifier,
        store,
        shutdown: ShutdownFlag::default(),
    })
}

/// Opens and migrates the embedded store at `url`.
#[cfg(feature = "sqlite")]
async fn open_embedded(
    url: &config::DatabaseUrl,
    timeout: Duration,
) -> Result<Arc<dyn UserStore>, StartError> {
    let store = SqliteStore::open(url.expose(), timeout)
        .await
        .map_err(StartError::store)?;
    Ok(Arc::new(Instrumented::new(store)))
}

/// Without the `sqlite` feature no `DatabaseUrl` names the embedded store (parsing refuses
/// one), so this is reached only if that rule is ever broken: an error, never a panic.
#[cfg(not(feature = "sqlite"))]
async fn open_embedded(
    _url: &config::DatabaseUrl,
    _timeout: Duration,
) -> Result<Arc<dyn UserStore>, StartError> {
    Err(config::no_embedded_store("DATABASE_URL").into())
}

/// With `DB_RLS=on` each request's transaction switches to the token's role, one of
/// `JWT_ALLOWED_ROLES`. Checks each listed role once at start: it exists, the database user
/// may switch to it, and it does not bypass row-level security (a superuser or `BYPASSRLS`
/// role would make every policy moot). `Ok(Some(problem))` names the first role that fails.
async fn role_switch_problem(
    pg: &PgStore,
    roles: &[String],
    limit: Duration,
) -> Result<Option<String>, store::StoreError> {
    use sqlx::Row;
    // The simple protocol (no bind parameters) is what works through a transaction pooler,
    // so the names travel as literals. `from_raw` allows only [a-z0-9_], but `Config` fields
    // are public: escape anyway (E'' reads backslashes the same whatever the server settings).
    let list = roles
        .iter()
        .map(|r| format!("(E'{}')", r.replace('\\', "\\\\").replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "select r.name, \
           exists (select 1 from pg_roles where rolname = r.name) as found, \
           coalesce((select rolsuper from pg_roles where rolname = current_user), false) \
             or coalesce((select pg_has_role(current_user, p.oid, 'member') \
                          from pg_roles p where p.rolname = r.name), false) as may_switch, \
           coalesce((select rolsuper or rolbypassrls from pg_roles where rolname = r.name), \
                    false) as bypasses_rls \
         from (values {list}) as r(name)"
    );
    let rows = tokio::time::timeout(limit, async {
        let mut lease = pg.acquire().await?;
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *lease)
            .await
            .map_err(store::StoreError::unavailable)?;
        lease.release();
        Ok::<_, store::StoreError>(rows)
    })
    .await
    .map_err(|_| store::StoreError::unavailable(store::NoAnswer(limit)))??;
    for row in rows {
        let get = |column: &str| {
            row.try_get::<bool, _>(column)
                .map_err(store::StoreError::unavailable)
        };
        let name: String = row
            .try_get("name")
            .map_err(store::StoreError::unavailable)?;
        let problem = if !get("found")? {
            format!(
                "role `{name}` (JWT_ALLOWED_ROLES) does not exist in the database; create it (`migrate` creates `authenticated`), remove it from JWT_ALLOWED_ROLES, or set DB_RLS=off"
            )
        } else if !get("may_switch")? {
            format!(
                "the database user may not switch to role `{name}` (JWT_ALLOWED_ROLES); run `grant {name} to <user>` (`migrate` does it for `authenticated`), remove it from JWT_ALLOWED_ROLES, or set DB_RLS=off"
            )
        } else if get("bypasses_rls")? {
            format!(
                "role `{name}` (JWT_ALLOWED_ROLES) is a superuser or has BYPASSRLS, so row-level security would not apply to its requests; remove it from JWT_ALLOWED_ROLES"
            )
        } else {
            continue;
        };
        return Ok(Some(problem));
    }
    Ok(None)
}

/// [`build_state_with`] without migrating Postgres (the embedded store is always migrated).
pub async fn build_state(config: Config) -> Result<AppState, StartError> {
    build_state_with(config, false).await
}

/// Applies the Postgres migrations to `url`.
pub async fn run_migrations(url: &config::DatabaseUrl) -> Result<(), StartError> {
    use sqlx::ConnectOptions;
    let options = store::postgres::connect_options(url).map_err(StartError::store)?;
    let mut conn = tokio::time::timeout(Duration::from_secs(15), options.connect())
        .await
        .map_err(|_| StartError::Store(format!("no answer from {} within 15 s", url.masked())))?
        .map_err(|e| StartError::Store(format!("connect to {}: {e}", url.masked())))?;
    store::postgres::migrator()
        .run_direct(None, &mut conn, false)
        .await
        .map_err(|e| StartError::Store(format!("migrate {}: {e}", url.masked())))?;
    Ok(())
}

/// `migrate`: applies migrations to `DIRECT_DATABASE_URL` (else `DATABASE_URL`).
pub async fn migrate(config: &Config) -> Result<(), StartError> {
    let url = &config.direct_database_url;
    if url.is_postgres() {
        run_migrations(url).await?;
    } else {
        open_embedded(url, config.db_timeout).await?;
    }
    tracing::info!(database = %url.masked(), "migrations applied");
    Ok(())
}

/// Resolves when the process receives Ctrl-C or SIGTERM.
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

/// Starts the Prometheus listener on `METRICS_ADDR`, its own socket and never the public
/// one: installs the process-wide recorder, binds, and serves `GET /metrics` in a background
/// task for the life of the runtime. Returns the bound address, or `None` when
/// `METRICS_ADDR=off` (then nothing listens and nothing is recorded). Needs the `prometheus`
/// feature (a default one).
#[cfg(feature = "prometheus")]
pub async fn spawn_metrics_listener(
    state: &AppState,
) -> Result<Option<std::net::SocketAddr>, StartError> {
    let Some(addr) = state.config.metrics_addr else {
        return Ok(None);
    };
    let handle = telemetry::metrics::install()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("METRICS_ADDR {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let store = state.store.clone();
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = telemetry::metrics::serve(listener, handle, store, forever).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics listening");
    Ok(Some(bound))
}

/// Logs what a newcomer needs in dev mode: where it listens, which keys, and a curl command
/// for the demo profile that calls `mint` (the token itself is never logged).
pub fn log_startup(config: &Config, addr: std::net::SocketAddr) {
    tracing::info!(
        %addr,
        store = %config.database_url.masked(),
        rls = config.db_rls,
        prepared_statements = %config.prepared_statements,
        issuer = config.issuer.as_deref().unwrap_or("(not checked)"),
        key_set = config.jwks_url.as_ref().map(|u| u.as_str()).unwrap_or("(none)"),
        hs256 = config.jwt_secret.is_some(),
        "listening"
    );
    let on_network = !addr.ip().to_canonical().is_loopback();
    if config.using_local_stack_defaults {
        tracing::warn!(
            "no SUPABASE_JWT_SECRET or SUPABASE_URL set: using the Supabase CLI local stack's defaults (its published secret and http://127.0.0.1:54321); never do this in production"
        );
        if on_network {
            tracing::warn!(
                %addr,
                "INSECURE: {}=on serves the Supabase CLI's PUBLISHED secret on a non-loopback address: anyone who can reach {addr} can mint a token for any user; use this only in a throwaway local container",
                config::LOCAL_DEFAULTS_ON_NETWORK_VAR
            );
        }
    } else if config
        .jwt_secret
        .as_ref()
        .is_some_and(config::Secret::is_published_local_secret)
        && (on_network || config.database_url.is_postgres())
    {
        tracing::warn!(
            %addr,
            "INSECURE: SUPABASE_JWT_SECRET is the Supabase CLI's PUBLISHED local secret, which anyone can sign tokens with; set the project's own JWT secret from the dashboard"
        );
    }
    if !config.database_url.is_postgres() {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let host = if addr.is_ipv6() && !addr.ip().is_unspecified() {
            format!("[{host}]")
        } else {
            host
        };
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| {
                let cwd = std::env::current_dir().ok()?;
                Some(
                    p.strip_prefix(&cwd)
                        .map(|r| format!("./{}", r.display()))
                        .unwrap_or_else(|_| p.display().to_string()),
                )
            })
            .unwrap_or_else(|| "supabase-jwt-service".to_owned());
        tracing::info!(
            "try it: curl -H \"Authorization: Bearer $({exe} mint --sub 5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f)\" http://{host}:{port}/name",
            port = addr.port()
        );
    }
}
