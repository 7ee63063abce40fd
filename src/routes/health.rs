//! `/healthz` (the process serves) and `/readyz` (the store answers, keys are loaded).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::auth::Verifier;
use crate::error::ApiError;
use crate::state::{AppState, ShutdownFlag};
use crate::store::UserStore;

/// Health routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness: answers while the process serves. Touches no dependency, so a database outage
/// never makes the platform restart a healthy process.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 503 while shutting down, while the store does not answer, or (with
/// `SUPABASE_URL`) before the key set has loaded once.
pub async fn readyz(
    State(store): State<Arc<dyn UserStore>>,
    State(verifier): State<Arc<Verifier>>,
    State(shutdown): State<ShutdownFlag>,
    State(config): State<Arc<crate::config::Config>>,
) -> Result<Json<Value>, ApiError> {
    if shutdown.is_shutting_down() {
        return Err(ApiError::Unavailable);
    }
    if let Err(e) = store.ping().await {
        tracing::warn!(error = %e, "readiness: store not answering");
        return Err(ApiError::Unavailable);
    }
    // In dev mode the local stack's key set is optional (HS256 works without it).
    let keys_loaded = verifier.key_set().map(|k| k.is_ready());
    if keys_loaded == Some(false) && !config.dev_mode {
        tracing::warn!("readiness: key set not loaded yet");
        return Err(ApiError::Unavailable);
    }
    Ok(Json(
        json!({"status": "ready", "store": store.kind(), "key_set_loaded": keys_loaded}),
    ))
}
