//! Asymmetric tokens (ES256, RS256, EdDSA) verified from the project's key set, served here by
//! a local JWKS server that counts fetches and can rotate, fail or hang. Self-contained: its own
//! app and server helpers, the embedded SQLite store in a temp folder, no Postgres needed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use supabase_jwt_service::auth::{KeySet, Verifier};
use supabase_jwt_service::config::{Config, ConfigBuilder};
use supabase_jwt_service::testing::{DEMO_USER, SECRET};
use supabase_jwt_service::{AppState, Db, serve};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

/// Where Supabase serves the key set under the project URL.
pub const JWKS_PATH: &str = "/auth/v1/.well-known/jwks.json";
/// The usable keys in `tests/fixtures/jwks/jwks.json`, sorted.
const FIXTURE_KIDS: [&str; 4] = ["eddsa-key", "es256-key", "es256-noalg", "rs256-key"];
/// Generous bound on anything awaited, so a broken build fails instead of stalling CI.
const LIMIT: Duration = Duration::from_secs(30);

pub const ES256_PEM: &str = include_str!("../fixtures/jwks/keys/es256.pem");
const ES256_STANDBY_PEM: &str = include_str!("../fixtures/jwks/keys/es256-standby.pem");
const RS256_PEM: &str = include_str!("../fixtures/jwks/keys/rs256.pem");
const EDDSA_PEM: &str = include_str!("../fixtures/jwks/keys/eddsa.pem");
const ES256_PUBLIC_PEM: &str = include_str!("../fixtures/jwks/keys/es256.pub.pem");

pub fn fixture_jwks() -> Value {
    serde_json::from_str(include_str!("../fixtures/jwks/jwks.json")).expect("jwks.json")
}

fn fixture_tokens() -> Value {
    serde_json::from_str(include_str!("../fixtures/jwks/tokens.json")).expect("tokens.json")
}

/// `jwks.json` plus the standby key, as a project's set looks once a standby key is created.
fn fixture_jwks_with_standby() -> Value {
    let mut jwks = fixture_jwks();
    let standby = fixture_tokens()["standby_jwk"].clone();
    jwks["keys"].as_array_mut().expect("keys").push(standby);
    jwks
}

// --- a JWKS server ----------------------------------------------------------------------------

/// What the JWKS server answers.
#[derive(Clone)]
pub enum Mode {
    /// 200 with this JWK set.
    Serve(Value),
    /// 500.
    Fail,
    /// Holds each request until [`JwksServer::release`], then answers with the inner mode.
    Hold(Box<Mode>),
}

struct ServerState {
    mode: Mutex<Mode>,
    fetches: watch::Sender<usize>,
    release: Notify,
}

/// A key-set server on 127.0.0.1:0 that counts requests (`property.rs` uses it too).
pub struct JwksServer {
    /// `http://127.0.0.1:<port>`: the project URL to configure.
    pub base: String,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(mode: Mode) -> Self {
        let state = Arc::new(ServerState {
            mode: Mutex::new(mode),
            fetches: watch::channel(0).0,
            release: Notify::new(),
        });
        let app = axum::Router::new()
            .route(JWKS_PATH, axum::routing::get(answer))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{addr}"),
            state,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode") = mode;
    }

    pub fn fetches(&self) -> usize {
        *self.state.fetches.borrow()
    }

    /// Waits until at least `n` requests have arrived.
    async fn wait_for_fetches(&self, n: usize) {
        let mut rx = self.state.fetches.subscribe();
        tokio::time::timeout(LIMIT, rx.wait_for(|count| *count >= n))
            .await
            .expect("the service never fetched the key set")
            .expect("server gone");
    }

