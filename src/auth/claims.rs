//! The verified claims of a Supabase access token.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::AuthError;

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
/// payload's JSON text, kept once (for `request.jwt.claims` under row-level security, and for
/// [`Claims::extra`]).
///
/// There is one way to build one outside verification, [`Claims::from_payload_json`], and it
/// derives every typed field from the same JSON as verification does, so the two cannot
/// disagree.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The user's id (`sub`).
    pub sub: UserId,
    /// The token's `role`: `authenticated` for a signed-in user, or another of
    /// `JWT_ALLOWED_ROLES` (a Custom Access Token Hook's).
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
    /// The payload as JSON text. Shared: claims are cloned per request from the token cache,
    /// and a token can carry kilobytes of `user_metadata`. No parsed map is kept beside it; a
    /// map of a 6 KiB metadata object costs an order of magnitude more than its text.
    payload: Arc<str>,
}

impl Claims {
    /// Builds claims from a token payload, checking what verification checks of its shape:
    /// a JSON object whose `sub` is a canonical UUID ([`AuthError::BadSubject`] otherwise) and
    /// whose `exp` is a non-negative number ([`AuthError::Malformed`] otherwise). Signature,
    /// time, audience, issuer and role are not checked: this is for tests and for claims
    /// verified elsewhere.
    ///
    /// ```
    /// use supabase_jwt_service::Claims;
    ///
    /// let claims = Claims::from_payload_json(&serde_json::json!({
    ///     "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f",
    ///     "exp": 1_900_000_000u64,
    ///     "role": "authenticated",
    ///     "email": "demo@example.com",
    /// }))
    /// .expect("a user's claims");
    /// assert_eq!(claims.sub.to_string(), "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f");
    /// assert_eq!(claims.email.as_deref(), Some("demo@example.com"));
    /// assert!(Claims::from_payload_json(&serde_json::json!({"sub": "bob", "exp": 1})).is_err());
    /// ```
    pub fn from_payload_json(payload: &Value) -> Result<Self, AuthError> {
        match payload {
            Value::Object(map) => Self::from_map(map),
            _ => Err(AuthError::Malformed),
        }
    }

