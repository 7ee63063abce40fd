//! [`ConfigBuilder`]: configuration in code, with typed values, through the same rules as the
//! environment.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use super::auth::{self, AuthSettings};
use super::db::{self, DbSettings, PreparedStatements};
use super::http::{self, HttpSettings};
use super::telemetry::{self, LogFormat, TelemetrySettings};
use super::vars::*;
use super::{Config, ConfigError, DatabaseUrl, Secret, parse_count, parse_seconds, parse_switch};

/// Builds a [`Config`] in code. Each setter takes the typed value of one setting (the README's
/// table names its variable), and [`build`](Self::build) applies the defaults and rules
/// [`Config::from_env`] applies, so a value refused in the environment is refused here, with
/// the variable's name in the error. What you leave unset takes the environment's default:
/// with no database URL the embedded SQLite store (an error without the `sqlite` feature) and,
/// with no key setting, the Supabase CLI's local stack (on loopback only).
///
/// ```
/// use std::time::Duration;
/// use supabase_jwt_service::Config;
///
/// let config = Config::builder()
///     .supabase_url("https://abcdefghijklmnop.supabase.co")
///     .jwt_secret("a-project-jwt-secret-of-at-least-32-characters")
///     .database_url("postgres://postgres:pw@db.example.com:5432/postgres")
///     .leeway(Duration::from_secs(10))
///     .db_max_connections(20)
///     .db_timeout(Duration::from_secs(2))
///     .cors_allowed_origins(["https://app.example.com"])
///     .build()?;
/// assert_eq!(config.db.max_connections, 20);
///
/// // The same rules as the environment: a short secret is refused, naming its variable.
/// let err = Config::builder()
///     .database_url("postgres://postgres:pw@db.example.com:5432/postgres")
///     .jwt_secret("short")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.var, "SUPABASE_JWT_SECRET");
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    pub(super) http: HttpSettings,
    pub(super) auth: AuthSettings,
    pub(super) db: DbSettings,
    pub(super) telemetry: TelemetrySettings,
    /// The first value a setter could not parse (a URL, an origin), reported by `build`.
    pub(super) error: Option<ConfigError>,
}

impl ConfigBuilder {
    fn keep<T>(&mut self, parsed: Result<T, ConfigError>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    /// `HOST` and `PORT`: the public listener.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.http.host = Some(addr.ip());
        self.http.port = Some(addr.port());
        self
    }

