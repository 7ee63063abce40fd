//! [`ConfigBuilder`]: configuration in code, through the same rules as the environment.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Config, ConfigError, RawConfig};

/// Builds a [`Config`] in code. Each setter fills the raw setting of the same-named variable
/// (in the README's table), and [`build`](Self::build) runs exactly the validation
/// `Config::from_env` does, so a value refused in the environment is refused here, with the
/// variable's name in the error. What you leave unset takes the environment's default: with
/// no database URL the embedded SQLite store (an error without the `sqlite` feature) and,
/// with no key setting, the Supabase CLI's local stack.
///
/// ```
/// use std::time::Duration;
/// use supabase_jwt_service::Config;
///
/// let config = Config::builder()
///     .supabase_url("https://abcdefghijklmnop.supabase.co")
///     .jwt_secret("a-project-jwt-secret-of-at-least-32-characters")
///     .database_url("postgres://postgres:pw@db.example.com:5432/postgres")
///     .audience("authenticated")
///     .leeway(Duration::from_secs(10))
///     .max_connections(20)
///     .db_timeout(Duration::from_secs(2))
///     .cors_allowed_origins(["https://app.example.com"])
///     .build()?;
/// assert_eq!(config.issuer.as_deref(), Some("https://abcdefghijklmnop.supabase.co/auth/v1"));
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
    raw: RawConfig,
}

fn seconds(d: Duration) -> Option<String> {
    Some(d.as_secs_f64().to_string())
}

fn switch(on: bool) -> Option<String> {
    Some(if on { "on" } else { "off" }.to_owned())
}

impl ConfigBuilder {
    /// `SUPABASE_URL`: the project URL; sets the issuer and the key set URL.
    pub fn supabase_url(mut self, url: &str) -> Self {
        self.raw.supabase_url = Some(url.to_owned());
        self
    }

    /// `SUPABASE_JWT_SECRET`: the legacy HS256 secret.
    pub fn jwt_secret(mut self, secret: &str) -> Self {
        self.raw.supabase_jwt_secret = Some(secret.to_owned());
        self
    }

    /// `DATABASE_URL`: `postgres://…` or `sqlite://…`.
    pub fn database_url(mut self, url: &str) -> Self {
        self.raw.database_url = Some(url.to_owned());
        self
    }

    /// `DIRECT_DATABASE_URL`: the non-pooled connection for migrations.
    pub fn direct_database_url(mut self, url: &str) -> Self {
        self.raw.direct_database_url = Some(url.to_owned());
        self
    }

    /// `JWT_AUDIENCE`: the required `aud`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.raw.jwt_audience = Some(audience.to_owned());
        self
    }

    /// `JWT_ISSUER`: the expected `iss`, when it differs from the project URL's.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.raw.jwt_issuer = Some(issuer.to_owned());
        self
    }

    /// `JWT_LEEWAY_SECONDS`: clock skew allowed on `exp`, `nbf` and `iat` (whole seconds).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.raw.jwt_leeway_seconds = Some(leeway.as_secs().to_string());
        self
    }

    /// `DB_MAX_CONNECTIONS`: the pool's size, shared by the built-in routes and [`Tx`](crate::Tx).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.raw.db_max_connections = Some(max.to_string());
        self
    }

    /// `DB_TIMEOUT_SECONDS`: the bound on one database call, pool wait included.
    pub fn db_timeout(mut self, timeout: Duration) -> Self {
        self.raw.db_timeout_seconds = seconds(timeout);
        self
    }

    /// `DB_RLS`: run users' queries under row-level security on Postgres.
    pub fn rls(mut self, on: bool) -> Self {
        self.raw.db_rls = switch(on);
        self
    }

    /// `SESSION_CHECK`: refuse tokens whose session has ended (Postgres).
    pub fn session_check(mut self, on: bool) -> Self {
        self.raw.session_check = switch(on);
        self
    }

    /// `DB_PREPARED_STATEMENTS`: `Some(false)` behind a transaction-mode pooler; `None` guesses
    /// from the URL's port.
    pub fn prepared_statements(mut self, on: Option<bool>) -> Self {
        self.raw.db_prepared_statements = Some(match on {
            None => "auto".to_owned(),
            Some(true) => "on".to_owned(),
            Some(false) => "off".to_owned(),
        });
        self
    }

    /// `HOST` and `PORT`: the public listener.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.raw.host = Some(addr.ip().to_string());
        self.raw.port = Some(addr.port().to_string());
        self
    }

    /// `CORS_ALLOWED_ORIGINS`: browser origins allowed to call the API (`*` for any).
    pub fn cors_allowed_origins<'a>(mut self, origins: impl IntoIterator<Item = &'a str>) -> Self {
        self.raw.cors_allowed_origins = Some(origins.into_iter().collect::<Vec<_>>().join(","));
        self
    }

    /// `METRICS_ADDR`: the Prometheus listener, or `None` for none.
    pub fn metrics_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.raw.metrics_addr = Some(addr.map_or_else(|| "off".to_owned(), |a| a.to_string()));
        self
    }

    /// `REQUEST_TIMEOUT_SECONDS`: the bound on one request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.raw.request_timeout_seconds = seconds(timeout);
        self
    }

    /// `SHUTDOWN_TIMEOUT_SECONDS`: how long shutdown waits for in-flight requests.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.raw.shutdown_timeout_seconds = seconds(timeout);
        self
    }

    /// Any other setting, by filling the raw settings directly.
    pub fn raw(mut self, edit: impl FnOnce(&mut RawConfig)) -> Self {
        edit(&mut self.raw);
        self
    }

    /// Validates, as [`Config::from_raw`] does for the environment.
    pub fn build(self) -> Result<Config, ConfigError> {
        Config::from_raw(&self.raw, std::io::stderr().is_terminal())
    }
}

impl Config {
    /// A builder for configuration in code (see [`ConfigBuilder`]).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The configuration from the process environment (the variables of the README's table),
    /// validated. Does not read `.env`; call `dotenvy::dotenv()` first for that.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_raw(&RawConfig::from_env()?, std::io::stderr().is_terminal())
    }
}
