//! [`AuthConfig`]: which tokens are users' access tokens: keys, claims, and the verified-token
//! cache.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

use super::vars::*;
use super::{ConfigError, LOCAL_STACK_JWT_SECRET, LOCAL_STACK_URL, Secret, check_count};

/// The project's API keys are signed JWTs too, with `role` set to one of these. They are not
/// users: anyone holding the public `anon` key, or any server holding `service_role` (which
/// bypasses row-level security), would pass for a signed-in user, with no `sub` of their own.
pub(crate) const PROJECT_KEY_ROLES: [&str; 2] = ["anon", "service_role"];
/// Default memory budget of the verified-token cache (`JWT_CACHE_BYTES`): 16 MiB.
const DEFAULT_TOKEN_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Largest accepted `JWT_CACHE_BYTES`: 16 GiB.
const MAX_TOKEN_CACHE_BYTES: usize = 16 * 1024 * 1024 * 1024;

/// Keys and claim rules: what [`Verifier`](crate::auth::Verifier) accepts.
///
/// ```
/// use supabase_jwt_service::Config;
///
/// let config = Config::builder()
///     .supabase_url("https://abcdefghijklmnop.supabase.co")
///     .database_url("postgres://app:pw@db.example.com:5432/postgres")
///     .build()?;
/// let auth = &config.auth;
/// assert_eq!(auth.issuer.as_deref(), Some("https://abcdefghijklmnop.supabase.co/auth/v1"));
/// assert_eq!(
///     auth.jwks_url.as_ref().map(|u| u.as_str()),
///     Some("https://abcdefghijklmnop.supabase.co/auth/v1/.well-known/jwks.json")
/// );
/// assert_eq!(auth.allowed_roles, ["authenticated"]);
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthConfig {
    /// `SUPABASE_JWT_SECRET`: the legacy HS256 secret.
    pub jwt_secret: Option<Secret>,
    /// The key set URL, derived from `SUPABASE_URL`.
    pub jwks_url: Option<Url>,
    /// `JWT_AUDIENCE`: the required `aud`.
    pub audience: String,
    /// `JWT_ISSUER`, else derived from `SUPABASE_URL`; `None`: not checked.
    pub issuer: Option<String>,
    /// `JWT_LEEWAY_SECONDS`: clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// `JWT_ALLOWED_ROLES`: the `role` claims accepted as users'; never `anon` or
    /// `service_role`. With `DB_RLS=on` the database user must be able to switch to each.
    pub allowed_roles: Vec<String>,
    /// `JWT_ALLOWED_CLIENT_IDS`: OAuth 2.1 clients (`client_id` claim) whose access tokens are
    /// accepted; empty accepts first-party tokens only.
    pub allowed_client_ids: Vec<uuid::Uuid>,
    /// `JWT_CACHE_SIZE`: verified tokens remembered (0: off).
    pub token_cache_size: usize,
    /// `JWT_CACHE_BYTES`: the cache's memory budget (0: off).
    pub token_cache_bytes: usize,
    /// True when neither key setting was given and the Supabase CLI local stack's published
    /// keys are in use (loopback only, or with `INSECURE_LOCAL_DEFAULTS_ON_NETWORK=on`).
    pub local_stack_defaults: bool,
    /// True on the embedded store without `DATABASE_URL` (dev mode): a key set that cannot be
    /// fetched is a warning, and `/readyz` does not wait for it.
    pub key_set_optional: bool,
}

/// The typed settings of this part, before defaults and rules.
#[derive(Debug, Clone, Default)]
pub(super) struct AuthSettings {
    pub(super) jwt_secret: Option<Secret>,
    pub(super) supabase_url: Option<Url>,
    pub(super) audience: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) leeway: Option<Duration>,
    pub(super) allowed_roles: Option<Vec<String>>,
    pub(super) allowed_client_ids: Option<Vec<uuid::Uuid>>,
    pub(super) token_cache_size: Option<usize>,
    pub(super) token_cache_bytes: Option<usize>,
    pub(super) local_defaults_on_network: Option<bool>,
}