    /// Lets every held request answer.
    fn release(&self) {
        self.state.release.notify_waiters();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(state): State<Arc<ServerState>>) -> Response {
    let mut mode = state.mode.lock().expect("mode").clone();
    if let Mode::Hold(then) = mode {
        // Registered before the request is counted, so a release sent after the test sees the
        // count cannot be missed.
        let released = state.release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        state.fetches.send_modify(|n| *n += 1);
        released.await;
        mode = *then;
    } else {
        state.fetches.send_modify(|n| *n += 1);
    }
    match mode {
        Mode::Serve(body) => {
            let mut response = axum::Json(body).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=600"),
            );
            response
        }
        Mode::Fail | Mode::Hold(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

// --- the service ------------------------------------------------------------------------------

struct App {
    addr: SocketAddr,
    state: AppState,
    client: reqwest::Client,
    issuer: String,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl App {
    /// Builds the service against `jwks` (SUPABASE_URL = its base) on a fresh SQLite store,
    /// with the test kit's [`SECRET`] as the legacy secret, and serves it on 127.0.0.1:0.
    async fn spawn(jwks: &JwksServer, mutate: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        Self::spawn_inner(jwks, mutate, None).await
    }

    /// [`App::spawn`] with a key set whose unknown-`kid` cooldown is `cooldown`, so a test
    /// can see it end.
    async fn spawn_with_cooldown(jwks: &JwksServer, cooldown: Duration) -> Self {
        Self::spawn_inner(jwks, |b| b, Some(cooldown)).await
    }

    async fn spawn_inner(
        jwks: &JwksServer,
        mutate: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
        cooldown: Option<Duration>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let builder = supabase_jwt_service::testing::config()
            .database_url(&format!("sqlite://{}/t.db", dir.path().display()))
            .supabase_url(&jwks.base)
            .jwt_secret(SECRET);
        let config = mutate(builder).build().expect("config");
        let issuer = config.auth.issuer.clone().expect("issuer");
        let jwks_url = config.auth.jwks_url.clone().expect("jwks url");
        let state = match cooldown {
            None => AppState::build(config).await.expect("build state"),
            // A key set of the test's own: the config's is never built, so never fetches.
            Some(cooldown) => {
                let key_set = KeySet::with_cooldown(jwks_url, reqwest::Client::new(), cooldown);
                let verifier = Arc::new(Verifier::new(&config.auth, Some(key_set)));
                let db = Db::connect(&config.db).await.expect("open the store");
                AppState::from_parts(config, verifier, db)
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let app = supabase_jwt_service::App::new(state.clone()).with_profile_routes();
        tokio::spawn(serve(listener, app, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            client: reqwest::Client::builder()
                .timeout(LIMIT)
                .no_proxy()
                .build()
                .expect("client"),
            issuer,
            shutdown: Some(tx),
            _dir: dir,
        }
    }

    /// Serving the fixture set, whose tokens carry the fixture's issuer. No unknown-`kid`
    /// cooldown: each fixture case names the answer for its token alone, and several carry
    /// kids the set lacks; how the cooldown changes a later answer is tested on its own.
    async fn spawn_for_fixtures(jwks: &JwksServer) -> Self {
        let issuer = fixture_tokens()["issuer"]
            .as_str()
            .expect("issuer")
            .to_owned();
        Self::spawn_inner(jwks, |b| b.issuer(&issuer), Some(Duration::ZERO)).await
    }

    fn key_set(&self) -> &Arc<KeySet> {
        self.state
            .verifier()
            .key_set()
            .expect("SUPABASE_URL configures a key set")
    }

    async fn wait_until_keys_loaded(&self) {
        assert!(
            self.key_set().wait_until_ready(LIMIT).await,
            "key set never loaded"
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get_name(&self, token: &str) -> reqwest::Response {
        self.client
            .get(self.url("/name"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    async fn readyz(&self) -> u16 {
        self.client
            .get(self.url("/readyz"))
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Supabase-shaped user claims for the demo profile, issued by `issuer`, valid for an hour.
fn claims(issuer: &str) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({
        "iss": issuer,
        "sub": DEMO_USER,
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "demo@example.com",
        "role": "authenticated",
        "aal": "aal1",
        "session_id": "0e6d1c3a-6f0e-4b8e-8d51-2f7c9a1b3c4d",
        "is_anonymous": false,
    })
}

/// Signs `claims` with our own `jsonwebtoken`, naming `kid` in the header.
fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn es256_key() -> EncodingKey {
    EncodingKey::from_ec_pem(ES256_PEM.as_bytes()).expect("es256 pem")
}

fn es256_token(app: &App) -> String {
    sign(
        Algorithm::ES256,
        Some("es256-key"),
        &es256_key(),
        &claims(&app.issuer),
    )
}

/// ES256 with a `kid` the set does not have (signed by a key the set has: the kid decides).
fn unknown_kid_token(app: &App, kid: &str) -> String {
    sign(
        Algorithm::ES256,
        Some(kid),
        &es256_key(),
        &claims(&app.issuer),
    )
}

fn b64(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn assert_demo_user(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 200, "{what}");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body, json!({"full_name": "Demo User"}), "{what}");
}

/// Asserts the contract's error shape; returns the headers for further checks.
async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
    what: &str,
) -> reqwest::header::HeaderMap {
    let headers = response.headers().clone();
    let got = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "{what}: {body}"
    );
    if status == 401 {
        assert_eq!(
            headers[header::WWW_AUTHENTICATE.as_str()],
            "Bearer error=\"invalid_token\"",
            "{what}"
        );
    }
    headers
}

async fn assert_unavailable(response: reqwest::Response, what: &str) {
    let headers = assert_error(response, 503, "unavailable", what).await;
    assert!(
        headers.contains_key(header::RETRY_AFTER.as_str()),
        "{what}: no Retry-After"
    );
}

// --- tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn pyjwt_signed_fixture_tokens_get_the_answers_the_contract_names() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = App::spawn_for_fixtures(&jwks).await;
    app.wait_until_keys_loaded().await;

    let tokens = fixture_tokens();
    let cases = tokens["cases"].as_object().expect("cases");
    assert!(cases.len() >= 20);
    for (name, case) in cases {
        let response = app.get_name(case["token"].as_str().expect("token")).await;
        let status = u16::try_from(case["status"].as_u64().expect("status")).expect("u16");
        match case["error"].as_str() {
            None => assert_demo_user(response, name).await,
            Some(code) => {
                assert_error(response, status, code, name).await;
            }
        }
    }
}

#[tokio::test]
async fn each_jwk_maps_to_one_algorithm_and_contradicting_or_foreign_entries_are_skipped() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = App::spawn_for_fixtures(&jwks).await;
    app.wait_until_keys_loaded().await;

    let kids = app.key_set().kids();
    let expected = [
        ("eddsa-key", Algorithm::EdDSA),
        ("es256-key", Algorithm::ES256),
        // No `alg` in its JWK: the type's one algorithm.
        ("es256-noalg", Algorithm::ES256),
        ("rs256-key", Algorithm::RS256),
    ];
    let kids: Vec<(&str, Algorithm)> = kids.iter().map(|(k, a)| (k.as_str(), *a)).collect();
    // Skipped: RSA with alg ES256, P-384, use=enc, 1024-bit RSA, oct.
    assert_eq!(kids, expected);
    assert_eq!(
        kids.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        FIXTURE_KIDS
    );
}

#[tokio::test]
async fn tokens_signed_at_test_time_with_es256_rs256_and_eddsa_are_accepted() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    // Issuer derived from SUPABASE_URL: <base>/auth/v1.
    let app = App::spawn(&jwks, |b| b).await;
    assert_eq!(app.issuer, format!("{}/auth/v1", jwks.base));
    app.wait_until_keys_loaded().await;

    let cases = [
        (
            Algorithm::ES256,
            "es256-key",
            EncodingKey::from_ec_pem(ES256_PEM.as_bytes()),
        ),
        (
            Algorithm::RS256,
            "rs256-key",
            EncodingKey::from_rsa_pem(RS256_PEM.as_bytes()),
        ),
        (
            Algorithm::EdDSA,
            "eddsa-key",
            EncodingKey::from_ed_pem(EDDSA_PEM.as_bytes()),
        ),
    ];
    for (alg, kid, key) in cases {
        let token = sign(alg, Some(kid), &key.expect("pem"), &claims(&app.issuer));
        assert_demo_user(app.get_name(&token).await, kid).await;
        let me: Value = app
            .client
            .get(app.url("/me"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON");
        assert_eq!(me["id"], DEMO_USER, "{kid}");
    }
    // All from the one fetch made at start.
    assert_eq!(jwks.fetches(), 1);
}

#[tokio::test]
async fn algorithm_and_key_mismatches_are_invalid_token() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = App::spawn(&jwks, |b| b).await;
    app.wait_until_keys_loaded().await;
    let claims = claims(&app.issuer);
    let es256_x = fixture_jwks()["keys"][0]["x"]
        .as_str()
        .expect("x")
        .to_owned();

    let cases = [
        (
            "ES256 header naming the RSA key's kid",
            sign(Algorithm::ES256, Some("rs256-key"), &es256_key(), &claims),
        ),
        (
            "RS256 header naming the EC key's kid",
            sign(
                Algorithm::RS256,
                Some("es256-key"),
                &EncodingKey::from_rsa_pem(RS256_PEM.as_bytes()).expect("pem"),
                &claims,
            ),
        ),
        (
            "HS256 signed with the EC public key's PEM",
            sign(
                Algorithm::HS256,
                Some("es256-key"),
                &EncodingKey::from_secret(ES256_PUBLIC_PEM.as_bytes()),
                &claims,
            ),
        ),
        (
            "HS256 signed with the EC JWK's x",
            sign(
                Algorithm::HS256,
                Some("es256-key"),
                &EncodingKey::from_secret(es256_x.as_bytes()),
                &claims,
            ),
        ),
        (
            "alg none naming a real kid",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": "es256-key"})),
                b64(&claims)
            ),
        ),
        (
            "ES256 without a kid",
            sign(Algorithm::ES256, None, &es256_key(), &claims),
        ),
        (
            "ES256 signed by a key that is not the kid's",
            sign(
                Algorithm::ES256,
                Some("es256-key"),
                &EncodingKey::from_ec_pem(ES256_STANDBY_PEM.as_bytes()).expect("pem"),
                &claims,
            ),
        ),
    ];
    for (what, token) in cases {
        assert_error(app.get_name(&token).await, 401, "invalid_token", what).await;
    }
}

#[tokio::test]
async fn a_key_added_to_the_set_is_accepted_right_away_without_restart() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = App::spawn(&jwks, |b| b).await;
    app.wait_until_keys_loaded().await;
    assert_eq!(jwks.fetches(), 1);
    let standby = sign(
        Algorithm::ES256,
        Some("es256-standby"),
        &EncodingKey::from_ec_pem(ES256_STANDBY_PEM.as_bytes()).expect("pem"),
        &claims(&app.issuer),
    );

    // The project rotates: the standby key appears in the set and starts signing.
    jwks.set(Mode::Serve(fixture_jwks_with_standby()));
    assert_demo_user(app.get_name(&standby).await, "standby key after rotation").await;
    assert_eq!(jwks.fetches(), 2, "one refetch for the unknown kid");
    // The previous key keeps working, and neither needs another fetch.
    assert_demo_user(app.get_name(&es256_token(&app)).await, "previous key").await;
    assert_demo_user(app.get_name(&standby).await, "standby key again").await;
    assert_eq!(jwks.fetches(), 2);
}

/// An ES256 token signed by the standby key, naming it (`es256-standby`).
fn standby_token(app: &App) -> String {
    sign(
        Algorithm::ES256,
        Some("es256-standby"),
        &EncodingKey::from_ec_pem(ES256_STANDBY_PEM.as_bytes()).expect("pem"),
        &claims(&app.issuer),
    )
}

/// `(status, error code)` of an answer, reading its body.
async fn status_and_code(response: reqwest::Response) -> (u16, Option<String>) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kid_tokens_eight_at_a_time_are_all_401_with_at_most_a_few_fetches() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const TOKENS: usize = 200;
    const AT_ONCE: usize = 8;
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    // The service's own unknown-kid cooldown (30 s), as it ships.
    let app = Arc::new(App::spawn(&jwks, |b| b).await);
    app.wait_until_keys_loaded().await;
    assert_eq!(jwks.fetches(), 1);

    // Eight clients, each sending the next token as soon as its previous one is answered.
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..AT_ONCE {
        let (app, next) = (Arc::clone(&app), Arc::clone(&next));
        clients.spawn(async move {
            let mut answers = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < TOKENS {
                let kid = uuid::Uuid::new_v4().to_string();
                let response = app.get_name(&unknown_kid_token(&app, &kid)).await;
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap_or_default().to_owned());
                let (status, code) = status_and_code(response).await;
                answers.push((status, code, challenge));
            }
            answers
        });
    }
    let mut tally: BTreeMap<(u16, Option<String>), usize> = BTreeMap::new();
    while let Some(answers) = clients.join_next().await {
        for (status, code, challenge) in answers.expect("client task") {
            if status == 401 {
                assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""));
            }
            *tally.entry((status, code)).or_default() += 1;
        }
    }
    let refetches = jwks.fetches() - 1;
    eprintln!(
        "jwks: {TOKENS} random-kid tokens, {AT_ONCE} at a time: {tally:?}, {refetches} refetch(es)"
    );
    assert_eq!(
        tally,
        BTreeMap::from([((401, Some("invalid_token".to_owned())), TOKENS)]),
        "an unknown kid is a bad token, inside the refetch cooldown too"
    );
    assert!(
        (1..=2).contains(&refetches),
        "one refetch per cooldown, not one per token: {refetches}"
    );
}

#[tokio::test]
async fn a_key_published_after_a_refetch_is_401_then_accepted_within_cooldown_plus_1s() {
    let cooldown = Duration::from_secs(3);
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = App::spawn_with_cooldown(&jwks, cooldown).await;
    app.wait_until_keys_loaded().await;

    // A token with a kid the fresh set lacks is invalid: the refetch it caused says so, and
    // that refetch starts the cooldown.
    let unknown = unknown_kid_token(&app, "never-published");
    assert_error(app.get_name(&unknown).await, 401, "invalid_token", "first").await;
    assert_eq!(jwks.fetches(), 2, "one refetch for the unknown kid");

    // Right after, the project publishes its standby key and a token signed with it arrives,
    // retried every 100 ms as an impatient client would.
    jwks.set(Mode::Serve(fixture_jwks_with_standby()));
    let published = std::time::Instant::now();
    let standby = standby_token(&app);
    let mut answers: Vec<(u16, Option<String>)> = Vec::new();
    let accepted_after = loop {
        let (status, code) = status_and_code(app.get_name(&standby).await).await;
        answers.push((status, code));
        if status == 200 {
            break Some(published.elapsed());
        }
        if published.elapsed() > cooldown + Duration::from_secs(2) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let server_errors = answers.iter().filter(|(s, _)| *s >= 500).count();
    let refused = answers
        .iter()
        .filter(|(s, c)| *s == 401 && c.as_deref() == Some("invalid_token"))
        .count();
    eprintln!(
        "jwks: key published after a refetch, cooldown {cooldown:?}: {refused} × 401, \
         {server_errors} × 5xx, accepted after {accepted_after:?}"
    );
    assert_eq!(
        server_errors, 0,
        "an unknown kid is never a 5xx: {answers:?}"
    );
    assert_eq!(
        refused + 1,
        answers.len(),
        "every answer before the first 200 is 401 invalid_token: {answers:?}"
    );
    let accepted_after = accepted_after.expect("the new key was never accepted");
    assert!(
        accepted_after <= cooldown + Duration::from_secs(1),
        "accepted {accepted_after:?} after publication; cooldown {cooldown:?}"
    );
    assert!(refused > 0, "the cooldown held the refetch back");
    assert_eq!(jwks.fetches(), 3, "one refetch once the cooldown ended");

    // A kid that the fresh fetch still lacks is invalid, inside the new cooldown too, and
    // costs no fetch.
    assert_error(
        app.get_name(&unknown).await,
        401,
        "invalid_token",
        "still unknown, cooling down",
    )
    .await;
    assert_eq!(jwks.fetches(), 3);
}

#[tokio::test]
async fn a_flood_of_unknown_kid_tokens_shares_one_fetch_and_is_all_401() {
    const FLOOD: usize = 500;
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = Arc::new(App::spawn(&jwks, |b| b).await);
    app.wait_until_keys_loaded().await;
    assert_eq!(jwks.fetches(), 1);

    // The refetch is held open while the flood arrives, so the requests really overlap it.
    jwks.set(Mode::Hold(Box::new(Mode::Serve(fixture_jwks()))));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let app = Arc::clone(&app);
        flood.spawn(async move {
            let token = unknown_kid_token(&app, &format!("flood-{i}"));
            status_and_code(app.get_name(&token).await).await
        });
    }
    jwks.wait_for_fetches(2).await;
    jwks.release();
    let mut answered = 0;
    while let Some(result) = flood.join_next().await {
        let (status, code) = result.expect("request task");
        // Requests that waited on the shared fetch learn the kid is not in the set; any that
        // arrived after it landed meet the cooldown, which changes nothing: the latest fetch
        // succeeded, so the kid is not the project's.
        assert_eq!((status, code.as_deref()), (401, Some("invalid_token")));
        answered += 1;
    }
    assert_eq!(answered, FLOOD);
    assert_eq!(
        jwks.fetches(),
        2,
        "the start-up fetch and one shared refetch"
    );
}

#[tokio::test]
async fn when_the_key_set_server_fails_cached_keys_work_and_unknown_kids_get_503() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = App::spawn(&jwks, |b| b).await;
    app.wait_until_keys_loaded().await;

    jwks.set(Mode::Fail);
    assert_demo_user(app.get_name(&es256_token(&app)).await, "cached key").await;
    let unknown = unknown_kid_token(&app, "rotated-in-while-down");
    assert_unavailable(app.get_name(&unknown).await, "unknown kid, set down").await;
    assert!(jwks.fetches() >= 2, "the unknown kid caused a refetch");
    // Inside the cooldown the answer is still 503, not 401: the latest fetch failed, so
    // nothing fresh says the kid is bad.
    assert_unavailable(app.get_name(&unknown).await, "again, within cooldown").await;
    // A failed refresh keeps the last good keys, and readiness.
    assert!(app.key_set().refresh().await.is_err());
    assert_demo_user(app.get_name(&es256_token(&app)).await, "after failures").await;
    assert_eq!(app.readyz().await, 200);

    // Once the server is back, an explicit refresh brings the set in ...
    jwks.set(Mode::Serve(fixture_jwks()));
    assert_eq!(app.key_set().refresh().await, Ok(FIXTURE_KIDS.len()));
    // ... and from then on the latest fetch says what the set holds: the kid it lacks is
    // invalid at once, though the cooldown the failed refetch started still runs.
    let fetches = jwks.fetches();
    assert_error(
        app.get_name(&unknown).await,
        401,
        "invalid_token",
        "unknown kid after a successful fetch, within the cooldown",
    )
    .await;
    assert_eq!(jwks.fetches(), fetches, "no fetch inside the cooldown");
}

/// A header of `fields` over `claims`, signed with ES256 by `key` whatever the header says.
fn es256_with_header(fields: &Value, key: &EncodingKey, claims: &Value) -> String {
    let message = format!("{}.{}", b64(fields), b64(claims));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::ES256).expect("sign");
    format!("{message}.{signature}")
}

