//! The model behind `/chat`: an OpenAI-compatible chat-completions server read as server-sent
//! events as they arrive, or the built-in local model when `LLM_BASE_URL` is unset.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde_json::{Value, json};
use supabase_jwt_service::ApiError;
use tokio::time::Instant;

use crate::local::{LocalAnswer, LocalModel};

/// Longest server-sent event accepted from the upstream; a chunk is a few hundred bytes, so a
/// larger one means a broken or hostile server, not a big answer.
const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Wait used when an unavailable upstream gives no `Retry-After` of its own.
const DEFAULT_RETRY_SECONDS: u32 = 5;

/// The upstream's API key. Never printed: `Debug` and `Display` are redacted, and the only
/// place its text goes is the `Authorization` header, marked sensitive.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; an empty one is no key.
    pub fn new(key: String) -> Option<Self> {
        (!key.is_empty()).then_some(Self(key))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One message of the conversation sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// Token counts of one answer, as the upstream reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens of the conversation sent.
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    pub completion_tokens: u64,
}

impl Usage {
    /// Everything the answer cost: the prompt is paid for as much as the answer.
    pub fn total(self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// The counts when the upstream gave none (it does not support `include_usage`, or the
    /// answer was cut before its last chunk): estimated from what was sent and received.
    pub fn estimated(messages: &[Message], streamed_bytes: u64) -> Self {
        Self {
            prompt_tokens: estimate_prompt_tokens(messages),
            completion_tokens: streamed_bytes.div_ceil(BYTES_PER_TOKEN),
        }
    }
}

/// UTF-8 bytes per token for estimates. English runs about four bytes a token and most other
/// scripts two to three, so three errs on the side of charging more, never much less.
const BYTES_PER_TOKEN: u64 = 3;

/// What chat-completions APIs add per message for its role and separators (OpenAI: 3 to 4).
const TOKENS_PER_MESSAGE: u64 = 4;

/// A prompt's tokens, estimated before it is sent: what admission reserves for the prompt,
/// and what is charged when the upstream reports no usage.
pub fn estimate_prompt_tokens(messages: &[Message]) -> u64 {
    messages
        .iter()
        .map(|m| (m.content.len() as u64).div_ceil(BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE)
        .sum()
}

/// What the answer stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The next part of the answer's text.
    Text(String),
    /// The answer's token counts (OpenAI sends them in a last chunk with no choices).
    Usage(Usage),
}

/// Why the upstream could not start an answer; each maps to the contract's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// 5xx, 429, timeout or connection refused: try again after this many seconds.
    Unavailable(u32),
    /// Any other 4xx, or an answer that is not an event stream.
    Refused,
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Unavailable(seconds) => ApiError::UnavailableFor(seconds),
            StartError::Refused => ApiError::UpstreamError,
        }
    }
}

/// Why an answer stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// The connection broke, or the upstream sent something that is not its protocol.
    Broken,
    /// `CHAT_MAX_SECONDS` passed.
    TimedOut,
}

impl StreamError {
    /// The `event: error` payload for the client: our error shape, fixed texts.
    pub fn to_json(self) -> Value {
        match self {
            Self::Broken => json!({
                "error": "upstream_error",
                "message": "the model's answer broke off; retry shortly",
            }),
            Self::TimedOut => json!({
                "error": "unavailable",
                "message": "the model took too long to answer",
            }),
        }
    }
}

/// The bounds on one upstream call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From sending the request to the response headers.
    pub first_byte: Duration,
    /// From sending the request to the end of the answer.
    pub total: Duration,
    /// `CHAT_MAX_OUTPUT_TOKENS`, sent as `max_tokens`.
    pub max_output_tokens: u32,
}

/// An OpenAI-compatible chat-completions endpoint. No `Debug` derive: the URL may carry
/// credentials (userinfo, a `?key=`), so it prints masked.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as logs may show it, computed once.
    masked: String,
    key: Option<ApiKey>,
    model: String,
    limits: Limits,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.masked)
            .field("key", &self.key)
            .field("model", &self.model)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Query parameters whose value is a credential, matched on the lowercased name anywhere in
/// it: `key` (Google's `?key=`, `api_key`, `api-key`, `x-goog-api-key`), tokens, secrets,
/// passwords, signatures (Azure's SAS `sig`). Loose on purpose: masking a harmless value costs
/// a less useful log line, missing a key leaks it.
const CREDENTIAL_PARTS: [&str; 7] = ["key", "token", "secret", "pass", "pwd", "sig", "auth"];

