//! `GET /name` and `PUT /name`: the caller's display name.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use crate::auth::Claims;
use crate::db::Db;
use crate::error::ApiError;
use crate::extract::ValidUser;
use crate::profile::{self, MAX_NAME_CHARS};
use crate::state::AppState;

/// What a wrong `PUT /name` body is told.
const NAME_RULE: &str = "expected a JSON object {\"full_name\": string or null}, at most 200 characters, no control characters";

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
    State(db): State<Db>,
    claims: Claims,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<NameResponse>, ApiError> {
    let full_name = parse_name_body(body)?;
    match profile::set_full_name(&claims, &db, full_name.as_deref()).await? {
        Some(row) => Ok(Json(NameResponse {
            full_name: row.full_name,
        })),
        None => Err(ApiError::ProfileNotFound),
    }
}

/// Checks the body: `{"full_name": string or null}` and nothing else; the string is trimmed,
/// at most [`MAX_NAME_CHARS`] characters, without control characters; blank becomes null.
fn parse_name_body(body: Result<Json<Value>, JsonRejection>) -> Result<Option<String>, ApiError> {
    let invalid = || ApiError::invalid_body(NAME_RULE);
    let Json(value) =
        body.map_err(
            |rejection| match crate::extract::json_rejection(&rejection) {
                e if e.code() == "invalid_body" => invalid(),
                e => e,
            },
        )?;
    let Value::Object(mut object) = value else {
        return Err(invalid());
    };
    if object.len() != 1 {
        return Err(invalid());
    }
    match object.remove("full_name") {
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let trimmed = s.trim();
            if trimmed.chars().count() > MAX_NAME_CHARS || trimmed.chars().any(char::is_control) {
                return Err(invalid());
            }
            Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
        }
        _ => Err(invalid()),
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
            assert_eq!(parse(v), Err(ApiError::invalid_body(NAME_RULE)));
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
            Err(ApiError::invalid_body(NAME_RULE))
        );
        assert_eq!(
            parse(json!({"full_name": "a\u{0007}b"})),
            Err(ApiError::invalid_body(NAME_RULE))
        );
    }
}
