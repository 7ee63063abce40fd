//! [`RawConfig`]: the settings as strings, collected by clap (or the environment alone)
//! before any typed parsing.

use std::fmt;

#[cfg(feature = "cli")]
use clap::Args;

use super::DatabaseUrl;

/// Raw configuration as collected by clap from flags and environment (or, without the `cli`
/// feature, by [`RawConfig::from_env`]). Every field is an optional string so that all typed
/// parsing, and its one-line errors, happen in [`Config::from_raw`](super::Config::from_raw). Each field's variable is
/// its name in capitals (clap's bare `env`); the one list of the names is in `config/env.rs`.
/// Its `Debug` shows the database URLs masked and the secret redacted.
#[derive(Clone, Default)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct RawConfig {
    /// Address to listen on [default: 0.0.0.0, or 127.0.0.1 on the embedded store]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub host: Option<String>,
    /// Port to listen on [default: 8080]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub port: Option<String>,
    /// postgres://… (production) or sqlite://… [default: sqlite://./data/dev.db]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub database_url: Option<String>,
    /// Direct (non-pooled) connection used by `migrate` [default: DATABASE_URL]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub direct_database_url: Option<String>,
    /// The project's legacy HS256 JWT secret
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub supabase_jwt_secret: Option<String>,
    /// Project URL, e.g. https://abcd.supabase.co: sets issuer and key set URL
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub supabase_url: Option<String>,
    /// Required `aud` claim [default: authenticated]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub jwt_audience: Option<String>,
    /// Expected `iss` claim [default: <SUPABASE_URL>/auth/v1]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on exp/nbf/iat, in seconds [default: 30]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub jwt_leeway_seconds: Option<String>,
    /// Comma-separated `role` claims accepted as users [default: authenticated]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub jwt_allowed_roles: Option<String>,
    /// Comma-separated OAuth client ids whose tokens are accepted [default: none]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub jwt_allowed_client_ids: Option<String>,
    /// Comma-separated browser origins allowed to call the API [default: none]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub cors_allowed_origins: Option<String>,
    /// Prometheus listener address, or `off` [default: 127.0.0.1:9091]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub metrics_addr: Option<String>,
    /// `pretty` or `json` [default: pretty on a terminal, json otherwise]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub log_format: Option<String>,
    /// Row-level security per request on Postgres: on|off [default: on]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub db_rls: Option<String>,
    /// Named prepared statements: auto|on|off [default: auto]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub db_prepared_statements: Option<String>,
    /// Reject tokens whose session was logged out: on|off [default: off]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub session_check: Option<String>,
    /// Upper bound on one database call, pool wait included, in seconds [default: 3]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub db_timeout_seconds: Option<String>,
    /// Maximum database connections [default: 10]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub db_max_connections: Option<String>,
    /// Upper bound on one request, in seconds [default: 10]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub request_timeout_seconds: Option<String>,
    /// How long shutdown waits for in-flight requests, in seconds [default: 10]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub shutdown_timeout_seconds: Option<String>,
    /// Verified tokens remembered until they expire; 0 turns the cache off [default: 4096]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub jwt_cache_size: Option<String>,
    /// Memory the verified-token cache may use, in bytes; 0 turns the cache off [default: 16777216]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub jwt_cache_bytes: Option<String>,
    /// Add a `Server-Timing` header (auth and database time) to responses: on|off [default: off]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub server_timing: Option<String>,
    /// How long a client may take to send a request's headers, in seconds [default: 10]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub header_read_timeout_seconds: Option<String>,
    /// Most HTTP connections served at once; past it new ones wait to be accepted [default: 4096]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub http_max_connections: Option<String>,
    /// Let the Supabase CLI's published local secret serve on a non-loopback HOST, for a
    /// throwaway local container only: on|off [default: off]
    #[cfg_attr(feature = "cli", arg(long, env, global = true, hide_env_values = true))]
    pub insecure_local_defaults_on_network: Option<String>,
}

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Unvalidated text: mask what parses, and show nothing of what does not.
        let url = |raw: &Option<String>| {
            raw.as_deref()
                .map(|s| match DatabaseUrl::parse("DATABASE_URL", s) {
                    Ok(url) => url.masked(),
                    Err(_) => "[unparseable url]".to_owned(),
                })
        };
        f.debug_struct("RawConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database_url", &url(&self.database_url))
            .field("direct_database_url", &url(&self.direct_database_url))
            .field(
                "supabase_jwt_secret",
                &self.supabase_jwt_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("supabase_url", &self.supabase_url)
            .finish_non_exhaustive()
    }
}
