//! Configuration: raw strings from the environment (via clap) parsed once into typed values.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderValue;
use reqwest::Url;

mod builder;
mod database_url;
mod env;
mod raw;
mod secret;
pub use builder::ConfigBuilder;
// The start-up path of a build without the embedded store refuses one with this error.
pub use database_url::DatabaseUrl;
#[cfg(not(feature = "sqlite"))]
pub(crate) use database_url::no_embedded_store;
pub use raw::RawConfig;
pub use secret::Secret;

/// The Supabase CLI local stack's published JWT secret, used only when no key is configured
/// on the embedded store (dev mode). It is public knowledge and protects nothing.
pub const LOCAL_STACK_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
/// The Supabase CLI local stack's API URL, used only in dev mode when no key is configured.
pub const LOCAL_STACK_URL: &str = "http://127.0.0.1:54321";
/// Where the embedded store lives when `DATABASE_URL` is unset.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://./data/dev.db";
/// The opt-in that lets the local stack's published keys serve on a non-loopback listener,
/// for a throwaway container on one's own machine. Its name says what it costs.
pub const LOCAL_DEFAULTS_ON_NETWORK_VAR: &str = "INSECURE_LOCAL_DEFAULTS_ON_NETWORK";
/// Default memory budget of the verified-token cache (`JWT_CACHE_BYTES`): 16 MiB.
pub const DEFAULT_TOKEN_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Largest accepted `JWT_CACHE_BYTES`: 16 GiB.
const MAX_TOKEN_CACHE_BYTES: usize = 16 * 1024 * 1024 * 1024;

/// A configuration problem: which variable, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault.
    pub var: &'static str,
    /// What is wrong with it, without echoing secret values.
    pub problem: String,
}

impl ConfigError {
    /// Builds an error for `var`.
    pub fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            var,
            problem: problem.into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// How the Postgres store names its statements (`DB_PREPARED_STATEMENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreparedStatements {
    /// Reads use a statement prepared once per connection, under a name unique to that
    /// connection, until a read meets a transaction-mode pooler (the statement is missing on
    /// the server it landed on); from then on every read carries its SQL inline. sqlx's own
    /// statement cache stays off, so nothing else is named.
    Auto,
    /// Named statements always, sqlx's statement cache included: for a connection known to
    /// keep one server (direct, or a session-mode pooler). Behind a transaction-mode pooler
    /// reads fail with 503.
    On,
    /// Nothing named, ever: every read carries its SQL inline.
    Off,
}

impl fmt::Display for PreparedStatements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// Typed, validated configuration. All fields are public so tests and embedding binaries can
/// build one directly (see [`Config::for_tests`]) without touching the process environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public HTTP listener.
    pub listen: SocketAddr,
    /// The store to use.
    pub database_url: DatabaseUrl,
    /// Connection used by `migrate`.
    pub direct_database_url: DatabaseUrl,
    /// True when `DATABASE_URL` was unset: embedded store, loopback bind, local-stack defaults.
    pub dev_mode: bool,
    /// True when the local stack's key defaults are in use (neither key setting given).
    pub using_local_stack_defaults: bool,
    /// Legacy HS256 secret.
    pub jwt_secret: Option<Secret>,
    /// The project's key set URL, derived from `SUPABASE_URL`.
    pub jwks_url: Option<Url>,
    /// Required audience.
    pub audience: String,
    /// Expected issuer, when one is known.
    pub issuer: Option<String>,
    /// Clock skew allowed on time claims.
    pub leeway: Duration,
    /// The `role` claims accepted as users' (`JWT_ALLOWED_ROLES`); never `anon` or
    /// `service_role`. With `DB_RLS=on` the database user must be able to switch to each.
    pub allowed_roles: Vec<String>,
    /// OAuth 2.1 clients (`client_id` claim) whose access tokens are accepted
    /// (`JWT_ALLOWED_CLIENT_IDS`); empty accepts first-party tokens only.
    pub allowed_client_ids: Vec<uuid::Uuid>,
    /// Allowed CORS origins (`*` allows any).
    pub cors_origins: Vec<HeaderValue>,
    /// Prometheus listener; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Run user queries as `authenticated` with the verified claims (Postgres only).
    pub db_rls: bool,
    /// How statements are named; `Auto` already resolved to `Off` for a URL that names a
    /// transaction-mode pooler.
    pub prepared_statements: PreparedStatements,
    /// Check `auth.sessions` for the token's `session_id`.
    pub session_check: bool,
    /// Bound on one store call, pool wait included.
    pub db_timeout: Duration,
    /// Pool size.
    pub db_max_connections: u32,
    /// Bound on one request.
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// Capacity of the verified-token cache (0: off).
    pub token_cache_size: usize,
    /// Memory budget of the verified-token cache in bytes (0: off).
    pub token_cache_bytes: usize,
    /// Answer with a `Server-Timing` header. Off by default: it tells anyone how long our
    /// database and verification take, which is for debugging, not for the public.
    pub server_timing: bool,
    /// How long a client may take to send a request's headers (also the idle keep-alive time).
    pub header_read_timeout: Duration,
    /// Most HTTP connections served at once.
    pub http_max_connections: usize,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_switch(var: &'static str, raw: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("on" | "true" | "1" | "yes") => Ok(true),
        Some("off" | "false" | "0" | "no") => Ok(false),
        Some(_) => Err(ConfigError::new(var, "must be on or off")),
    }
}

