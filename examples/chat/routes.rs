//! The chat's HTTP contract: `POST /chat` (a server-sent event stream), `GET /conversations`,
//! `GET /conversations/{id}`; every error in the service's `{"error", "message"}` shape.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use supabase_jwt_service::{ApiError, AppState, Claims};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::db::{ChatTx, bounded, unavailable};
use crate::history::{self, MAX_STORED_CHARS, Turn};
use crate::quota::{self, Charge, Limits, Reservation, StreamSlot, Streams};
use crate::upstream::{Answer, Message, Model, Piece, StreamError, Usage, estimate_prompt_tokens};

/// Largest request body (the service's limit: 16 KiB).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Longest message, in characters.
const MAX_MESSAGE_CHARS: usize = 4000;

/// Frames buffered between the upstream and a slow client; beyond this the upstream waits
/// (TCP backpressure), so a slow reader costs a few kilobytes, not a whole answer.
const FRAME_BUFFER: usize = 32;

/// Messages per page of `GET /conversations/{id}`, by default and at most.
const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 100;

const INVALID_CHAT_BODY: ApiError = ApiError::custom(
    StatusCode::UNPROCESSABLE_ENTITY,
    "invalid_body",
    "expected a JSON object {\"conversation_id\": uuid or null, \"message\": string of 1 to 4000 characters, no control characters but line breaks and tabs}",
);

const INVALID_PAGE: ApiError = ApiError::custom(
    StatusCode::BAD_REQUEST,
    "invalid_request",
    "`before` must be a `next_cursor` from an earlier page and `limit` a number from 1 to 100",
);

const NO_SUCH_CONVERSATION: ApiError =
    ApiError::custom(StatusCode::NOT_FOUND, "not_found", "no such conversation");

/// What the chat's handlers need besides the app's state (verifier, configuration, the
/// database), which they take as `State<AppState>`.
#[derive(Clone)]
pub struct ChatState {
    /// The model.
    pub model: Model,
    /// Quota limits.
    pub limits: Limits,
    /// Streams in flight per user.
    pub streams: Streams,
    /// `CHAT_MAX_OUTPUT_TOKENS`: what admission reserves for the answer (the model is told
    /// the same cap).
    pub max_output_tokens: u32,
    /// `CHAT_MAX_HISTORY_BYTES`: the earlier messages sent upstream, newest first.
    pub max_history_bytes: u32,
    /// `CHAT_MAX_SECONDS`: the whole answer, each frame's send to the client included.
    pub max_answer: Duration,
}

/// The chat routes, to merge into the library's `App` (which puts them behind the service's
/// whole stack and its JSON 404 and 405 answers).
pub fn routes(chat: ChatState) -> Router<AppState> {
    Router::new()
        .route("/chat", post(post_chat))
        .route("/conversations", get(list_conversations))
        .route("/conversations/{id}", get(get_conversation))
        .layer(Extension(chat))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    #[serde(default)]
    conversation_id: Option<Uuid>,
    message: String,
}

/// Checks the body the way the service checks `PUT /name`: 415 unless JSON, 413 over 16 KiB,
/// 422 for a wrong shape or an empty or over-long message.
async fn read_request(headers: &HeaderMap, body: Body) -> Result<ChatRequest, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let request: ChatRequest = serde_json::from_slice(&bytes).map_err(|_| INVALID_CHAT_BODY)?;
    let length = request.message.chars().count();
    if request.message.trim().is_empty()
        || length > MAX_MESSAGE_CHARS
        || request.message.chars().any(is_forbidden_control)
    {
        return Err(INVALID_CHAT_BODY);
    }
    Ok(request)
}

/// Control characters, as `PUT /name` refuses them, except the line breaks and tabs a
/// message may hold. NUL above all: Postgres `text` cannot store it.
fn is_forbidden_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\n' | '\r' | '\t')
}