fn is_credential_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_PARTS.iter().any(|part| name.contains(part))
}

/// Replaces every credential in `url` with `***`: the user name and password (reqwest sends
/// them as Basic auth) and credential-looking query values. Scheme, host, port, path and the
/// other parameters stay, so a log still says where the model is.
pub fn mask_url(url: &mut reqwest::Url) {
    // Neither setter fails on an http(s) URL; a URL that cannot carry userinfo has none.
    if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(k, _)| is_credential_param(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_credential_param(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

/// A reqwest error safe to log: its text quotes the request's URL, credentials included.
fn loggable(mut e: reqwest::Error) -> reqwest::Error {
    if let Some(url) = e.url_mut() {
        mask_url(url);
    }
    e
}

impl Upstream {
    /// A client for `base_url` (e.g. `https://api.openai.com/v1`): `POST {base}/chat/completions`.
    pub fn new(
        base_url: &str,
        key: Option<ApiKey>,
        model: String,
        connect_timeout: Duration,
        limits: Limits,
    ) -> Result<Self, String> {
        let mut url = reqwest::Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| format!("LLM_BASE_URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("LLM_BASE_URL: must be an http:// or https:// URL".to_owned());
        }
        url.path_segments_mut()
            .map_err(|()| "LLM_BASE_URL: cannot be a base URL".to_owned())?
            .pop_if_empty()
            .extend(["chat", "completions"]);
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .user_agent(concat!(
                "supabase-jwt-service-chat/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("LLM client: {e}"))?;
        let mut masked = url.clone();
        mask_url(&mut masked);
        Ok(Self {
            client,
            masked: masked.to_string(),
            url,
            key,
            model,
            limits,
        })
    }

    /// The endpoint with its credentials masked, for logs.
    pub fn masked_url(&self) -> &str {
        &self.masked
    }

    /// Sends the conversation and waits for the response headers (at most `first_byte`).
    pub async fn start(&self, messages: &[Message]) -> Result<UpstreamAnswer, StartError> {
        let deadline = Instant::now() + self.limits.total;
        let body = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            // The one bound on an answer's cost the upstream enforces itself.
            "max_tokens": self.limits.max_output_tokens,
        });
        let mut request = self
            .client
            .post(self.url.clone())
            .header(ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.0))
                .map_err(|_| StartError::Refused)?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = match tokio::time::timeout(self.limits.first_byte, request.send()).await {
            Err(_) => {
                tracing::warn!(target: "chat::upstream", url = %self.masked, "no answer from the model within the first-byte timeout");
                return Err(StartError::Unavailable(DEFAULT_RETRY_SECONDS));
            }
            Ok(Err(e)) => {
                // reqwest's error text quotes the URL (never headers): masked first.
                tracing::warn!(target: "chat::upstream", error = %loggable(e), "model unreachable");
                return Err(StartError::Unavailable(DEFAULT_RETRY_SECONDS));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            tracing::warn!(target: "chat::upstream", url = %self.masked, status = status.as_u16(), "model refused the request");
            return Err(start_error(status, response.headers().get(RETRY_AFTER)));
        }
        let is_event_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_event_stream {
            tracing::warn!(target: "chat::upstream", "model answered without an event stream");
            return Err(StartError::Refused);
        }
        Ok(UpstreamAnswer {
            response,
            parser: EventParser::default(),
            pending: std::collections::VecDeque::new(),
            deadline,
            finished: false,
        })
    }
}

/// What an upstream's refusal status means for our client.
fn start_error(status: StatusCode, retry_after: Option<&HeaderValue>) -> StartError {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        // The upstream's 429 is the whole app's limit with the provider, not this user's
        // quota: it is an outage from the user's side, with the provider's wait.
        let seconds = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map_or(DEFAULT_RETRY_SECONDS, |s| s.clamp(1, 3600));
        StartError::Unavailable(seconds)
    } else {
        StartError::Refused
    }
}

/// An answer being streamed from the upstream. Dropping it closes the connection at once.
#[derive(Debug)]
pub struct UpstreamAnswer {
    response: reqwest::Response,
    parser: EventParser,
    pending: std::collections::VecDeque<Piece>,
    deadline: Instant,
    finished: bool,
}

impl UpstreamAnswer {
    /// The next piece, `None` after `[DONE]` (or the stream's clean end).
    pub async fn next(&mut self) -> Result<Option<Piece>, StreamError> {
        loop {
            if let Some(piece) = self.pending.pop_front() {
                return Ok(Some(piece));
            }
            if self.finished {
                return Ok(None);
            }
            let chunk = match tokio::time::timeout_at(self.deadline, self.response.chunk()).await {
                Err(_) => return Err(StreamError::TimedOut),
                Ok(Err(e)) => {
                    tracing::warn!(target: "chat::upstream", error = %loggable(e), "model stream broke");
                    return Err(StreamError::Broken);
                }
                Ok(Ok(None)) => {
                    // A clean end without `[DONE]`: some servers do that; what arrived stands.
                    self.finished = true;
                    continue;
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            for data in self.parser.push(&chunk).map_err(|()| StreamError::Broken)? {
                match parse_data(&data) {
                    Data::Done => self.finished = true,
                    Data::Pieces(pieces) => self.pending.extend(pieces),
                    Data::Invalid => return Err(StreamError::Broken),
                }
            }
        }
    }
}

/// The model `/chat` talks to.
#[derive(Debug, Clone)]
pub enum Model {
    /// An OpenAI-compatible server.
    Remote(Upstream),
    /// The built-in deterministic model.
    Local(LocalModel),
}

/// An answer in progress, from either model.
#[derive(Debug)]
pub enum Answer {
    /// From the upstream server.
    Remote(UpstreamAnswer),
    /// From the local model.
    Local(LocalAnswer),
}

impl Model {
    /// Starts an answer to `messages` (the last is the new user message).
    pub async fn start(&self, messages: &[Message]) -> Result<Answer, StartError> {
        match self {
            Self::Remote(upstream) => upstream.start(messages).await.map(Answer::Remote),
            Self::Local(local) => Ok(Answer::Local(local.answer(messages))),
        }
    }
}

impl Answer {
    /// The next piece of the answer; `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Piece>, StreamError> {
        match self {
            Self::Remote(answer) => answer.next().await,
            Self::Local(answer) => Ok(answer.next().await),
        }
    }
}

/// Splits a server-sent event stream into the `data` of each event (WHATWG HTML, "Server-sent
/// events", parsing an event stream): lines end in LF, CR or CRLF; a blank line dispatches;
/// `data:` lines of one event are joined with LF; comments and other fields are ignored.
#[derive(Debug, Default)]
struct EventParser {
    line: Vec<u8>,
    data: Option<String>,
    /// The previous byte was a CR, so an LF right after it ends nothing more.
    after_cr: bool,
}

impl EventParser {
    /// Feeds bytes; returns the data of every event they completed. `Err` when an event grows
    /// past [`MAX_EVENT_BYTES`] or is not UTF-8.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, ()> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\n' || b == b'\r' {
                let line = std::mem::take(&mut self.line);
                let line = String::from_utf8(line).map_err(|_| ())?;
                if line.is_empty() {
                    if let Some(data) = self.data.take() {
                        events.push(data);
                    }
                } else if let Some(value) = field(&line, "data") {
                    let data = self.data.get_or_insert_with(String::new);
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                    if data.len() > MAX_EVENT_BYTES {
                        return Err(());
                    }
                }
            } else {
                self.line.push(b);
                if self.line.len() > MAX_EVENT_BYTES {
                    return Err(());
                }
            }
        }
        Ok(events)
    }
}