impl AuthSettings {
    /// Whether neither key setting was given.
    pub(super) fn has_no_key(&self) -> bool {
        self.jwt_secret.is_none() && self.supabase_url.is_none()
    }

    /// Defaults and each value's own rules. `local_stack` (decided by the rules that span parts)
    /// fills in the Supabase CLI local stack's keys.
    pub(super) fn resolve(
        mut self,
        local_stack: bool,
        key_set_optional: bool,
    ) -> Result<AuthConfig, ConfigError> {
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < 32
        {
            return Err(ConfigError::new(
                SUPABASE_JWT_SECRET,
                "is shorter than 32 bytes; use the project's JWT secret from the dashboard",
            ));
        }
        if local_stack {
            self.jwt_secret = Some(Secret::new(LOCAL_STACK_JWT_SECRET));
            self.supabase_url = Some(parse_supabase_url(LOCAL_STACK_URL)?);
        }
        let jwks_url = match &self.supabase_url {
            Some(base) => Some(join_auth_path(base, "auth/v1/.well-known/jwks.json")?),
            None => None,
        };
        let issuer = self.issuer.or_else(|| {
            self.supabase_url
                .as_ref()
                .map(|base| format!("{}/auth/v1", base.as_str().trim_end_matches('/')))
        });
        let leeway = self.leeway.unwrap_or(Duration::from_secs(30));
        if leeway > Duration::from_secs(600) || leeway.subsec_nanos() != 0 {
            return Err(leeway_error());
        }
        let allowed_roles = match self.allowed_roles {
            Some(roles) => check_roles(roles)?,
            None => vec!["authenticated".to_owned()],
        };
        Ok(AuthConfig {
            jwt_secret: self.jwt_secret,
            jwks_url,
            audience: self.audience.unwrap_or_else(|| "authenticated".to_owned()),
            issuer,
            leeway,
            allowed_roles,
            allowed_client_ids: self.allowed_client_ids.unwrap_or_default(),
            token_cache_size: check_count(
                JWT_CACHE_SIZE,
                self.token_cache_size.unwrap_or(4096),
                0,
                1_000_000,
            )?,
            token_cache_bytes: match self.token_cache_bytes {
                Some(n) if n > MAX_TOKEN_CACHE_BYTES => {
                    return Err(ConfigError::new(
                        JWT_CACHE_BYTES,
                        "must be a whole number of bytes from 0 to 17179869184 (16 GiB)",
                    ));
                }
                Some(n) => n,
                None => DEFAULT_TOKEN_CACHE_BYTES,
            },
            local_stack_defaults: local_stack,
            key_set_optional,
        })
    }
}

fn leeway_error() -> ConfigError {
    ConfigError::new(
        JWT_LEEWAY_SECONDS,
        "must be a whole number of seconds from 0 to 600",
    )
}

/// `JWT_LEEWAY_SECONDS`: whole seconds.
pub(super) fn parse_leeway(raw: &str) -> Result<Duration, ConfigError> {
    raw.parse::<u64>()
        .ok()
        .filter(|v| *v <= 600)
        .map(Duration::from_secs)
        .ok_or_else(leeway_error)
}

/// `SUPABASE_URL`: https, or http on loopback only (the local stack).
pub(super) fn parse_supabase_url(raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|_| {
        ConfigError::new(
            SUPABASE_URL,
            "must be a URL such as https://abcd.supabase.co",
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(
            SUPABASE_URL,
            "must be an http:// or https:// URL with a host",
        ));
    }
    // The keys that decide who is signed in come from this URL: over plain HTTP anyone on the
    // path could substitute their own. Only a local stack on this machine may use it.
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err(ConfigError::new(
            SUPABASE_URL,
            "must be https:// (http:// only for localhost, 127.0.0.0/8 or ::1)",
        ));
    }
    Ok(url)
}