fn parse_seconds(
    var: &'static str,
    raw: Option<&str>,
    default: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    let value = match raw {
        None => default,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v <= max)
            .ok_or_else(|| {
                ConfigError::new(
                    var,
                    format!("must be a number of seconds above 0 and at most {max}"),
                )
            })?,
    };
    Ok(Duration::from_secs_f64(value))
}

impl Config {
    /// Parses and cross-checks raw settings. `is_terminal` picks the default log format.
    pub fn from_raw(raw: &RawConfig, is_terminal: bool) -> Result<Self, ConfigError> {
        let database_url = match non_empty(&raw.database_url) {
            Some(s) => DatabaseUrl::parse("DATABASE_URL", s)?,
            None => DatabaseUrl::parse("DATABASE_URL", DEFAULT_SQLITE_URL)?,
        };
        let dev_mode = non_empty(&raw.database_url).is_none();
        let direct_database_url = match non_empty(&raw.direct_database_url) {
            Some(s) => DatabaseUrl::parse("DIRECT_DATABASE_URL", s)?,
            None => database_url.clone(),
        };

        let host: IpAddr = match non_empty(&raw.host) {
            Some(s) => s
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| {
                    ConfigError::new("HOST", "must be an IP address such as 0.0.0.0 or ::")
                })?,
            None if dev_mode => IpAddr::V4(Ipv4Addr::LOCALHOST),
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let port: u16 = match non_empty(&raw.port) {
            Some(s) => s
                .parse()
                .map_err(|_| ConfigError::new("PORT", "must be a port number from 0 to 65535"))?,
            None => 8080,
        };

        let mut jwt_secret = non_empty(&raw.supabase_jwt_secret).map(Secret::new);
        if let Some(secret) = &jwt_secret
            && secret.expose().len() < 32
        {
            return Err(ConfigError::new(
                "SUPABASE_JWT_SECRET",
                "is shorter than 32 bytes; use the project's JWT secret from the dashboard",
            ));
        }
        let mut supabase_url = match non_empty(&raw.supabase_url) {
            Some(s) => Some(parse_supabase_url(s)?),
            None => None,
        };
        let local_defaults_on_network = parse_switch(
            LOCAL_DEFAULTS_ON_NETWORK_VAR,
            non_empty(&raw.insecure_local_defaults_on_network),
            false,
        )?;
        // The local stack's secret is published: on any interface but loopback it would let
        // anyone who can reach the port mint a token for any user.
        let on_network = !host.to_canonical().is_loopback();
        let mut using_local_stack_defaults = false;
        if jwt_secret.is_none() && supabase_url.is_none() {
            if database_url.is_postgres() {
                return Err(ConfigError::new(
                    "SUPABASE_JWT_SECRET",
                    "with a Postgres DATABASE_URL set SUPABASE_JWT_SECRET or SUPABASE_URL (or both)",
                ));
            }
            if on_network && !local_defaults_on_network {
                return Err(ConfigError::new(
                    "SUPABASE_JWT_SECRET",
                    format!(
                        "neither SUPABASE_JWT_SECRET nor SUPABASE_URL is set and HOST={host} is not loopback: set one of them, \
                         or HOST=127.0.0.1 to try the service locally (the Supabase CLI's published secret is used only on loopback; \
                         {LOCAL_DEFAULTS_ON_NETWORK_VAR}=on overrides this for a throwaway local container)"
                    ),
                ));
            }
            jwt_secret = Some(Secret::new(LOCAL_STACK_JWT_SECRET));
            supabase_url = Some(parse_supabase_url(LOCAL_STACK_URL)?);
            using_local_stack_defaults = true;
        }

        // The same secret set on purpose (a `.env` pasted from `supabase status` onto a server)
        // is just as public: refused off loopback whatever else is configured.
        if on_network
            && !local_defaults_on_network
            && jwt_secret
                .as_ref()
                .is_some_and(Secret::is_published_local_secret)
        {
            return Err(ConfigError::new(
                "SUPABASE_JWT_SECRET",
                format!(
                    "is the Supabase CLI's published local secret, which anyone can sign tokens with, and HOST={host} is not loopback: \
                     set the project's own JWT secret (Dashboard > Project Settings > JWT Keys), or HOST=127.0.0.1 for the local stack \
                     ({LOCAL_DEFAULTS_ON_NETWORK_VAR}=on overrides this for a throwaway local container)"
                ),
            ));
        }

        let jwks_url = match &supabase_url {
            Some(base) => Some(join_auth_path(base, "auth/v1/.well-known/jwks.json")?),
            None => None,
        };
        let issuer = match non_empty(&raw.jwt_issuer) {
            Some(s) => Some(s.to_owned()),
            None => supabase_url
                .as_ref()
                .map(|base| format!("{}/auth/v1", base.as_str().trim_end_matches('/'))),
        };
        let audience = non_empty(&raw.jwt_audience)
            .unwrap_or("authenticated")
            .to_owned();
        let leeway = match non_empty(&raw.jwt_leeway_seconds) {
            None => Duration::from_secs(30),
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|v| *v <= 600)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    ConfigError::new(
                        "JWT_LEEWAY_SECONDS",
                        "must be a whole number of seconds from 0 to 600",
                    )
                })?,
        };
        let allowed_roles = match non_empty(&raw.jwt_allowed_roles) {
            None => vec!["authenticated".to_owned()],
            Some(list) => parse_allowed_roles(list)?,
        };
        let allowed_client_ids = match non_empty(&raw.jwt_allowed_client_ids) {
            None => Vec::new(),
            Some(list) => parse_client_ids(list)?,
        };

        let cors_origins = match non_empty(&raw.cors_allowed_origins) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(parse_origin)
                .collect::<Result<Vec<_>, _>>()?,
        };

        let metrics_addr = match non_empty(&raw.metrics_addr) {
            None => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9091))),
            Some(s) if s.eq_ignore_ascii_case("off") => None,
            Some(s) => Some(s.parse().map_err(|_| {
                ConfigError::new(
                    "METRICS_ADDR",
                    "must be host:port such as 127.0.0.1:9091, or off",
                )
            })?),
        };

        // Metrics stay off the public port: sharing it would publish them, or fail to bind.
        if let Some(metrics) = metrics_addr
            && metrics.port() != 0
            && metrics.port() == port
        {
            return Err(ConfigError::new(
                "METRICS_ADDR",
                "must use another port than PORT; metrics are never served on the public port",
            ));
        }

        let log_format = match non_empty(&raw.log_format)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None if is_terminal => LogFormat::Pretty,
            None => LogFormat::Json,
            Some("pretty" | "text") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(ConfigError::new("LOG_FORMAT", "must be pretty or json")),
        };

        let db_rls = parse_switch("DB_RLS", non_empty(&raw.db_rls), true)?;
        let session_check = parse_switch("SESSION_CHECK", non_empty(&raw.session_check), false)?;
        let prepared_statements = match non_empty(&raw.db_prepared_statements)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("auto") if database_url.looks_like_transaction_pooler() => {
                PreparedStatements::Off
            }
            None | Some("auto") => PreparedStatements::Auto,
            Some(other) => match parse_switch("DB_PREPARED_STATEMENTS", Some(other), true) {
                Ok(true) => PreparedStatements::On,
                Ok(false) => PreparedStatements::Off,
                Err(_) => {
                    return Err(ConfigError::new(
                        "DB_PREPARED_STATEMENTS",
                        "must be auto, on or off",
                    ));
                }
            },
        };

        let db_timeout = parse_seconds(
            "DB_TIMEOUT_SECONDS",
            non_empty(&raw.db_timeout_seconds),
            3.0,
            60.0,
        )?;
        let db_max_connections = match non_empty(&raw.db_max_connections) {
            None => 10,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|v| (1..=1000).contains(v))
                .ok_or_else(|| {
                    ConfigError::new(
                        "DB_MAX_CONNECTIONS",
                        "must be a whole number from 1 to 1000",
                    )
                })?,
        };
        let request_timeout = parse_seconds(
            "REQUEST_TIMEOUT_SECONDS",
            non_empty(&raw.request_timeout_seconds),
            10.0,
            600.0,
        )?;
        let shutdown_timeout = parse_seconds(
            "SHUTDOWN_TIMEOUT_SECONDS",
            non_empty(&raw.shutdown_timeout_seconds),
            10.0,
            600.0,
        )?;
        let header_read_timeout = parse_seconds(
            "HEADER_READ_TIMEOUT_SECONDS",
            non_empty(&raw.header_read_timeout_seconds),
            10.0,
            600.0,
        )?;
        let http_max_connections = match non_empty(&raw.http_max_connections) {
            None => 4096,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|v| (1..=1_000_000).contains(v))
                .ok_or_else(|| {
                    ConfigError::new(
                        "HTTP_MAX_CONNECTIONS",
                        "must be a whole number from 1 to 1000000",
                    )
                })?,
        };

        let token_cache_size = match non_empty(&raw.jwt_cache_size) {
            None => 4096,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|v| *v <= 1_000_000)
                .ok_or_else(|| {
                    ConfigError::new("JWT_CACHE_SIZE", "must be a whole number from 0 to 1000000")
                })?,
        };
        let token_cache_bytes = match non_empty(&raw.jwt_cache_bytes) {
            None => DEFAULT_TOKEN_CACHE_BYTES,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|v| *v <= MAX_TOKEN_CACHE_BYTES)
                .ok_or_else(|| {
                    ConfigError::new(
                        "JWT_CACHE_BYTES",
                        "must be a whole number of bytes from 0 to 17179869184 (16 GiB)",
                    )
                })?,
        };
        let server_timing = parse_switch("SERVER_TIMING", non_empty(&raw.server_timing), false)?;

        Ok(Self {
            listen: SocketAddr::new(host, port),
            database_url,
            direct_database_url,
            dev_mode,
            using_local_stack_defaults,
            jwt_secret,
            jwks_url,
            audience,
            issuer,
            leeway,
            allowed_roles,
            allowed_client_ids,
            cors_origins,
            metrics_addr,
            log_format,
            db_rls,
            prepared_statements,
            session_check,
            db_timeout,
            db_max_connections,
            request_timeout,
            shutdown_timeout,
            token_cache_size,
            token_cache_bytes,
            server_timing,
            header_read_timeout,
            http_max_connections,
        })
    }

    /// A configuration for tests and embedding: HS256 with `secret`, the given store, loopback
    /// port 0, no metrics listener, issuer unchecked.
    pub fn for_tests(database_url: &str, secret: &str) -> Result<Self, ConfigError> {
        let raw = RawConfig {
            host: Some("127.0.0.1".into()),
            port: Some("0".into()),
            database_url: Some(database_url.into()),
            supabase_jwt_secret: Some(secret.into()),
            metrics_addr: Some("off".into()),
            log_format: Some("json".into()),
            ..RawConfig::default()
        };
        Self::from_raw(&raw, false)
    }
}

