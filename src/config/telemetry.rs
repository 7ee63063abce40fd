//! [`TelemetryConfig`]: log format and the metrics listener.

use std::net::{Ipv4Addr, SocketAddr};

use super::ConfigError;
use super::vars::*;

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logs and metrics.
///
/// ```
/// use supabase_jwt_service::Config;
/// use supabase_jwt_service::config::LogFormat;
///
/// let config = Config::builder()
///     .database_url("postgres://app:pw@db.example.com:5432/postgres")
///     .jwt_secret("a-project-jwt-secret-of-at-least-32-characters")
///     .log_format(LogFormat::Json)
///     .metrics_addr(None)
///     .build()?;
/// assert_eq!(config.telemetry.log_format, LogFormat::Json);
/// assert_eq!(config.telemetry.metrics_addr, None);
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `METRICS_ADDR`: the Prometheus listener, never the public port; `None` for none.
    pub metrics_addr: Option<SocketAddr>,
}

/// The typed settings of this part, before defaults.
#[derive(Debug, Clone, Default)]
pub(super) struct TelemetrySettings {
    pub(super) log_format: Option<LogFormat>,
    pub(super) metrics_addr: Option<Option<SocketAddr>>,
}

impl TelemetrySettings {
    /// Defaults: pretty logs on a terminal, JSON elsewhere; metrics on loopback port 9091.
    pub(super) fn resolve(self, is_terminal: bool) -> TelemetryConfig {
        TelemetryConfig {
            log_format: self.log_format.unwrap_or(if is_terminal {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            }),
            metrics_addr: self
                .metrics_addr
                .unwrap_or(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9091)))),
        }
    }
}

/// `LOG_FORMAT`: `pretty` (or `text`) or `json`, any case.
pub(super) fn parse_log_format(raw: &str) -> Result<LogFormat, ConfigError> {
    match raw.to_ascii_lowercase().as_str() {
        "pretty" | "text" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err(ConfigError::new(LOG_FORMAT, "must be pretty or json")),
    }
}

/// `METRICS_ADDR`: `host:port`, or `off`.
pub(super) fn parse_metrics_addr(raw: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        ConfigError::new(
            METRICS_ADDR,
            "must be host:port such as 127.0.0.1:9091, or off",
        )
    })
}
