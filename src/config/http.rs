//! [`HttpConfig`]: the public listener and the bounds on requests and connections.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderValue;
use reqwest::Url;

use super::vars::*;
use super::{ConfigError, check_count, check_seconds};

/// The public listener and the bounds on each request and connection.
///
/// ```
/// use supabase_jwt_service::Config;
///
/// let config = Config::builder()
///     .database_url("postgres://app:pw@db.example.com:5432/postgres")
///     .jwt_secret("a-project-jwt-secret-of-at-least-32-characters")
///     .cors_allowed_origins(["https://app.example.com"])
///     .build()?;
/// assert_eq!(config.http.listen.to_string(), "0.0.0.0:8080");
/// assert_eq!(config.http.cors_origins, ["https://app.example.com"]);
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpConfig {
    /// `HOST` and `PORT`.
    pub listen: SocketAddr,
    /// `CORS_ALLOWED_ORIGINS`, normalised (`*` allows any); empty: no cross-origin access.
    pub cors_origins: Vec<HeaderValue>,
    /// `REQUEST_TIMEOUT_SECONDS`: the bound on one request.
    pub request_timeout: Duration,
    /// `SHUTDOWN_TIMEOUT_SECONDS`: how long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// `HEADER_READ_TIMEOUT_SECONDS`: how long a client may take to send a request's headers
    /// (also how long an idle keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// `BODY_READ_TIMEOUT_SECONDS`: how long a client may take to send a request's body once a
    /// handler reads it; past it the answer is 408 `request_timeout`.
    pub body_read_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: connections served at once.
    pub max_connections: usize,
    /// `SERVER_TIMING`: answer with a `Server-Timing` header. Off by default: it tells anyone
    /// how long our database and verification take, which is for debugging, not the public.
    pub server_timing: bool,
}

/// The typed settings of this part, before defaults and rules.
#[derive(Debug, Clone, Default)]
pub(super) struct HttpSettings {
    pub(super) host: Option<IpAddr>,
    pub(super) port: Option<u16>,
    pub(super) cors_origins: Option<Vec<HeaderValue>>,
    pub(super) request_timeout: Option<Duration>,
    pub(super) shutdown_timeout: Option<Duration>,
    pub(super) header_read_timeout: Option<Duration>,
    pub(super) body_read_timeout: Option<Duration>,
    pub(super) max_connections: Option<usize>,
    pub(super) server_timing: Option<bool>,
}

impl HttpSettings {
    /// Defaults and each value's own bounds; `default_host` comes from the rules that span parts.
    pub(super) fn resolve(self, default_host: IpAddr) -> Result<HttpConfig, ConfigError> {
        let seconds = |var, value: Option<Duration>, default: u64| {
            check_seconds(var, value.unwrap_or(Duration::from_secs(default)), 600.0)
        };
        Ok(HttpConfig {
            listen: SocketAddr::new(self.host.unwrap_or(default_host), self.port.unwrap_or(8080)),
            cors_origins: self.cors_origins.unwrap_or_default(),
            request_timeout: seconds(REQUEST_TIMEOUT_SECONDS, self.request_timeout, 10)?,
            shutdown_timeout: seconds(SHUTDOWN_TIMEOUT_SECONDS, self.shutdown_timeout, 10)?,
            header_read_timeout: seconds(
                HEADER_READ_TIMEOUT_SECONDS,
                self.header_read_timeout,
                10,
            )?,
            body_read_timeout: seconds(BODY_READ_TIMEOUT_SECONDS, self.body_read_timeout, 10)?,
            max_connections: check_count(
                HTTP_MAX_CONNECTIONS,
                self.max_connections.unwrap_or(4096),
                1,
                1_000_000,
            )?,
            server_timing: self.server_timing.unwrap_or(false),
        })
    }
}

/// `HOST`: an IP address, brackets allowed around IPv6.
pub(super) fn parse_host(raw: &str) -> Result<IpAddr, ConfigError> {
    raw.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| ConfigError::new(HOST, "must be an IP address such as 0.0.0.0 or ::"))
}

/// `PORT`.
pub(super) fn parse_port(raw: &str) -> Result<u16, ConfigError> {
    raw.parse()
        .map_err(|_| ConfigError::new(PORT, "must be a port number from 0 to 65535"))
}

/// `CORS_ALLOWED_ORIGINS`: a comma-separated list of origins.
pub(super) fn parse_origins<'a>(
    list: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<HeaderValue>, ConfigError> {
    list.into_iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_origin)
        .collect()
}

fn parse_origin(raw: &str) -> Result<HeaderValue, ConfigError> {
    if raw == "*" {
        return Ok(HeaderValue::from_static("*"));
    }
    let url = Url::parse(raw).map_err(|_| {
        ConfigError::new(
            CORS_ALLOWED_ORIGINS,
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
            CORS_ALLOWED_ORIGINS,
            format!("`{raw}` is not an origin (scheme://host[:port], no path)"),
        ));
    }
    // Browsers send the origin without a trailing slash; compare in that exact form.
    HeaderValue::from_str(raw.trim_end_matches('/')).map_err(|_| {
        ConfigError::new(
            CORS_ALLOWED_ORIGINS,
            format!("`{raw}` is not a valid header value"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_normalised() {
        let origins = parse_origins(["http://localhost:3000/, https://app.example.com"]).unwrap();
        assert_eq!(
            origins,
            ["http://localhost:3000", "https://app.example.com"]
        );
        for bad in ["localhost:3000", "https://a.example/path", "ftp://x"] {
            let err = parse_origins([bad]).unwrap_err();
            assert_eq!(err.var, CORS_ALLOWED_ORIGINS, "{bad}");
        }
    }

    #[test]
    fn hosts_take_brackets_and_ports_are_numbers() {
        assert_eq!(parse_host("[::1]").unwrap().to_string(), "::1");
        assert_eq!(parse_host("not-an-ip").unwrap_err().var, HOST);
        assert_eq!(parse_port("eighty").unwrap_err().var, PORT);
    }
}