/// The value of `line` when it is the field `name` (`name:value`, one leading space dropped).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?;
    if rest.is_empty() {
        return Some("");
    }
    let value = rest.strip_prefix(':')?;
    Some(value.strip_prefix(' ').unwrap_or(value))
}

/// What one event's data says.
#[derive(Debug, PartialEq, Eq)]
enum Data {
    /// `[DONE]`: the answer is complete.
    Done,
    /// Text and usage found in a chunk (possibly none: role-only and empty deltas).
    Pieces(Vec<Piece>),
    /// Not a chat-completion chunk.
    Invalid,
}

/// Reads one `chat.completion.chunk`: `choices[0].delta.content` and `usage`.
fn parse_data(data: &str) -> Data {
    if data.trim() == "[DONE]" {
        return Data::Done;
    }
    let Ok(chunk) = serde_json::from_str::<Value>(data) else {
        return Data::Invalid;
    };
    if chunk.get("error").is_some() {
        return Data::Invalid;
    }
    let mut pieces = Vec::new();
    if let Some(text) = chunk
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        pieces.push(Piece::Text(text.to_owned()));
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
        let count = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        pieces.push(Piece::Usage(Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        }));
    }
    Data::Pieces(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_any_line_ending_and_across_chunks() {
        let mut p = EventParser::default();
        assert_eq!(p.push(b"data: {\"a\"").unwrap(), Vec::<String>::new());
        assert_eq!(p.push(b":1}\r\n\r").unwrap(), vec!["{\"a\":1}"]);
        assert_eq!(p.push(b"\n: comment\n").unwrap(), Vec::<String>::new());
        assert_eq!(p.push(b"data:x\ndata: y\n\n").unwrap(), vec!["x\ny"]);
        assert_eq!(p.push(b"event: ping\n\n").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn an_oversized_event_is_an_error() {
        let mut p = EventParser::default();
        assert!(p.push(&vec![b'a'; MAX_EVENT_BYTES + 1]).is_err());
    }

    #[test]
    fn chunks_yield_text_usage_and_done() {
        assert_eq!(parse_data("[DONE]"), Data::Done);
        assert_eq!(
            parse_data(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#),
            Data::Pieces(vec![Piece::Text("Hi".into())])
        );
        assert_eq!(
            parse_data(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#),
            Data::Pieces(vec![])
        );
        assert_eq!(
            parse_data(
                r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#
            ),
            Data::Pieces(vec![Piece::Usage(Usage {
                prompt_tokens: 3,
                completion_tokens: 5
            })])
        );
        assert_eq!(parse_data("not json"), Data::Invalid);
    }

    #[test]
    fn upstream_refusals_map_to_the_contract() {
        let wait = HeaderValue::from_static("17");
        assert_eq!(
            start_error(StatusCode::TOO_MANY_REQUESTS, Some(&wait)),
            StartError::Unavailable(17)
        );
        assert_eq!(
            start_error(StatusCode::BAD_GATEWAY, None),
            StartError::Unavailable(DEFAULT_RETRY_SECONDS)
        );
        assert_eq!(
            start_error(StatusCode::UNAUTHORIZED, None),
            StartError::Refused
        );
    }

    #[test]
    fn the_api_key_never_prints() {
        let key = ApiKey::new("sk-very-secret".into()).unwrap();
        assert_eq!(format!("{key:?} {key}"), "[redacted] [redacted]");
        let upstream = Upstream::new(
            "http://127.0.0.1:1/v1/",
            Some(key),
            "m".into(),
            Duration::from_secs(1),
            Limits {
                first_byte: Duration::from_secs(1),
                total: Duration::from_secs(1),
                max_output_tokens: 16,
            },
        )
        .unwrap();
        assert!(!format!("{upstream:?}").contains("sk-very-secret"));
        assert_eq!(
            upstream.url.as_str(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
    }

    #[test]
    fn credentials_in_the_base_url_are_masked_and_the_rest_kept() {
        let upstream = Upstream::new(
            "https://us3r:pa55@llm.example/v1?api-version=2024-06-01&key=k3y&X-Api-Key=k4y&sig=s1g",
            None,
            "m".into(),
            Duration::from_secs(1),
            Limits {
                first_byte: Duration::from_secs(1),
                total: Duration::from_secs(1),
                max_output_tokens: 16,
            },
        )
        .unwrap();
        let masked = upstream.masked_url();
        for secret in ["us3r", "pa55", "k3y", "k4y", "s1g"] {
            assert!(!masked.contains(secret), "{masked}");
            assert!(!format!("{upstream:?}").contains(secret));
        }
        assert_eq!(
            masked,
            "https://***:***@llm.example/v1/chat/completions?api-version=2024-06-01&key=***&X-Api-Key=***&sig=***"
        );
        // The request itself still carries them.
        assert!(upstream.url.as_str().contains("key=k3y"));
        assert_eq!(upstream.url.password(), Some("pa55"));

        let mut plain = reqwest::Url::parse("http://127.0.0.1:11434/v1/chat/completions").unwrap();
        mask_url(&mut plain);
        assert_eq!(plain.as_str(), "http://127.0.0.1:11434/v1/chat/completions");
    }

    #[test]
    fn estimates_err_on_the_high_side() {
        let messages = [Message {
            role: "user".into(),
            content: "twelve bytes".into(),
        }];
        assert_eq!(estimate_prompt_tokens(&messages), 4 + 4);
        assert_eq!(
            Usage::estimated(&messages, 7),
            Usage {
                prompt_tokens: 8,
                completion_tokens: 3
            }
        );
    }
}
