//! `ApiError`: one variant per row of the contract's error table, and its JSON response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Seconds a client should wait before retrying a 503.
pub(crate) const RETRY_AFTER_SECONDS: u32 = 2;

/// Every error the HTTP API can answer, as the contract's error table lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// No `Authorization` header, or not the Bearer scheme.
    MissingToken,
    /// The token failed verification (malformed, signature, claims, unknown key).
    InvalidToken,
    /// A valid token that is not a user's access token (anon or service_role key).
    InsufficientScope,
    /// The request itself is ambiguous, e.g. two `Authorization` headers.
    InvalidRequest,
    /// Verified user, but no `users` row.
    ProfileNotFound,
    /// A dependency (store or key set) is unavailable; try again shortly.
    Unavailable,
    /// No such route.
    NotFound,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// The body is not JSON of the expected shape, or breaks a field rule.
    InvalidBody,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The body is over the size limit.
    PayloadTooLarge,
    /// A bug: the handler panicked. Never expected; logged at error level.
    Internal,
    /// 503 `unavailable` with `Retry-After` set to this many seconds: for when the wait is
    /// known (an upstream's own `Retry-After`).
    UnavailableFor(u32),
    /// 429 `rate_limited`: the caller is over a quota; `Retry-After` says when to try again.
    RateLimited(u32),
    /// 502 `upstream_error`: a service this one calls refused the request.
    UpstreamError,
    /// Any other answer in the same `{"error", "message"}` shape, for your own routes: for
    /// example `ApiError::custom(StatusCode::CONFLICT, "note_locked", "this note is locked")`.
    Custom {
        /// The HTTP status.
        status: StatusCode,
        /// The stable `error` code.
        code: &'static str,
        /// The fixed human-readable sentence.
        message: &'static str,
    },
}

#[derive(Serialize)]
struct Body {
    error: &'static str,
    message: &'static str,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope => StatusCode::FORBIDDEN,
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::ProfileNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidBody => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnavailableFor(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::Custom { status, .. } => status,
        }
    }

    /// The stable `error` code clients branch on.
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::InvalidRequest => "invalid_request",
            Self::ProfileNotFound => "profile_not_found",
            Self::Unavailable | Self::UnavailableFor(_) => "unavailable",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidBody => "invalid_body",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Internal => "internal",
            Self::RateLimited(_) => "rate_limited",
            Self::UpstreamError => "upstream_error",
            Self::Custom { code, .. } => code,
        }
    }

    /// A human-readable sentence. Deliberately fixed per code: internal reasons go to logs only.
    pub fn message(self) -> &'static str {
        match self {
            Self::MissingToken => "send the user's access token as `Authorization: Bearer <token>`",
            Self::InvalidToken => "the access token is invalid or expired; sign in again",
            Self::InsufficientScope => "this token is not a signed-in user's access token",
            Self::InvalidRequest => "send exactly one Authorization header",
            Self::ProfileNotFound => "no profile exists for this user",
            Self::Unavailable | Self::UnavailableFor(_) => {
                "the service is temporarily unavailable; retry shortly"
            }
            Self::NotFound => "no such route",
            Self::MethodNotAllowed => "method not allowed on this route",
            Self::InvalidBody => {
                "expected a JSON object {\"full_name\": string or null}, at most 200 characters, no control characters"
            }
            Self::UnsupportedMediaType => "send the body as Content-Type: application/json",
            Self::PayloadTooLarge => "the request body is larger than 16 KiB",
            Self::Internal => "internal error",
            Self::RateLimited(_) => "too many requests; retry after the time in Retry-After",
            Self::UpstreamError => "an upstream service refused the request",
            Self::Custom { message, .. } => message,
        }
    }

    /// An answer of your own in the error shape (see [`ApiError::Custom`]).
    pub const fn custom(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self::Custom {
            status,
            code,
            message,
        }
    }

    /// The `Retry-After` seconds this answer carries, if any.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Self::Unavailable => Some(RETRY_AFTER_SECONDS),
            Self::UnavailableFor(seconds) | Self::RateLimited(seconds) => Some(seconds.max(1)),
            _ => None,
        }
    }

    /// The RFC 6750 `WWW-Authenticate` challenge, for the auth rows.
    fn challenge(self) -> Option<&'static str> {
        match self {
            Self::MissingToken => Some("Bearer"),
            Self::InvalidToken => Some("Bearer error=\"invalid_token\""),
            Self::InsufficientScope => Some("Bearer error=\"insufficient_scope\""),
            Self::InvalidRequest => Some("Bearer error=\"invalid_request\""),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code(),
            message: self.message(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge() {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response.extensions_mut().insert(self);
        response
    }
}

/// For `?` on your own queries in handlers. A database that cannot answer now (connection
/// lost, pool exhausted, the server's `statement_timeout`, a serialization conflict) is 503
/// `unavailable`, which clients retry; a row-level security refusal is 403 `forbidden`; a
/// unique or foreign-key violation is 409 `conflict`; anything else is a bug in the query,
/// logged at error level and answered 500 `internal`. The error's text (never the SQL or its
/// values) goes to the log only.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => {
                tracing::warn!(target: "supabase_jwt_service::store", error = %e, "database unavailable");
                ApiError::Unavailable
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // query_canceled (statement_timeout), serialization_failure, deadlock_detected,
                // and class 08 / 57P: the connection or the server went away.
                Some("57014" | "40001" | "40P01" | "57P01" | "57P02" | "57P03")
                | Some("08000" | "08003" | "08006") => {
                    tracing::warn!(target: "supabase_jwt_service::store", error = %e, "database unavailable");
                    ApiError::Unavailable
                }
                Some("42501") => {
                    tracing::debug!(target: "supabase_jwt_service::store", error = %e, "refused by row-level security");
                    ApiError::custom(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "row-level security does not allow this for the caller",
                    )
                }
                Some("23505" | "23503") => {
                    tracing::debug!(target: "supabase_jwt_service::store", error = %e, "constraint violation");
                    ApiError::custom(
                        StatusCode::CONFLICT,
                        "conflict",
                        "the change conflicts with existing data",
                    )
                }
                _ => {
                    tracing::error!(target: "supabase_jwt_service::store", error = %e, "query failed");
                    ApiError::Internal
                }
            },
            _ => {
                tracing::error!(target: "supabase_jwt_service::store", error = %e, "query failed");
                ApiError::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_retry_after() {
        let r = ApiError::Unavailable.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn known_waits_and_quotas_carry_their_own_retry_after() {
        let r = ApiError::UnavailableFor(17).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "17");
        let r = ApiError::RateLimited(0).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers()[header::RETRY_AFTER],
            "1",
            "never ask for a wait of 0"
        );
        assert_eq!(ApiError::RateLimited(5).code(), "rate_limited");
    }

    #[test]
    fn custom_answers_use_the_same_shape() {
        let e = ApiError::custom(StatusCode::CONFLICT, "note_locked", "this note is locked");
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::CONFLICT, "note_locked")
        );
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn database_errors_map_to_retry_or_bug() {
        assert_eq!(
            ApiError::from(sqlx::Error::PoolTimedOut),
            ApiError::Unavailable
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ApiError::from(sqlx::Error::Io(refused)),
            ApiError::Unavailable
        );
        assert_eq!(ApiError::from(sqlx::Error::RowNotFound), ApiError::Internal);
    }

    #[test]
    fn invalid_token_carries_rfc6750_challenge() {
        let r = ApiError::InvalidToken.into_response();
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
    }

    #[test]
    fn missing_token_challenge_has_no_error_code() {
        let r = ApiError::MissingToken.into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