    /// The typed view of a payload, shared by verification and [`Claims::from_payload_json`].
    pub(crate) fn from_map(map: &Map<String, Value>) -> Result<Self, AuthError> {
        let sub = map
            .get("sub")
            .and_then(Value::as_str)
            .and_then(UserId::parse)
            .ok_or(AuthError::BadSubject)?;
        let exp = map
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or(AuthError::Malformed)? as u64;
        let text = |k: &str| {
            map.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        // Serializing a map that came from JSON cannot fail (its keys are strings).
        let payload = serde_json::to_string(map).map_err(|_| AuthError::Malformed)?;
        Ok(Self {
            sub,
            role: text("role").unwrap_or_default(),
            email: text("email"),
            phone: text("phone"),
            session_id: map
                .get("session_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::try_parse(s).ok()),
            aal: text("aal"),
            is_anonymous: map
                .get("is_anonymous")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            exp,
            payload: Arc::from(payload),
        })
    }

    /// The payload as JSON text, for `set_config('request.jwt.claims', …)` or your own parsing.
    ///
    /// ```
    /// # let claims = supabase_jwt_service::Claims::from_payload_json(&serde_json::json!({
    /// #     "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "exp": 1_900_000_000u64,
    /// # })).expect("claims");
    /// let payload: serde_json::Value = serde_json::from_str(claims.raw_json()).expect("JSON");
    /// assert_eq!(payload["exp"], 1_900_000_000u64);
    /// ```
    pub fn raw_json(&self) -> &str {
        &self.payload
    }

    /// Deserializes the payload into a type of your own: the typed way to read a claim that a
    /// Custom Access Token Hook adds. Parses the JSON text on each call (a few microseconds for
    /// a typical token); fields your type does not name are skipped.
    ///
    /// ```
    /// use serde::Deserialize;
    /// use supabase_jwt_service::Claims;
    ///
    /// #[derive(Deserialize)]
    /// struct Plan {
    ///     plan: String,
    ///     #[serde(default)]
    ///     app_metadata: AppMetadata,
    /// }
    ///
    /// #[derive(Deserialize, Default)]
    /// struct AppMetadata {
    ///     provider: Option<String>,
    /// }
    ///
    /// let claims = Claims::from_payload_json(&serde_json::json!({
    ///     "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f",
    ///     "exp": 1_900_000_000u64,
    ///     "plan": "pro",
    ///     "app_metadata": {"provider": "email"},
    /// }))
    /// .expect("claims");
    /// let Plan { plan, app_metadata } = claims.extra::<Plan>().expect("a plan claim");
    /// assert_eq!(plan, "pro");
    /// assert_eq!(app_metadata.provider.as_deref(), Some("email"));
    /// // A claim the token lacks is a deserialization error, not a panic.
    /// #[derive(Deserialize, Debug)]
    /// struct Tenant { tenant_id: String }
    /// assert!(claims.extra::<Tenant>().is_err());
    /// ```
    pub fn extra<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    /// Heap bytes these claims hold, for the token cache's byte budget: the payload text with
    /// its `Arc` counters, and each string's allocation.
    pub(crate) fn heap_bytes(&self) -> usize {
        const ARC_COUNTERS: usize = 2 * std::mem::size_of::<usize>();
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        ARC_COUNTERS
            + self.payload.len()
            + self.role.capacity()
            + text(&self.email)
            + text(&self.phone)
            + text(&self.aal)
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

    #[test]
    fn from_payload_json_checks_sub_and_exp_as_verification_does() {
        let ok = serde_json::json!({
            "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "exp": 1_900_000_000u64,
            "role": "authenticated", "email": "", "phone": "+15550100", "aal": "aal2",
            "session_id": "0e6d1c3a-6f0e-4b8e-8d51-2f7c9a1b3c4d", "is_anonymous": true,
        });
        let claims = Claims::from_payload_json(&ok).expect("claims");
        assert_eq!(claims.exp, 1_900_000_000);
        assert_eq!(claims.role, "authenticated");
        assert_eq!(claims.email, None, "an empty email is absent");
        assert_eq!(claims.phone.as_deref(), Some("+15550100"));
        assert_eq!(claims.aal.as_deref(), Some("aal2"));
        assert!(claims.session_id.is_some() && claims.is_anonymous);
        let back: Value = serde_json::from_str(claims.raw_json()).expect("JSON");
        assert_eq!(back, ok, "the text is the same payload");

        let with = |key: &str, value: Value| {
            let mut payload = ok.clone();
            payload[key] = value;
            Claims::from_payload_json(&payload).err()
        };
        assert_eq!(with("sub", "bob".into()), Some(AuthError::BadSubject));
        assert_eq!(with("exp", "soon".into()), Some(AuthError::Malformed));
        assert_eq!(with("exp", (-1).into()), Some(AuthError::Malformed));
        let mut no_exp = ok.clone();
        no_exp.as_object_mut().expect("object").remove("exp");
        assert_eq!(
            Claims::from_payload_json(&no_exp).err(),
            Some(AuthError::Malformed)
        );
        assert_eq!(
            Claims::from_payload_json(&serde_json::json!([1])).err(),
            Some(AuthError::Malformed)
        );
    }

    #[test]
    fn heap_bytes_counts_the_payload_text() {
        let big = serde_json::json!({
            "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "exp": 1,
            "user_metadata": {"bio": "x".repeat(6000)},
        });
        let claims = Claims::from_payload_json(&big).expect("claims");
        assert!(claims.heap_bytes() >= 6000);
        assert!(claims.heap_bytes() < 6200, "{}", claims.heap_bytes());
    }
}
