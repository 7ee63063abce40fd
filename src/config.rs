//! Configuration: four parts ([`HttpConfig`], [`AuthConfig`], [`DbConfig`],
//! [`TelemetryConfig`]), each parsed by its own code, built in code with [`ConfigBuilder`] or
//! read from the environment with [`Config::from_env`], through the same rules.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

mod auth;
mod builder;
mod database_url;
mod db;
mod http;
mod secret;
mod telemetry;
mod vars;

pub use auth::AuthConfig;
pub(crate) use auth::PROJECT_KEY_ROLES;
pub use builder::ConfigBuilder;
pub use database_url::DatabaseUrl;
pub use db::{DbConfig, PreparedStatements};
pub use http::HttpConfig;
pub use secret::Secret;
pub use telemetry::{LogFormat, TelemetryConfig};
pub(crate) use vars::INSECURE_LOCAL_DEFAULTS_ON_NETWORK;
pub use vars::{VARIABLES, Variable};

/// The Supabase CLI local stack's published JWT secret, used only when no key is configured
/// and the service listens on loopback. It is public knowledge and protects nothing: set as
/// `SUPABASE_JWT_SECRET` it is refused on any other listener too.
pub const LOCAL_STACK_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
/// The Supabase CLI local stack's API URL, used with its secret.
pub(crate) const LOCAL_STACK_URL: &str = "http://127.0.0.1:54321";
/// Where the embedded store lives when `DATABASE_URL` is unset.
const DEFAULT_SQLITE_URL: &str = "sqlite://./data/dev.db";

/// A configuration problem: which variable, and what is wrong with it. Its `Display` is the
/// one line the binary prints before it exits with status 2; it never echoes a secret.
///
/// ```
/// use supabase_jwt_service::Config;
///
/// let err = Config::builder().var("DB_RLS", "maybe").build().unwrap_err();
/// assert_eq!(err.to_string(), "DB_RLS: must be on or off");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault.
    pub var: &'static str,
    /// What is wrong with it, without echoing secret values.
    pub problem: String,
}

impl ConfigError {
    /// An error for `var`.
    pub fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            var,
            problem: problem.into(),
        }
    }
}

/// The whole configuration, validated. Read its parts; build one with [`Config::builder`] or
/// [`Config::from_env`]. Its `Debug` shows URLs masked and the secret redacted.
///
/// ```
/// use supabase_jwt_service::Config;
///
/// let config = Config::builder()
///     .database_url("postgres://app:hunter2@db.example.com:5432/postgres")
///     .supabase_url("https://abcdefghijklmnop.supabase.co")
///     .build()?;
/// assert_eq!(config.http.listen.to_string(), "0.0.0.0:8080");
/// assert!(config.db.rls);
/// assert!(!format!("{config:?}").contains("hunter2"));
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The public listener and the bounds on requests.
    pub http: HttpConfig,
    /// Keys and claim rules.
    pub auth: AuthConfig,
    /// The store.
    pub db: DbConfig,
    /// Logs and metrics.
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// A builder for configuration in code (see [`ConfigBuilder`]).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The configuration from the process environment (the variables of the README's table,
    /// [`VARIABLES`]), validated. Does not read `.env`; call `dotenvy::dotenv()` first for that.
    /// A value that is not UTF-8 is an error naming its variable, and is not echoed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut builder = Self::builder();
        for var in VARIABLES {
            if let Some(value) = std::env::var_os(var.name) {
                let value = value
                    .into_string()
                    .map_err(|_| ConfigError::new(var.name, "is not valid UTF-8"))?;
                builder = builder.var(var.name, &value);
            }
        }
        builder.build()
    }

    /// The configuration from any source of the same variables: `lookup` answers a name of
    /// [`VARIABLES`] with its value, if set. The binary passes its command line (flags, then
    /// the environment) through this.
    ///
    /// ```
    /// use supabase_jwt_service::Config;
    ///
    /// let config = Config::from_lookup(|name| match name {
    ///     "DATABASE_URL" => Some("postgres://app:pw@db.example.com:5432/postgres".into()),
    ///     "SUPABASE_JWT_SECRET" => Some("a-project-jwt-secret-of-at-least-32-characters".into()),
    ///     "DB_RLS" => Some("off".into()),
    ///     _ => None,
    /// })?;
    /// assert!(!config.db.rls);
    /// # Ok::<(), supabase_jwt_service::ConfigError>(())
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut builder = Self::builder();
        for var in VARIABLES {
            if let Some(value) = lookup(var.name) {
                builder = builder.var(var.name, &value);
            }
        }
        builder.build()
    }
}