#[tokio::test]
async fn tokens_bringing_their_own_key_or_an_absurd_kid_are_401_and_never_fetch_theirs() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    // The attacker's key set: the standby key, which the project does not publish here.
    let attacker = JwksServer::start(Mode::Serve(json!({"keys": [
        fixture_tokens()["standby_jwk"].clone()
    ]})))
    .await;
    let app = App::spawn(&jwks, |b| b).await;
    app.wait_until_keys_loaded().await;

    let attackers_key = EncodingKey::from_ec_pem(ES256_STANDBY_PEM.as_bytes()).expect("pem");
    let own_jwk = fixture_tokens()["standby_jwk"].clone();
    let jku = format!("{}{JWKS_PATH}", attacker.base);
    let claims = claims(&app.issuer);
    // A kid of k's whose token still fits the bearer limit (so the verifier looks it up), and
    // one whose token does not (the bearer parser refuses it; the verifier is asked below).
    let long_kid = "k".repeat(8_600);
    let huge_kid = "k".repeat(11_000);
    let limit = supabase_jwt_service::testing::MAX_TOKEN_LEN;
    let fits = |kid: &str| {
        es256_with_header(
            &json!({"alg": "ES256", "kid": kid}),
            &attackers_key,
            &claims,
        )
        .len()
            <= limit
    };
    assert!(fits(&long_kid) && !fits(&huge_kid));
    let headers = [
        (
            "jku naming an unknown kid",
            json!({"alg": "ES256", "kid": "attacker", "jku": jku}),
        ),
        (
            "jku naming the project's kid",
            json!({"alg": "ES256", "kid": "es256-key", "jku": jku}),
        ),
        (
            "embedded jwk, no kid",
            json!({"alg": "ES256", "jwk": own_jwk}),
        ),
        (
            "embedded jwk, its own kid",
            json!({"alg": "ES256", "kid": "es256-standby", "jwk": own_jwk}),
        ),
        (
            "embedded jwk, the project's kid",
            json!({"alg": "ES256", "kid": "es256-key", "jwk": own_jwk}),
        ),
        (
            "x5u",
            json!({"alg": "ES256", "kid": "attacker", "x5u": jku}),
        ),
        (
            "a kid of 8,600 k's",
            json!({"alg": "ES256", "kid": long_kid}),
        ),
        (
            "a kid of 11,000 k's",
            json!({"alg": "ES256", "kid": huge_kid}),
        ),
        ("an empty kid", json!({"alg": "ES256", "kid": ""})),
        (
            "a kid of control characters",
            json!({"alg": "ES256", "kid": "\u{0}\n\u{1b}[31m"}),
        ),
        (
            "RS256, unknown kid",
            json!({"alg": "RS256", "kid": "attacker"}),
        ),
        (
            "EdDSA, unknown kid",
            json!({"alg": "EdDSA", "kid": "attacker"}),
        ),
    ];
    let mut answers = Vec::new();
    // Twice: the second round meets the unknown-kid cooldown the first one started.
    for round in 1..=2 {
        for (what, fields) in &headers {
            let token = es256_with_header(fields, &attackers_key, &claims);
            let (status, code) = status_and_code(app.get_name(&token).await).await;
            answers.push((round, *what, status, code));
        }
    }
    let refused = answers
        .iter()
        .filter(|(_, _, s, c)| *s == 401 && c.as_deref() == Some("invalid_token"))
        .count();
    eprintln!(
        "jwks: tokens bringing their own key: {refused}/{} × 401; attacker fetched {} time(s)",
        answers.len(),
        attacker.fetches()
    );
    for (round, what, status, code) in &answers {
        assert_eq!(
            (*status, code.as_deref()),
            (401, Some("invalid_token")),
            "{what}, round {round}"
        );
    }
    assert_eq!(
        attacker.fetches(),
        0,
        "the token's own key location is never read"
    );
    assert!(
        jwks.fetches() <= 2,
        "one refetch for all those unknown kids: {}",
        jwks.fetches()
    );

    // Past the bearer limit, the verifier itself (as a library user's extractor would call
    // it) calls an 11,000-k kid unknown, inside the cooldown, without another fetch.
    let token = es256_with_header(&headers[7].1, &attackers_key, &claims);
    assert_eq!(
        app.state.verifier().verify(&token).await.err(),
        Some(supabase_jwt_service::auth::AuthError::UnknownKid)
    );
    assert!(jwks.fetches() <= 2);
}

