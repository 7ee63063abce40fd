//! Shared application state, and the pieces handlers and extractors take from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::FromRef;

use crate::auth::Verifier;
use crate::config::Config;
use crate::store::UserStore;

/// Set when shutdown begins, so `/readyz` turns 503 while in-flight requests drain.
#[derive(Debug, Clone, Default)]
pub struct ShutdownFlag(Arc<AtomicBool>);

impl ShutdownFlag {
    /// Marks shutdown as begun.
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a request may need. Cheap to clone. Its `Debug` shows the configuration (URLs
/// masked, secret redacted) and the verifier, never a credential.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Token verifier (keys and claim rules).
    pub verifier: Arc<Verifier>,
    /// Profile store.
    pub store: Arc<dyn UserStore>,
    /// Shutdown signal for readiness.
    pub shutdown: ShutdownFlag,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("verifier", &self.verifier)
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The database behind the store, the pool the built-in routes use: for
    /// [`Db::begin_as`](crate::Db::begin_as) outside a handler's [`Tx`](crate::Tx) (a task
    /// that outlives the request, say) and for start-up work such as your own migrations.
    /// 500 `internal`, logged, for a store backed by neither Postgres nor SQLite.
    pub fn db(&self) -> Result<crate::Db, crate::ApiError> {
        crate::Db::of(&*self.store)
    }
}
