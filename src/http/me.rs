//! `GET /me`: the verified user, profile joined.

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::UserId;
use crate::extract::ValidUser;
use crate::state::AppState;

/// Routes for `/me`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/me", get(get_me))
}

/// The `/me` answer: identity from the verified token, profile fields from `users`.
#[derive(Debug, Serialize)]
pub(super) struct Me {
    id: UserId,
    email: Option<String>,
    phone: Option<String>,
    role: String,
    aal: Option<String>,
    session_id: Option<Uuid>,
    is_anonymous: bool,
    full_name: Option<String>,
    avatar_url: Option<String>,
}

/// Answers the caller's identity and profile.
pub(super) async fn get_me(user: ValidUser) -> Json<Me> {
    let ValidUser { claims, profile } = user;
    Json(Me {
        id: claims.sub,
        email: claims.email,
        phone: claims.phone,
        role: claims.role,
        aal: claims.aal,
        session_id: claims.session_id,
        is_anonymous: claims.is_anonymous,
        full_name: profile.full_name,
        avatar_url: profile.avatar_url,
    })
}
