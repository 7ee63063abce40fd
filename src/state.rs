//! [`AppState`]: what every route of an [`App`](crate::App) receives, and the pieces handlers
//! and extractors take from it over `FromRef`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::FromRef;

use crate::auth::Verifier;
use crate::config::Config;
use crate::db::Db;

/// Set when shutdown begins, so `/readyz` turns 503 while in-flight requests drain.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShutdownFlag(Arc<AtomicBool>);

impl ShutdownFlag {
    /// Marks shutdown as begun.
    pub(crate) fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether shutdown has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a request may need: the configuration, the token verifier and the database.
/// Cheap to clone. Handlers take a piece with `State<Db>`, `State<Arc<Verifier>>` or
/// `State<Arc<Config>>`, or the whole with `State<AppState>`. Its `Debug` shows the
/// configuration (URLs masked, secret redacted), never a credential.
///
/// ```
/// use axum::extract::State;
/// use supabase_jwt_service::{ApiError, AppState, Claims};
///
/// async fn later(State(state): State<AppState>, claims: Claims) -> Result<&'static str, ApiError> {
///     let db = state.db().clone();
///     tokio::spawn(async move {
///         if let Ok(tx) = db.begin_as(&claims).await {
///             let _ = tx.commit().await;
///         }
///     });
///     Ok("accepted")
/// }
/// # let _: axum::routing::MethodRouter<AppState> = axum::routing::post(later);
/// ```
#[derive(Clone, FromRef)]
pub struct AppState {
    config: Arc<Config>,
    verifier: Arc<Verifier>,
    db: Db,
    shutdown: ShutdownFlag,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("verifier", &self.verifier)
            .field("db", &self.db.store_name())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state from parts you built yourself: a [`Verifier`] over a key set of your own
    /// (fixed keys, another refetch cooldown), or a [`Db`] you opened. `build` is the usual
    /// way; this one checks nothing.
    pub fn from_parts(config: Config, verifier: Arc<Verifier>, db: Db) -> Self {
        Self {
            config: Arc::new(config),
            verifier,
            db,
            shutdown: ShutdownFlag::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database: the pool the built-in routes use, for
    /// [`Db::begin_as`](crate::Db::begin_as) outside a handler's [`Tx`](crate::Tx) (a task
    /// that outlives the request, say).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    pub(crate) fn shutdown(&self) -> &ShutdownFlag {
        &self.shutdown
    }
}
