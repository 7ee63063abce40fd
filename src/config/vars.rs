//! The settings' variables, named once: [`VARIABLES`] is what `Config::from_env` reads and what
//! the binary turns into `--flags`, and each part's parser names its errors with these names.

/// One setting as the environment (and the command line) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Variable {
    /// The environment variable, e.g. `DATABASE_URL`.
    pub name: &'static str,
    /// The same setting as a command-line flag, without the dashes: `database-url`.
    pub flag: &'static str,
    /// One line for `--help`, with the default in brackets.
    pub help: &'static str,
}

macro_rules! variables {
    ($($konst:ident = $name:literal, $flag:literal: $help:literal;)*) => {
        $(pub(crate) const $konst: &str = $name;)*
        /// Every setting, in the README table's order.
        ///
        /// ```
        /// use supabase_jwt_service::config::VARIABLES;
        ///
        /// let db = VARIABLES.iter().find(|v| v.name == "DATABASE_URL").expect("listed");
        /// assert_eq!(db.flag, "database-url");
        /// ```
        pub const VARIABLES: &[Variable] = &[$(Variable { name: $name, flag: $flag, help: $help }),*];
    };
}

variables! {
    HOST = "HOST", "host": "Address to listen on [default: 0.0.0.0, or 127.0.0.1 on the embedded store]";
    PORT = "PORT", "port": "Port to listen on [default: 8080]";
    INSECURE_LOCAL_DEFAULTS_ON_NETWORK = "INSECURE_LOCAL_DEFAULTS_ON_NETWORK", "insecure-local-defaults-on-network":
        "Let the Supabase CLI's published local secret serve on a non-loopback HOST, for a throwaway local container only: on|off [default: off]";
    DATABASE_URL = "DATABASE_URL", "database-url": "postgres://… (production) or sqlite://… [default: sqlite://./data/dev.db]";
    DIRECT_DATABASE_URL = "DIRECT_DATABASE_URL", "direct-database-url": "Direct (non-pooled) connection used by migrations [default: DATABASE_URL]";
    SUPABASE_JWT_SECRET = "SUPABASE_JWT_SECRET", "supabase-jwt-secret": "The project's legacy HS256 JWT secret";
    SUPABASE_URL = "SUPABASE_URL", "supabase-url": "Project URL, e.g. https://abcd.supabase.co: sets issuer and key set URL";
    JWT_AUDIENCE = "JWT_AUDIENCE", "jwt-audience": "Required `aud` claim [default: authenticated]";
    JWT_ISSUER = "JWT_ISSUER", "jwt-issuer": "Expected `iss` claim [default: <SUPABASE_URL>/auth/v1]";
    JWT_LEEWAY_SECONDS = "JWT_LEEWAY_SECONDS", "jwt-leeway-seconds": "Clock skew allowed on exp/nbf/iat, in seconds [default: 30]";
    JWT_ALLOWED_ROLES = "JWT_ALLOWED_ROLES", "jwt-allowed-roles": "Comma-separated `role` claims accepted as users [default: authenticated]";
    JWT_ALLOWED_CLIENT_IDS = "JWT_ALLOWED_CLIENT_IDS", "jwt-allowed-client-ids": "Comma-separated OAuth client ids whose tokens are accepted [default: none]";
    CORS_ALLOWED_ORIGINS = "CORS_ALLOWED_ORIGINS", "cors-allowed-origins": "Comma-separated browser origins allowed to call the API [default: none]";
    METRICS_ADDR = "METRICS_ADDR", "metrics-addr": "Prometheus listener address, or `off` [default: 127.0.0.1:9091]";
    LOG_FORMAT = "LOG_FORMAT", "log-format": "`pretty` or `json` [default: pretty on a terminal, json otherwise]";
    DB_RLS = "DB_RLS", "db-rls": "Row-level security per request on Postgres: on|off [default: on]";
    DB_PREPARED_STATEMENTS = "DB_PREPARED_STATEMENTS", "db-prepared-statements": "Named prepared statements: auto|on|off [default: auto]";
    SESSION_CHECK = "SESSION_CHECK", "session-check": "Reject tokens whose session was logged out: on|off [default: off]";
    DB_TIMEOUT_SECONDS = "DB_TIMEOUT_SECONDS", "db-timeout-seconds": "Upper bound on one database call, pool wait included, in seconds [default: 3]";
    DB_MAX_CONNECTIONS = "DB_MAX_CONNECTIONS", "db-max-connections": "Maximum database connections [default: 10]";
    REQUEST_TIMEOUT_SECONDS = "REQUEST_TIMEOUT_SECONDS", "request-timeout-seconds": "Upper bound on one request, in seconds [default: 10]";
    SHUTDOWN_TIMEOUT_SECONDS = "SHUTDOWN_TIMEOUT_SECONDS", "shutdown-timeout-seconds": "How long shutdown waits for in-flight requests, in seconds [default: 10]";
    SERVER_TIMING = "SERVER_TIMING", "server-timing": "Add a `Server-Timing` header (auth and database time) to responses: on|off [default: off]";
    JWT_CACHE_SIZE = "JWT_CACHE_SIZE", "jwt-cache-size": "Verified tokens remembered until they expire; 0 turns the cache off [default: 4096]";
    JWT_CACHE_BYTES = "JWT_CACHE_BYTES", "jwt-cache-bytes": "Memory the verified-token cache may use, in bytes; 0 turns the cache off [default: 16777216]";
    HEADER_READ_TIMEOUT_SECONDS = "HEADER_READ_TIMEOUT_SECONDS", "header-read-timeout-seconds": "How long a client may take to send a request's headers, in seconds [default: 10]";
    BODY_READ_TIMEOUT_SECONDS = "BODY_READ_TIMEOUT_SECONDS", "body-read-timeout-seconds": "How long a client may take to send a request's body once its handler reads it, in seconds [default: 10]";
    HTTP_MAX_CONNECTIONS = "HTTP_MAX_CONNECTIONS", "http-max-connections": "Most HTTP connections served at once; past it new ones wait to be accepted [default: 4096]";
}
