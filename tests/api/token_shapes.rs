//! What Supabase Auth issues besides the app's own user tokens, signed with the same keys:
//! access tokens for third-party OAuth 2.1 clients (`client_id`, `scope`), OpenID Connect ID
//! tokens (`aud` is the client, no `role`), and roles set by a Custom Access Token Hook
//! (`JWT_ALLOWED_ROLES`, with the start-up check that the database user may switch to each).

use std::net::SocketAddr;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use supabase_jwt_service::config::ConfigBuilder;
use supabase_jwt_service::{AppState, StartError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::helpers::*;

const ES256_PEM: &str = include_str!("../fixtures/jwks/keys/es256.pem");
const JWKS: &str = include_str!("../fixtures/jwks/jwks.json");

/// Serves the fixture key set at Supabase's path on 127.0.0.1:0.
struct KeySetServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl KeySetServer {
    async fn start() -> Self {
        let jwks: Value = serde_json::from_str(JWKS).expect("fixture jwks");
        let app = axum::Router::new().route(
            "/auth/v1/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for KeySetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a test token is signed: the legacy secret, or the key set's ES256 key.
#[derive(Debug, Clone, Copy)]
enum Signer {
    Hs256,
    Es256,
}

impl Signer {
    fn sign(self, claims: &Value) -> String {
        match self {
            Self::Hs256 => sign(claims),
            Self::Es256 => {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some("es256-key".into());
                let key = EncodingKey::from_ec_pem(ES256_PEM.as_bytes()).expect("es256 pem");
                jsonwebtoken::encode(&header, claims, &key).expect("sign")
            }
        }
    }
}

/// A Postgres app that verifies both HS256 ([`SECRET`]) and the key set's ES256 tokens, with
/// one seeded user; the issuer is the key-set server's `/auth/v1`.
struct ShapesApp {
    app: TestApp,
    issuer: String,
    user: Uuid,
    _db: TestDb,
    _keys: KeySetServer,
}

impl ShapesApp {
    async fn spawn(mutate: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        let db = TestDb::new().await;
        let user = Uuid::new_v4();
        db.seed_user(user, Some("Ada")).await;
        let keys = KeySetServer::start().await;
        let config = config_with(&db.url, |b| mutate(b.supabase_url(&keys.base())));
        let issuer = config
            .auth
            .issuer
            .clone()
            .expect("issuer from SUPABASE_URL");
        Self {
            app: TestApp::spawn(config).await,
            issuer,
            user,
            _db: db,
            _keys: keys,
        }
    }

    /// The app's own access token for the user, as Supabase Auth issues it.
    fn first_party(&self) -> Value {
        let mut c = claims(self.user);
        c["iss"] = json!(self.issuer);
        c
    }

    /// An access token Supabase's OAuth 2.1 server issues to `client`: the first-party shape
    /// plus `client_id` and the granted `scope`.
    fn oauth_access(&self, client: Uuid) -> Value {
        let mut c = self.first_party();
        c["client_id"] = json!(client.to_string());
        c["scope"] = json!("openid email profile");
        c
    }

    /// An OpenID Connect ID token for `client`: same key and issuer, `aud` is the client, no
    /// `role`, no `session_id`.
    fn id_token(&self, client: Uuid) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({
            "iss": self.issuer,
            "sub": self.user.to_string(),
            "aud": [client.to_string()],
            "exp": now + 3600,
            "iat": now,
            "auth_time": now,
            "client_id": client.to_string(),
            "email": format!("{}@example.com", self.user),
            "email_verified": true,
            "phone_number_verified": false,
        })
    }

    async fn status(&self, signer: Signer, claims: &Value) -> reqwest::Response {
        self.app.get_with_token("/name", &signer.sign(claims)).await
    }
}

async fn assert_insufficient_scope(response: reqwest::Response) {
    let headers = assert_error(response, 403, "insufficient_scope").await;
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
}

#[tokio::test]
async fn oauth_client_access_tokens_are_insufficient_scope_unless_the_client_is_listed() {
    let (listed, other) = (Uuid::new_v4(), Uuid::new_v4());
    let default_app = ShapesApp::spawn(|b| b).await;
    let listing_app = ShapesApp::spawn(|b| b.allowed_client_ids([Uuid::new_v4(), listed])).await;
    for signer in [Signer::Hs256, Signer::Es256] {
        let app = &default_app;
        let r = app.status(signer, &app.first_party()).await;
        assert_eq!(r.status(), 200, "{signer:?} first-party");
        for client in [listed, other] {
            let r = app.status(signer, &app.oauth_access(client)).await;
            assert_insufficient_scope(r).await;
        }
        // A client id that is not a string, or is empty, is no first-party token either.
        for odd in [json!(""), json!(42), json!(null)] {
            let mut c = app.first_party();
            c["client_id"] = odd;
            assert_insufficient_scope(app.status(signer, &c).await).await;
        }

        let app = &listing_app;
        let r = app.status(signer, &app.oauth_access(listed)).await;
        assert_eq!(r.status(), 200, "{signer:?} listed client");
        let r = app.status(signer, &app.oauth_access(other)).await;
        assert_insufficient_scope(r).await;
        let r = app.status(signer, &app.first_party()).await;
        assert_eq!(
            r.status(),
            200,
            "{signer:?} first-party beside a listed client"
        );
    }
}

#[tokio::test]
async fn oauth_id_tokens_are_invalid_token_even_for_a_listed_client() {
    let client = Uuid::new_v4();
    let app = ShapesApp::spawn(|b| b.allowed_client_ids([client])).await;
    for signer in [Signer::Hs256, Signer::Es256] {
        assert_invalid_token(app.status(signer, &app.id_token(client)).await).await;
        // The audience rule decides, not the missing role: an ID token whose `aud` also
        // names our audience still has no role, so it is no user's access token.
        let mut both = app.id_token(client);
        both["aud"] = json!([client.to_string(), "authenticated"]);
        assert_insufficient_scope(app.status(signer, &both).await).await;
    }
}

/// A role of the test's own (roles are cluster-wide; the name keeps parallel tests apart).
struct TestRole {
    name: String,
    admin: sqlx::PgPool,
}

impl TestRole {
    async fn create(db: &TestDb, attributes: &str) -> Self {
        let name = format!("t_role_{}", Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create role {name} {attributes}"
        )))
        .execute(&db.pool)
        .await
        .expect("create role");
        Self {
            name,
            admin: db.pool.clone(),
        }
    }

    async fn grant(&self, what: &str, to: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!("grant {what} to {to}")))
            .execute(&self.admin)
            .await
            .expect("grant");
    }
}

