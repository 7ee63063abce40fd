//! [`Json`], [`Path`] and [`Query`]: axum's extractors, rejecting with the contract's JSON
//! errors instead of plain text; and the deadline on reading a request's body.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Sleep;

use crate::error::ApiError;

/// A JSON request body (and a JSON answer), like `axum::Json`, whose rejections are the
/// contract's: 415 `unsupported_media_type` without `Content-Type: application/json`, 413
/// `payload_too_large` over the body limit, 408 `request_timeout` when the body does not arrive
/// within `BODY_READ_TIMEOUT_SECONDS`, and 422 `invalid_body` saying what did not parse.
///
/// ```
/// use axum::http::StatusCode;
/// use serde::Deserialize;
/// use supabase_jwt_service::{ApiError, Claims, Json};
///
/// #[derive(Deserialize)]
/// struct NewNote {
///     body: String,
/// }
///
/// async fn create(_claims: Claims, Json(note): Json<NewNote>) -> Result<StatusCode, ApiError> {
///     if note.body.trim().is_empty() {
///         return Err(ApiError::invalid_body("`body` must not be blank"));
///     }
///     Ok(StatusCode::CREATED)
/// }
/// # let _: axum::routing::MethodRouter<supabase_jwt_service::AppState> = axum::routing::post(create);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The contract's answer for a body axum could not take as JSON.
pub(crate) fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            ApiError::invalid_body(format!(
                "the body is not the JSON this route expects: {}",
                serde_detail(&rejection.body_text())
            ))
        }
        other => body_rejection(other, other.status()),
    }
}

/// A body that could not be read: too large, too slow, or cut off.
fn body_rejection(error: &(dyn std::error::Error + 'static), status: StatusCode) -> ApiError {
    if caused_by_deadline(error) {
        ApiError::RequestTimeout
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::custom(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        )
    }
}

/// axum's text for a serde failure starts with its own sentence; keep serde's part.
fn serde_detail(text: &str) -> &str {
    text.split_once(": ").map_or(text, |(_, detail)| detail)
}

fn caused_by_deadline(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyDeadline>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Path parameters, like `axum::extract::Path`, whose rejection is 404 `not_found` naming
/// what did not parse: a path that names nothing (an id that is not a UUID, say).
///
/// ```
/// use supabase_jwt_service::{ApiError, Claims, Path};
///
/// async fn note(_claims: Claims, Path(id): Path<uuid::Uuid>) -> Result<String, ApiError> {
///     Err(ApiError::not_found(format!("no note {id}")))
/// }
/// # let _: axum::routing::MethodRouter<supabase_jwt_service::AppState> = axum::routing::get(note);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match <axum::extract::Path<T> as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
        {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::not_found(path_detail(e.kind())))
            }
            Err(e) => {
                tracing::error!(error = %e, "Path used on a route without those parameters");
                Err(ApiError::Internal)
            }
        }
    }
}

/// What a path that does not parse names: the parameter and the type it should have been,
/// short (`no such resource: \`id\` must be a Uuid`), without axum's whole sentence.
fn path_detail(kind: &axum::extract::path::ErrorKind) -> String {
    use axum::extract::path::ErrorKind;
    let short = |ty: &str| ty.rsplit("::").next().unwrap_or(ty).to_owned();
    match kind {
        ErrorKind::ParseErrorAtKey {
            key, expected_type, ..
        } => format!(
            "no such resource: `{key}` must be a {}",
            short(expected_type)
        ),
        ErrorKind::ParseError { expected_type, .. } => {
            format!(
                "no such resource: the path must hold a {}",
                short(expected_type)
            )
        }
        _ => "no such resource: the path does not parse".to_owned(),
    }
}

/// The query string, like `axum::extract::Query`, whose rejection is 400 `invalid_query`
/// saying what did not parse.
///
/// ```
/// use serde::Deserialize;
/// use supabase_jwt_service::{Claims, Query};
///
/// #[derive(Deserialize)]
/// struct Page {
///     before: Option<String>,
/// }
///
/// async fn messages(_claims: Claims, Query(page): Query<Page>) -> String {
///     page.before.unwrap_or_default()
/// }
/// # let _: axum::routing::MethodRouter<supabase_jwt_service::AppState> = axum::routing::get(messages);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match <axum::extract::Query<T> as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
        {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::Custom {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_query",
                message: format!(
                    "the query string is not what this route expects: {}",
                    serde_detail(&rejection.body_text())
                )
                .into(),
            }),
        }
    }
}

/// `None` when the query string is absent or empty.
impl<T, S> OptionalFromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.uri.query().is_none_or(str::is_empty) {
            return Ok(None);
        }
        <Self as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// The error a request body gives when it has not arrived within `BODY_READ_TIMEOUT_SECONDS`
/// of the first read.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyDeadline(Duration);

/// `body`, failing with [`BodyDeadline`] once `limit` has passed since it was first read: a
/// client that announces a body and trickles it (or never sends it) is answered 408 instead of
/// holding the request until its timeout. The clock starts at the first read, so a handler
/// that first waits for something else does not eat into it.
pub(crate) fn deadline_body(body: Body, limit: Duration) -> Body {
    Body::new(DeadlineBody {
        inner: body,
        limit,
        sleep: None,
    })
}

struct DeadlineBody {
    inner: Body,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let limit = this.limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyDeadline(limit)))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_detail_drops_axums_sentence() {
        assert_eq!(
            serde_detail(
                "Failed to deserialize the JSON body into the target type: missing field `body` at line 1 column 2"
            ),
            "missing field `body` at line 1 column 2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_fails_with_the_deadline() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body = deadline_body(Body::from_stream(stream), Duration::from_secs(5));
        tx.send(Ok(Bytes::from_static(b"{\"bo")))
            .await
            .expect("send");
        // The sender stays, so the body neither ends nor fails by itself.
        let err = axum::body::to_bytes(body, 1024)
            .await
            .expect_err("deadline");
        assert!(caused_by_deadline(&err), "{err}");
        drop(tx);
    }
}