#[tokio::test]
async fn a_hanging_key_set_server_never_holds_up_tokens_with_known_kids() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = Arc::new(App::spawn(&jwks, |b| b).await);
    app.wait_until_keys_loaded().await;

    jwks.set(Mode::Hold(Box::new(Mode::Fail)));
    let waiting = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let token = unknown_kid_token(&app, "while-hanging");
            app.get_name(&token).await
        })
    };
    jwks.wait_for_fetches(2).await;
    // The refetch is stuck; a token whose kid is cached is answered anyway.
    assert_demo_user(app.get_name(&es256_token(&app)).await, "known kid").await;
    assert!(
        !waiting.is_finished(),
        "the unknown-kid request waits for the fetch"
    );
    jwks.release();
    let response = waiting.await.expect("request task");
    assert_unavailable(response, "unknown kid after a failed fetch").await;
}

#[tokio::test]
async fn startup_does_not_wait_for_the_key_set_and_readyz_is_503_until_it_loads() {
    let jwks = JwksServer::start(Mode::Hold(Box::new(Mode::Fail))).await;
    let app = App::spawn(&jwks, |b| b).await;
    // The first fetch is stuck, yet the service is up and HS256 works.
    jwks.wait_for_fetches(1).await;
    assert_eq!(app.readyz().await, 503);
    let hs256 = sign(
        Algorithm::HS256,
        Some("legacy"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(&app.issuer),
    );
    assert_demo_user(app.get_name(&hs256).await, "HS256 while the key set hangs").await;

    // The first fetch fails: still not ready, and a signed token cannot be checked (503).
    jwks.set(Mode::Fail);
    jwks.release();
    assert!(app.key_set().refresh().await.is_err());
    assert!(!app.key_set().is_ready());
    assert_eq!(app.readyz().await, 503);
    assert_unavailable(
        app.get_name(&es256_token(&app)).await,
        "no key set loaded yet",
    )
    .await;

    jwks.set(Mode::Serve(fixture_jwks()));
    assert_eq!(app.key_set().refresh().await, Ok(FIXTURE_KIDS.len()));
    assert_eq!(app.readyz().await, 200);
    assert_demo_user(app.get_name(&es256_token(&app)).await, "after loading").await;
}

#[tokio::test]
async fn a_legacy_only_project_with_an_empty_key_set_still_accepts_hs256() {
    let jwks = JwksServer::start(Mode::Serve(json!({"keys": []}))).await;
    let app = App::spawn(&jwks, |b| b).await;
    app.wait_until_keys_loaded().await;
    assert_eq!(app.readyz().await, 200);

    // Supabase puts a kid on legacy HS256 tokens too: it must not send us to the key set.
    let hs256 = sign(
        Algorithm::HS256,
        Some("legacy-kid"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(&app.issuer),
    );
    assert_demo_user(app.get_name(&hs256).await, "HS256 with a kid").await;
    assert_eq!(jwks.fetches(), 1, "HS256 never touches the key set");
    assert_error(
        app.get_name(&es256_token(&app)).await,
        401,
        "invalid_token",
        "ES256 against an empty set",
    )
    .await;
}

#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_leaves_the_set() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks_with_standby())).await;
    let app = App::spawn(&jwks, |b| b).await;
    app.wait_until_keys_loaded().await;
    let token = es256_token(&app);
    for _ in 0..2 {
        assert_demo_user(app.get_name(&token).await, "before revocation").await;
    }
    assert_eq!(
        app.state.verifier().cached_tokens(),
        1,
        "the token is cached"
    );

    // The project revokes es256-key: it disappears from the set at the next refresh.
    let mut revoked = fixture_jwks_with_standby();
    revoked["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["kid"] != "es256-key");
    jwks.set(Mode::Serve(revoked));
    assert_eq!(app.key_set().refresh().await, Ok(FIXTURE_KIDS.len()));
    assert!(!app.key_set().has_key("es256-key"));
    assert_error(
        app.get_name(&token).await,
        401,
        "invalid_token",
        "cached token of a revoked key",
    )
    .await;
}

#[tokio::test]
async fn key_set_fetches_and_loaded_keys_are_counted_in_metrics() {
    // The binary, so that its counts are its own: the recorder is process-wide, and other
    // tests in this process fetch key sets too. Its first fetch is held until the metrics
    // listener is up: `serve` installs the recorder after the state began fetching, and a
    // fetch done before that is counted nowhere (reported to the lead; not what this checks).
    let jwks = JwksServer::start(Mode::Hold(Box::new(Mode::Serve(fixture_jwks())))).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = crate::cli::bin(dir.path());
    cmd.env(
        "DATABASE_URL",
        format!("sqlite://{}/t.db", dir.path().display()),
    )
    .env("SUPABASE_URL", &jwks.base)
    .env("SUPABASE_JWT_SECRET", SECRET)
    .env("HOST", "127.0.0.1")
    .env("METRICS_ADDR", "127.0.0.1:0");
    let server = tokio::task::spawn_blocking(move || crate::cli::Server::start(cmd))
        .await
        .expect("start the binary");
    let metrics_addr = server.metrics_addr();
    jwks.wait_for_fetches(1).await;
    jwks.set(Mode::Serve(fixture_jwks()));
    jwks.release();
    let client = reqwest::Client::builder()
        .timeout(LIMIT)
        .no_proxy()
        .build()
        .expect("client");
    let scrape = || {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{metrics_addr}/metrics"))
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("body")
        }
    };
    let deadline = std::time::Instant::now() + LIMIT;
    let mut text = scrape().await;
    while !text.contains("jwks_keys_loaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "key set never loaded: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape().await;
    }
    assert!(
        text.contains(r#"jwks_fetches_total{result="ok"} 1"#),
        "{text}"
    );
    assert!(text.contains("jwks_keys_loaded 4"), "{text}");

    jwks.set(Mode::Fail);
    let issuer = format!("{}/auth/v1", jwks.base);
    let unknown = sign(
        Algorithm::ES256,
        Some("counted"),
        &es256_key(),
        &claims(&issuer),
    );
    let answer = client
        .get(server.url("/name"))
        .bearer_auth(&unknown)
        .send()
        .await
        .expect("request");
    assert_unavailable(answer, "unknown kid, set down").await;
    let text = scrape().await;
    assert!(
        text.contains(r#"jwks_fetches_total{result="http_error"}"#),
        "{text}"
    );
    assert!(
        text.contains("jwks_keys_loaded 4"),
        "a failed fetch keeps the loaded keys: {text}"
    );
}

#[tokio::test]
async fn a_cached_token_is_refused_once_its_kid_names_other_material() {
    let jwks = JwksServer::start(Mode::Serve(fixture_jwks())).await;
    let app = App::spawn(&jwks, |b| b).await;
    app.wait_until_keys_loaded().await;
    let token = es256_token(&app);
    for _ in 0..2 {
        assert_demo_user(app.get_name(&token).await, "before the swap").await;
    }
    assert_eq!(
        app.state.verifier().cached_tokens(),
        1,
        "the token is cached"
    );

    // The set now publishes the standby key's material under the old kid.
    let mut swapped = fixture_jwks();
    let mut standby = fixture_tokens()["standby_jwk"].clone();
    standby["kid"] = json!("es256-key");
    for key in swapped["keys"].as_array_mut().expect("keys") {
        if key["kid"] == "es256-key" {
            *key = standby.clone();
        }
    }
    jwks.set(Mode::Serve(swapped));
    assert_eq!(app.key_set().refresh().await, Ok(FIXTURE_KIDS.len()));
    assert!(
        app.key_set().has_key("es256-key"),
        "the kid alone still matches"
    );
    assert_error(
        app.get_name(&token).await,
        401,
        "invalid_token",
        "cached token of material no longer under its kid",
    )
    .await;
    assert!(
        app.state.verifier().cached_tokens() == 0,
        "and it left the cache"
    );
}

// --- where the keys may come from --------------------------------------------------------------

/// A server on `ip`:0 whose every path answers a redirect to `location(path)` or, for `keys`,
/// the fixture set; it counts requests.
async fn redirecting_server(
    ip: &str,
    location: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> (String, Arc<std::sync::atomic::AtomicUsize>, JoinHandle<()>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let location = Arc::new(location);
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let counter = Arc::clone(&counter);
        let location = Arc::clone(&location);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            match location(uri.path()) {
                Some(to) => {
                    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
                }
                None => axum::Json(fixture_jwks()).into_response(),
            }
        }
    });
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), hits, task)
}

