//! The chat example (`examples/chat`) from outside: its binary over real HTTP, a fake
//! OpenAI-compatible upstream on port 0, and real Postgres (or the embedded SQLite store).
//! Every row of issue 14's HTTP contract, the quota race on one and two instances, RLS, and a
//! client that goes away mid-answer; then issue 17's bounds: what one request may cost and
//! store, charged whatever happens to the history, a client that stops reading, exact grants,
//! and the model's URL kept out of the log.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::fake_llm::FakeLlm;
use crate::helpers::{
    SECRET, TestDb, assert_error, claims, claims_in_session, client, example_binary, sign,
    token_for,
};

/// A running instance of the example; killed when dropped.
struct ChatApp {
    child: Child,
    base: String,
    /// Its stderr (the log) so far.
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl ChatApp {
    /// Starts the example with the test secret, on 127.0.0.1:0, plus `env`; waits (at most
    /// 60 s) for the line saying where it listens.
    fn spawn(database_url: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(example_binary("chat"));
        // A clean environment (and a folder without a .env), so nothing of the developer's
        // shell, such as an LLM_BASE_URL, leaks into the test.
        command
            .env_clear()
            .current_dir(dir.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("METRICS_ADDR", "off")
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                if std::env::var("TEST_LOG").is_ok() {
                    "info"
                } else {
                    "error"
                },
            )
            .env("SUPABASE_JWT_SECRET", SECRET)
            .env("DATABASE_URL", database_url)
            .env("CHAT_LOCAL_DELAY_MS", "5")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the chat example");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let echo = std::env::var("TEST_LOG").is_ok();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if echo {
                    eprintln!("{line}");
                }
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("chat listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let Ok(base) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("the chat example did not start within 60 s (TEST_LOG=1 shows its log)");
        };
        Self {
            child,
            base,
            log,
            _dir: dir,
        }
    }

    /// What it logged so far.
    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn chat(&self, token: &str, body: &Value) -> reqwest::Response {
        client()
            .post(self.url("/chat"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST /chat")
    }

    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }
}

impl Drop for ChatApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    name: String,
    data: Value,
}

/// Reads server-sent events from a response as they arrive.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, `None` at the end of the stream; at most 30 s.
    async fn next(&mut self) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return Some(Event {
                    name,
                    data: serde_json::from_str(&data).expect("event data is JSON"),
                });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no event within 30 s")
                .expect("stream read");
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8")),
                None => return None,
            }
        }
    }

    async fn rest(mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            events.push(e);
        }
        events
    }
}

/// The text of all `delta` events.
fn text_of(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.name == "delta")
        .map(|e| e.data["text"].as_str().expect("delta text"))
        .collect()
}

async fn seeded_db(users: &[Uuid]) -> TestDb {
    let db = TestDb::new().await;
    for user in users {
        db.seed_user(*user, None).await;
    }
    db
}

/// The stored messages of a conversation, read as superuser: (role, content, incomplete).
async fn stored(db: &TestDb, conversation: Uuid) -> Vec<(String, String, bool)> {
    sqlx::query_as(
        "select role, content, incomplete from public.chat_messages \
         where conversation_id = $1 order by id",
    )
    .bind(conversation)
    .fetch_all(&db.pool)
    .await
    .expect("read messages")
}