/// The defaults that depend on other settings and every rule that spans parts, in one place.
fn resolve(builder: ConfigBuilder, is_terminal: bool) -> Result<Config, ConfigError> {
    if let Some(e) = builder.error {
        return Err(e);
    }
    let ConfigBuilder {
        http,
        auth,
        db,
        telemetry,
        ..
    } = builder;

    // Dev mode: no DATABASE_URL means the embedded store, and a loopback listener.
    let dev_mode = db.url.is_none();
    let url = match db.url.clone() {
        Some(url) => url,
        None => DatabaseUrl::parse(vars::DATABASE_URL, DEFAULT_SQLITE_URL)?,
    };
    let default_host = if dev_mode {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let host = http.host.unwrap_or(default_host);
    let on_network = !host.to_canonical().is_loopback();
    let opt_in = auth.local_defaults_on_network.unwrap_or(false);

    // The local stack's secret is published: on any interface but loopback it would let
    // anyone who can reach the port mint a token for any user.
    let local_stack = auth.has_no_key();
    if local_stack {
        if url.is_postgres() {
            return Err(ConfigError::new(
                vars::SUPABASE_JWT_SECRET,
                "with a Postgres DATABASE_URL set SUPABASE_JWT_SECRET or SUPABASE_URL (or both)",
            ));
        }
        if on_network && !opt_in {
            return Err(ConfigError::new(
                vars::SUPABASE_JWT_SECRET,
                format!(
                    "neither SUPABASE_JWT_SECRET nor SUPABASE_URL is set and HOST={host} is not loopback: set one of them, \
                     or HOST=127.0.0.1 to try the service locally (the Supabase CLI's published secret is used only on loopback; \
                     {INSECURE_LOCAL_DEFAULTS_ON_NETWORK}=on overrides this for a throwaway local container)"
                ),
            ));
        }
    }
    // The same secret set on purpose (a `.env` pasted from `supabase status` onto a server)
    // is just as public: refused off loopback whatever else is configured.
    if on_network
        && !opt_in
        && auth
            .jwt_secret
            .as_ref()
            .is_some_and(Secret::is_published_local_secret)
    {
        return Err(ConfigError::new(
            vars::SUPABASE_JWT_SECRET,
            format!(
                "is the Supabase CLI's published local secret, which anyone can sign tokens with, and HOST={host} is not loopback: \
                 set the project's own JWT secret (Dashboard > Project Settings > JWT Keys), or HOST=127.0.0.1 for the local stack \
                 ({INSECURE_LOCAL_DEFAULTS_ON_NETWORK}=on overrides this for a throwaway local container)"
            ),
        ));
    }

    let http = http.resolve(default_host)?;
    let telemetry = telemetry.resolve(is_terminal);
    // Metrics stay off the public port: sharing it would publish them, or fail to bind.
    if let Some(metrics) = telemetry.metrics_addr
        && metrics.port() != 0
        && metrics.port() == http.listen.port()
    {
        return Err(ConfigError::new(
            vars::METRICS_ADDR,
            "must use another port than PORT; metrics are never served on the public port",
        ));
    }
    Ok(Config {
        http,
        auth: auth.resolve(local_stack, dev_mode)?,
        db: db.resolve(url)?,
        telemetry,
    })
}

/// `on`/`off` (and `true`/`false`, `1`/`0`, `yes`/`no`), any case.
fn parse_switch(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::new(var, "must be on or off")),
    }
}

/// A number of seconds above 0, fractions allowed; the upper bound is checked with the value.
fn parse_seconds(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    raw.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v <= 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| ConfigError::new(var, "must be a number of seconds above 0"))
}

/// A duration above zero and at most `max` seconds.
fn check_seconds(var: &'static str, value: Duration, max: f64) -> Result<Duration, ConfigError> {
    if value.is_zero() || value.as_secs_f64() > max {
        return Err(ConfigError::new(
            var,
            format!("must be a number of seconds above 0 and at most {max}"),
        ));
    }
    Ok(value)
}

/// A whole number (its bounds are checked with the value).
fn parse_count<T: std::str::FromStr>(var: &'static str, raw: &str) -> Result<T, ConfigError> {
    raw.parse()
        .map_err(|_| ConfigError::new(var, "must be a whole number"))
}