/// The service with SUPABASE_URL = `base` (no JwksServer), on a fresh SQLite store.
async fn app_for(base: &str) -> (AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::builder()
        .database_url(&format!("sqlite://{}/t.db", dir.path().display()))
        .supabase_url(base)
        .jwt_secret(SECRET)
        .metrics_addr(None)
        .build()
        .expect("config");
    (AppState::build(config).await.expect("state"), dir)
}

#[tokio::test]
async fn the_key_set_is_never_taken_from_another_host_after_a_redirect() {
    use std::sync::atomic::Ordering;
    // The other host: a server on 127.0.0.2 that would serve a perfectly good set.
    let (elsewhere, elsewhere_hits, _b) = redirecting_server("127.0.0.2", |_| None).await;
    let target = format!("{elsewhere}{JWKS_PATH}");
    let (base, hits, _a) = redirecting_server("127.0.0.1", move |_| Some(target.clone())).await;
    let (state, _dir) = app_for(&base).await;
    let key_set = state.verifier().key_set().expect("key set");

    let outcome = key_set.refresh().await;
    assert!(
        matches!(
            outcome,
            Err(supabase_jwt_service::auth::KeySetError::Status(307))
        ),
        "{outcome:?}"
    );
    assert!(hits.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the other host was never asked"
    );
    assert!(!key_set.is_ready());
}