    /// `CORS_ALLOWED_ORIGINS`: browser origins allowed to call the API (`*` for any).
    pub fn cors_allowed_origins<'a>(mut self, origins: impl IntoIterator<Item = &'a str>) -> Self {
        self.http.cors_origins = self.keep(http::parse_origins(origins));
        self
    }

    /// `REQUEST_TIMEOUT_SECONDS`: the bound on one request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.http.request_timeout = Some(timeout);
        self
    }

    /// `SHUTDOWN_TIMEOUT_SECONDS`: how long shutdown waits for in-flight requests.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.http.shutdown_timeout = Some(timeout);
        self
    }

    /// `HEADER_READ_TIMEOUT_SECONDS`: how long a client may take to send a request's headers.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.http.header_read_timeout = Some(timeout);
        self
    }

    /// `BODY_READ_TIMEOUT_SECONDS`: how long a client may take to send a request's body.
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.http.body_read_timeout = Some(timeout);
        self
    }

    /// `HTTP_MAX_CONNECTIONS`: connections served at once.
    pub fn http_max_connections(mut self, max: usize) -> Self {
        self.http.max_connections = Some(max);
        self
    }

    /// `SERVER_TIMING`: add `Server-Timing` to answers.
    pub fn server_timing(mut self, on: bool) -> Self {
        self.http.server_timing = Some(on);
        self
    }

    /// `SUPABASE_URL`: the project URL; sets the issuer and the key set URL.
    pub fn supabase_url(mut self, url: &str) -> Self {
        self.auth.supabase_url = self.keep(auth::parse_supabase_url(url));
        self
    }

    /// `SUPABASE_JWT_SECRET`: the legacy HS256 secret.
    pub fn jwt_secret(mut self, secret: &str) -> Self {
        self.auth.jwt_secret = Some(Secret::new(secret));
        self
    }

    /// `JWT_AUDIENCE`: the required `aud`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.auth.audience = Some(audience.to_owned());
        self
    }

    /// `JWT_ISSUER`: the expected `iss`, when it differs from the project URL's.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.auth.issuer = Some(issuer.to_owned());
        self
    }

    /// `JWT_LEEWAY_SECONDS`: clock skew allowed on `exp`, `nbf` and `iat` (whole seconds).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.auth.leeway = Some(leeway);
        self
    }

    /// `JWT_ALLOWED_ROLES`: the `role` claims accepted as users'.
    pub fn allowed_roles<'a>(mut self, roles: impl IntoIterator<Item = &'a str>) -> Self {
        self.auth.allowed_roles = Some(roles.into_iter().map(str::to_owned).collect());
        self
    }

    /// `JWT_ALLOWED_CLIENT_IDS`: OAuth 2.1 clients whose access tokens are accepted.
    pub fn allowed_client_ids(mut self, ids: impl IntoIterator<Item = uuid::Uuid>) -> Self {
        self.auth.allowed_client_ids = Some(ids.into_iter().collect());
        self
    }

    /// `JWT_CACHE_SIZE`: verified tokens remembered (0 turns the cache off).
    pub fn token_cache_size(mut self, entries: usize) -> Self {
        self.auth.token_cache_size = Some(entries);
        self
    }

    /// `JWT_CACHE_BYTES`: the verified-token cache's memory budget (0 turns it off).
    pub fn token_cache_bytes(mut self, bytes: usize) -> Self {
        self.auth.token_cache_bytes = Some(bytes);
        self
    }

    /// `INSECURE_LOCAL_DEFAULTS_ON_NETWORK`: let the Supabase CLI's published secret serve
    /// on a non-loopback listener (a throwaway local container only).
    pub fn insecure_local_defaults_on_network(mut self, on: bool) -> Self {
        self.auth.local_defaults_on_network = Some(on);
        self
    }

    /// `DATABASE_URL`: `postgres://…` or `sqlite://…`.
    pub fn database_url(mut self, url: &str) -> Self {
        self.db.url = self.keep(DatabaseUrl::parse(DATABASE_URL, url));
        self
    }

    /// `DIRECT_DATABASE_URL`: the non-pooled connection for migrations.
    pub fn direct_database_url(mut self, url: &str) -> Self {
        self.db.direct_url = self.keep(DatabaseUrl::parse(DIRECT_DATABASE_URL, url));
        self
    }

    /// `DB_RLS`: run users' queries under row-level security on Postgres.
    pub fn rls(mut self, on: bool) -> Self {
        self.db.rls = Some(on);
        self
    }

    /// `SESSION_CHECK`: refuse tokens whose session has ended (Postgres).
    pub fn session_check(mut self, on: bool) -> Self {
        self.db.session_check = Some(on);
        self
    }

    /// `DB_PREPARED_STATEMENTS`.
    pub fn prepared_statements(mut self, mode: PreparedStatements) -> Self {
        self.db.prepared_statements = Some(mode);
        self
    }

    /// `DB_TIMEOUT_SECONDS`: the bound on one database call, pool wait included.
    pub fn db_timeout(mut self, timeout: Duration) -> Self {
        self.db.timeout = Some(timeout);
        self
    }

    /// `DB_MAX_CONNECTIONS`: the pool's size, shared by the built-in routes and your own.
    pub fn db_max_connections(mut self, max: u32) -> Self {
        self.db.max_connections = Some(max);
        self
    }

    /// `LOG_FORMAT`.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.telemetry.log_format = Some(format);
        self
    }

    /// `METRICS_ADDR`: the Prometheus listener, or `None` for none.
    pub fn metrics_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.telemetry.metrics_addr = Some(addr);
        self
    }

    /// Any setting by its variable's name and a value written as in the environment, e.g.
    /// `.var("DB_TIMEOUT_SECONDS", "1.5")`: for settings read from a file of your own. A name
    /// that is not in [`VARIABLES`] is an error at [`build`](Self::build).
    pub fn var(mut self, name: &str, value: &str) -> Self {
        let value = value.trim();
        if value.is_empty() {
            return self;
        }
        if let Err(e) = self.set_var(name, value) {
            self.error.get_or_insert(e);
        }
        self
    }

    fn set_var(&mut self, name: &str, v: &str) -> Result<(), ConfigError> {
        let (h, a, d, t) = (
            &mut self.http,
            &mut self.auth,
            &mut self.db,
            &mut self.telemetry,
        );
        match name {
            HOST => h.host = Some(http::parse_host(v)?),
            PORT => h.port = Some(http::parse_port(v)?),
            CORS_ALLOWED_ORIGINS => h.cors_origins = Some(http::parse_origins([v])?),
            REQUEST_TIMEOUT_SECONDS => {
                h.request_timeout = Some(parse_seconds(REQUEST_TIMEOUT_SECONDS, v)?)
            }
            SHUTDOWN_TIMEOUT_SECONDS => {
                h.shutdown_timeout = Some(parse_seconds(SHUTDOWN_TIMEOUT_SECONDS, v)?)
            }
            HEADER_READ_TIMEOUT_SECONDS => {
                h.header_read_timeout = Some(parse_seconds(HEADER_READ_TIMEOUT_SECONDS, v)?);
            }
            BODY_READ_TIMEOUT_SECONDS => {
                h.body_read_timeout = Some(parse_seconds(BODY_READ_TIMEOUT_SECONDS, v)?);
            }
            HTTP_MAX_CONNECTIONS => h.max_connections = Some(parse_count(HTTP_MAX_CONNECTIONS, v)?),
            SERVER_TIMING => h.server_timing = Some(parse_switch(SERVER_TIMING, v)?),
            SUPABASE_JWT_SECRET => a.jwt_secret = Some(Secret::new(v)),
            SUPABASE_URL => a.supabase_url = Some(auth::parse_supabase_url(v)?),
            JWT_AUDIENCE => a.audience = Some(v.to_owned()),
            JWT_ISSUER => a.issuer = Some(v.to_owned()),
            JWT_LEEWAY_SECONDS => a.leeway = Some(auth::parse_leeway(v)?),
            JWT_ALLOWED_ROLES => a.allowed_roles = Some(auth::parse_roles(v)),
            JWT_ALLOWED_CLIENT_IDS => a.allowed_client_ids = Some(auth::parse_client_ids(v)?),
            JWT_CACHE_SIZE => a.token_cache_size = Some(parse_count(JWT_CACHE_SIZE, v)?),
            JWT_CACHE_BYTES => a.token_cache_bytes = Some(parse_count(JWT_CACHE_BYTES, v)?),
            INSECURE_LOCAL_DEFAULTS_ON_NETWORK => {
                a.local_defaults_on_network =
                    Some(parse_switch(INSECURE_LOCAL_DEFAULTS_ON_NETWORK, v)?);
            }
            DATABASE_URL => d.url = Some(DatabaseUrl::parse(DATABASE_URL, v)?),
            DIRECT_DATABASE_URL => {
                d.direct_url = Some(DatabaseUrl::parse(DIRECT_DATABASE_URL, v)?);
            }
            DB_RLS => d.rls = Some(parse_switch(DB_RLS, v)?),
            DB_PREPARED_STATEMENTS => d.prepared_statements = Some(db::parse_prepared(v)?),
            SESSION_CHECK => d.session_check = Some(parse_switch(SESSION_CHECK, v)?),
            DB_TIMEOUT_SECONDS => d.timeout = Some(parse_seconds(DB_TIMEOUT_SECONDS, v)?),
            DB_MAX_CONNECTIONS => d.max_connections = Some(parse_count(DB_MAX_CONNECTIONS, v)?),
            LOG_FORMAT => t.log_format = Some(telemetry::parse_log_format(v)?),
            METRICS_ADDR => t.metrics_addr = Some(telemetry::parse_metrics_addr(v)?),
            _ => {
                return Err(ConfigError::new(
                    "(unknown setting)",
                    "is not a setting of this service (see config::VARIABLES)",
                ));
            }
        }
        Ok(())
    }

    /// Applies the defaults and every rule, as [`Config::from_env`] does.
    pub fn build(self) -> Result<Config, ConfigError> {
        super::resolve(self, std::io::stderr().is_terminal())
    }
}