/// `localhost` (and its subdomains, RFC 6761 section 6.3), 127.0.0.0/8 or ::1.
fn is_loopback_host(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

fn join_auth_path(base: &Url, path: &str) -> Result<Url, ConfigError> {
    let with_slash = format!("{}/", base.as_str().trim_end_matches('/'));
    Url::parse(&with_slash)
        .and_then(|b| b.join(path))
        .map_err(|_| ConfigError::new(SUPABASE_URL, "cannot derive the key set URL from it"))
}

/// `JWT_ALLOWED_ROLES`: a comma-separated list.
pub(super) fn parse_roles(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// No project key role, only plain lower-case names (each becomes a `SET ROLE` target under
/// `DB_RLS=on`, so the name in the token and in the database cannot differ), no duplicates,
/// at least one.
fn check_roles(list: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut roles: Vec<String> = Vec::new();
    for role in list {
        if PROJECT_KEY_ROLES.contains(&role.as_str()) {
            return Err(ConfigError::new(
                JWT_ALLOWED_ROLES,
                format!(
                    "lists `{role}`, the role of a project API key, not of a signed-in user; remove it"
                ),
            ));
        }
        let plain = role.len() <= 63
            && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && role
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(ConfigError::new(
                JWT_ALLOWED_ROLES,
                "each role must be a lower-case Postgres role name (a-z, 0-9, _; at most 63 bytes)",
            ));
        }
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    if roles.is_empty() {
        return Err(ConfigError::new(
            JWT_ALLOWED_ROLES,
            "must list at least one role",
        ));
    }
    Ok(roles)
}

/// `JWT_ALLOWED_CLIENT_IDS`: comma-separated UUIDs. A bad item is named by its position, never
/// echoed: a client secret pasted here by mistake must not reach the logs.
pub(super) fn parse_client_ids(list: &str) -> Result<Vec<uuid::Uuid>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, id)| {
            uuid::Uuid::try_parse(id).map_err(|_| {
                ConfigError::new(
                    JWT_ALLOWED_CLIENT_IDS,
                    format!(
                        "item {} is not a client id (a UUID, from Authentication > OAuth Apps)",
                        i + 1
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(list: &str) -> Result<Vec<String>, ConfigError> {
        check_roles(parse_roles(list))
    }

    #[test]
    fn allowed_roles_refuse_project_key_roles_and_odd_names() {
        assert_eq!(
            roles(" authenticated, editor ,editor").unwrap(),
            ["authenticated", "editor"]
        );
        for bad in [
            "authenticated,anon",
            "service_role",
            "Editor",
            "a-b",
            "x;drop",
            " , ",
        ] {
            assert_eq!(roles(bad).unwrap_err().var, JWT_ALLOWED_ROLES, "{bad}");
        }
        assert!(roles("anon").unwrap_err().problem.contains("`anon`"));
    }

    #[test]
    fn a_bad_client_id_is_not_echoed() {
        let id = "9a1e4f0c-3b7d-4c2a-8e5f-6d1b2c3a4f5e";
        assert_eq!(parse_client_ids(&format!("{id}, ")).unwrap().len(), 1);
        let err = parse_client_ids(&format!("{id},sb_secret_not-a-client-id")).unwrap_err();
        assert_eq!(err.var, JWT_ALLOWED_CLIENT_IDS);
        assert!(!err.to_string().contains("sb_secret"), "{err}");
    }

    #[test]
    fn supabase_url_is_https_or_local() {
        assert!(parse_supabase_url("https://abcd.supabase.co").is_ok());
        assert!(parse_supabase_url("http://127.0.0.1:54321").is_ok());
        assert!(parse_supabase_url("http://dev.localhost:54321").is_ok());
        for bad in ["abcd", "http://abcd.supabase.co", "ftp://x.example"] {
            assert_eq!(
                parse_supabase_url(bad).unwrap_err().var,
                SUPABASE_URL,
                "{bad}"
            );
        }
    }
}
