//! `GET /name` and `PUT /name`: the caller's display name.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use crate::auth::extractor::log_store_error;
use crate::auth::{Claims, ValidUser};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::UserStore;

/// Longest accepted `full_name`, in characters (matches the table's check constraint).
pub(super) const MAX_NAME_CHARS: usize = 200;

/// Routes for `/name`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/name", get(get_name).put(put_name))
}

/// The `/name` answer.
#[derive(Debug, Serialize)]
pub(super) struct NameResponse {
    full_name: Option<String>,
}

/// Answers the caller's `full_name`.
pub(super) async fn get_name(user: ValidUser) -> Json<NameResponse> {
    Json(NameResponse {
        full_name: user.profile.full_name,
    })
}

/// Updates the caller's own `full_name` (under row-level security on Postgres).
pub(super) async fn put_name(
    State(store): State<Arc<dyn UserStore>>,
    claims: Claims,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<NameResponse>, ApiError> {
    let full_name = parse_name_body(body)?;
    match store.set_full_name(&claims, full_name.as_deref()).await {
        Ok(Some(row)) => Ok(Json(NameResponse {
            full_name: row.full_name,
        })),
        Ok(None) => Err(ApiError::ProfileNotFound),
        Err(e) => {
            log_store_error(&e);
            Err(e.into())
        }
    }
}

/// Checks the body: `{"full_name": string or null}` and nothing else; the string is trimmed,
/// at most [`MAX_NAME_CHARS`] characters, without control characters; blank becomes null.
fn parse_name_body(body: Result<Json<Value>, JsonRejection>) -> Result<Option<String>, ApiError> {
    let Json(value) = body.map_err(|rejection| match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::InvalidBody,
    })?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::InvalidBody);
    };
    if object.len() != 1 {
        return Err(ApiError::InvalidBody);
    }
    match object.remove("full_name") {
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let trimmed = s.trim();
            if trimmed.chars().count() > MAX_NAME_CHARS || trimmed.chars().any(char::is_control) {
                return Err(ApiError::InvalidBody);
            }
            Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
        }
        _ => Err(ApiError::InvalidBody),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Option<String>, ApiError> {
        parse_name_body(Ok(Json(v)))
    }

    #[test]
    fn name_is_trimmed_and_blank_is_null() {
        assert_eq!(
            parse(json!({"full_name": "  Ada  "})),
            Ok(Some("Ada".into()))
        );
        assert_eq!(parse(json!({"full_name": "   "})), Ok(None));
        assert_eq!(parse(json!({"full_name": null})), Ok(None));
    }

    #[test]
    fn wrong_shapes_are_invalid_body() {
        for v in [
            json!([]),
            json!("x"),
            json!({}),
            json!({"full_name": 3}),
            json!({"full_name": "a", "x": 1}),
        ] {
            assert_eq!(parse(v), Err(ApiError::InvalidBody));
        }
    }

    #[test]
    fn long_or_control_names_are_invalid_body() {
        assert_eq!(
            parse(json!({"full_name": "é".repeat(200)})),
            Ok(Some("é".repeat(200)))
        );
        assert_eq!(
            parse(json!({"full_name": "é".repeat(201)})),
            Err(ApiError::InvalidBody)
        );
        assert_eq!(
            parse(json!({"full_name": "a\u{0007}b"})),
            Err(ApiError::InvalidBody)
        );
    }
}
