//! A kit for testing routes built on this crate (feature `testing`): tokens signed the way
//! Supabase Auth signs them, a local key-set server, the Postgres migrations for
//! `#[sqlx::test]`, and a one-call `oneshot` helper.
//!
//! A handler tested in a few lines, on the embedded store:
//!
//! ```
//! use axum::http::{Method, StatusCode};
//! use axum::{Router, routing::get};
//! use supabase_jwt_service::testing::{call, hs256_token, request};
//! use supabase_jwt_service::{App, AppState, Claims, Config, build_state};
//!
//! async fn hello(claims: Claims) -> String {
//!     format!("hello {}", claims.sub)
//! }
//!
//! # #[cfg(feature = "sqlite")] // the embedded store
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let config = Config::builder()
//!     .database_url(&format!("sqlite://{}/t.db", dir.path().display()))
//!     .listen(([127, 0, 0, 1], 0).into()) // the local stack's secret serves loopback only
//!     .metrics_addr(None)
//!     .build()?;
//! let token = hs256_token(&config, uuid::Uuid::new_v4())?;
//! let routes: Router<AppState> = Router::new().route("/hello", get(hello));
//! let app = App::new(build_state(config).await?).merge(routes).into_router();
//!
//! let answer = call(&app, request(Method::GET, "/hello", Some(&token), None)).await;
//! assert_eq!(answer.status, StatusCode::OK);
//! let answer = call(&app, request(Method::GET, "/hello", None, None)).await;
//! assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
//! assert_eq!(answer.json["error"], "missing_token");
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use std::net::SocketAddr;
use std::sync::LazyLock;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::auth::UserId;
use crate::config::{Config, ConfigBuilder, ConfigError};
use crate::mint::{MintRequest, access_token_claims, mint};

/// The service's Postgres migrations (the `auth` stand-in and `public.users`), for
/// `#[sqlx::test]`, which then gives each test a fresh database (at `DATABASE_URL`) with them:
///
/// ```no_run
/// #[sqlx::test(migrator = "supabase_jwt_service::testing::MIGRATOR")]
/// async fn profiles_start_empty(pool: sqlx::PgPool) -> sqlx::Result<()> {
///     let n: i64 = sqlx::query_scalar("select count(*) from public.users").fetch_one(&pool).await?;
///     assert_eq!(n, 0);
///     Ok(())
/// }
/// ```
pub static MIGRATOR: LazyLock<sqlx::migrate::Migrator> =
    LazyLock::new(crate::store::postgres::migrator);

/// The demo profile's id: the embedded store starts with this user (full name `Demo User`),
/// and the service's start-up hint mints a token for it.
pub const DEMO_USER: &str = "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f";

/// An HS256 secret for tests (at least 32 bytes, as `SUPABASE_JWT_SECRET` requires). It is
/// public and protects nothing: never configure it outside a test.
///
/// ```
/// use supabase_jwt_service::Config;
/// use supabase_jwt_service::testing::SECRET;
///
/// let config = Config::builder()
///     .database_url("postgres://postgres:pw@127.0.0.1:5432/postgres")
///     .jwt_secret(SECRET)
///     .build()?;
/// assert_eq!(config.jwt_secret.as_ref().map(|s| s.expose()), Some(SECRET));
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
pub const SECRET: &str = "test-secret-for-the-api-suite-0123456789abcdef";

/// Signs any payload with HS256 and `secret`: for tokens with claims of your own (expired, for
/// another audience, without `sub`) or signed with the wrong secret. [`hs256_token`] gives the
/// ordinary one.
///
/// ```
/// use supabase_jwt_service::testing::{SECRET, hs256_sign};
///
/// let token = hs256_sign(&serde_json::json!({"sub": "nobody", "exp": 0}), SECRET);
/// assert_eq!(token.split('.').count(), 3);
/// ```
pub fn hs256_sign(claims: &Value, secret: &str) -> String {
    // Encoding a JSON value with an HMAC key cannot fail short of a bug.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

fn one_hour(user: UserId) -> MintRequest {
    MintRequest {
        sub: user,
        email: Some(format!("{user}@example.com")),
        role: "authenticated".to_owned(),
        ttl_seconds: 3600,
    }
}

/// An HS256 access token for `user`, valid for an hour, signed with `config`'s secret for its
/// audience and issuer: what Supabase Auth issues to a signed-in user.
pub fn hs256_token(config: &Config, user: impl Into<UserId>) -> Result<String, ConfigError> {
    mint(config, &one_hour(user.into()))
}

/// A key-set server on `127.0.0.1`, port 0, serving one freshly generated ES256 key at
/// `/auth/v1/.well-known/jwks.json`, as a Supabase project does; it signs tokens with that
/// key. Stops when dropped.
///
/// ```
/// use supabase_jwt_service::testing::JwksServer;
///
/// # #[cfg(feature = "sqlite")] // the embedded store
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = JwksServer::start().await?;
/// let dir = tempfile::tempdir()?;
/// let config = keys
///     .config()
///     .database_url(&format!("sqlite://{}/t.db", dir.path().display()))
///     .metrics_addr(None)
///     .build()?;
/// let verifier = supabase_jwt_service::build_state(config).await?.verifier;
/// let claims = verifier.verify(&keys.token(uuid::Uuid::new_v4())).await?;
/// assert_eq!(claims.role, "authenticated");
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct JwksServer {
    addr: SocketAddr,
    key: EncodingKey,
    kid: String,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Generates a P-256 key and starts serving its public half.
    pub async fn start() -> std::io::Result<Self> {
        let unusable = |what: &str| std::io::Error::other(format!("ES256 test key: {what}"));
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| unusable("generate"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| unusable("export"))?;
        // The uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(unusable("unexpected public key form"));
        }
        let kid = format!("test-es256-{}", uuid::Uuid::new_v4().simple());
        let jwks = json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }]});
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route(
            "/auth/v1/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            kid,
            task,
        })
    }

    /// The project URL to configure: `http://127.0.0.1:<port>`.
    pub fn supabase_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The issuer its tokens carry: `<supabase_url>/auth/v1`.
    pub fn issuer(&self) -> String {
        format!("{}/auth/v1", self.supabase_url())
    }

    /// A configuration builder pointed at this server (key set and issuer), no HS256 secret.
    pub fn config(&self) -> ConfigBuilder {
        Config::builder().supabase_url(&self.supabase_url())
    }

    /// An ES256 access token for `user`, valid for an hour, audience `authenticated`.
    pub fn token(&self, user: impl Into<UserId>) -> String {
        self.sign(&access_token_claims(
            "authenticated",
            Some(&self.issuer()),
            &one_hour(user.into()),
        ))
    }

    /// Signs any payload with the server's key (for tokens with claims of your own).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        // Signing a JSON value with a key we generated cannot fail short of a bug.
        jsonwebtoken::encode(&header, claims, &self.key).unwrap_or_default()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request for [`call`]: `token` as `Authorization: Bearer`, `body` as JSON.
pub fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    builder.body(body).unwrap_or_default()
}

/// What [`call`] answers.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON; `Value::Null` when empty or not JSON.
    pub json: Value,
}

/// Sends `request` through `app` with `oneshot` (no socket) and reads the whole answer.
pub async fn call(app: &Router, request: Request<Body>) -> TestResponse {
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}