#[tokio::test]
async fn chat_streams_meta_deltas_and_done_then_stores_the_turn_and_sends_history_upstream() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("LLM_BASE_URL", &base),
            ("LLM_API_KEY", "sk-test-key"),
            ("LLM_MODEL", "fake-1"),
        ],
    );
    let token = token_for(user);

    let response = app
        .chat(&token, &json!({"message": "hello streaming world"}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let events = Events::new(response).rest().await;
    assert_eq!(events[0].name, "meta");
    let conversation: Uuid = serde_json::from_value(events[0].data["conversation_id"].clone())
        .expect("conversation_id is a UUID");
    assert_eq!(text_of(&events), "hello streaming world ");
    assert_eq!(
        events.iter().filter(|e| e.name == "delta").count(),
        3,
        "one delta per upstream chunk"
    );
    let done = events.last().expect("events");
    assert_eq!(done.name, "done");
    assert_eq!(
        done.data["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3})
    );

    let sent = fake.last_body();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["model"], "fake-1");
    assert_eq!(
        fake.seen.last_authorization.lock().unwrap().as_deref(),
        Some("Bearer sk-test-key")
    );

    assert_eq!(
        stored(&db, conversation).await,
        vec![
            ("user".into(), "hello streaming world".into(), false),
            ("assistant".into(), "hello streaming world ".into(), false),
        ]
    );

    let list: Value = app
        .get(&token, "/conversations")
        .await
        .json()
        .await
        .unwrap();
    let list = list["conversations"].as_array().expect("conversations");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], conversation.to_string());
    assert_eq!(list[0]["title"], "hello streaming world");
    assert!(list[0]["updated_at"].is_string());

    let response = app
        .get(&token, &format!("/conversations/{conversation}"))
        .await;
    assert_eq!(response.status(), 200);
    let one: Value = response.json().await.unwrap();
    assert_eq!(one["id"], conversation.to_string());
    let roles: Vec<&str> = one["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);
    assert!(one["messages"][0]["created_at"].is_string());

    // The next turn of the same conversation carries the earlier messages upstream.
    let response = app
        .chat(
            &token,
            &json!({"conversation_id": conversation, "message": "and again"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let events = Events::new(response).rest().await;
    assert_eq!(events.last().unwrap().name, "done");
    let sent: Vec<(String, String)> = fake.last_body()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            ("user".into(), "hello streaming world".into()),
            ("assistant".into(), "hello streaming world ".into()),
            ("user".into(), "and again".into()),
        ]
    );
    assert_eq!(stored(&db, conversation).await.len(), 4);
}

#[tokio::test]
async fn chat_relays_each_chunk_as_it_arrives_not_at_the_end() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(&db.url, &[("LLM_BASE_URL", &base)]);

    let response = app
        .chat(
            &token_for(user),
            &json!({"message": "[slow] one two three four five"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut events = Events::new(response);
    assert_eq!(events.next().await.unwrap().name, "meta");
    let first = events.next().await.unwrap();
    assert_eq!(
        (first.name.as_str(), &first.data["text"]),
        ("delta", &json!("one "))
    );
    // The first word is here while the upstream is still sending the others.
    assert_eq!(
        fake.finished_streams(),
        0,
        "the first delta waited for the whole answer"
    );
    assert_eq!(fake.open_streams(), 1);
    let rest = events.rest().await;
    assert_eq!(rest.last().unwrap().name, "done");
}

#[tokio::test]
async fn upstream_failures_before_the_stream_map_to_503_and_502_never_500() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("LLM_BASE_URL", &base),
            ("CHAT_FIRST_BYTE_SECONDS", "1"),
            ("CHAT_RPM", "100"),
        ],
    );
    let token = token_for(user);

    let headers = assert_error(
        app.chat(&token, &json!({"message": "[500] hi"})).await,
        503,
        "unavailable",
    )
    .await;
    assert!(headers.contains_key("retry-after"));

    let headers = assert_error(
        app.chat(&token, &json!({"message": "[429] hi"})).await,
        503,
        "unavailable",
    )
    .await;
    assert_eq!(headers["retry-after"], "7", "the upstream's own wait");

    assert_error(
        app.chat(&token, &json!({"message": "[401] hi"})).await,
        502,
        "upstream_error",
    )
    .await;

    let started = std::time::Instant::now();
    let headers = assert_error(
        app.chat(&token, &json!({"message": "[hang] hi"})).await,
        503,
        "unavailable",
    )
    .await;
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(1 + 5),
        "first-byte timeout of 1 s took {:?}",
        started.elapsed()
    );
    assert_eq!(fake.requests(), 4);
    // Each was admitted with a reservation of the output cap, given back since no answer
    // came: an outage upstream does not spend the users' day.
    let mut charged = -1;
    for _ in 0..50 {
        charged = tokens_charged(&db, user).await;
        if charged == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(charged, 0, "tokens charged for four refused requests");

    // Nothing listens on a port we just bound and released: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused_base = format!("http://{closed}/v1");
    let refused = ChatApp::spawn(&db.url, &[("LLM_BASE_URL", &refused_base)]);
    let headers = assert_error(
        refused.chat(&token, &json!({"message": "hi"})).await,
        503,
        "unavailable",
    )
    .await;
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_reset_mid_stream_ends_with_an_error_event_and_the_partial_answer_is_stored_incomplete() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(&db.url, &[("LLM_BASE_URL", &base)]);

    let response = app
        .chat(
            &token_for(user),
            &json!({"message": "[reset] alpha beta gamma delta"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let events = Events::new(response).rest().await;
    let conversation: Uuid =
        serde_json::from_value(events[0].data["conversation_id"].clone()).unwrap();
    assert_eq!(text_of(&events), "alpha beta ");
    let last = events.last().unwrap();
    assert_eq!(last.name, "error");
    assert_eq!(last.data["error"], "upstream_error");
    assert!(last.data["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        stored(&db, conversation).await,
        vec![
            (
                "user".into(),
                "[reset] alpha beta gamma delta".into(),
                false
            ),
            ("assistant".into(), "alpha beta ".into(), true),
        ]
    );
}

#[tokio::test]
async fn a_client_that_goes_away_closes_the_upstream_connection_and_the_partial_answer_is_stored_incomplete()
 {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(&db.url, &[("LLM_BASE_URL", &base)]);

    let response = app
        .chat(&token_for(user), &json!({"message": "[long] go"}))
        .await;
    assert_eq!(response.status(), 200);
    let mut events = Events::new(response);
    let meta = events.next().await.unwrap();
    let conversation: Uuid = serde_json::from_value(meta.data["conversation_id"].clone()).unwrap();
    for _ in 0..3 {
        assert_eq!(events.next().await.unwrap().name, "delta");
    }
    assert_eq!(fake.open_streams(), 1);
    drop(events);

    assert!(
        fake.wait_until(Duration::from_millis(1500), |f| f.open_streams() == 0)
            .await,
        "the upstream connection was still open 1.5 s after the client went away"
    );
    assert_eq!((fake.cut_streams(), fake.finished_streams()), (1, 0));

    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = stored(&db, conversation).await;
        if rows.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 2, "the cut turn was not stored within 5 s");
    let (role, content, incomplete) = &rows[1];
    assert_eq!(role, "assistant");
    assert!(content.starts_with("w0 w1 w2 "), "stored: {content:?}");
    assert!(*incomplete);
}

/// Fires `n` chat requests from `user` at once, spread over `apps`; returns the statuses.
async fn race(apps: &[&ChatApp], token: &str, n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = apps[i % apps.len()].url("/chat");
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let response = client()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"message": "race"}))
                .send()
                .await
                .expect("POST /chat");
            let status = response.status().as_u16();
            if status == 429 {
                let wait: u32 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .expect("Retry-After is seconds");
                assert!((1..=60).contains(&wait), "Retry-After {wait}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "rate_limited");
            } else {
                let _ = response.bytes().await;
            }
            status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("request task"));
    }
    statuses
}

/// Waits (at most 11 s) while the minute is about to turn: the quota counts per clock minute,
/// and a race straddling two windows would rightly admit up to twice the limit.
async fn away_from_a_minute_boundary() {
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if second >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

const RACE_ENV: &[(&str, &str)] = &[("CHAT_RPM", "5"), ("CHAT_MAX_STREAMS", "50")];

#[tokio::test]
async fn twenty_concurrent_requests_against_chat_rpm_5_admit_exactly_5() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let app = ChatApp::spawn(&db.url, RACE_ENV);
    away_from_a_minute_boundary().await;
    let statuses = race(&[&app], &token_for(user), 20).await;
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (5, 15),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_quota_holds_across_two_instances_on_one_database() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let (a, b) = (
        ChatApp::spawn(&db.url, RACE_ENV),
        ChatApp::spawn(&db.url, RACE_ENV),
    );
    away_from_a_minute_boundary().await;
    let statuses = race(&[&a, &b], &token_for(user), 20).await;
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (5, 15),
        "{statuses:?}"
    );
    let counted: i32 =
        sqlx::query_scalar("select sum(requests)::int from chat_private.request_windows")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(counted, 5, "the database counted what it admitted");
}

