//! A kit for testing routes built on this crate (feature `testing`): a configuration for tests,
//! an app on the database `#[sqlx::test]` gives you, tokens signed the way Supabase Auth signs
//! them (HS256 with a test secret, or ES256 from a local key-set server), and a one-call
//! `oneshot` helper.
//!
//! A handler tested in a few lines, on the embedded store:
//!
//! ```
//! use axum::http::{Method, StatusCode};
//! use axum::{Router, routing::get};
//! use supabase_jwt_service::testing::{self, call, request};
//! use supabase_jwt_service::{AccessToken, App, AppState, Claims};
//!
//! async fn hello(claims: Claims) -> String {
//!     format!("hello {}", claims.sub)
//! }
//!
//! # #[cfg(feature = "sqlite")] // the embedded store
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let config = testing::config()
//!     .database_url(&format!("sqlite://{}/t.db", dir.path().display()))
//!     .build()?;
//! let token = AccessToken::for_user(uuid::Uuid::new_v4()).sign(&config.auth)?;
//! let routes: Router<AppState> = Router::new().route("/hello", get(hello));
//! let app = App::new(AppState::build(config).await?).merge(routes).into_router();
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

use crate::auth::{UserId, Verifier};
use crate::config::{Config, ConfigBuilder, ConfigError};
use crate::db::Db;
use crate::mint::AccessToken;
use crate::startup::StartError;
use crate::state::AppState;

/// The service's Postgres migrations (the `auth` stand-in and `public.users`), for
/// `#[sqlx::test]`, which then gives each test a fresh database (at `DATABASE_URL`) with them;
/// run your own on its pool first thing in the test, then build the app with [`state_on`]:
///
/// ```no_run
/// #[sqlx::test(migrator = "supabase_jwt_service::testing::MIGRATOR")]
/// async fn profiles_start_empty(pool: sqlx::PgPool) -> sqlx::Result<()> {
///     let n: i64 = sqlx::query_scalar("select count(*) from public.users").fetch_one(&pool).await?;
///     assert_eq!(n, 0);
///     Ok(())
/// }
/// ```
pub static MIGRATOR: LazyLock<sqlx::migrate::Migrator> = LazyLock::new(crate::db::pg_migrator);

/// A configuration builder for tests: HS256 with [`SECRET`], a loopback listener on port 0,
/// no metrics listener, JSON logs. Set the database (`.database_url(…)`) and anything else on
/// it; [`state_on`] sets the database itself.
///
/// ```
/// use supabase_jwt_service::testing;
///
/// let config = testing::config()
///     .database_url("postgres://postgres@127.0.0.1:5432/postgres")
///     .session_check(true)
///     .build()?;
/// assert!(config.db.session_check);
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
pub fn config() -> ConfigBuilder {
    Config::builder()
        .jwt_secret(SECRET)
        .listen(([127, 0, 0, 1], 0).into())
        .metrics_addr(None)
        .log_format(crate::config::LogFormat::Json)
}

/// The app's state on the database `pool` connects to: the one `#[sqlx::test]` made for your
/// test, migrated with [`MIGRATOR`] and your own migrations. `config` is [`config()`] with
/// anything you changed; its database URL is not used (the pool's connect options are). The
/// app's own pool opens its connections to the same database, as the caller's role under
/// row-level security, exactly as in production.
///
/// ```no_run
/// use axum::http::{Method, StatusCode};
/// use axum::{Router, routing::get};
/// use supabase_jwt_service::testing::{self, call, request};
/// use supabase_jwt_service::{AccessToken, ApiError, App, AppState, Json, Tx};
///
/// async fn bodies(mut tx: Tx) -> Result<Json<Vec<String>>, ApiError> {
///     let rows = sqlx::query_scalar("select body from public.notes").fetch_all(&mut tx).await?;
///     Ok(Json(rows))
/// }
///
/// #[sqlx::test(migrator = "supabase_jwt_service::testing::MIGRATOR")]
/// async fn a_user_sees_only_their_notes(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
///     sqlx::migrate!("./migrations").run(&pool).await?; // yours: public.notes and its policies
///     let state = testing::state_on(&pool, testing::config()).await?;
///     let token = AccessToken::for_user(uuid::Uuid::new_v4()).sign(&state.config().auth)?;
///     let routes: Router<AppState> = Router::new().route("/bodies", get(bodies));
///     let app = App::new(state).merge(routes).into_router();
///     let answer = call(&app, request(Method::GET, "/bodies", Some(&token), None)).await;
///     assert_eq!(answer.status, StatusCode::OK);
///     assert_eq!(answer.json, serde_json::json!([]));
///     Ok(())
/// }
/// ```
pub async fn state_on(pool: &sqlx::PgPool, config: ConfigBuilder) -> Result<AppState, StartError> {
    // Any Postgres URL satisfies the rules; the pool's options say where to connect.
    let config = config
        .database_url("postgres://sqlx-test@127.0.0.1/sqlx-test")
        .build()?;
    let db = Db::with_pg_options((*pool.connect_options()).clone(), &config.db)?;
    let verifier = Verifier::from_config(&config.auth)?;
    Ok(AppState::from_parts(
        config,
        std::sync::Arc::new(verifier),
        db,
    ))
}

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
/// assert_eq!(config.auth.jwt_secret.as_ref().map(|s| s.expose()), Some(SECRET));
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

/// An HS256 access token for `user` with the email `<user>@example.com`, valid for an hour,
/// signed with `config`'s secret for its audience and issuer: what Supabase Auth issues to a
/// signed-in user. [`AccessToken`] builds any other.
pub fn hs256_token(config: &Config, user: impl Into<UserId>) -> Result<String, ConfigError> {
    one_hour(user.into()).sign(&config.auth)
}

fn one_hour(user: UserId) -> AccessToken {
    AccessToken::for_user(user).email(format!("{user}@example.com"))
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
/// let state = supabase_jwt_service::AppState::build(config).await?;
/// let claims = state.verifier().verify(&keys.token(uuid::Uuid::new_v4())).await?;
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
        self.sign_token(&one_hour(user.into()))
    }

    /// `token` signed with the server's key, for audience `authenticated` and this server's
    /// issuer.
    pub fn sign_token(&self, token: &AccessToken) -> String {
        self.sign(&token.payload("authenticated", Some(&self.issuer())))
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

/// The bearer token of `headers` as the extractors read it: `Err` for none, another scheme
/// ([`AuthError::Missing`](crate::auth::AuthError::Missing)), two `Authorization` headers
/// ([`AuthError::DuplicateHeader`](crate::auth::AuthError::DuplicateHeader)), or a token longer
/// than [`MAX_TOKEN_LEN`] ([`AuthError::Malformed`](crate::auth::AuthError::Malformed)). For
/// fuzzing and property tests of the header rules.
///
/// ```
/// use axum::http::{HeaderMap, HeaderValue, header};
/// use supabase_jwt_service::testing::bearer_token;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc.def.ghi"));
/// assert_eq!(bearer_token(&headers), Ok("abc.def.ghi"));
/// ```
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, crate::auth::AuthError> {
    crate::auth::bearer::token(headers)
}

/// The longest bearer token read, in bytes (12 KiB); a longer one is malformed.
pub const MAX_TOKEN_LEN: usize = crate::auth::bearer::MAX_TOKEN_LEN;

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
