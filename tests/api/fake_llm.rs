//! A fake OpenAI-compatible chat-completions server on 127.0.0.1:0, speaking real HTTP and
//! server-sent events. What it does is chosen by a tag at the start of the last message:
//!
//! | tag | answer |
//! | --- | --- |
//! | none | one chunk per word of the message (at most `max_tokens`), a usage chunk, `[DONE]` |
//! | `[slow]` | the same, 150 ms before each chunk |
//! | `[nousage]` | the same without the usage chunk (servers without `include_usage`) |
//! | `[nul]` | the words with a NUL inside the first, which Postgres `text` cannot store |
//! | `[flood]` | chunks of 1,000 characters without end or delay, `max_tokens` ignored |
//! | `[long]` | 10,000 chunks, 20 ms apart (for cancelling mid-way) |
//! | `[500]` | 500 before any chunk |
//! | `[429]` | 429 with `Retry-After: 7` |
//! | `[401]` | 401 (a bad key) |
//! | `[hang]` | never sends its headers |
//! | `[reset]` | two chunks, then the connection is cut mid-stream |
//!
//! It counts requests, streams open now, and streams whose client went away before the end.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests received.
    pub requests: AtomicUsize,
    /// Answers being streamed right now.
    pub open_streams: AtomicUsize,
    /// Answers whose client went away (connection closed) before the last chunk.
    pub cut_streams: AtomicUsize,
    /// Answers streamed to their end.
    pub finished_streams: AtomicUsize,
    /// The last request's JSON body.
    pub last_body: Mutex<Option<Value>>,
    /// The last request's `Authorization` header.
    pub last_authorization: Mutex<Option<String>>,
    /// The last request's query string.
    pub last_query: Mutex<Option<String>>,
}

/// The running fake.
pub struct FakeLlm {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    /// Starts the fake on 127.0.0.1:0.
    pub async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, seen, task }
    }

    /// The `LLM_BASE_URL` to give the example.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.seen.open_streams.load(Ordering::SeqCst)
    }

    /// Streams cut by their client.
    pub fn cut_streams(&self) -> usize {
        self.seen.cut_streams.load(Ordering::SeqCst)
    }

    /// Streams finished.
    pub fn finished_streams(&self) -> usize {
        self.seen.finished_streams.load(Ordering::SeqCst)
    }

    /// The last request body.
    pub fn last_body(&self) -> Value {
        self.seen
            .last_body
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Value::Null)
    }

    /// Waits (at most `limit`, polling every 10 ms) until `check` holds; returns whether it did.
    pub async fn wait_until(&self, limit: Duration, check: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if check(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn chunk(text: &str) -> Bytes {
    let data = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
    });
    Bytes::from(format!("data: {data}\n\n"))
}

fn usage_chunk(prompt: usize, completion: usize) -> Bytes {
    let data = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    });
    Bytes::from(format!("data: {data}\n\n"))
}

/// Counts a stream open while it lives, and how it ended.
struct StreamGuard {
    seen: Arc<Seen>,
    finished: bool,
}

impl StreamGuard {
    fn new(seen: Arc<Seen>) -> Self {
        seen.open_streams.fetch_add(1, Ordering::SeqCst);
        Self {
            seen,
            finished: false,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.seen.finished_streams
        } else {
            &self.seen.cut_streams
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.seen.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn completions(
    State(seen): State<Arc<Seen>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    *seen.last_query.lock().unwrap() = uri.query().map(str::to_owned);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    *seen.last_authorization.lock().unwrap() = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *seen.last_body.lock().unwrap() = Some(body.clone());
    let prompt = body
        .pointer("/messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();

    let (tag, rest) = match prompt.strip_prefix('[').and_then(|p| p.split_once(']')) {
        Some((tag, rest)) => (tag.to_owned(), rest.to_owned()),
        None => (String::new(), prompt.clone()),
    };
    // A real model stops at `max_tokens`; here a token is a word.
    let max_tokens = body["max_tokens"]
        .as_u64()
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let words: Vec<String> = rest
        .split_whitespace()
        .take(max_tokens)
        .map(|w| format!("{w} "))
        .collect();
    let mut usage = true;
    let (pieces, delay, reset) = match tag.as_str() {
        "500" => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"error":{"message":"boom"}}"#,
            )
                .into_response();
        }
        "429" => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "7")],
                r#"{"error":{"message":"slow down"}}"#,
            )
                .into_response();
        }
        "401" => {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"error":{"message":"bad key"}}"#,
            )
                .into_response();
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        "slow" => (words, Duration::from_millis(150), false),
        "long" => (
            (0..10_000).map(|i| format!("w{i} ")).collect(),
            Duration::from_millis(20),
            false,
        ),
        "reset" => (words.into_iter().take(2).collect(), Duration::ZERO, true),
        "nousage" => {
            usage = false;
            (words, Duration::ZERO, false)
        }
        "nul" => {
            let mut words = words;
            if let Some(first) = words.first_mut() {
                first.insert(1, '\0');
            }
            (words, Duration::ZERO, false)
        }
        "flood" => (vec!["x".repeat(1000)], Duration::ZERO, false),
        _ => (words, Duration::ZERO, false),
    };
    let prompt_tokens = prompt.split_whitespace().count();

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let guard = StreamGuard::new(seen);
    tokio::spawn(async move {
        // The whole guard moves in (a closure would capture only the field it assigns), so
        // it lives exactly as long as the stream.
        let mut guard = guard;
        let count = pieces.len();
        // `[flood]` repeats its one chunk until the client goes: only the client's reading,
        // never the end of the answer, can then free the connection.
        let endless = tag == "flood";
        let pieces = pieces
            .into_iter()
            .cycle()
            .take(if endless { usize::MAX } else { count });
        for piece in pieces {
            // Without a delay, no timer either: even a zero sleep waits for the timer's next
            // millisecond tick, which would make `[flood]` a trickle.
            if delay.is_zero() {
                if tx.is_closed() {
                    return;
                }
            } else {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            if tx.send(Ok(chunk(&piece))).await.is_err() {
                return;
            }
        }
        if reset {
            guard.finished = true;
            // Let hyper flush the chunks first: it drops unwritten ones when it aborts.
            tokio::time::sleep(Duration::from_millis(100)).await;
            // An error from the body makes hyper abort the connection mid-answer.
            let _ = tx
                .send(Err(std::io::Error::other("reset by the fake")))
                .await;
            return;
        }
        if usage {
            let _ = tx.send(Ok(usage_chunk(prompt_tokens, count))).await;
        }
        if tx
            .send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .await
            .is_ok()
        {
            guard.finished = true;
        }
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response
}