/// `POST /chat`: admits the request (stream slot, then the database quota, which reserves the
/// answer's tokens), loads the conversation's earlier messages, starts the model, and streams
/// its answer as it arrives.
async fn post_chat(
    State(app): State<AppState>,
    Extension(chat): Extension<ChatState>,
    claims: Claims,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = read_request(&headers, body).await?;
    let user = claims.sub.uuid();
    let rpm = chat.limits.requests_per_minute(&claims)?;
    let slot = chat.streams.try_acquire(user)?;

    // Not a `Tx`: that one would be settled when the response head goes out, while the quota
    // row must be committed before the model is called, and the turn is stored by a task that
    // outlives this handler.
    let db = app.db().clone();
    let db_timeout = app.config().db.timeout;
    let (messages, reservation) = bounded(db_timeout, async {
        let mut tx = ChatTx::as_caller(&db, &claims).await?;
        match admit(&mut tx, &chat, user, rpm, &request).await {
            Ok(admitted) => {
                // Committed at once: the quota rows stay locked until then, and a lock held
                // for the whole answer would queue this user's other requests behind it.
                tx.commit().await?;
                Ok(admitted)
            }
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    })
    .await?;
    let prompt_estimate = estimate_prompt_tokens(&messages);
    // From here the reservation is settled exactly once, whatever happens: should this
    // handler be dropped while the model is called (client gone, request timeout), the model
    // may have read the prompt, so the prompt is what it costs.
    let charge = Charge::new(db, user, reservation, db_timeout, prompt_estimate);
    let deadline = Instant::now() + chat.max_answer;
    let answer = match chat.model.start(&messages).await {
        Ok(answer) => answer,
        Err(e) => {
            // Refused before any answer: nothing to pay for. The settling task runs on
            // detached; this answer need not wait for it.
            drop(charge.settle(0));
            return Err(e.into());
        }
    };

    let conversation_id = request.conversation_id.unwrap_or_else(Uuid::new_v4);
    let (frames, rx) = mpsc::channel(FRAME_BUFFER);
    let meta = frame("meta", &json!({ "conversation_id": conversation_id }));
    // The channel is new and empty, so this cannot fail.
    let _ = frames.try_send(meta);
    tokio::spawn(relay(Relay {
        answer,
        frames,
        app,
        claims,
        conversation_id,
        question: request.message,
        sent: messages,
        charge,
        deadline,
        _slot: slot,
    }));

    let stream = ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style proxies (Fly's included) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// In the admission transaction: the earlier messages (404 when the conversation is not the
/// caller's), then the quota, so a refused conversation costs no quota. Admission reserves
/// what the answer may cost: the output cap plus the prompt's estimate. Returns the messages
/// to send upstream, the new one last.
async fn admit(
    tx: &mut ChatTx,
    chat: &ChatState,
    user: Uuid,
    rpm: u32,
    request: &ChatRequest,
) -> Result<(Vec<Message>, Reservation), ApiError> {
    let mut messages = match request.conversation_id {
        Some(id) => history::earlier(tx.conn(), user, id, i64::from(chat.max_history_bytes))
            .await
            .map_err(unavailable)?
            .ok_or(NO_SUCH_CONVERSATION)?,
        None => Vec::new(),
    };
    messages.push(Message {
        role: "user".to_owned(),
        content: request.message.clone(),
    });
    let reserve =
        u64::from(chat.max_output_tokens).saturating_add(estimate_prompt_tokens(&messages));
    let reservation =
        quota::admit(tx.conn(), user, rpm, chat.limits.tokens_per_day, reserve).await?;
    Ok((messages, reservation))
}

/// One SSE frame. The JSON is compact, so it holds no newline and fits one `data:` line.
fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Everything the relay task owns.
struct Relay {
    answer: Answer,
    frames: mpsc::Sender<Bytes>,
    app: AppState,
    claims: Claims,
    conversation_id: Uuid,
    question: String,
    /// What went upstream, for the estimate when the model reports no usage.
    sent: Vec<Message>,
    charge: Charge,
    /// `CHAT_MAX_SECONDS` after the model was called: bounds the answer and every send.
    deadline: Instant,
    /// Held until the answer ends, however it ends.
    _slot: StreamSlot,
}

/// How the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Complete,
    ClientGone,
    /// The client kept its connection but stopped reading until the deadline.
    ClientStalled,
    Failed(StreamError),
}

/// The answer as it will be stored: at most [`MAX_STORED_CHARS`] characters, NUL (which
/// Postgres `text` cannot hold, and which a model may send) replaced.
#[derive(Debug, Default)]
struct Kept {
    text: String,
    chars: usize,
    /// The answer went on past what can be stored.
    cut: bool,
}

impl Kept {
    fn push(&mut self, piece: &str) {
        let max = usize::try_from(MAX_STORED_CHARS).unwrap_or(usize::MAX);
        for c in piece.chars() {
            if self.chars >= max {
                self.cut = true;
                return;
            }
            self.text.push(if c == '\0' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            });
            self.chars += 1;
        }
    }
}

/// Moves the answer from the model to the client, piece by piece, then charges it and stores
/// the turn, two separate steps. When the client goes away (its response body is dropped, so
/// the channel closes) or stops reading until the deadline, the upstream answer is dropped at
/// once, which closes its connection, and what was produced is stored marked incomplete.
async fn relay(relay: Relay) {
    let Relay {
        mut answer,
        frames,
        app,
        claims,
        conversation_id,
        question,
        sent,
        charge,
        deadline,
        _slot,
    } = relay;
    let mut kept = Kept::default();
    let mut streamed_bytes: u64 = 0;
    let mut usage: Option<Usage> = None;
    let ending = loop {
        let next = tokio::select! {
            biased;
            () = frames.closed() => break Ending::ClientGone,
            next = timeout_at(deadline, answer.next()) => {
                next.unwrap_or(Err(StreamError::TimedOut))
            }
        };
        match next {
            Ok(Some(Piece::Text(piece))) => {
                streamed_bytes = streamed_bytes.saturating_add(piece.len() as u64);
                kept.push(&piece);
                // A client that stops reading fills the channel; without a bound this send
                // would wait for ever, holding the stream slot and the model's connection.
                match timeout_at(
                    deadline,
                    frames.send(frame("delta", &json!({ "text": piece }))),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ending::ClientGone,
                    Err(_) => break Ending::ClientStalled,
                }
            }
            Ok(Some(Piece::Usage(u))) => usage = Some(u),
            Ok(None) => break Ending::Complete,
            Err(e) => break Ending::Failed(e),
        }
    };
    drop(answer);

    let usage = usage.unwrap_or_else(|| Usage::estimated(&sent, streamed_bytes));
    // Charged first and on its own: nothing the history step meets can skip it.
    let charged = charge.settle(usage.total()).await.unwrap_or(false);
    let turn = Turn {
        conversation_id,
        question: &question,
        answer: &kept.text,
        incomplete: ending != Ending::Complete || kept.cut,
    };
    let user = claims.sub.uuid();
    // The same pool and the same caller's transaction as the handlers', begun here because
    // the request's own ended when the response head went out.
    let stored = bounded(app.config().db.timeout, async {
        let mut tx = ChatTx::as_caller(app.db(), &claims).await?;
        history::store(tx.conn(), user, &turn)
            .await
            .map_err(unavailable)?;
        tx.commit().await
    })
    .await;
    tracing::info!(
        user.id = %user,
        ending = ?ending,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        charged,
        cut = kept.cut,
        stored = stored.is_ok(),
        "chat turn ended"
    );

    let last = match (ending, stored) {
        (Ending::ClientGone | Ending::ClientStalled, _) => return,
        (Ending::Failed(e), _) => frame("error", &e.to_json()),
        (Ending::Complete, Err(_)) => frame(
            "error",
            &json!({"error": "unavailable", "message": "the answer could not be saved; retry shortly"}),
        ),
        (Ending::Complete, Ok(())) => frame("done", &json!({ "usage": usage })),
    };
    // Room in the channel takes it even past the deadline; a full one is a stalled client.
    let _ = timeout_at(deadline, frames.send(last)).await;
}

/// `GET /conversations`: the caller's conversations, most recent first.
async fn list_conversations(
    State(app): State<AppState>,
    claims: Claims,
) -> Result<Response, ApiError> {
    let user = claims.sub.uuid();
    let conversations = bounded(app.config().db.timeout, async {
        let mut tx = ChatTx::as_caller(app.db(), &claims).await?;
        let listed = history::list(tx.conn(), user).await.map_err(unavailable)?;
        tx.commit().await?;
        Ok(listed)
    })
    .await?;
    Ok(no_store(Json(json!({ "conversations": conversations }))))
}

/// The query of `GET /conversations/{id}`, as sent; checked by [`page_of`].
#[derive(Debug, Deserialize)]
struct PageQuery {
    before: Option<String>,
    limit: Option<String>,
}

/// The cursor and page size, or 400.
fn page_of(
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<(Option<i64>, i64), ApiError> {
    let Query(query) = query.map_err(|_| INVALID_PAGE)?;
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            cursor
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or(INVALID_PAGE)?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => PAGE_DEFAULT,
        Some(limit) => limit
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or(INVALID_PAGE)?,
    };
    Ok((before, limit))
}

/// `GET /conversations/{id}`: one of the caller's conversations with a page of its messages,
/// the newest by default, oldest first within the page; `?before=<next_cursor>` for older
/// ones, `?limit=` 1 to 100 (50). Another user's, or an unknown id, is 404.
async fn get_conversation(
    State(app): State<AppState>,
    claims: Claims,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = id
        .ok()
        .and_then(|Path(id)| Uuid::try_parse(&id).ok())
        .ok_or(NO_SUCH_CONVERSATION)?;
    let (before, limit) = page_of(query)?;
    let user = claims.sub.uuid();
    let page = bounded(app.config().db.timeout, async {
        let mut tx = ChatTx::as_caller(app.db(), &claims).await?;
        let page = history::page(tx.conn(), user, id, before, limit)
            .await
            .map_err(unavailable)?;
        tx.commit().await?;
        Ok(page)
    })
    .await?
    .ok_or(NO_SUCH_CONVERSATION)?;
    Ok(no_store(Json(json!({
        "id": id,
        "messages": page.messages,
        "next_cursor": page.next_cursor,
    }))))
}

fn no_store(answer: impl IntoResponse) -> Response {
    let mut response = answer.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_line_breaks_and_tabs_but_no_other_control_character() {
        for ok in ['\n', '\r', '\t', 'a', 'é', '\u{2028}'] {
            assert!(!is_forbidden_control(ok), "{ok:?}");
        }
        for bad in ['\0', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}'] {
            assert!(is_forbidden_control(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_stored_answer_is_bounded_and_holds_no_nul() {
        let mut kept = Kept::default();
        kept.push("a\0b");
        assert_eq!(kept.text, "a\u{fffd}b");
        let max = usize::try_from(MAX_STORED_CHARS).unwrap();
        kept.push(&"é".repeat(max));
        assert_eq!(kept.text.chars().count(), max);
        assert!(kept.cut);
    }

    #[test]
    fn page_queries_are_checked() {
        let parse = |q: &str| {
            let uri: axum::http::Uri = format!("/c?{q}").parse().unwrap();
            page_of(Query::try_from_uri(&uri))
        };
        assert_eq!(parse(""), Ok((None, PAGE_DEFAULT)));
        assert_eq!(parse("before=42&limit=100"), Ok((Some(42), 100)));
        for bad in ["before=x", "before=-1", "limit=0", "limit=101", "limit=ten"] {
            assert_eq!(parse(bad), Err(INVALID_PAGE), "{bad}");
        }
    }
}
