//! Token verification: the key and algorithm come from our configuration, never from the token.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::cache::{KeyRef, Lookup, TokenCache};
use super::claims::Claims;
use super::jwks::{KeySet, KeySetError};
use crate::config::{AuthConfig, PROJECT_KEY_ROLES};
use crate::telemetry::metrics;

/// Why a request was not authenticated. Internal: the response shows only the mapped
/// [`ApiError`](crate::ApiError); the reason goes to logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, or another scheme.
    #[error("no bearer token")]
    Missing,
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    DuplicateHeader,
    /// Not a well-formed JWT (shape, base64, JSON, claim types, bounds).
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with the chosen key.
    #[error("bad signature")]
    BadSignature,
    /// The token's `alg` is not one we accept for the key it names (or at all).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No `kid`, or one the key set does not have although its latest fetch succeeded (inside
    /// the unknown-`kid` refetch cooldown too, when that fetch is seconds old).
    #[error("unknown key id")]
    UnknownKid,
    /// The `kid` is unknown and the key set cannot be fetched: no fetch has succeeded yet, or
    /// the latest failed. The only key-set answer that is a 503.
    #[error("key set unavailable")]
    KeySetUnavailable,
    /// `exp` is in the past (beyond leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future (beyond leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    #[error("issued in the future")]
    IssuedInFuture,
    /// `aud` does not contain the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `sub` missing or not a UUID.
    #[error("bad subject")]
    BadSubject,
    /// Signed by the project, but not a user's token: no `role`, or a project API key's
    /// (`anon`, `service_role`).
    #[error("not a user token")]
    NotUserToken,
    /// A user's token whose `role` (set by a Custom Access Token Hook) is not in
    /// `JWT_ALLOWED_ROLES`.
    #[error("role not allowed")]
    RoleNotAllowed,
    /// An access token issued to a third-party OAuth client (`client_id`) that
    /// `JWT_ALLOWED_CLIENT_IDS` does not list.
    #[error("OAuth client not allowed")]
    ClientNotAllowed,
    /// `SESSION_CHECK=on` and the token's session was logged out or has expired.
    #[error("session ended")]
    SessionEnded,
}

impl AuthError {
    /// A stable label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::DuplicateHeader => "duplicate_header",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKid => "unknown_kid",
            Self::KeySetUnavailable => "key_set_unavailable",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::BadSubject => "bad_subject",
            Self::NotUserToken => "not_user_token",
            Self::RoleNotAllowed => "role_not_allowed",
            Self::ClientNotAllowed => "client_not_allowed",
            Self::SessionEnded => "session_ended",
        }
    }
}

/// Verifies access tokens: HS256 with the project's secret, and ES256/RS256/EdDSA with the
/// key set's key of the token's `kid`.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    key_set: Option<Arc<KeySet>>,
    audience: String,
    issuer: Option<String>,
    leeway: u64,
    allowed_roles: Vec<String>,
    allowed_client_ids: Vec<uuid::Uuid>,
    cache: TokenCache,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.as_ref().map(|_| "[redacted]"))
            .field("key_set", &self.key_set.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("allowed_roles", &self.allowed_roles)
            .field("allowed_client_ids", &self.allowed_client_ids)
            .finish()
    }
}

