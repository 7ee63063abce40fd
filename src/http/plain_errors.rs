//! The last guard of the error shape: an error answer that is not an [`ApiError`] yet, in
//! plain text (an axum extractor's rejection in a handler of yours: `String` that is not UTF-8,
//! `Form`, `Extension`, axum's own `Json` or `Path`), becomes the contract's
//! `{"error", "message"}` with a code for its status. The crate's extractors already answer in
//! that shape; this catches the rest, so no route of an `App` answers an error in another.

use std::borrow::Cow;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Longest plain-text error body carried over as the message; axum's rejections are one short
/// sentence. A longer body (or a streamed one) is left as it is.
const MAX_TEXT_BYTES: usize = 1024;

pub(super) async fn as_json(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let plain_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<ApiError>().is_some()
        || !plain_text
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        // Too long to be a rejection: keep its status, drop its text.
        Err(_) => String::new(),
    };
    let mut answer = error_for(status, text).into_response();
    // Headers the original answer set for the client (`Allow`, `Retry-After`) stay.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    answer
}

/// The contract's code for a status, with the original sentence (or the code's own) as message.
fn error_for(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => return ApiError::InvalidToken,
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::SERVICE_UNAVAILABLE => return ApiError::Unavailable,
        s if s.is_server_error() => {
            // A 500 of a handler says nothing to the client beyond "internal".
            return ApiError::Internal;
        }
        _ => "bad_request",
    };
    let message: Cow<'static, str> = if text.trim().is_empty() {
        Cow::Borrowed(status.canonical_reason().unwrap_or("error"))
    } else {
        Cow::Owned(text.trim().to_owned())
    };
    ApiError::Custom {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_keep_their_status_and_sentence() {
        let e = error_for(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected request with `Content-Type: application/json`".into(),
        );
        assert_eq!(e.code(), "unsupported_media_type");
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message().contains("Content-Type"));
        assert_eq!(
            error_for(StatusCode::INTERNAL_SERVER_ERROR, "x".into()),
            ApiError::Internal
        );
        let e = error_for(StatusCode::IM_A_TEAPOT, String::new());
        assert_eq!((e.code(), e.message()), ("bad_request", "I'm a teapot"));
    }
}