/// A whole number from `min` to `max`.
fn check_count<T: PartialOrd + std::fmt::Display + Copy>(
    var: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            var,
            format!("must be a whole number from {min} to {max}"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg() -> ConfigBuilder {
        Config::builder()
            .database_url("postgres://app:hunter2@db.example.com:5432/postgres")
            .jwt_secret(&"x".repeat(40))
    }

    fn built(f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Result<Config, ConfigError> {
        f(pg()).build()
    }

    #[test]
    fn debug_shows_no_credential() {
        let config = Config::builder()
            .database_url("postgres://app:hunter2@db/x?password=hunter3")
            .direct_database_url("postgres://app:hunter4@db/x")
            .jwt_secret("jwt-secret-value-0123456789-abcdefghij")
            .build()
            .unwrap();
        let shown = format!("{config:?}");
        for secret in ["hunter2", "hunter3", "hunter4", "jwt-secret-value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    // Dev mode is the embedded store's.
    #[cfg(feature = "sqlite")]
    #[test]
    fn local_stack_keys_only_on_a_loopback_listener() {
        type Mutation = fn(ConfigBuilder) -> ConfigBuilder;
        let refused: Vec<(Mutation, &str)> = vec![
            (
                |b| b.var("HOST", "0.0.0.0"),
                "HOST=0.0.0.0, DATABASE_URL unset",
            ),
            (|b| b.var("HOST", "::"), "HOST=::"),
            (|b| b.var("HOST", "192.0.2.10"), "HOST=192.0.2.10"),
            (
                |b| b.database_url("sqlite://./data/app.db"),
                "explicit sqlite URL, HOST defaulting to 0.0.0.0",
            ),
            (
                |b| b.database_url("postgres://u:p@db/x").var("HOST", "0.0.0.0"),
                "postgres",
            ),
            (
                |b| {
                    b.database_url("postgres://u:p@db/x")
                        .insecure_local_defaults_on_network(true)
                },
                "postgres with the opt-in: still needs a key",
            ),
        ];
        for (mutate, case) in refused {
            let err = mutate(Config::builder()).build().unwrap_err();
            assert_eq!(err.var, "SUPABASE_JWT_SECRET", "{case}");
            let line = err.to_string();
            assert!(
                line.contains("SUPABASE_JWT_SECRET") && line.contains("SUPABASE_URL"),
                "{case}: {line}"
            );
            assert!(!line.contains('\n'), "{case}: {line}");
        }

        let allowed: Vec<Mutation> = vec![
            |b| b,
            |b| b.var("HOST", "127.0.0.1"),
            |b| b.var("HOST", "::1"),
            |b| b.var("HOST", "::ffff:127.0.0.1"),
            |b| {
                b.database_url("sqlite://./data/app.db")
                    .var("HOST", "127.0.0.1")
            },
            |b| {
                b.var("HOST", "0.0.0.0")
                    .insecure_local_defaults_on_network(true)
            },
        ];
        for mutate in allowed {
            let c = mutate(Config::builder()).build().unwrap();
            assert!(c.auth.local_stack_defaults);
            assert_eq!(c.auth.jwt_secret, Some(Secret::new(LOCAL_STACK_JWT_SECRET)));
        }

        // A key given: the listener is the operator's choice.
        let c = Config::builder()
            .var("HOST", "0.0.0.0")
            .supabase_url("https://abcd.supabase.co")
            .build()
            .unwrap();
        assert!(!c.auth.local_stack_defaults);
        let err = Config::builder()
            .supabase_url("https://abcd.supabase.co")
            .var("INSECURE_LOCAL_DEFAULTS_ON_NETWORK", "perhaps")
            .build()
            .unwrap_err();
        assert_eq!(err.var, INSECURE_LOCAL_DEFAULTS_ON_NETWORK);
    }

    #[test]
    fn the_published_secret_set_explicitly_serves_loopback_only() {
        let published = |host: &str, url: Option<&str>, opt_in: bool| {
            let b = Config::builder()
                .var("HOST", host)
                .database_url("postgres://app:pw@db.example.com:5432/postgres")
                .jwt_secret(LOCAL_STACK_JWT_SECRET)
                .insecure_local_defaults_on_network(opt_in);
            match url {
                Some(url) => b.supabase_url(url),
                None => b,
            }
            .build()
        };
        for (host, url) in [
            ("0.0.0.0", None),
            ("::", None),
            ("10.0.0.5", Some("https://abcd.supabase.co")),
        ] {
            let err = published(host, url, false).unwrap_err();
            assert_eq!(err.var, "SUPABASE_JWT_SECRET", "{host}");
            assert!(!err.to_string().contains(LOCAL_STACK_JWT_SECRET));
            assert!(!err.to_string().contains('\n'));
        }
        assert!(published("0.0.0.0", None, true).is_ok());
        assert!(published("127.0.0.1", None, false).is_ok());
        assert!(published("::1", None, false).is_ok());
    }

    #[cfg(not(feature = "sqlite"))]
    #[test]
    fn without_the_embedded_store_a_database_url_is_required() {
        for url in [
            None,
            Some("sqlite://./data/dev.db"),
            Some("sqlite::memory:"),
        ] {
            let b = Config::builder().jwt_secret(&"x".repeat(40));
            let b = match url {
                Some(url) => b.database_url(url),
                None => b,
            };
            let err = b.build().unwrap_err();
            assert_eq!(err.var, "DATABASE_URL", "{url:?}");
            assert!(err.problem.contains("`sqlite` feature"), "{err}");
        }
        assert!(pg().build().is_ok());
    }

    #[test]
    fn postgres_without_any_key_is_an_error_naming_the_variable() {
        let err = Config::builder()
            .database_url("postgres://app:pw@db.example.com:5432/postgres")
            .build()
            .unwrap_err();
        assert_eq!(err.var, "SUPABASE_JWT_SECRET");
    }

    #[test]
    fn postgres_binds_all_interfaces_by_default() {
        let c = pg().build().unwrap();
        assert_eq!(c.http.listen, "0.0.0.0:8080".parse().unwrap());
        assert!(!c.auth.key_set_optional);
        assert_eq!(c.auth.issuer, None);
    }

    #[test]
    fn issuer_derives_from_supabase_url_and_can_be_overridden() {
        let c = built(|b| b.supabase_url("https://abcd.supabase.co/")).unwrap();
        assert_eq!(
            c.auth.issuer.as_deref(),
            Some("https://abcd.supabase.co/auth/v1")
        );
        let c = built(|b| {
            b.supabase_url("https://abcd.supabase.co/")
                .issuer("https://other.example/auth/v1")
        })
        .unwrap();
        assert_eq!(
            c.auth.issuer.as_deref(),
            Some("https://other.example/auth/v1")
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("PORT", "eighty"),
            ("HOST", "not-an-ip"),
            ("DATABASE_URL", "mysql://x"),
            ("SUPABASE_URL", "abcd"),
            ("JWT_LEEWAY_SECONDS", "-1"),
            ("JWT_LEEWAY_SECONDS", "601"),
            ("CORS_ALLOWED_ORIGINS", "localhost:3000"),
            ("METRICS_ADDR", "9091"),
            ("DB_RLS", "maybe"),
            ("SERVER_TIMING", "sometimes"),
            ("HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("BODY_READ_TIMEOUT_SECONDS", "601"),
            ("DB_TIMEOUT_SECONDS", "61"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("JWT_CACHE_SIZE", "1000001"),
            ("JWT_CACHE_BYTES", "17179869185"),
            ("SUPABASE_JWT_SECRET", "short"),
        ];
        for (var, value) in cases {
            assert_eq!(
                built(|b| b.var(var, value)).unwrap_err().var,
                var,
                "{var}={value}"
            );
        }
        let err = built(|b| b.var("METRICS_ADDR", "0.0.0.0:8080")).unwrap_err();
        assert_eq!(err.var, "METRICS_ADDR");
        assert!(built(|b| b.var("NOT_A_SETTING", "1")).is_err());
    }

    #[test]
    fn typed_setters_meet_the_same_rules() {
        assert_eq!(
            built(|b| b.db_timeout(Duration::ZERO)).unwrap_err().var,
            "DB_TIMEOUT_SECONDS"
        );
        assert_eq!(
            built(|b| b.leeway(Duration::from_millis(1500)))
                .unwrap_err()
                .var,
            "JWT_LEEWAY_SECONDS"
        );
        assert_eq!(
            built(|b| b.allowed_roles(["anon"])).unwrap_err().var,
            "JWT_ALLOWED_ROLES"
        );
        assert_eq!(
            built(|b| b.db_max_connections(0)).unwrap_err().var,
            "DB_MAX_CONNECTIONS"
        );
    }

    #[test]
    fn short_secret_error_does_not_echo_it() {
        let err = built(|b| b.jwt_secret("tiny-secret")).unwrap_err();
        assert!(!err.to_string().contains("tiny-secret"));
    }

    #[test]
    fn defaults_are_the_readmes() {
        let c = pg().build().unwrap();
        assert!(!c.http.server_timing);
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(10));
        assert_eq!(c.auth.allowed_roles, ["authenticated"]);
        assert!(c.auth.allowed_client_ids.is_empty());
        assert_eq!(c.auth.leeway, Duration::from_secs(30));
        assert_eq!(
            (c.db.timeout, c.db.max_connections),
            (Duration::from_secs(3), 10)
        );
        assert_eq!(c.db.direct_url, c.db.url);
        assert_eq!(
            c.telemetry.metrics_addr,
            Some("127.0.0.1:9091".parse().unwrap())
        );
    }

    #[test]
    fn every_variable_has_a_setting_and_one_name() {
        let mut names: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARIABLES.len());
        for var in VARIABLES {
            assert_eq!(var.flag, var.name.to_ascii_lowercase().replace('_', "-"));
            // A value that is not valid for any setting: the error names this variable, so
            // every listed name reaches a parser.
            let err = Config::builder().var(var.name, "\u{1}bad").build();
            if let Err(e) = err {
                assert_ne!(e.var, "(unknown setting)", "{}", var.name);
            }
        }
    }
}