impl TestRole {
    /// Drops the role; a role left behind by a failed test owns nothing and is harmless.
    async fn drop_role(self) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop role if exists {}",
            self.name
        )))
        .execute(&self.admin)
        .await;
    }
}

#[tokio::test]
async fn a_role_set_by_an_access_token_hook_is_insufficient_scope_unless_listed() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    // As Supabase recommends for a hook's custom role: a member of `authenticated`, so the
    // table's grants and `to authenticated` policies apply to it too.
    let editor = TestRole::create(&db, "nologin").await;
    editor.grant("authenticated", &editor.name).await;
    let with_role = |role: &str| {
        let mut c = claims(user);
        c["role"] = json!(role);
        sign(&c)
    };

    let default_app = TestApp::spawn(pg_config(&db.url)).await;
    assert_eq!(
        default_app
            .get_with_token("/name", &with_role("authenticated"))
            .await
            .status(),
        200
    );
    for role in [editor.name.as_str(), "anon", "service_role", "postgres", ""] {
        let r = default_app.get_with_token("/name", &with_role(role)).await;
        assert_insufficient_scope(r).await;
    }

    let listed = format!("authenticated,{}", editor.name);
    let app = TestApp::spawn(config_with(&db.url, |b| {
        b.var("JWT_ALLOWED_ROLES", &listed)
    }))
    .await;
    for role in ["authenticated", editor.name.as_str()] {
        let r = app.get_with_token("/name", &with_role(role)).await;
        assert_eq!(r.status(), 200, "GET as {role}");
        let r = app
            .put_name(&with_role(role), &json!({"full_name": role}))
            .await;
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"full_name": role}));
        assert_eq!(db.full_name(user).await.as_deref(), Some(role));
    }
    for role in ["anon", "service_role", "postgres"] {
        assert_insufficient_scope(app.get_with_token("/name", &with_role(role)).await).await;
    }

    let only_editor = TestApp::spawn(config_with(&db.url, |b| {
        b.allowed_roles([editor.name.as_str()])
    }))
    .await;
    let r = only_editor
        .get_with_token("/name", &with_role("authenticated"))
        .await;
    assert_insufficient_scope(r).await;
    editor.drop_role().await;
}