#[tokio::test]
async fn the_embedded_store_runs_the_local_model_and_holds_the_same_quota() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/chat.db", dir.path().display());
    away_from_a_minute_boundary().await;
    let app = ChatApp::spawn(&url, RACE_ENV);
    let user = Uuid::new_v4();
    let token = token_for(user);

    let response = app
        .chat(&token, &json!({"message": "echo  me   back"}))
        .await;
    assert_eq!(response.status(), 200);
    let events = Events::new(response).rest().await;
    assert_eq!(text_of(&events), "echo me back");
    assert_eq!(events.last().unwrap().data["usage"]["completion_tokens"], 3);
    let conversation = events[0].data["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let list: Value = app
        .get(&token, "/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"][0]["id"], conversation);
    let other = token_for(Uuid::new_v4());
    let list: Value = app
        .get(&other, "/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"], json!([]));
    assert_error(
        app.get(&other, &format!("/conversations/{conversation}"))
            .await,
        404,
        "not_found",
    )
    .await;

    let statuses = race(&[&app], &token, 20).await;
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (4, 16),
        "one of 5 was spent above: {statuses:?}"
    );
}

#[tokio::test]
async fn over_quota_answers_429_with_retry_after_for_streams_tokens_and_anonymous_users() {
    away_from_a_minute_boundary().await;
    let (user, heavy) = (Uuid::new_v4(), Uuid::new_v4());
    let db = seeded_db(&[user, heavy]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("LLM_BASE_URL", &base),
            ("CHAT_MAX_STREAMS", "1"),
            ("CHAT_TOKENS_PER_DAY", "3"),
            ("CHAT_ANON_RPM", "1"),
        ],
    );

    // A second stream while the first is running.
    let token = token_for(user);
    let first = app
        .chat(&token, &json!({"message": "[slow] a b c d e f"}))
        .await;
    assert_eq!(first.status(), 200);
    let headers = assert_error(
        app.chat(&token, &json!({"message": "hi"})).await,
        429,
        "rate_limited",
    )
    .await;
    assert!(headers.contains_key("retry-after"));
    let _ = Events::new(first).rest().await;

    // Past the day's tokens (3): the 4-word answer is admitted, the next is not.
    let heavy_token = token_for(heavy);
    let answer = app
        .chat(&heavy_token, &json!({"message": "one two three four"}))
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        Events::new(answer).rest().await.last().unwrap().name,
        "done"
    );
    let headers = assert_error(
        app.chat(&heavy_token, &json!({"message": "more"})).await,
        429,
        "rate_limited",
    )
    .await;
    let wait: u32 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait));

    // Anonymous users get their own limit (CHAT_ANON_RPM=1).
    let anon = Uuid::new_v4();
    db.seed_user(anon, None).await;
    let mut anon_claims = claims(anon);
    anon_claims["is_anonymous"] = json!(true);
    let anon_token = sign(&anon_claims);
    let ok = app.chat(&anon_token, &json!({"message": "hi"})).await;
    assert_eq!(ok.status(), 200);
    let _ = ok.bytes().await;
    assert_error(
        app.chat(&anon_token, &json!({"message": "hi"})).await,
        429,
        "rate_limited",
    )
    .await;

    // CHAT_ANON_RPM=0 refuses them outright.
    let closed = ChatApp::spawn(&db.url, &[("CHAT_ANON_RPM", "0")]);
    assert_error(
        closed.chat(&anon_token, &json!({"message": "hi"})).await,
        403,
        "anonymous_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn row_level_security_shows_each_user_only_their_own_conversations() {
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let db = seeded_db(&[alice, bob]).await;
    let app = ChatApp::spawn(&db.url, &[]);
    let (alice_token, bob_token) = (token_for(alice), token_for(bob));

    let events = Events::new(
        app.chat(&alice_token, &json!({"message": "alice's secret"}))
            .await,
    )
    .rest()
    .await;
    let conversation = events[0].data["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The list query has no owner filter: only RLS keeps Alice's row from Bob.
    let list: Value = app
        .get(&bob_token, "/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"], json!([]));
    let list: Value = app
        .get(&alice_token, "/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    assert_error(
        app.get(&bob_token, &format!("/conversations/{conversation}"))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.chat(
            &bob_token,
            &json!({"conversation_id": conversation, "message": "let me in"}),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(
        stored(&db, conversation.parse().unwrap()).await.len(),
        2,
        "Bob added nothing"
    );

    // As `authenticated` (what the Data API runs as), a user cannot reset their quota or give
    // themselves tokens back.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)")
        .bind(json!({"sub": alice.to_string(), "role": "authenticated"}).to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let reset = sqlx::query("delete from chat_private.request_windows")
        .execute(&mut *tx)
        .await;
    assert!(
        reset.is_err(),
        "authenticated could delete its quota windows"
    );
    tx.rollback().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)")
        .bind(json!({"sub": alice.to_string(), "role": "authenticated"}).to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("select chat_private.add_tokens(-1000)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tokens: i64 =
        sqlx::query_scalar("select tokens from chat_private.token_days where user_id = $1")
            .bind(alice)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(tokens >= 2, "negative tokens were subtracted: {tokens}");
}

#[tokio::test]
async fn bad_requests_get_the_services_json_errors() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let app = ChatApp::spawn(&db.url, &[]);
    let token = token_for(user);
    let post = |body: &'static str, content_type: &'static str| {
        client()
            .post(app.url("/chat"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let headers = assert_error(
        client()
            .post(app.url("/chat"))
            .json(&json!({"message": "hi"}))
            .send()
            .await
            .unwrap(),
        401,
        "missing_token",
    )
    .await;
    assert_eq!(headers["www-authenticate"], "Bearer");
    let headers = assert_error(
        app.chat("not.a.token", &json!({"message": "hi"})).await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_error(app.get("x", "/conversations").await, 401, "invalid_token").await;

    assert_error(
        post(r#"{"message":"hi"}"#, "text/plain").await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    assert_error(
        post("{", "application/json").await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        post(r#"{"message":""}"#, "application/json").await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        post(r#"{"message":"   "}"#, "application/json")
            .await
            .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        post(r#"{"message":42}"#, "application/json").await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        post(
            r#"{"conversation_id":"nope","message":"hi"}"#,
            "application/json",
        )
        .await
        .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    let long = json!({"message": "é".repeat(4001)});
    assert_error(app.chat(&token, &long).await, 422, "invalid_body").await;
    let longest = json!({"message": "é".repeat(4000)});
    assert_eq!(app.chat(&token, &longest).await.status(), 200);
    let huge = json!({"message": "a".repeat(17 * 1024)});
    assert_error(app.chat(&token, &huge).await, 413, "payload_too_large").await;

    assert_error(app.get(&token, "/chat").await, 405, "method_not_allowed").await;
    assert_error(
        app.get(&token, "/conversations/not-a-uuid").await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get(&token, &format!("/conversations/{}", Uuid::new_v4()))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.chat(
            &token,
            &json!({"conversation_id": Uuid::new_v4(), "message": "hi"}),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // The service's own routes are still there, with their own answers.
    assert_eq!(
        client()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// `--build-arg APP=chat` builds this example into the image under the service's name (so the
/// entrypoint and fly.toml's `migrate` work unchanged). That the image builds and runs, its
/// context carrying the example, is proved by building it: scripts/image-test.
#[test]
fn the_dockerfile_builds_the_chat_example_when_asked() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let build_stage = dockerfile.split("\nFROM ").nth(1).expect("a build stage");
    assert!(
        build_stage.contains("ARG APP="),
        "the build stage declares APP"
    );
    assert!(build_stage.contains("cargo build --release --locked --example chat"));
    assert!(
        build_stage.contains("install -D target/release/examples/chat /out/supabase-jwt-service")
    );
}

#[tokio::test]
async fn chat_migrate_applies_the_services_schema_and_the_chats_on_an_empty_database() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(example_binary("chat"))
        .arg("migrate")
        .env_clear()
        .current_dir(dir.path())
        .env("DATABASE_URL", &db.url)
        .env("SUPABASE_JWT_SECRET", SECRET)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run chat migrate");
    assert!(status.success(), "chat migrate failed: {status}");
    let tables: Vec<String> = sqlx::query_scalar(
        "select t from unnest(array['public.users', 'public.conversations', 'public.chat_messages', \
         'chat_private.request_windows', 'chat_private.token_days']) as t \
         where to_regclass(t) is not null",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables.len(), 5, "tables present: {tables:?}");
}

#[tokio::test]
async fn the_chat_works_through_a_transaction_mode_pooler_with_the_same_quota() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let pooler = format!(
        "{}?pgbouncer=true",
        crate::helpers::with_database(&crate::helpers::pgbouncer_url(), &db.name)
    );
    // Migrations go to the direct URL; every request goes through PgBouncer.
    let app = ChatApp::spawn(
        &pooler,
        &[("DIRECT_DATABASE_URL", &db.url), RACE_ENV[0], RACE_ENV[1]],
    );
    away_from_a_minute_boundary().await;
    let token = token_for(user);

    let events = Events::new(
        app.chat(&token, &json!({"message": "through the pooler"}))
            .await,
    )
    .rest()
    .await;
    assert_eq!(events.last().unwrap().name, "done", "{events:?}");
    let conversation: Uuid =
        serde_json::from_value(events[0].data["conversation_id"].clone()).unwrap();
    let response = app
        .chat(
            &token,
            &json!({"conversation_id": conversation, "message": "again"}),
        )
        .await;
    assert_eq!(
        Events::new(response).rest().await.last().unwrap().name,
        "done"
    );
    let list: Value = app
        .get(&token, "/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(stored(&db, conversation).await.len(), 4);

    let statuses = race(&[&app], &token, 20).await;
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (3, 17),
        "2 of 5 spent above: {statuses:?}"
    );
}

/// Backends the app (every pool it opened: they all connect as `supabase-jwt-service`) holds on
/// this test's database.
async fn app_backends(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where datname = $1 and application_name = 'supabase-jwt-service'",
    )
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .expect("count backends")
}

#[tokio::test]
async fn twenty_concurrent_streams_and_the_built_in_routes_share_one_pool_of_db_max_connections() {
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let db = seeded_db(&users).await;
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("DB_MAX_CONNECTIONS", "2"),
            ("CHAT_LOCAL_DELAY_MS", "40"),
            ("CHAT_RPM", "100"),
        ],
    );
    let message = "one two three four five six seven eight nine ten eleven twelve";
    let mut streams = Vec::new();
    for user in &users {
        let (url, token) = (app.url("/chat"), token_for(*user));
        streams.push(tokio::spawn(async move {
            let response = client()
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "message": message }))
                .send()
                .await
                .expect("POST /chat");
            assert_eq!(response.status(), 200);
            Events::new(response).rest().await
        }));
    }
    // The built-in routes at the same time: /readyz reads through the store's pool, which a
    // second pool of the example's own would leave to open backends of its own.
    let mut probes = Vec::new();
    for _ in 0..20 {
        let url = app.url("/readyz");
        probes.push(tokio::spawn(async move {
            client()
                .get(url)
                .send()
                .await
                .expect("GET /readyz")
                .status()
        }));
    }
    let mut peak = 0;
    // Sampled while the streams run: 12 words at 40 ms each is about 0.5 s per stream, and
    // the bound (at most 30 s) only stops a hung example from hanging the test.
    for _ in 0..600 {
        peak = peak.max(app_backends(&db).await);
        if streams.iter().all(|s| s.is_finished()) && probes.iter().all(|p| p.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for probe in probes {
        assert_eq!(probe.await.expect("probe task"), 200);
    }
    for stream in streams {
        let events = stream.await.expect("stream task");
        assert_eq!(events.last().expect("events").name, "done", "{events:?}");
        assert_eq!(text_of(&events), message);
    }
    peak = peak.max(app_backends(&db).await);
    assert!(peak >= 1, "the app used the database");
    assert!(
        peak <= 2,
        "{peak} backends for DB_MAX_CONNECTIONS=2: the example opened a pool of its own"
    );
    let turns: i64 = sqlx::query_scalar("select count(*) from public.chat_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(turns, 40, "every turn stored, question and answer");
}

#[tokio::test]
async fn a_stream_longer_than_request_timeout_seconds_completes_and_is_stored() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    // 15 words at 150 ms each: over 2 s of streaming against a 1 s request timeout, which
    // bounds the time to the response head only.
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("REQUEST_TIMEOUT_SECONDS", "1"),
            ("CHAT_LOCAL_DELAY_MS", "150"),
        ],
    );
    let message = "a b c d e f g h i j k l m n o";
    let started = std::time::Instant::now();
    let response = app
        .chat(&token_for(user), &json!({ "message": message }))
        .await;
    assert_eq!(response.status(), 200);
    let events = Events::new(response).rest().await;
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the stream must outlast REQUEST_TIMEOUT_SECONDS for this test to mean anything"
    );
    assert_eq!(events.last().expect("events").name, "done", "{events:?}");
    assert_eq!(text_of(&events), message);
    let conversation: Uuid =
        serde_json::from_value(events[0].data["conversation_id"].clone()).unwrap();
    let stored = stored(&db, conversation).await;
    assert_eq!(stored.len(), 2);
    assert!(!stored[1].2, "stored complete");
}

#[tokio::test]
async fn the_chat_routes_get_the_services_stack_cors_request_ids_and_json_fallbacks() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let origin = "http://localhost:3000";
    let app = ChatApp::spawn(&db.url, &[("CORS_ALLOWED_ORIGINS", origin)]);

    let preflight = client()
        .request(reqwest::Method::OPTIONS, app.url("/chat"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    let methods = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    assert!(methods.contains("POST"), "{methods}");

    // A request id on the stream and on an error, which carries CORS too.
    let response = client()
        .post(app.url("/chat"))
        .header("origin", origin)
        .bearer_auth(token_for(user))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.headers()["access-control-allow-origin"], origin);
    let _ = Events::new(response).rest().await;
    let unauthorized = client()
        .get(app.url("/conversations"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert!(unauthorized.headers().contains_key("x-request-id"));
    assert_eq!(
        unauthorized.headers()["access-control-allow-origin"],
        origin
    );
    assert_error(unauthorized, 401, "missing_token").await;
    assert_error(
        client().get(app.url("/nowhere")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
}

// Issue 17, item 5: the chat cannot be used for free or without bound.

/// Tokens charged to `user`'s days, read as superuser.
async fn tokens_charged(db: &TestDb, user: Uuid) -> i64 {
    sqlx::query_scalar(
        "select coalesce(sum(tokens), 0)::bigint from chat_private.token_days where user_id = $1",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .expect("read the day's tokens")
}

/// The `usage` of a stream's `done` event, as prompt + completion tokens.
fn usage_total(events: &[Event]) -> i64 {
    let done = events
        .iter()
        .find(|e| e.name == "done")
        .unwrap_or_else(|| panic!("no done event: {events:?}"));
    let count = |k: &str| done.data["usage"][k].as_i64().expect("usage counts");
    count("prompt_tokens") + count("completion_tokens")
}

/// A conversation of `user` with `contents` as its messages (user, assistant, user, ...),
/// written as superuser, as the Data API or an earlier release could have.
async fn seed_conversation(db: &TestDb, user: Uuid, contents: &[String]) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("insert into public.conversations (id, owner, title) values ($1, $2, 'seeded')")
        .bind(id)
        .bind(user)
        .execute(&db.pool)
        .await
        .expect("seed conversation");
    sqlx::query(
        "insert into public.chat_messages (conversation_id, owner, role, content) \
         select $1, $2, case when n % 2 = 1 then 'user' else 'assistant' end, content \
         from unnest($3::text[]) with ordinality as m (content, n) order by n",
    )
    .bind(id)
    .bind(user)
    .bind(contents)
    .execute(&db.pool)
    .await
    .expect("seed messages");
    id
}

/// The SQLSTATE of `sql` run as `user` through the role and claims the Data API sets (the
/// transaction commits when it succeeds); `None` when it succeeded.
async fn sqlstate_as_user(db: &TestDb, user: Uuid, sql: &str) -> Option<String> {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "select set_config('role', 'authenticated', true), \
                set_config('request.jwt.claims', $1, true)",
    )
    .bind(json!({"sub": user.to_string(), "role": "authenticated"}).to_string())
    .execute(&mut *tx)
    .await
    .unwrap();
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {
            tx.commit().await.unwrap();
            None
        }
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.into_owned())),
    }
}

#[tokio::test]
async fn chat_refuses_nul_and_control_characters_so_they_cannot_buy_free_answers() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let app = ChatApp::spawn(
        &db.url,
        &[("CHAT_TOKENS_PER_DAY", "10"), ("CHAT_RPM", "100")],
    );
    let token = token_for(user);

    // The reproduction: Postgres `text` refuses NUL, so storing the turn failed every time,
    // and the day's tokens, added in the same transaction, with it.
    let mut answers = 0;
    for _ in 0..4 {
        let response = app
            .chat(
                &token,
                &json!({"message": "one two three four five six\u{0}"}),
            )
            .await;
        if response.status() == 200 {
            answers += 1;
            let _ = Events::new(response).rest().await;
        }
    }
    let charged = tokens_charged(&db, user).await;
    assert_eq!(
        (answers, charged),
        (0, 0),
        "messages holding NUL: {answers} answers, {charged} tokens charged"
    );

    for bad in [
        "nul\u{0}",
        "bell\u{7}",
        "escape \u{1b}[2J",
        "delete\u{7f}",
        "next line\u{85}",
    ] {
        assert_error(
            app.chat(&token, &json!({ "message": bad })).await,
            422,
            "invalid_body",
        )
        .await;
    }
    // Line breaks and tabs are text.
    let response = app
        .chat(&token, &json!({"message": "one\ttwo\r\nthree"}))
        .await;
    assert_eq!(response.status(), 200);
    let events = Events::new(response).rest().await;
    assert_eq!(events.last().unwrap().name, "done", "{events:?}");
    assert_eq!(
        tokens_charged(&db, user).await,
        6,
        "3 words in and 3 out (the local model counts words)"
    );
}

#[tokio::test]
async fn an_answer_holding_nul_is_stored_and_charged_all_the_same() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(&db.url, &[("LLM_BASE_URL", &base)]);

    let response = app
        .chat(
            &token_for(user),
            &json!({"message": "[nul] alpha beta gamma"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let events = Events::new(response).rest().await;
    assert_eq!(
        text_of(&events),
        "a\u{0}lpha beta gamma ",
        "relayed as sent"
    );
    let conversation: Uuid =
        serde_json::from_value(events[0].data["conversation_id"].clone()).unwrap();
    let rows = stored(&db, conversation).await;
    let charged = tokens_charged(&db, user).await;
    assert_eq!(
        (rows.len(), charged),
        (2, 7),
        "a model's answer holding NUL: {} rows stored, {charged} tokens charged; events {events:?}",
        rows.len()
    );
    assert_eq!(events.last().unwrap().name, "done");
    assert_eq!(rows[1].1, "a\u{fffd}lpha beta gamma ");
}

#[tokio::test]
async fn signing_out_mid_answer_with_session_check_on_still_charges_the_answer() {
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let db = seeded_db(&[user]).await;
    db.seed_session(session, user, None).await;
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("SESSION_CHECK", "on"),
            ("CHAT_TOKENS_PER_DAY", "10"),
            ("CHAT_LOCAL_DELAY_MS", "100"),
            ("CHAT_RPM", "100"),
        ],
    );
    let message = "one two three four five six seven eight nine ten eleven twelve";
    let response = app
        .chat(
            &sign(&claims_in_session(user, session)),
            &json!({ "message": message }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut events = Events::new(response);
    assert_eq!(events.next().await.unwrap().name, "meta");
    assert_eq!(events.next().await.unwrap().name, "delta");
    // Signed out while the answer streams: the turn can no longer be stored as the user.
    db.end_session(session).await;
    let rest = events.rest().await;
    let charged = tokens_charged(&db, user).await;

    // Signed in again: a new session, the same day.
    let again = Uuid::new_v4();
    db.seed_session(again, user, None).await;
    let next = app
        .chat(
            &sign(&claims_in_session(user, again)),
            &json!({"message": "more please"}),
        )
        .await
        .status();
    assert_eq!(
        (charged, next.as_u16()),
        (24, 429),
        "signed out mid-answer: {charged} tokens charged (12 words in, 12 out), next request {next}; \
         the stream ended with {:?}",
        rest.last()
    );
}

#[tokio::test]
async fn concurrent_answers_reserve_their_cap_so_the_day_overshoots_by_at_most_one_answer() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let env = [
        ("LLM_BASE_URL", base.as_str()),
        ("CHAT_TOKENS_PER_DAY", "100"),
        ("CHAT_MAX_OUTPUT_TOKENS", "60"),
        ("CHAT_RPM", "100"),
        ("CHAT_MAX_STREAMS", "50"),
    ];
    let (a, b) = (ChatApp::spawn(&db.url, &env), ChatApp::spawn(&db.url, &env));
    let token = token_for(user);

    // Each answer streams for 2.4 s, so all ten are admitted (or not) while the first ones
    // still stream: only reservations can tell admission what they will cost.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = [&a, &b][i % 2].url("/chat");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let response = client()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"message": "[slow] a b c d e f g h i j k l m n o p"}))
                .send()
                .await
                .expect("POST /chat");
            match response.status().as_u16() {
                200 => Some(Events::new(response).rest().await),
                429 => None,
                other => panic!("status {other}"),
            }
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        if let Some(events) = task.await.expect("request task") {
            answered.push(events);
        }
    }
    let used: i64 = answered.iter().map(|e| usage_total(e)).sum();
    let charged = tokens_charged(&db, user).await;
    // A reservation is 60 + the prompt's estimate (38 bytes: 13, and 4 for the message): the
    // first two fit under 100, the third sees 154 reserved. Settled, the day holds exactly
    // what the answers used.
    assert_eq!(
        (answered.len(), charged),
        (2, used),
        "10 concurrent requests on two instances against 100 tokens a day: {} admitted, \
         {charged} tokens charged, {used} used",
        answered.len()
    );
    assert!(
        charged <= 100 + 77,
        "overshoot beyond one reservation: {charged}"
    );
}

#[tokio::test]
async fn the_output_cap_goes_upstream_and_prompt_and_completion_tokens_are_both_charged() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("LLM_BASE_URL", &base),
            ("CHAT_MAX_OUTPUT_TOKENS", "7"),
            ("CHAT_RPM", "100"),
        ],
    );
    let token = token_for(user);

    let words: Vec<String> = (1..=20).map(|i| format!("w{i}")).collect();
    let events = Events::new(app.chat(&token, &json!({"message": words.join(" ")})).await)
        .rest()
        .await;
    let sent_cap = fake.last_body()["max_tokens"].clone();
    let usage = events.last().unwrap().data["usage"].clone();
    let charged = tokens_charged(&db, user).await;
    assert_eq!(
        (sent_cap.clone(), charged),
        (json!(7), 27),
        "max_tokens sent: {sent_cap}; usage {usage}; {charged} tokens charged"
    );
    assert_eq!(usage, json!({"prompt_tokens": 20, "completion_tokens": 7}));

    // Without the upstream's usage, both parts are estimated (about 3 bytes a token).
    let words: Vec<String> = (1..=30).map(|i| format!("x{i}")).collect();
    let message = format!("[nousage] {}", words.join(" "));
    let events = Events::new(app.chat(&token, &json!({ "message": message })).await)
        .rest()
        .await;
    let usage = &events.last().unwrap().data["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_i64().unwrap(),
        usage["completion_tokens"].as_i64().unwrap(),
    );
    let prompt_bytes = i64::try_from(message.len()).unwrap();
    let answer_bytes = i64::try_from(text_of(&events).len()).unwrap();
    assert!(
        prompt >= prompt_bytes / 3 && completion >= answer_bytes / 3,
        "estimated {usage} for {prompt_bytes} bytes in, {answer_bytes} out"
    );
    assert_eq!(tokens_charged(&db, user).await, 27 + prompt + completion);
}

