//! [`AccessToken`]: HS256 tokens shaped like Supabase access tokens, for curl, scripts and
//! tests (`supabase-jwt-service mint` prints one).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::auth::UserId;
use crate::config::{AuthConfig, ConfigError};

/// An access token as Supabase Auth issues one to a signed-in user (`role`, `aud`, `email`,
/// `session_id`, `aal`, `amr`, `app_metadata`, `user_metadata`, …), built claim by claim and
/// signed with the project's HS256 secret (`SUPABASE_JWT_SECRET`) for its audience and issuer,
/// so the service accepts it.
///
/// ```
/// use std::time::Duration;
/// use supabase_jwt_service::{AccessToken, Config};
///
/// let config = Config::builder()
///     .database_url("postgres://app:pw@db.example.com:5432/postgres")
///     .jwt_secret("a-project-jwt-secret-of-at-least-32-characters")
///     .build()?;
/// let user = uuid::Uuid::new_v4();
/// let token = AccessToken::for_user(user)
///     .email("ada@example.com")
///     .ttl(Duration::from_secs(600))
///     .claim("app_metadata", serde_json::json!({"plan": "pro"}))
///     .sign(&config.auth)?;
/// assert_eq!(token.split('.').count(), 3);
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AccessToken {
    sub: UserId,
    email: Option<String>,
    role: String,
    /// Seconds from now; negative for a token that has expired already.
    ttl_seconds: i64,
    session_id: Option<Uuid>,
    anonymous: bool,
    extra: Map<String, Value>,
}

impl AccessToken {
    /// A token for `user`: role `authenticated`, valid for an hour, a fresh `session_id`.
    pub fn for_user(user: impl Into<UserId>) -> Self {
        Self {
            sub: user.into(),
            email: None,
            role: "authenticated".to_owned(),
            ttl_seconds: 3600,
            session_id: Some(Uuid::new_v4()),
            anonymous: false,
            extra: Map::new(),
        }
    }

    /// `email`.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// `role` (a Custom Access Token Hook's, say); `authenticated` unless set.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// How long it is valid from now (`exp`); an hour unless set.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl_seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// An `exp` that has passed already, `ago` before now: for tests of expired tokens.
    pub fn expired(mut self, ago: Duration) -> Self {
        self.ttl_seconds = -i64::try_from(ago.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// `session_id` (for `SESSION_CHECK=on`, the session a test created); `None` for a token
    /// without one.
    pub fn session(mut self, session_id: Option<Uuid>) -> Self {
        self.session_id = session_id;
        self
    }

    /// `is_anonymous`: an anonymous sign-in's token.
    pub fn anonymous(mut self, anonymous: bool) -> Self {
        self.anonymous = anonymous;
        self
    }

    /// Any other claim, or a replacement for one of the above (`app_metadata`,
    /// `user_metadata`, `client_id`, `aal`, …).
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// The payload, for `audience` and `issuer` (none: no `iss`), as Supabase Auth shapes it.
    pub fn payload(&self, audience: &str, issuer: Option<&str>) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let exp = now.saturating_add(self.ttl_seconds);
        let mut claims = json!({
            "aud": audience,
            "exp": exp,
            "iat": now.min(exp),
            "sub": self.sub,
            "email": self.email.clone().unwrap_or_default(),
            "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {},
            "role": self.role,
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "is_anonymous": self.anonymous,
        });
        if let Some(session) = self.session_id {
            claims["session_id"] = json!(session);
        }
        if let Some(iss) = issuer {
            claims["iss"] = json!(iss);
        }
        for (name, value) in &self.extra {
            claims[name] = value.clone();
        }
        claims
    }

    /// Signs it with `auth`'s HS256 secret for its audience and issuer. Without a secret it is
    /// an error naming `SUPABASE_JWT_SECRET`.
    pub fn sign(&self, auth: &AuthConfig) -> Result<String, ConfigError> {
        let secret = auth.jwt_secret.as_ref().ok_or_else(|| {
            ConfigError::new(
                "SUPABASE_JWT_SECRET",
                "minting signs with the HS256 secret; set it",
            )
        })?;
        self.sign_hs256(secret.expose(), &auth.audience, auth.issuer.as_deref())
    }

    /// Signs it with `secret` (a project's JWT secret, at least 32 bytes) for `audience` and
    /// `issuer`, without a whole configuration: for a script that mints a token for curl.
    ///
    /// ```
    /// use supabase_jwt_service::AccessToken;
    ///
    /// let token = AccessToken::for_user(uuid::Uuid::new_v4())
    ///     .sign_hs256("a-project-jwt-secret-of-at-least-32-characters", "authenticated", None)?;
    /// assert_eq!(token.split('.').count(), 3);
    /// # Ok::<(), supabase_jwt_service::ConfigError>(())
    /// ```
    pub fn sign_hs256(
        &self,
        secret: &str,
        audience: &str,
        issuer: Option<&str>,
    ) -> Result<String, ConfigError> {
        if secret.len() < 32 {
            return Err(ConfigError::new(
                "SUPABASE_JWT_SECRET",
                "is shorter than 32 bytes; use the project's JWT secret from the dashboard",
            ));
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &self.payload(audience, issuer),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .map_err(|e| ConfigError::new("SUPABASE_JWT_SECRET", format!("cannot sign: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_supabases_with_your_claims_on_top() {
        let user = Uuid::nil();
        let claims = AccessToken::for_user(user)
            .email("a@example.com")
            .role("editor")
            .session(None)
            .claim("plan", "pro")
            .payload("authenticated", Some("https://x.supabase.co/auth/v1"));
        assert_eq!(claims["sub"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(claims["role"], "editor");
        assert_eq!(claims["plan"], "pro");
        assert_eq!(claims["iss"], "https://x.supabase.co/auth/v1");
        assert!(claims.get("session_id").is_none());
        let expired = AccessToken::for_user(user)
            .expired(Duration::from_secs(60))
            .payload("authenticated", None);
        assert!(expired["exp"].as_i64() < expired["amr"][0]["timestamp"].as_i64());
        assert!(expired.get("iss").is_none());
    }
}