impl Verifier {
    /// The verifier `auth` describes: HS256 with its secret, and, with a key set URL, the
    /// project's key set, fetched in the background from now on (call it inside a Tokio
    /// runtime) with a client bounded in time that follows redirects only on the key set's
    /// own origin.
    ///
    /// ```
    /// use supabase_jwt_service::Config;
    /// use supabase_jwt_service::auth::Verifier;
    ///
    /// let config = Config::builder()
    ///     .database_url("postgres://app:pw@db.example.com:5432/postgres")
    ///     .jwt_secret("a-project-jwt-secret-of-at-least-32-characters")
    ///     .build()?;
    /// let verifier = Verifier::from_config(&config.auth)?;
    /// assert!(verifier.key_set().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config(auth: &AuthConfig) -> Result<Self, KeySetError> {
        let key_set = match &auth.jwks_url {
            Some(url) => Some(KeySet::new(url.clone(), key_set_client()?)),
            None => None,
        };
        Ok(Self::new(auth, key_set))
    }

    /// The verifier for `auth` with the key set you built (for example
    /// [`KeySet::from_jwks_json`] for fixed keys), or none.
    ///
    /// Also installs jsonwebtoken's aws-lc-rs crypto provider for the process, unless one is
    /// installed already: jsonwebtoken otherwise picks its backend from Cargo features, and an
    /// application that links this crate and enables `rust_crypto` too would make every
    /// verification panic.
    pub fn new(auth: &AuthConfig, key_set: Option<Arc<KeySet>>) -> Self {
        install_crypto_provider();
        Self {
            hs256: auth
                .jwt_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            key_set,
            audience: auth.audience.clone(),
            issuer: auth.issuer.clone(),
            leeway: auth.leeway.as_secs(),
            allowed_roles: auth.allowed_roles.clone(),
            allowed_client_ids: auth.allowed_client_ids.clone(),
            cache: TokenCache::new(auth.token_cache_size, auth.token_cache_bytes),
        }
    }

    /// How many verified tokens the cache holds now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// The verified-token cache, for the crate's tests.
    #[cfg(test)]
    pub(crate) fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The key set, when `SUPABASE_URL` is configured.
    pub fn key_set(&self) -> Option<&Arc<KeySet>> {
        self.key_set.as_ref()
    }

    /// Verifies `token` and returns its claims when it is a valid user access token.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if !self.cache.enabled() {
            return self.verify_uncached(token).await.map(|(claims, _)| claims);
        }
        let cache_key = match self.cache.get(token, now) {
            Lookup::Hit(claims, None) => {
                metrics::jwt_cache_lookup("hit");
                return Ok(claims);
            }
            Lookup::Hit(claims, Some(key)) => {
                if self
                    .key_set
                    .as_ref()
                    .and_then(|k| k.thumbprint(&key.kid))
                    .is_some_and(|current| current == key.thumbprint)
                {
                    metrics::jwt_cache_lookup("hit");
                    return Ok(claims);
                }
                // The key that verified it left the set, or its kid now names other material:
                // the token is no longer trusted; verify afresh.
                self.cache.remove(token);
                None
            }
            Lookup::Miss(key) => Some(key),
        };
        metrics::jwt_cache_lookup("miss");
        let (claims, kid) = self.verify_uncached(token).await?;
        if let Some(key) = cache_key {
            self.cache.insert(
                key,
                &claims,
                claims.exp.saturating_add(self.leeway),
                kid,
                now,
            );
        }
        Ok(claims)
    }

    async fn verify_uncached(&self, token: &str) -> Result<(Claims, Option<KeyRef>), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        // RFC 7515 section 4.1.11: a token naming header extensions the recipient must
        // understand is invalid unless it does. We understand none (Supabase sets none), and
        // jsonwebtoken reads `crit` without enforcing it.
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        // The header only says which of *our* keys to try; each key verifies one algorithm.
        let owned_key;
        let mut key_ref = None;
        let (key, alg) = match header.alg {
            // Supabase puts a `kid` on legacy HS256 tokens too; it names nothing we use.
            Algorithm::HS256 => (
                self.hs256.as_ref().ok_or(AuthError::AlgorithmNotAllowed)?,
                Algorithm::HS256,
            ),
            Algorithm::ES256 | Algorithm::RS256 | Algorithm::EdDSA => {
                let key_set = self
                    .key_set
                    .as_ref()
                    .ok_or(AuthError::AlgorithmNotAllowed)?;
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKid)?;
                owned_key = key_set.key(kid).await?;
                if owned_key.alg != header.alg {
                    return Err(AuthError::AlgorithmNotAllowed);
                }
                key_ref = Some(KeyRef {
                    kid: Arc::from(kid),
                    thumbprint: owned_key.thumbprint,
                });
                (&owned_key.key, owned_key.alg)
            }
            _ => return Err(AuthError::AlgorithmNotAllowed),
        };
        Ok((self.check(token, key, alg)?, key_ref))
    }

    fn check(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // aud and iss are checked below, after `role`, so that a project key (anon,
        // service_role: no `aud`) is reported as "not a user token", not as a bad audience.
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_) => AuthError::AlgorithmNotAllowed,
                _ => AuthError::Malformed,
            },
        )?;
        let claims = data.claims;
        let now = jsonwebtoken::get_current_timestamp();

        match claims.get("iat") {
            None => {}
            Some(v) => match v.as_f64() {
                Some(iat) if iat > (now + self.leeway) as f64 => {
                    return Err(AuthError::IssuedInFuture);
                }
                Some(_) => {}
                None => return Err(AuthError::Malformed),
            },
        }
        // A role we do not accept is refused before the audience, so that a project API key
        // (`anon`, `service_role`: no `aud`) is reported as "not a user token". A token with no
        // `role` at all (an OpenID Connect ID token: `aud` is its OAuth client) goes on to the
        // audience rule, which is what it fails.
        let role = claims.get("role");
        if let Some(role) = role {
            match role.as_str() {
                Some(r) if self.allowed_roles.iter().any(|a| a == r) => {}
                Some(r) if PROJECT_KEY_ROLES.contains(&r) => return Err(AuthError::NotUserToken),
                _ => return Err(AuthError::RoleNotAllowed),
            }
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.audience,
            Some(Value::Array(items)) => items
                .iter()
                .any(|a| a.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        if let Some(expected) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(expected.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        if role.is_none() {
            return Err(AuthError::NotUserToken);
        }
        // Supabase's OAuth 2.1 server gives third-party clients (MCP tools among them, which
        // register themselves) access tokens shaped like the app's own plus `client_id`. The
        // user consented to that client, not to this API: first-party tokens only, unless the
        // operator lists the client.
        if let Some(client) = claims.get("client_id") {
            let listed = client
                .as_str()
                .and_then(|c| uuid::Uuid::try_parse(c).ok())
                .is_some_and(|c| self.allowed_client_ids.contains(&c));
            if !listed {
                return Err(AuthError::ClientNotAllowed);
            }
        }
        // The same typed view `Claims::from_payload_json` builds; the parsed map is dropped
        // here and only its text is kept.
        Claims::from_map(&claims)
    }
}

/// Most redirects the key-set client follows, all on the key set's own origin.
const MAX_KEY_SET_REDIRECTS: usize = 3;

/// The key-set HTTP client: bounded connect and total time, so a slow identity server can
/// never hold a request for long. It follows a redirect only within the origin (scheme, host,
/// port) it was sent to, at most [`MAX_KEY_SET_REDIRECTS`] times: the keys must come from the
/// configured project, not from wherever a misconfigured or compromised proxy points. A refused
/// redirect is answered as a failed fetch (the 3xx status), and the last good keys stay in use.
fn key_set_client() -> Result<reqwest::Client, KeySetError> {
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let origin = attempt.previous().first().map(reqwest::Url::origin);
        if attempt.previous().len() > MAX_KEY_SET_REDIRECTS
            || origin.is_some_and(|o| o != attempt.url().origin())
        {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(5))
        .redirect(same_origin)
        .user_agent(concat!("supabase-jwt-service/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| KeySetError::Request(format!("http client: {e}")))
}

/// Installs jsonwebtoken's aws-lc-rs provider as the process default, once. When another is
/// installed already (an embedding application chose one) that one stays: any installed
/// provider verifies; only the feature-based fallback panics, when both backends are linked.
fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _already_installed = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "verify-unit-tests-hs256-secret-0123456789";
    const USER: &str = "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f";
    const JWKS: &str = include_str!("../../tests/fixtures/jwks/jwks.json");
    const ES256_PEM: &str = include_str!("../../tests/fixtures/jwks/keys/es256.pem");
    const STANDBY_PEM: &str = include_str!("../../tests/fixtures/jwks/keys/es256-standby.pem");
    const STANDBY_X: &str = "tTXf4j7b4LRjrcQChsVpEwGsE2kfzFYPOdeD-hp9_Fw";
    const STANDBY_Y: &str = "S_QGmzOAvInnH0EU-b-vWMrvi3cItXC4Dr1yR-IsRnQ";

    fn verifier() -> (Verifier, Arc<KeySet>) {
        let config = crate::config::Config::builder()
            .database_url("postgres://unused@127.0.0.1:1/unused")
            .jwt_secret(SECRET)
            .build()
            .expect("config");
        let url = "http://127.0.0.1:9/auth/v1/.well-known/jwks.json"
            .parse()
            .expect("url");
        let key_set = KeySet::from_jwks_json(url, JWKS).expect("fixture set");
        (
            Verifier::new(&config.auth, Some(Arc::clone(&key_set))),
            key_set,
        )
    }

    fn token(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "sub": USER, "aud": "authenticated", "role": "authenticated",
            "exp": now + 600, "iat": now, "plan": "pro",
        });
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    }

    fn es256(pem: &str) -> EncodingKey {
        EncodingKey::from_ec_pem(pem.as_bytes()).expect("pem")
    }

    #[tokio::test]
    async fn new_material_under_a_cached_kid_is_a_miss_and_verified_afresh() {
        let (verifier, key_set) = verifier();
        let old = token(Algorithm::ES256, "es256-key", &es256(ES256_PEM));
        for _ in 0..2 {
            assert!(verifier.verify(&old).await.is_ok());
        }
        assert_eq!(verifier.cache().len(), 1);

        // The set now publishes the standby key's material under the same kid.
        let swapped = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "es256-key",
            "x": STANDBY_X, "y": STANDBY_Y,
        }]});
        key_set.replace_keys(&swapped.to_string()).expect("set");
        assert!(key_set.has_key("es256-key"), "the kid alone still matches");
        assert_eq!(
            verifier.verify(&old).await.err(),
            Some(AuthError::BadSignature),
            "a cached token of the old material is checked again, and fails"
        );
        assert!(verifier.cache().is_empty());
        let new = token(Algorithm::ES256, "es256-key", &es256(STANDBY_PEM));
        assert!(verifier.verify(&new).await.is_ok());
    }

    #[tokio::test]
    async fn unchanged_material_stays_a_hit_and_hs256_needs_no_key_check() {
        let (verifier, key_set) = verifier();
        let es = token(Algorithm::ES256, "es256-key", &es256(ES256_PEM));
        let hs = token(
            Algorithm::HS256,
            "legacy",
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        for t in [&es, &hs] {
            assert!(verifier.verify(t).await.is_ok());
        }
        // A refresh that loads the same keys keeps the entries trusted.
        key_set.replace_keys(JWKS).expect("set");
        for t in [&es, &hs] {
            assert!(verifier.verify(t).await.is_ok());
        }
        assert_eq!(verifier.cache().len(), 2);
    }

    #[tokio::test]
    async fn verification_works_with_our_provider_installed_and_keeps_custom_claims() {
        let (verifier, _) = verifier();
        // Whatever ran first in this process, a provider is installed now: ours, or one an
        // embedding application chose. Installing again is refused, not a panic.
        assert!(
            jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
                .install_default()
                .is_err()
        );
        let claims = verifier
            .verify(&token(Algorithm::ES256, "es256-key", &es256(ES256_PEM)))
            .await
            .expect("verified");
        #[derive(serde::Deserialize)]
        struct Plan {
            plan: String,
        }
        assert_eq!(claims.extra::<Plan>().expect("plan").plan, "pro");
        assert_eq!(claims.sub.to_string(), USER);
    }
}
