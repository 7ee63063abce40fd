//! The HTTP layer: the middleware stack every route of an [`App`](crate::App) runs inside,
//! the JSON fallbacks, and the built-in routes.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::config::HttpConfig;
use crate::error::ApiError;
use crate::extract::{deadline_body, settle_transaction};
use crate::state::AppState;
use crate::telemetry;

pub(crate) mod health;
mod me;
mod name;
mod plain_errors;

/// Largest request body accepted (`PUT /name` needs a few hundred bytes).
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// The service's profile routes, `GET /name`, `PUT /name` and `GET /me`, without middleware
/// (see [`App::with_profile_routes`](crate::App::with_profile_routes)).
pub(crate) fn profile_routes() -> Router<AppState> {
    Router::new().merge(name::routes()).merge(me::routes())
}

/// Puts `routes` (every route of the app, merged already) inside the middleware stack and
/// gives them `state`. The stack goes on last: a layer wraps only the routes that exist when
/// it is added.
pub(crate) fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let config = state.config().http.clone();
    let request_timeout = config.request_timeout;
    let body_read_timeout = config.body_read_timeout;
    let db = state.db().clone();
    // Outermost first. Everything runs after routing, so spans and metrics see the matched path.
    let middleware =
        ServiceBuilder::new()
            // Marks Authorization and cookies as sensitive so no layer below can log their values.
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
            ]))
            .layer(middleware::from_fn(no_store_when_authorized))
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    .on_request(())
                    .on_response(log_response)
                    // Our completion line already carries every status; a second, ERROR-level
                    // line for each 503 would bury real errors during a database outage.
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(middleware::from_fn(record_metrics))
            .option_layer(
                config
                    .server_timing
                    .then(|| middleware::from_fn(add_server_timing)),
            )
            // Outside the timeout, panic and handler layers: error answers carry CORS headers too,
            // so a browser can read a 401 instead of reporting a network error.
            .option_layer(cors_layer(&config))
            .layer(middleware::from_fn::<_, (Request,)>(
                move |req: Request, next: Next| bound_request(request_timeout, req, next),
            ))
            // Any error answer that is not ours yet (a plain-text rejection of an axum extractor
            // in your handler) becomes the contract's JSON shape.
            .layer(middleware::from_fn(plain_errors::as_json))
            // Outside the panic layer, so a panic's 500 rolls the handler's transaction back.
            .layer(middleware::from_fn::<_, (Request,)>(
                move |req: Request, next: Next| settle_transaction(db.clone(), req, next),
            ))
            .layer(CatchPanicLayer::custom(
                |_panic: Box<dyn std::any::Any + Send>| {
                    tracing::error!("handler panicked");
                    ApiError::Internal.into_response()
                },
            ))
            .layer(middleware::from_fn(refuse_oversized_body))
            .layer(middleware::map_request::<_, (Request,)>(
                move |req: Request| async move {
                    req.map(|body| deadline_body(body, body_read_timeout))
                },
            ))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    routes
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware)
        .with_state(state)
}

/// An answer to a request that carried `Authorization` is that caller's alone, whatever its
/// status: `Cache-Control: no-store` and `Vary: Authorization` keep a CDN or browser cache from
/// handing it to anyone else. It sits outside every layer that answers on its own (timeout,
/// panic, CORS), so their answers carry the headers too.
async fn no_store_when_authorized(req: Request, next: Next) -> Response {
    let authorized = req.headers().contains_key(header::AUTHORIZATION);
    let mut response = next.run(req).await;
    if authorized {
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let varies = headers.get_all(header::VARY).iter().any(|value| {
            value.to_str().is_ok_and(|list| {
                list.split(',').map(str::trim).any(|name| {
                    name == "*" || name.eq_ignore_ascii_case(header::AUTHORIZATION.as_str())
                })
            })
        });
        if !varies {
            headers.append(header::VARY, HeaderValue::from_static("Authorization"));
        }
    }
    response
}

/// The request span: method, matched route and request id; never the URI's query, never headers.
fn make_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id,
        user.id = tracing::field::Empty,
    )
}

/// The one log line per request, at INFO inside the request span (so it carries method,
/// route, request id and user id): status, latency in milliseconds, and our error code if any.
fn log_response<B>(response: &axum::http::Response<B>, latency: Duration, _span: &tracing::Span) {
    let error_code = response.extensions().get::<ApiError>().map(|e| e.code());
    // Microsecond precision is plenty, and keeps JSON lines short.
    let latency_ms = (latency.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms,
        error.code = error_code,
        "request completed"
    );
}

/// Counts the request by method, matched route (or `unmatched`) and status, and times it.
/// It sits outside the timeout and panic layers, so their 503s and 500s are counted too.
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    telemetry::metrics::http_request(
        &method,
        route.as_deref(),
        response.status(),
        started.elapsed(),
    );
    response
}

/// `SERVER_TIMING=on`: adds `Server-Timing: auth;dur=…, db;dur=…, total;dur=…`.
async fn add_server_timing(req: Request, next: Next) -> Response {
    let (mut response, value) = telemetry::server_timing::measure(next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("server-timing"), value);
    }
    response
}

/// Answers 503 `unavailable` when a request runs past `REQUEST_TIMEOUT_SECONDS`.
async fn bound_request(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?limit, "request timed out");
            ApiError::Unavailable.into_response()
        }
    }
}

/// Answers 413 at once when the declared `Content-Length` is over [`MAX_BODY_BYTES`]. The body
/// limit alone only trips once that many bytes arrive, so a client announcing a huge body and
/// sending none would hold its request until the request timeout.
async fn refuse_oversized_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::PayloadTooLarge.into_response();
    }
    next.run(req).await
}

fn cors_layer(config: &HttpConfig) -> Option<CorsLayer> {
    if config.cors_origins.is_empty() {
        return None;
    }
    let allow_origin = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.cors_origins.clone())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            // Your own routes through `App` use more than the built-in GET and PUT.
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::WWW_AUTHENTICATE,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}