fn parse_supabase_url(raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|_| {
        ConfigError::new(
            "SUPABASE_URL",
            "must be a URL such as https://abcd.supabase.co",
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(
            "SUPABASE_URL",
            "must be an http:// or https:// URL with a host",
        ));
    }
    // The keys that decide who is signed in come from this URL: over plain HTTP anyone on the
    // path could substitute their own. Only a local stack on this machine may use it.
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err(ConfigError::new(
            "SUPABASE_URL",
            "must be https:// (http:// only for localhost, 127.0.0.0/8 or ::1)",
        ));
    }
    Ok(url)
}

/// `localhost` (and its subdomains, RFC 6761 section 6.3), 127.0.0.0/8 or ::1.
fn is_loopback_host(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

fn join_auth_path(base: &Url, path: &str) -> Result<Url, ConfigError> {
    let with_slash = format!("{}/", base.as_str().trim_end_matches('/'));
    Url::parse(&with_slash)
        .and_then(|b| b.join(path))
        .map_err(|_| ConfigError::new("SUPABASE_URL", "cannot derive the key set URL from it"))
}

/// The project's API keys are signed JWTs too, with `role` set to one of these. They are not
/// users: anyone holding the public `anon` key, or any server holding `service_role` (which
/// bypasses row-level security), would pass for a signed-in user, with no `sub` of their own.
pub(crate) const PROJECT_KEY_ROLES: [&str; 2] = ["anon", "service_role"];

fn parse_allowed_roles(list: &str) -> Result<Vec<String>, ConfigError> {
    const VAR: &str = "JWT_ALLOWED_ROLES";
    let mut roles: Vec<String> = Vec::new();
    for role in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if PROJECT_KEY_ROLES.contains(&role) {
            return Err(ConfigError::new(
                VAR,
                format!(
                    "lists `{role}`, the role of a project API key, not of a signed-in user; remove it"
                ),
            ));
        }
        // The role becomes a `SET ROLE` target under DB_RLS=on: keep to names that need no
        // quoting, so the name in the token and the name in the database cannot differ.
        let plain = role.len() <= 63
            && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && role
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(ConfigError::new(
                VAR,
                "each role must be a lower-case Postgres role name (a-z, 0-9, _; at most 63 bytes)",
            ));
        }
        if !roles.iter().any(|r| r == role) {
            roles.push(role.to_owned());
        }
    }
    if roles.is_empty() {
        return Err(ConfigError::new(VAR, "must list at least one role"));
    }
    Ok(roles)
}