#[tokio::test]
async fn same_origin_redirects_are_followed_a_few_times_only() {
    use std::sync::atomic::Ordering;
    // One hop within the origin, as a moved path would be: followed.
    let (base, _, _a) = redirecting_server("127.0.0.1", |path| {
        (path == JWKS_PATH).then(|| "/keys".to_owned())
    })
    .await;
    let (state, _dir) = app_for(&base).await;
    let key_set = state.verifier().key_set().expect("key set");
    assert_eq!(key_set.refresh().await, Ok(FIXTURE_KIDS.len()));

    // A loop within the origin: given up after a few hops.
    let (base, hits, _b) = redirecting_server("127.0.0.1", |path| {
        Some(if path == "/a" { "/b" } else { "/a" }.to_owned())
    })
    .await;
    let (state, _dir) = app_for(&base).await;
    let key_set = state.verifier().key_set().expect("key set");
    let before = hits.load(Ordering::SeqCst);
    let outcome = key_set.refresh().await;
    assert!(
        matches!(
            outcome,
            Err(supabase_jwt_service::auth::KeySetError::Status(307))
        ),
        "{outcome:?}"
    );
    let asked = hits.load(Ordering::SeqCst) - before;
    assert!((1..=4).contains(&asked), "{asked} requests for one fetch");
}

