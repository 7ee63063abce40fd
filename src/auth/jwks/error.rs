//! [`KeySetError`]: why the key set could not be fetched, with its metric label.

use super::MAX_BODY_BYTES;

/// Why the key set could not be fetched (or refreshed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// The request did not complete: connection refused, timeout, TLS, reset.
    #[error("request failed: {0}")]
    Request(String),
    /// The server answered with a non-success status.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body is not a JWK set (`{"keys": [...]}`).
    #[error("not a JWK set: {0}")]
    Document(String),
    /// The body is larger than a key set has any reason to be.
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// No answer in time (the HTTP client's timeouts, or the fetch limit).
    #[error("no answer in time")]
    Timeout,
    /// No background task fetches this key set (created outside a Tokio runtime).
    #[error("no refresher is running for this key set")]
    NotRunning,
    /// A key set built from fixed keys; it is never fetched.
    #[error("this key set has fixed keys and is never fetched")]
    Fixed,
}

impl KeySetError {
    /// A fixed label for the `jwks_fetches_total` counter.
    pub(super) fn metric_label(&self) -> &'static str {
        match self {
            Self::Request(_) => "error",
            Self::Status(_) => "http_error",
            Self::Document(_) | Self::TooLarge => "invalid",
            Self::Timeout => "timeout",
            Self::NotRunning | Self::Fixed => "not_fetched",
        }
    }
}