/// The `DB_RLS` start-up error of `config`, or `None` when the state builds.
async fn start_up_problem(config: supabase_jwt_service::Config) -> Option<String> {
    match AppState::build(config).await {
        Ok(_) => None,
        Err(StartError::Config(e)) => {
            assert_eq!(e.var, "DB_RLS");
            Some(e.problem)
        }
        Err(e) => panic!("expected a configuration error, got {e}"),
    }
}

#[tokio::test]
async fn start_up_checks_that_the_database_user_may_switch_to_each_listed_role() {
    let db = TestDb::new().await;
    let login = TestRole::create(&db, "login").await;
    login.grant("authenticated", &login.name).await;
    let editor = TestRole::create(&db, "nologin").await;
    let admin_like = TestRole::create(&db, "nologin bypassrls").await;
    admin_like.grant(&admin_like.name, &login.name).await;
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&login.name).unwrap();
    let as_login = |roles: &str| config_with(url.as_str(), |b| b.var("JWT_ALLOWED_ROLES", roles));

    assert_eq!(start_up_problem(as_login("authenticated")).await, None);
    let listed = format!("authenticated,{}", editor.name);
    let problem = start_up_problem(as_login(&listed))
        .await
        .expect("a role the user may not switch to is refused");
    assert!(
        problem.contains(&format!("`{}`", editor.name)) && problem.contains("may not switch"),
        "{problem}"
    );
    let missing = format!("t_role_{}", Uuid::new_v4().simple());
    let problem = start_up_problem(as_login(&format!("authenticated,{missing}")))
        .await
        .expect("a role that does not exist is refused");
    assert!(
        problem.contains(&format!("`{missing}`")) && problem.contains("does not exist"),
        "{problem}"
    );
    let problem = start_up_problem(as_login(&admin_like.name))
        .await
        .expect("a role that bypasses row-level security is refused");
    assert!(
        problem.contains(&format!("`{}`", admin_like.name)),
        "{problem}"
    );

    // `Config`'s fields are public, so a library user can list any name: it stays a name.
    let mut config = as_login("authenticated");
    config.auth.allowed_roles = vec![r"o'brien\'); select pg_sleep(5); --".into()];
    let problem = start_up_problem(config)
        .await
        .expect("an odd name is looked up as a name");
    assert!(problem.contains("does not exist"), "{problem}");

    editor.grant(&editor.name, &login.name).await;
    assert_eq!(start_up_problem(as_login(&listed)).await, None);

    // With DB_RLS=off no role is switched to, so none is checked.
    let config = config_with(url.as_str(), |b| {
        b.var("JWT_ALLOWED_ROLES", &missing).rls(false)
    });
    assert_eq!(start_up_problem(config).await, None);
    for role in [editor, admin_like, login] {
        role.drop_role().await;
    }
}

#[tokio::test]
async fn the_binary_exits_2_naming_a_listed_role_it_may_not_switch_to() {
    let db = TestDb::new().await;
    let login = TestRole::create(&db, "login").await;
    login.grant("authenticated", &login.name).await;
    let editor = TestRole::create(&db, "nologin").await;
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&login.name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::cli::bin(dir.path())
        .env("DATABASE_URL", url.as_str())
        .env("SUPABASE_JWT_SECRET", SECRET)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env(
            "JWT_ALLOWED_ROLES",
            format!("authenticated,{}", editor.name),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Were the role not checked, the service would start serving: bound the wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("`{}`", editor.name)), "{stderr}");
    editor.drop_role().await;
    login.drop_role().await;
}

#[test]
fn listing_a_project_key_role_exits_2_before_anything_runs() {
    for roles in ["authenticated,anon", "service_role"] {
        let dir = tempfile::tempdir().unwrap();
        // `mint` would print a token if the setting were ignored; it must not get that far.
        let out = crate::cli::bin(dir.path())
            .env("JWT_ALLOWED_ROLES", roles)
            .args(["mint", "--sub", DEMO_USER])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{roles}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("JWT_ALLOWED_ROLES"), "{stderr}");
        assert!(out.stdout.is_empty(), "a token was printed for {roles}");
    }
}