#[tokio::test]
async fn a_request_dropped_while_the_model_is_called_is_charged_its_prompt_not_its_reservation() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    // The request timeout (1 s) drops the handler while it waits for the model's headers
    // (first-byte timeout 30 s): the reservation is settled all the same, to the prompt the
    // model may have read.
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("LLM_BASE_URL", &base),
            ("REQUEST_TIMEOUT_SECONDS", "1"),
            ("CHAT_FIRST_BYTE_SECONDS", "30"),
        ],
    );
    assert_error(
        app.chat(&token_for(user), &json!({"message": "[hang] hi"}))
            .await,
        503,
        "unavailable",
    )
    .await;
    // "[hang] hi": 9 bytes, 3 tokens at 3 bytes a token, and 4 for the message.
    let mut charged = -1;
    for _ in 0..50 {
        charged = tokens_charged(&db, user).await;
        if charged == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        charged, 7,
        "charged for a request dropped before the answer"
    );
}

#[tokio::test]
async fn the_history_sent_upstream_is_capped_in_bytes_newest_first() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(
        &db.url,
        &[("LLM_BASE_URL", &base), ("CHAT_MAX_HISTORY_BYTES", "1000")],
    );
    // Ten earlier messages of 300 bytes each.
    let contents: Vec<String> = (0..10)
        .map(|i| format!("m{i:02} {}", "x".repeat(296)))
        .collect();
    let conversation = seed_conversation(&db, user, &contents).await;

    let response = app
        .chat(
            &token_for(user),
            &json!({"conversation_id": conversation, "message": "next"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let _ = Events::new(response).rest().await;
    let sent = fake.last_body()["messages"].as_array().unwrap().clone();
    let (last, earlier) = sent.split_last().unwrap();
    assert_eq!(last["content"], "next");
    let bytes: usize = earlier
        .iter()
        .map(|m| m["content"].as_str().unwrap().len())
        .sum();
    let which: Vec<&str> = earlier
        .iter()
        .map(|m| &m["content"].as_str().unwrap()[..3])
        .collect();
    assert_eq!(
        (earlier.len(), bytes, which.clone()),
        (3, 900, vec!["m07", "m08", "m09"]),
        "CHAT_MAX_HISTORY_BYTES=1000: {} earlier messages, {bytes} bytes sent: {which:?}",
        earlier.len()
    );
}

/// The first chat migration as deployed databases applied it.
const FIRST_CHAT_MIGRATION: &str = "20261201000001_chat.sql";

fn chat_migrations_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chat/migrations")
}

/// Applies only the first chat migration, with sqlx's bookkeeping where the example keeps it:
/// the database as the release before the bounds left it.
async fn apply_first_chat_migration(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        chat_migrations_dir().join(FIRST_CHAT_MIGRATION),
        dir.path().join(FIRST_CHAT_MIGRATION),
    )
    .unwrap();
    let mut migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    migrator.create_schema("chat_private");
    migrator.dangerous_set_table_name("chat_private._sqlx_migrations");
    migrator.run(&db.pool).await.expect("first chat migration");
}

