//! `ApiError`: one variant per row of the contract's error table, its JSON response, and every
//! conversion into it (`From` the auth, database and sqlx errors), so handlers use `?`.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::db::DbError;

/// Seconds a client should wait before retrying a 503.
pub(crate) const RETRY_AFTER_SECONDS: u32 = 2;

/// Every error the HTTP API can answer, as the contract's error table lists them, in one JSON
/// shape: `{"error": CODE, "message": TEXT}`, with `WWW-Authenticate` on the auth rows and
/// `Retry-After` on 503 and 429. Return it from your handlers (`?` converts the crate's errors
/// and `sqlx::Error`); the crate's extractors reject with it.
///
/// ```
/// use axum::http::StatusCode;
/// use supabase_jwt_service::ApiError;
///
/// let missing = ApiError::not_found("no such note");
/// assert_eq!((missing.status(), missing.code()), (StatusCode::NOT_FOUND, "not_found"));
/// assert_eq!(missing.message(), "no such note");
/// let locked = ApiError::custom(StatusCode::CONFLICT, "note_locked", "this note is locked");
/// assert_eq!(locked.code(), "note_locked");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// No such route. For a missing resource of your own, [`ApiError::not_found`] says which.
    NotFound,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// The body is not JSON of the expected shape, or breaks a field rule. For the rule it
    /// broke, [`ApiError::invalid_body`] says which.
    InvalidBody,
    /// 408 `request_timeout`: the body did not arrive within `BODY_READ_TIMEOUT_SECONDS`.
    RequestTimeout,
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
        /// The human-readable sentence.
        message: Cow<'static, str>,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    message: &'a str,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope => StatusCode::FORBIDDEN,
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::ProfileNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidBody => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnavailableFor(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::Custom { status, .. } => *status,
        }
    }

    /// The stable `error` code clients branch on.
    pub fn code(&self) -> &'static str {
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
            Self::RequestTimeout => "request_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Internal => "internal",
            Self::RateLimited(_) => "rate_limited",
            Self::UpstreamError => "upstream_error",
            Self::Custom { code, .. } => code,
        }
    }

    /// A human-readable sentence: fixed per code for the crate's rows (internal reasons go to
    /// logs only), yours for [`ApiError::custom`], [`not_found`](Self::not_found) and
    /// [`invalid_body`](Self::invalid_body).
    pub fn message(&self) -> &str {
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
            Self::InvalidBody => "the body is not the JSON this route expects",
            Self::RequestTimeout => "the request body did not arrive in time",
            Self::UnsupportedMediaType => "send the body as Content-Type: application/json",
            Self::PayloadTooLarge => "the request body is larger than 16 KiB",
            Self::Internal => "internal error",
            Self::RateLimited(_) => "too many requests; retry after the time in Retry-After",
            Self::UpstreamError => "an upstream service refused the request",
            Self::Custom { message, .. } => message,
        }
    }

    /// An answer of your own in the error shape (see [`ApiError::Custom`]); `message` may be a
    /// `&'static str` (then this is a `const`) or a `String`.
    pub const fn custom(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self::Custom {
            status,
            code,
            message: Cow::Borrowed(message),
        }
    }

    /// 404 `not_found` for a resource of yours that does not exist (or that row-level security
    /// hides), saying which.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Custom {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    /// 422 `invalid_body` saying which rule the body broke.
    pub fn invalid_body(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Custom {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_body",
            message: message.into(),
        }
    }

    /// The `Retry-After` seconds this answer carries, if any.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Self::Unavailable => Some(RETRY_AFTER_SECONDS),
            Self::UnavailableFor(seconds) | Self::RateLimited(seconds) => Some((*seconds).max(1)),
            _ => None,
        }
    }

    /// The RFC 6750 `WWW-Authenticate` challenge, for the auth rows.
    fn challenge(&self) -> Option<&'static str> {
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
        // For the request's log line (`error.code`), and so the stack knows it is ours.
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
        // A transaction that begins on first use fails inside the query that began it; the
        // database layer recorded the failure already.
        if let Some(db) = DbError::inside(&e) {
            return Self::from_db(db);
        }
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

/// An auth failure answers the contract's row for it; the reason stays in logs and metrics.
impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::MissingToken,
            AuthError::DuplicateHeader => ApiError::InvalidRequest,
            AuthError::KeySetUnavailable => ApiError::Unavailable,
            AuthError::NotUserToken | AuthError::RoleNotAllowed | AuthError::ClientNotAllowed => {
                ApiError::InsufficientScope
            }
            _ => ApiError::InvalidToken,
        }
    }
}

/// A database failure: an outage is 503 `unavailable`, an ended session 401 `invalid_token`,
/// a route written for the other store 500 `internal` (the database layer logged why).
impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        Self::from_db(&e)
    }
}

impl ApiError {
    fn from_db(e: &DbError) -> Self {
        match e {
            DbError::SessionEnded => AuthError::SessionEnded.into(),
            DbError::WrongStore { .. } => ApiError::Internal,
            _ => ApiError::Unavailable,
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
        let e = ApiError::not_found(format!("no note {}", 7));
        assert_eq!(
            (e.status(), e.code(), e.message()),
            (StatusCode::NOT_FOUND, "not_found", "no note 7")
        );
    }

    #[test]
    fn an_unknown_kid_is_401_and_only_an_unreachable_key_set_503() {
        assert_eq!(
            ApiError::from(AuthError::UnknownKid),
            ApiError::InvalidToken
        );
        assert_eq!(
            ApiError::from(AuthError::KeySetUnavailable),
            ApiError::Unavailable
        );
    }

    #[test]
    fn database_errors_answer_their_rows_even_through_sqlx() {
        assert_eq!(
            ApiError::from(DbError::SessionEnded),
            ApiError::InvalidToken
        );
        let wrapped = DbError::SessionEnded.into_sqlx();
        assert_eq!(ApiError::from(wrapped), ApiError::InvalidToken);
        let outage = DbError::unavailable(sqlx::Error::PoolTimedOut).into_sqlx();
        assert_eq!(ApiError::from(outage), ApiError::Unavailable);
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
