//! The `ValidUser` extractor (and a claims-only variant) over any state that provides a
//! [`Verifier`] and a [`UserStore`].

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{AuthError, Claims, Profile, Verifier, bearer};
use crate::config::Config;
use crate::error::ApiError;
use crate::store::{UserRow, UserStore};
use crate::telemetry::{metrics, server_timing};

/// A signed-in user: verified claims and their profile, the service's `users` row by default
/// or a [`Profile`] of your own (`ValidUser<MyProfile>`). Rejects with the contract's errors
/// (401/403/400, 404 `profile_not_found`, 503 `unavailable`).
#[derive(Debug, Clone)]
pub struct ValidUser<P = UserRow> {
    /// The verified token's claims.
    pub claims: Claims,
    /// The caller's profile row.
    pub profile: P,
}

/// Verifies the request's bearer token, caching the result in the request extensions so a
/// handler asking twice (or for both extractors) verifies once.
async fn verified_claims<S>(parts: &mut Parts, state: &S) -> Result<Claims, AuthError>
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    if let Some(cached) = parts.extensions.get::<Result<Claims, AuthError>>() {
        return cached.clone();
    }
    let started = Instant::now();
    let result = match bearer::token(&parts.headers) {
        Ok(token) => Arc::<Verifier>::from_ref(state).verify(token).await,
        Err(e) => Err(e),
    };
    server_timing::add_auth(started.elapsed());
    // Verification ends here, once per request (the result is cached below), so this is the
    // one place each outcome is counted.
    match &result {
        Ok(claims) => {
            metrics::auth_outcome("ok");
            tracing::Span::current().record("user.id", tracing::field::display(claims.sub));
        }
        Err(e) => {
            metrics::auth_outcome(e.reason());
            tracing::debug!(target: "supabase_jwt_service::auth", reason = e.reason(), "token rejected");
        }
    }
    parts.extensions.insert(result.clone());
    result
}

impl<S> FromRequestParts<S> for Claims
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(verified_claims(parts, state).await?)
    }
}

impl<S> OptionalFromRequestParts<S> for Claims
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    /// `None` only when no `Authorization` header is sent; a bad token is still rejected.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Ok(None);
        }
        Ok(Some(verified_claims(parts, state).await?))
    }
}

impl<S, P: Profile> FromRequestParts<S> for ValidUser<P>
where
    Arc<Verifier>: FromRef<S>,
    Arc<dyn UserStore>: FromRef<S>,
    Arc<Config>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = verified_claims(parts, state).await?;
        let store = Arc::<dyn UserStore>::from_ref(state);
        let config = Arc::<Config>::from_ref(state);
        match P::load(&claims, &*store, &config).await? {
            Some(profile) => Ok(ValidUser { claims, profile }),
            None => Err(ApiError::ProfileNotFound),
        }
    }
}

impl<S, P: Profile> OptionalFromRequestParts<S> for ValidUser<P>
where
    Arc<Verifier>: FromRef<S>,
    Arc<dyn UserStore>: FromRef<S>,
    Arc<Config>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    /// `None` only when no `Authorization` header is sent; a bad token is still rejected.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Ok(None);
        }
        <ValidUser<P> as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// Logs a store failure at the level it deserves (an ended session is the client's business,
/// an outage is the operator's) and counts an outage in `db_errors_total`. Every store error
/// that reaches an answer passes through here once, so this is the one place that counts it.
pub(crate) fn log_store_error(e: &crate::store::StoreError) {
    match e {
        crate::store::StoreError::SessionEnded => {
            tracing::debug!(target: "supabase_jwt_service::auth", reason = "session_ended", "token rejected");
        }
        crate::store::StoreError::Unavailable(cause) => {
            let kind = e.kind().unwrap_or("other");
            crate::telemetry::metrics::db_error(kind);
            tracing::warn!(target: "supabase_jwt_service::store", kind, reason = %cause, "store unavailable");
        }
    }
}