#[tokio::test]
async fn the_first_chat_migration_keeps_the_checksum_deployed_databases_recorded() {
    let migrator = sqlx::migrate::Migrator::new(chat_migrations_dir())
        .await
        .unwrap();
    let first = migrator
        .iter()
        .find(|m| m.version == 20261201000001)
        .expect("the first chat migration");
    let hex: String = first.checksum.iter().map(|b| format!("{b:02x}")).collect();
    // sqlx refuses to migrate a database whose applied migration changed: put every change
    // in a new migration.
    assert_eq!(
        hex,
        "5db9e46e645ba5ba6c5fba11ce7dda8751401f0ae1532b4a61be0bbb41a3067bc4646d3f577a99e715a454c090f5c911"
    );
}

#[tokio::test]
async fn stored_messages_are_bounded_for_the_data_api_too_and_older_long_rows_are_read_cut() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    apply_first_chat_migration(&db).await;
    // A message of a million characters, written before the bound existed.
    let conversation = seed_conversation(&db, user, &["y".repeat(1_000_000)]).await;
    // The example applies what is new on top, the bound included.
    let app = ChatApp::spawn(&db.url, &[]);

    let insert = |chars: usize| {
        format!(
            "insert into public.chat_messages (conversation_id, role, content) \
             values ('{conversation}', 'user', repeat('z', {chars}))"
        )
    };
    let refused = (
        sqlstate_as_user(&db, user, &insert(1_000_000)).await,
        sqlstate_as_user(&db, user, &insert(32_001)).await,
    );
    assert_eq!(
        refused,
        (Some("23514".to_owned()), Some("23514".to_owned())),
        "as `authenticated` (the Data API), messages of 1,000,000 and 32,001 characters: \
         None is accepted, 23514 refused by the check"
    );
    assert_eq!(sqlstate_as_user(&db, user, &insert(32_000)).await, None);

    let page: Value = app
        .get(&token_for(user), &format!("/conversations/{conversation}"))
        .await
        .json()
        .await
        .unwrap();
    let lengths: Vec<usize> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().chars().count())
        .collect();
    assert_eq!(lengths, vec![32_000, 32_000], "the old row is read cut");
}

