//! `/healthz` (the process serves) and `/readyz` (the store answers, keys are loaded).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use crate::auth::Verifier;
use crate::db::Db;
use crate::error::ApiError;
use crate::state::{AppState, ShutdownFlag};

/// How long a healthy probe of the store answers `/readyz` before the next one runs.
pub(crate) const READY_PROBE_MAX_AGE: Duration = Duration::from_secs(1);

/// Health routes. `/readyz` shares one [`Readiness`] among its requests.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route(
        "/readyz",
        get(readyz).layer(Extension(Arc::new(Readiness::default()))),
    )
}

/// Liveness: answers while the process serves. Touches no dependency, so a database outage
/// never makes the platform restart a healthy process.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 503 while shutting down, while the store does not answer, or (with
/// `SUPABASE_URL`) before the key set has loaded once. The store's answer comes from
/// [`Readiness`], so a flood of `/readyz` (it needs no token) costs the pool at most one
/// connection at a time. Needs the `Extension<Arc<Readiness>>` that [`routes`] adds.
pub(crate) async fn readyz(
    State(db): State<Db>,
    State(verifier): State<Arc<Verifier>>,
    State(shutdown): State<ShutdownFlag>,
    State(state): State<AppState>,
    Extension(readiness): Extension<Arc<Readiness>>,
) -> Result<Json<Value>, ApiError> {
    if shutdown.is_shutting_down() {
        return Err(ApiError::Unavailable);
    }
    if !readiness.store_answers(&db).await {
        return Err(ApiError::Unavailable);
    }
    // In dev mode the local stack's key set is optional (HS256 works without it).
    let keys_loaded = verifier.key_set().map(|k| k.is_ready());
    if keys_loaded == Some(false) && !state.config().auth.key_set_optional {
        tracing::warn!("readiness: key set not loaded yet");
        return Err(ApiError::Unavailable);
    }
    Ok(Json(
        json!({"status": "ready", "store": db.store_name(), "key_set_loaded": keys_loaded}),
    ))
}

/// The store's last readiness probe, shared by `/readyz` requests: at most one probe runs at a
/// time, and requests that arrive meanwhile take its result. One per router, shared by every
/// readiness request it serves.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    last: Mutex<Option<Probe>>,
    /// Held for the length of one probe; requests queue on it instead of on the pool.
    probing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    finished: Instant,
    answered: bool,
    /// Counts finished probes, so a request that waited for one knows it has a new answer.
    generation: u64,
}

impl Readiness {
    /// Whether the store answers: a healthy result under [`READY_PROBE_MAX_AGE`] old is reused;
    /// otherwise one probe runs, and every request waiting for it takes its result. A failure
    /// is not reused past the requests that waited for it, so a recovered store shows at once.
    pub(crate) async fn store_answers(&self, db: &Db) -> bool {
        let seen = match self.last() {
            Some(p) if p.answered && p.finished.elapsed() < READY_PROBE_MAX_AGE => return true,
            Some(p) => p.generation,
            None => 0,
        };
        let _turn = self.probing.lock().await;
        if let Some(p) = self.last()
            && p.generation != seen
        {
            return p.answered;
        }
        // A failure was recorded (logged and counted) by the database layer.
        let answered = match db.ping().await {
            Ok(()) => true,
            Err(_) => {
                tracing::debug!("readiness: store not answering");
                false
            }
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Probe {
            finished: Instant::now(),
            answered,
            generation: seen + 1,
        });
        answered
    }

    fn last(&self) -> Option<Probe> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