#[test]
fn supabase_url_must_be_https_unless_the_host_is_loopback() {
    let config = |url: &str| {
        Config::builder()
            .database_url("sqlite://unused.db")
            .supabase_url(url)
            .build()
    };
    for refused in [
        "http://abcd.supabase.co",
        "http://10.0.0.5:54321",
        "http://[fe80::1]:54321",
        "http://localhost.example.com",
        "http://0.0.0.0:54321",
    ] {
        let err = config(refused).expect_err(refused);
        assert_eq!(err.var, "SUPABASE_URL", "{refused}");
    }
    for accepted in [
        "https://abcd.supabase.co",
        "http://127.0.0.1:54321",
        "http://127.8.9.10:54321",
        "http://localhost:54321",
        "http://LOCALHOST.:54321",
        "http://[::1]:54321",
    ] {
        assert!(config(accepted).is_ok(), "{accepted}");
    }
}

#[test]
fn an_http_supabase_url_for_another_host_exits_2_with_one_line() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = crate::cli::bin(dir.path())
        .env("SUPABASE_URL", "http://abcd.supabase.co")
        .env("SUPABASE_JWT_SECRET", SECRET)
        .env("PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run binary");
    // Bounded: a build that accepts the URL starts serving instead of exiting.
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary accepted an http:// SUPABASE_URL and kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("SUPABASE_URL") && stderr.contains("https"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET));
}