#[tokio::test]
async fn conversation_messages_come_in_pages_with_a_cursor_newest_first() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let app = ChatApp::spawn(&db.url, &[]);
    let contents: Vec<String> = (0..120).map(|i| format!("m{i:03}")).collect();
    let conversation = seed_conversation(&db, user, &contents).await;
    let token = token_for(user);
    let get = |query: String| {
        let path = format!("/conversations/{conversation}{query}");
        let app = &app;
        let token = &token;
        async move { app.get(token, &path).await }
    };
    let contents_of = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected = |range: std::ops::Range<usize>| -> Vec<String> { contents[range].to_vec() };

    let first: Value = get(String::new()).await.json().await.unwrap();
    assert_eq!(
        (contents_of(&first).len(), first["next_cursor"].is_string()),
        (50, true),
        "a conversation of 120 messages: {} in one answer, next_cursor {}",
        contents_of(&first).len(),
        first["next_cursor"]
    );
    assert_eq!(
        contents_of(&first),
        expected(70..120),
        "the newest, oldest first"
    );
    assert_eq!(first["id"], conversation.to_string());
    let cursor = first["next_cursor"].as_str().unwrap();

    let second: Value = get(format!("?before={cursor}")).await.json().await.unwrap();
    assert_eq!(contents_of(&second), expected(20..70));
    let cursor = second["next_cursor"].as_str().unwrap();
    let third: Value = get(format!("?before={cursor}")).await.json().await.unwrap();
    assert_eq!(contents_of(&third), expected(0..20));
    assert_eq!(third["next_cursor"], Value::Null);

    let small: Value = get("?limit=10".to_owned()).await.json().await.unwrap();
    assert_eq!(contents_of(&small), expected(110..120));
    for bad in ["?before=abc", "?before=-3", "?limit=0", "?limit=101"] {
        assert_error(get(bad.to_owned()).await, 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_frees_its_stream_slot_and_the_upstream_by_chat_max_seconds() {
    use tokio::io::AsyncWriteExt;

    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    let app = ChatApp::spawn(
        &db.url,
        &[
            ("LLM_BASE_URL", &base),
            ("CHAT_MAX_SECONDS", "2"),
            ("CHAT_MAX_STREAMS", "1"),
            ("CHAT_RPM", "100"),
            // The flood is charged what it streamed (megabytes): only the stream slot
            // may answer 429 here.
            ("CHAT_TOKENS_PER_DAY", "1000000000"),
        ],
    );
    let token = token_for(user);

    // A real client that sends its request, then never reads and keeps the socket open: a
    // small receive buffer, so the answer piles up in the server's buffers, then in the
    // example's, until sending the next frame waits.
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let body = json!({"message": "[flood] go"}).to_string();
    let request = format!(
        "POST /chat HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.open_streams() == 1)
            .await,
        "the flood did not start"
    );
    let started = std::time::Instant::now();

    // CHAT_MAX_SECONDS=2 bounds every send to the client: by then the model's connection is
    // closed and the user's one stream slot is free again.
    let closed = fake
        .wait_until(Duration::from_secs(2 + 4), |f| f.open_streams() == 0)
        .await;
    let held_for = started.elapsed();
    let mut next = 0;
    for _ in 0..20 {
        let response = app.chat(&token, &json!({"message": "are you there"})).await;
        next = response.status().as_u16();
        if next != 429 {
            let _ = Events::new(response).rest().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (closed, next),
        (true, 200),
        "a client that stopped reading: upstream closed {closed} after {held_for:?}, \
         the user's next stream {next}"
    );
    assert_eq!(fake.cut_streams(), 1);
    drop(stalled);
}

#[tokio::test]
async fn migrating_over_broad_default_privileges_grants_no_truncate_trigger_or_references_on_the_chat()
 {
    let db = TestDb::empty().await;
    // As in an older Supabase project: everything created in public starts with every right
    // for `anon` and `authenticated`; and a default reaching every schema, for good measure.
    sqlx::raw_sql(
        "do $$ declare r text; begin \
           foreach r in array array['anon', 'authenticated'] loop \
             begin execute format('create role %I nologin noinherit', r); \
             exception when duplicate_object or unique_violation then null; end; \
           end loop; end $$; \
         alter default privileges in schema public grant all on tables to anon, authenticated; \
         alter default privileges in schema public grant all on sequences to anon, authenticated; \
         alter default privileges in schema public grant all on functions to anon, authenticated; \
         alter default privileges grant all on tables to anon, authenticated; \
         alter default privileges grant all on functions to anon, authenticated",
    )
    .execute(&db.pool)
    .await
    .expect("broad default privileges");
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(example_binary("chat"))
        .arg("migrate")
        .env_clear()
        .current_dir(dir.path())
        .env("DATABASE_URL", &db.url)
        .env("SUPABASE_JWT_SECRET", SECRET)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run chat migrate");
    assert!(status.success(), "chat migrate failed: {status}");

    let table_rights: Vec<String> = sqlx::query_scalar(
        "select r || ' ' || t || ' ' || p \
         from unnest(array['anon', 'authenticated', 'public']) r, \
              unnest(array['public.conversations', 'public.chat_messages', \
                           'chat_private.request_windows', 'chat_private.token_days']) t, \
              unnest(array['select', 'insert', 'update', 'delete', 'truncate', \
                           'references', 'trigger']) p \
         where has_table_privilege(r, t, p) order by 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let abusable = table_rights
        .iter()
        .filter(|r| r.ends_with("truncate") || r.ends_with("trigger") || r.ends_with("references"))
        .count();
    assert_eq!(
        table_rights,
        vec![
            "authenticated public.chat_messages select",
            "authenticated public.conversations delete",
            "authenticated public.conversations insert",
            "authenticated public.conversations select",
        ],
        "{abusable} truncate/trigger/references rights held by anon or authenticated"
    );
    let sequence_rights: Vec<String> = sqlx::query_scalar(
        "select r || ' ' || p from unnest(array['anon', 'authenticated', 'public']) r, \
              unnest(array['usage', 'select', 'update']) p \
         where has_sequence_privilege(r, pg_get_serial_sequence('public.chat_messages', 'id'), p)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        sequence_rights,
        Vec::<String>::new(),
        "setval would break every insert"
    );
    let callable: Vec<String> = sqlx::query_scalar(
        "select r || ' ' || p.proname::text from pg_proc p \
           join pg_namespace n on n.oid = p.pronamespace, \
           unnest(array['anon', 'authenticated', 'public']) r \
         where n.nspname = 'chat_private' and has_function_privilege(r, p.oid, 'execute') \
         order by 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        callable,
        vec![
            "authenticated add_tokens",
            "authenticated admit",
            "authenticated admit_and_reserve",
        ],
        "only admission (and the previous release's, which only adds) is the user's to call"
    );

    // And the chat still works on it: inserts take the identity's next value without any
    // right on its sequence.
    let user = Uuid::new_v4();
    db.seed_user(user, None).await;
    let app = ChatApp::spawn(&db.url, &[]);
    let events = Events::new(
        app.chat(&token_for(user), &json!({"message": "still here"}))
            .await,
    )
    .rest()
    .await;
    assert_eq!(events.last().unwrap().name, "done", "{events:?}");
    let conversation: Uuid =
        serde_json::from_value(events[0].data["conversation_id"].clone()).unwrap();
    assert_eq!(stored(&db, conversation).await.len(), 2);
    assert_eq!(
        sqlstate_as_user(&db, user, "truncate public.chat_messages")
            .await
            .as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn llm_base_url_credentials_never_reach_the_log() {
    let user = Uuid::new_v4();
    let db = seeded_db(&[user]).await;
    let fake = FakeLlm::start().await;
    let secrets = ["us3r-name", "pa55-word", "k3y-value"];
    let base = format!(
        "http://us3r-name:pa55-word@{}/v1?api-version=1&key=k3y-value",
        fake.addr
    );
    let app = ChatApp::spawn(&db.url, &[("LLM_BASE_URL", &base), ("RUST_LOG", "info")]);
    let token = token_for(user);
    // The credentials still reach the model: userinfo as Basic auth, the query as it was.
    let events = Events::new(app.chat(&token, &json!({"message": "hi"})).await)
        .rest()
        .await;
    assert_eq!(events.last().unwrap().name, "done");
    assert_eq!(
        fake.seen.last_query.lock().unwrap().as_deref(),
        Some("api-version=1&key=k3y-value")
    );
    assert!(
        fake.seen
            .last_authorization
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))
    );
    // A refused answer and an unreachable model: both logged with the URL.
    assert_error(
        app.chat(&token, &json!({"message": "[500] hi"})).await,
        503,
        "unavailable",
    )
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused_base = format!("http://us3r-name:pa55-word@{closed}/v1?key=k3y-value");
    let refused = ChatApp::spawn(
        &db.url,
        &[("LLM_BASE_URL", &refused_base), ("RUST_LOG", "info")],
    );
    assert_error(
        refused.chat(&token, &json!({"message": "hi"})).await,
        503,
        "unavailable",
    )
    .await;

    let mut log = String::new();
    for _ in 0..50 {
        log = app.log() + &refused.log();
        if log.contains("model unreachable") && log.contains("model refused the request") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leaks: usize = secrets.iter().map(|s| log.matches(s).count()).sum();
    assert_eq!(
        leaks, 0,
        "credentials of LLM_BASE_URL appeared {leaks} times in the log:\n{log}"
    );
    assert!(log.contains("model unreachable"), "{log}");
    assert!(
        log.contains(&format!("{closed}")),
        "the log still says where: {log}"
    );
    assert!(log.contains("***"), "{log}");
}
