//! [`App`]: your routes and the built-in ones behind one middleware stack, ready to serve.

use axum::Router;

use crate::http;
use crate::state::AppState;

/// The finished application: the built-in `/healthz` and `/readyz`, the routes you merge, and,
/// once you call [`into_router`](Self::into_router) or [`serve`](crate::serve), the service's
/// whole middleware stack around all of them: sensitive `Authorization` and cookies, request
/// id, trace span and log line, metrics by matched route, `Server-Timing`, CORS from
/// `CORS_ALLOWED_ORIGINS`, `REQUEST_TIMEOUT_SECONDS`, a JSON 500 on a panic, the body limit
/// and `BODY_READ_TIMEOUT_SECONDS`, the [`Tx`](crate::Tx) layer, JSON 404 and 405 fallbacks, and
/// every error answer in the contract's JSON shape.
///
/// The stack is applied last, after every merge: a `Router::layer` reaches only the routes
/// that exist when it is called, which is why routes merged into a finished router used to
/// miss it.
///
/// ```
/// use axum::{Router, routing::get};
/// use supabase_jwt_service::{App, AppState, Claims, Config};
///
/// async fn hello(claims: Claims) -> String {
///     format!("hello {}", claims.sub)
/// }
///
/// # #[cfg(feature = "sqlite")] // the embedded store
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let db = format!("sqlite://{}/dev.db", dir.path().display());
/// // Loopback: the local stack's published secret is refused on any other address.
/// let config = Config::builder()
///     .database_url(&db)
///     .listen(([127, 0, 0, 1], 0).into())
///     .metrics_addr(None)
///     .build()?;
/// let state = AppState::build(config).await?;
/// let mine: Router<AppState> = Router::new().route("/hello", get(hello));
/// let app = App::new(state).with_profile_routes().merge(mine);
/// let router = app.into_router(); // or `serve(listener, app, shutdown)`
/// # drop(router);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct App {
    state: AppState,
    routes: Router<AppState>,
}

impl App {
    /// An app with the built-in `/healthz` and `/readyz`.
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            routes: http::health::routes(),
        }
    }

    /// Adds the service's own profile routes: `GET /name`, `PUT /name`, `GET /me`.
    pub fn with_profile_routes(self) -> Self {
        self.merge(http::profile_routes())
    }

    /// Adds your routes. Panics, as [`Router::merge`] does, if a path is already taken.
    pub fn merge(mut self, routes: Router<AppState>) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// The state every route receives.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The routes inside the whole stack, with their state: for `tower::ServiceExt::oneshot`
    /// in tests, or for a server of your own (which then lacks [`serve`](crate::serve)'s
    /// connection limits).
    pub fn into_router(self) -> Router {
        http::finish(self.routes, self.state)
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}
