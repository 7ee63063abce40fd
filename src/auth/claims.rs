//! The verified claims of a Supabase access token.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

/// A user's id: the token's `sub`, a canonical hyphenated UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(Uuid);

impl UserId {
    /// Parses the hyphenated 36-character form only: the braced, URN and hyphenless spellings
    /// `Uuid` would also accept are not what Supabase issues, so they are refused. Hex digits
    /// may be either case (RFC 9562 says to accept both); the id is always printed lower-case.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 36 {
            return None;
        }
        Uuid::try_parse(s).ok().map(Self)
    }

    /// The UUID.
    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for UserId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The claims of a verified user access token: the fields the service uses, typed, plus the
/// whole payload (for `request.jwt.claims` under row-level security).
#[derive(Debug, Clone)]
pub struct Claims {
    /// The user's id (`sub`).
    pub sub: UserId,
    /// Always `authenticated` once verified.
    pub role: String,
    /// `email`, when present.
    pub email: Option<String>,
    /// `phone`, when present and non-empty.
    pub phone: Option<String>,
    /// `session_id`, when present and a UUID.
    pub session_id: Option<Uuid>,
    /// Authenticator assurance level (`aal1`, `aal2`).
    pub aal: Option<String>,
    /// `is_anonymous`, false when absent.
    pub is_anonymous: bool,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// The full payload as signed (shared: claims are cloned per request from the cache).
    pub raw: Arc<Map<String, Value>>,
    /// The payload as JSON text, for `set_config('request.jwt.claims', …)`.
    pub raw_json: Arc<str>,
}

impl Claims {
    /// Builds the typed view of a payload whose `sub` has been checked already.
    pub(crate) fn from_payload(sub: UserId, exp: u64, raw: Map<String, Value>) -> Self {
        let text = |k: &str| {
            raw.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            sub,
            role: text("role").unwrap_or_default(),
            email: text("email"),
            phone: text("phone"),
            session_id: raw
                .get("session_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::try_parse(s).ok()),
            aal: text("aal"),
            is_anonymous: raw
                .get("is_anonymous")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            exp,
            raw_json: Arc::from(serde_json::to_string(&raw).unwrap_or_else(|_| "{}".to_owned())),
            raw: Arc::new(raw),
        }
    }

    /// The payload as JSON text, for `set_config('request.jwt.claims', …)`.
    pub fn raw_json(&self) -> &str {
        &self.raw_json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_accepts_only_canonical_form() {
        assert!(UserId::parse("5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f").is_some());
        assert!(UserId::parse("5f1c2b8e1d2a4c3b9e4f0a1b2c3d4e5f").is_none());
        assert!(UserId::parse("{5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f}").is_none());
        assert!(UserId::parse("urn:uuid:5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f").is_none());
        assert!(UserId::parse("not-a-uuid").is_none());
        assert!(UserId::parse("").is_none());
    }
}
