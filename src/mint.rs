//! `mint`: HS256 tokens shaped like Supabase access tokens, for curl and tests.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

use crate::auth::UserId;
use crate::config::{Config, ConfigError};

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// The user id (`sub`).
    pub sub: UserId,
    /// `email`.
    pub email: Option<String>,
    /// `role`, normally `authenticated`.
    pub role: String,
    /// Lifetime in seconds; negative mints an already expired token (for tests).
    pub ttl_seconds: i64,
}

/// Parses a lifetime such as `1h`, `30m`, `90s`, `2d`, `3600` or `-1h`.
pub fn parse_ttl(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (digits, unit) = match body.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => body.split_at(i),
        None => (body, "s"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 1h, 30m or 90s"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}` has an unknown unit (use s, m, h or d)")),
    };
    let secs = n
        .checked_mul(scale)
        .filter(|v| *v <= 366 * 86_400)
        .ok_or("ttl is longer than a year")?;
    Ok(if negative { -secs } else { secs })
}

/// Signs a token with the configured HS256 secret and issuer, so `serve` accepts it.
pub fn mint(config: &Config, request: &MintRequest) -> Result<String, ConfigError> {
    let secret = config.jwt_secret.as_ref().ok_or_else(|| {
        ConfigError::new(
            "SUPABASE_JWT_SECRET",
            "mint signs with the HS256 secret; set it",
        )
    })?;
    let claims = access_token_claims(&config.audience, config.issuer.as_deref(), request);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|e| ConfigError::new("SUPABASE_JWT_SECRET", format!("cannot sign: {e}")))
}

/// The payload of a Supabase access token for `request`, as Supabase Auth shapes it.
pub(crate) fn access_token_claims(
    audience: &str,
    issuer: Option<&str>,
    request: &MintRequest,
) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut claims = json!({
        "aud": audience,
        "exp": now + request.ttl_seconds,
        "iat": now.min(now + request.ttl_seconds),
        "sub": request.sub,
        "email": request.email.clone().unwrap_or_default(),
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "role": request.role,
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": Uuid::new_v4(),
        "is_anonymous": false,
    });
    if let Some(iss) = issuer {
        claims["iss"] = json!(iss);
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("-1h"), Ok(-3600));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999d").is_err());
    }
}
