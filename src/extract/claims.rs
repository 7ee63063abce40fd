//! The caller: [`Claims`] from the bearer token, and [`ValidUser`], the caller with their
//! profile, over any state that provides a [`Verifier`] (and a [`Db`] for the profile).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::auth::{AuthError, Claims, Verifier, bearer};
use crate::db::Db;
use crate::error::ApiError;
use crate::profile::{Profile, UserRow};
use crate::telemetry::{metrics, server_timing};

/// A signed-in user: verified claims and their profile, the service's `users` row by default
/// or a [`Profile`] of your own (`ValidUser<MyProfile>`). Rejects with the contract's errors
/// (401/403/400, 404 `profile_not_found`, 503 `unavailable`).
///
/// ```
/// use supabase_jwt_service::ValidUser;
///
/// async fn greeting(user: ValidUser) -> String {
///     let name = user.profile.full_name.as_deref().unwrap_or("there");
///     format!("hello {name} ({})", user.claims.sub)
/// }
/// # let _: axum::routing::MethodRouter<supabase_jwt_service::AppState> = axum::routing::get(greeting);
/// ```
#[derive(Debug, Clone)]
pub struct ValidUser<P = UserRow> {
    /// The verified token's claims.
    pub claims: Claims,
    /// The caller's profile row.
    pub profile: P,
}

/// Verifies the request's bearer token, caching the result in the request extensions so a
/// handler asking twice (or for several extractors) verifies once.
pub(crate) async fn verified_claims<S>(parts: &mut Parts, state: &S) -> Result<Claims, AuthError>
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

/// The verified caller: 401 `missing_token` without a bearer token, 401 `invalid_token` (or
/// 403 `insufficient_scope`) for one that is not a user's valid access token.
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

/// `None` only when no `Authorization` header is sent; a bad token is still rejected.
impl<S> OptionalFromRequestParts<S> for Claims
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

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
    Db: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = verified_claims(parts, state).await?;
        let db = Db::from_ref(state);
        match P::load(&claims, &db).await? {
            Some(profile) => Ok(ValidUser { claims, profile }),
            None => Err(ApiError::ProfileNotFound),
        }
    }
}

/// `None` only when no `Authorization` header is sent; a bad token is still rejected.
impl<S, P: Profile> OptionalFromRequestParts<S> for ValidUser<P>
where
    Arc<Verifier>: FromRef<S>,
    Db: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

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