fn parse_client_ids(list: &str) -> Result<Vec<uuid::Uuid>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        // Not echoed: a client secret pasted here by mistake must not reach the logs.
        .map(|(i, id)| {
            uuid::Uuid::try_parse(id).map_err(|_| {
                ConfigError::new(
                    "JWT_ALLOWED_CLIENT_IDS",
                    format!(
                        "item {} is not a client id (a UUID, from Authentication > OAuth Apps)",
                        i + 1
                    ),
                )
            })
        })
        .collect()
}

fn parse_origin(raw: &str) -> Result<HeaderValue, ConfigError> {
    if raw == "*" {
        return Ok(HeaderValue::from_static("*"));
    }
    let url = Url::parse(raw).map_err(|_| {
        ConfigError::new(
            "CORS_ALLOWED_ORIGINS",
            format!("`{raw}` is not an origin such as https://app.example.com"),
        )
    })?;
    let has_path = !(url.path() == "/" || url.path().is_empty());
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || has_path
        || url.query().is_some()
    {
        return Err(ConfigError::new(
            "CORS_ALLOWED_ORIGINS",
            format!("`{raw}` is not an origin (scheme://host[:port], no path)"),
        ));
    }
    // Browsers send the origin without a trailing slash; compare in that exact form.
    HeaderValue::from_str(raw.trim_end_matches('/')).map_err(|_| {
        ConfigError::new(
            "CORS_ALLOWED_ORIGINS",
            format!("`{raw}` is not a valid header value"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_pg() -> RawConfig {
        RawConfig {
            database_url: Some("postgres://app:hunter2@db.example.com:5432/postgres".into()),
            supabase_jwt_secret: Some("x".repeat(40)),
            ..RawConfig::default()
        }
    }

    #[test]
    fn debug_of_raw_and_parsed_config_shows_no_credential() {
        let mut raw = raw_pg();
        raw.database_url = Some("postgres://app:hunter2@db/x?password=hunter3".into());
        raw.direct_database_url = Some("postgres://app@db/x?sslpassword=hunter4".into());
        raw.supabase_jwt_secret = Some("jwt-secret-value-0123456789-abcdefghij".into());
        let shown = format!("{raw:?}");
        for secret in ["hunter2", "hunter3", "hunter4", "jwt-secret-value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        raw.direct_database_url = None;
        let config = Config::from_raw(&raw, false).unwrap();
        let shown = format!("{config:?}");
        for secret in ["hunter2", "hunter3", "jwt-secret-value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    // Dev mode is the embedded store's.
    #[cfg(feature = "sqlite")]
    #[test]
    fn local_stack_keys_only_on_a_loopback_listener() {
        type Mutation = fn(&mut RawConfig);
        let refused: Vec<(Mutation, &str)> = vec![
            (
                |r| r.host = Some("0.0.0.0".into()),
                "HOST=0.0.0.0, DATABASE_URL unset",
            ),
            (|r| r.host = Some("::".into()), "HOST=::"),
            (|r| r.host = Some("192.0.2.10".into()), "HOST=192.0.2.10"),
            (
                |r| r.database_url = Some("sqlite://./data/app.db".into()),
                "explicit sqlite URL, HOST defaulting to 0.0.0.0",
            ),
            (
                |r| {
                    r.database_url = Some("postgres://u:p@db/x".into());
                    r.host = Some("0.0.0.0".into());
                },
                "postgres",
            ),
            (
                |r| {
                    r.database_url = Some("postgres://u:p@db/x".into());
                    r.insecure_local_defaults_on_network = Some("on".into());
                },
                "postgres with the opt-in: still needs a key",
            ),
        ];
        for (mutate, case) in refused {
            let mut raw = RawConfig::default();
            mutate(&mut raw);
            let err = Config::from_raw(&raw, false).unwrap_err();
            assert_eq!(err.var, "SUPABASE_JWT_SECRET", "{case}");
            let line = err.to_string();
            assert!(
                line.contains("SUPABASE_JWT_SECRET") && line.contains("SUPABASE_URL"),
                "{case}: {line}"
            );
            assert!(!line.contains('\n'), "{case}: {line}");
        }

        let allowed: Vec<Mutation> = vec![
            |_| {},
            |r| r.host = Some("127.0.0.1".into()),
            |r| r.host = Some("::1".into()),
            |r| r.host = Some("::ffff:127.0.0.1".into()),
            |r| {
                r.database_url = Some("sqlite://./data/app.db".into());
                r.host = Some("127.0.0.1".into());
            },
            |r| {
                r.host = Some("0.0.0.0".into());
                r.insecure_local_defaults_on_network = Some("on".into());
            },
        ];
        for mutate in allowed {
            let mut raw = RawConfig::default();
            mutate(&mut raw);
            let c = Config::from_raw(&raw, false).unwrap();
            assert!(c.using_local_stack_defaults, "{raw:?}");
        }

        // A key given: the listener is the operator's choice.
        let mut raw = RawConfig {
            host: Some("0.0.0.0".into()),
            supabase_url: Some("https://abcd.supabase.co".into()),
            ..RawConfig::default()
        };
        assert!(
            !Config::from_raw(&raw, false)
                .unwrap()
                .using_local_stack_defaults
        );
        raw.insecure_local_defaults_on_network = Some("perhaps".into());
        assert_eq!(
            Config::from_raw(&raw, false).unwrap_err().var,
            LOCAL_DEFAULTS_ON_NETWORK_VAR
        );
    }

    #[test]
    fn the_published_secret_set_explicitly_serves_loopback_only() {
        let published = |host: &str, url: Option<&str>, opt_in: Option<&str>| RawConfig {
            host: Some(host.into()),
            database_url: Some("postgres://app:pw@db.example.com:5432/postgres".into()),
            supabase_jwt_secret: Some(LOCAL_STACK_JWT_SECRET.into()),
            supabase_url: url.map(Into::into),
            insecure_local_defaults_on_network: opt_in.map(Into::into),
            ..RawConfig::default()
        };
        for (host, url) in [
            ("0.0.0.0", None),
            ("::", None),
            ("10.0.0.5", Some("https://abcd.supabase.co")),
        ] {
            let err = Config::from_raw(&published(host, url, None), false).unwrap_err();
            assert_eq!(err.var, "SUPABASE_JWT_SECRET", "{host}");
            assert!(!err.to_string().contains(LOCAL_STACK_JWT_SECRET));
            assert!(!err.to_string().contains('\n'));
        }
        assert!(Config::from_raw(&published("0.0.0.0", None, Some("on")), false).is_ok());
        assert!(Config::from_raw(&published("127.0.0.1", None, None), false).is_ok());
        assert!(Config::from_raw(&published("::1", None, None), false).is_ok());
    }

    // Dev mode is the embedded store's.
    #[cfg(feature = "sqlite")]
    #[test]
    fn unset_database_url_is_dev_mode_on_loopback_with_local_stack_keys() {
        let c = Config::from_raw(&RawConfig::default(), false).unwrap();
        assert!(c.dev_mode && c.using_local_stack_defaults);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.issuer.as_deref(), Some("http://127.0.0.1:54321/auth/v1"));
        assert_eq!(
            c.jwks_url.unwrap().as_str(),
            "http://127.0.0.1:54321/auth/v1/.well-known/jwks.json"
        );
    }

    #[cfg(not(feature = "sqlite"))]
    #[test]
    fn without_the_sqlite_feature_an_embedded_store_is_a_config_error() {
        for url in [
            None,
            Some("sqlite://./data/dev.db"),
            Some("sqlite::memory:"),
        ] {
            let raw = RawConfig {
                database_url: url.map(Into::into),
                ..raw_pg()
            };
            let err = Config::from_raw(&raw, false).unwrap_err();
            assert_eq!(err.var, "DATABASE_URL", "{url:?}");
            assert!(err.problem.contains("`sqlite` feature"), "{err}");
        }
        assert!(Config::from_raw(&raw_pg(), false).is_ok());
    }

    #[test]
    fn postgres_without_any_key_is_an_error_naming_the_variable() {
        let mut raw = raw_pg();
        raw.supabase_jwt_secret = None;
        let err = Config::from_raw(&raw, false).unwrap_err();
        assert_eq!(err.var, "SUPABASE_JWT_SECRET");
    }

    #[test]
    fn postgres_binds_all_interfaces_by_default() {
        let c = Config::from_raw(&raw_pg(), false).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert!(!c.dev_mode);
        assert_eq!(c.issuer, None);
    }

    #[test]
    fn pooler_port_turns_prepared_statements_off() {
        let prepared = |raw: &RawConfig| Config::from_raw(raw, false).unwrap().prepared_statements;
        let mut raw = raw_pg();
        raw.database_url = Some("postgres://u:p@aws-0.pooler.supabase.com:6543/postgres".into());
        assert_eq!(prepared(&raw), PreparedStatements::Off);
        raw.database_url = Some("postgres://u:p@h:5432/db?pgbouncer=true".into());
        assert_eq!(prepared(&raw), PreparedStatements::Off);
        raw.db_prepared_statements = Some("on".into());
        assert_eq!(prepared(&raw), PreparedStatements::On);
        raw.database_url = Some("postgres://u:p@h:6432/db".into());
        raw.db_prepared_statements = None;
        assert_eq!(prepared(&raw), PreparedStatements::Auto);
        raw.db_prepared_statements = Some("AUTO".into());
        assert_eq!(prepared(&raw), PreparedStatements::Auto);
        raw.db_prepared_statements = Some("off".into());
        assert_eq!(prepared(&raw), PreparedStatements::Off);
        raw.db_prepared_statements = Some("sometimes".into());
        let err = Config::from_raw(&raw, false).unwrap_err();
        assert_eq!(err.var, "DB_PREPARED_STATEMENTS");
        assert!(!err.problem.contains("sometimes"), "{err}");
    }

    #[test]
    fn issuer_derives_from_supabase_url_and_can_be_overridden() {
        let mut raw = raw_pg();
        raw.supabase_url = Some("https://abcd.supabase.co/".into());
        let c = Config::from_raw(&raw, false).unwrap();
        assert_eq!(
            c.issuer.as_deref(),
            Some("https://abcd.supabase.co/auth/v1")
        );
        raw.jwt_issuer = Some("https://other.example/auth/v1".into());
        let c = Config::from_raw(&raw, false).unwrap();
        assert_eq!(c.issuer.as_deref(), Some("https://other.example/auth/v1"));
    }

    #[test]
    fn bad_values_name_their_variable() {
        type Mutation = fn(&mut RawConfig);
        let cases: Vec<(Mutation, &str)> = vec![
            (|r| r.port = Some("eighty".into()), "PORT"),
            (|r| r.host = Some("not-an-ip".into()), "HOST"),
            (
                |r| r.database_url = Some("mysql://x".into()),
                "DATABASE_URL",
            ),
            (|r| r.supabase_url = Some("abcd".into()), "SUPABASE_URL"),
            (
                |r| r.jwt_leeway_seconds = Some("-1".into()),
                "JWT_LEEWAY_SECONDS",
            ),
            (
                |r| r.cors_allowed_origins = Some("localhost:3000".into()),
                "CORS_ALLOWED_ORIGINS",
            ),
            (|r| r.metrics_addr = Some("9091".into()), "METRICS_ADDR"),
            (|r| r.db_rls = Some("maybe".into()), "DB_RLS"),
            (
                |r| r.metrics_addr = Some("0.0.0.0:8080".into()),
                "METRICS_ADDR",
            ),
            (
                |r| r.server_timing = Some("sometimes".into()),
                "SERVER_TIMING",
            ),
            (
                |r| r.header_read_timeout_seconds = Some("0".into()),
                "HEADER_READ_TIMEOUT_SECONDS",
            ),
            (
                |r| r.http_max_connections = Some("0".into()),
                "HTTP_MAX_CONNECTIONS",
            ),
            (
                |r| r.supabase_jwt_secret = Some("short".into()),
                "SUPABASE_JWT_SECRET",
            ),
        ];
        for (mutate, var) in cases {
            let mut raw = raw_pg();
            mutate(&mut raw);
            assert_eq!(Config::from_raw(&raw, false).unwrap_err().var, var);
        }
    }

    #[test]
    fn short_secret_error_does_not_echo_it() {
        let mut raw = raw_pg();
        raw.supabase_jwt_secret = Some("tiny-secret".into());
        let err = Config::from_raw(&raw, false).unwrap_err();
        assert!(!err.to_string().contains("tiny-secret"));
    }

    #[test]
    fn server_timing_is_off_unless_asked_for() {
        assert!(!Config::from_raw(&raw_pg(), false).unwrap().server_timing);
        let mut raw = raw_pg();
        raw.server_timing = Some("on".into());
        assert!(Config::from_raw(&raw, false).unwrap().server_timing);
    }

    #[test]
    fn allowed_roles_default_to_authenticated_and_refuse_project_key_roles() {
        let c = Config::from_raw(&raw_pg(), false).unwrap();
        assert_eq!(c.allowed_roles, vec!["authenticated"]);
        let mut raw = raw_pg();
        raw.jwt_allowed_roles = Some(" authenticated, editor ,editor".into());
        let c = Config::from_raw(&raw, false).unwrap();
        assert_eq!(c.allowed_roles, vec!["authenticated", "editor"]);
        for bad in [
            "authenticated,anon",
            "service_role",
            "Editor",
            "a-b",
            "x;drop",
            " , ",
        ] {
            raw.jwt_allowed_roles = Some(bad.into());
            let err = Config::from_raw(&raw, false).unwrap_err();
            assert_eq!(err.var, "JWT_ALLOWED_ROLES", "{bad}");
        }
        raw.jwt_allowed_roles = Some("anon".into());
        let err = Config::from_raw(&raw, false).unwrap_err();
        assert!(err.problem.contains("`anon`"), "{err}");
    }

    #[test]
    fn allowed_client_ids_are_uuids_and_a_bad_one_is_not_echoed() {
        assert!(
            Config::from_raw(&raw_pg(), false)
                .unwrap()
                .allowed_client_ids
                .is_empty()
        );
        let mut raw = raw_pg();
        let id = "9a1e4f0c-3b7d-4c2a-8e5f-6d1b2c3a4f5e";
        raw.jwt_allowed_client_ids = Some(format!("{id}, "));
        let c = Config::from_raw(&raw, false).unwrap();
        assert_eq!(
            c.allowed_client_ids,
            vec![uuid::Uuid::parse_str(id).unwrap()]
        );
        raw.jwt_allowed_client_ids = Some(format!("{id},sb_secret_not-a-client-id"));
        let err = Config::from_raw(&raw, false).unwrap_err();
        assert_eq!(err.var, "JWT_ALLOWED_CLIENT_IDS");
        assert!(!err.to_string().contains("sb_secret"), "{err}");
    }

    #[test]
    fn cors_origins_are_normalised() {
        let mut raw = raw_pg();
        raw.cors_allowed_origins = Some("http://localhost:3000/, https://app.example.com".into());
        let c = Config::from_raw(&raw, false).unwrap();
        assert_eq!(
            c.cors_origins,
            vec!["http://localhost:3000", "https://app.example.com"]
        );
    }
}
