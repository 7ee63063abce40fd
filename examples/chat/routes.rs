//! The chat's HTTP contract: `POST /chat` (a server-sent event stream), `GET /conversations`,
//! `GET /conversations/{id}`; every error in the service's `{"error", "message"}` shape.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use supabase_jwt_service::{ApiError, AppState, Claims, Tx, UserTx};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::db::{bounded, unavailable};
use crate::history::{self, Turn};
use crate::quota::{self, Limits, StreamSlot, Streams};
use crate::upstream::{Answer, Message, Model, Piece, StreamError, Usage};

/// Largest request body (the service's limit).
const MAX_BODY_BYTES: usize = supabase_jwt_service::routes::MAX_BODY_BYTES;

/// Longest message, in characters.
const MAX_MESSAGE_CHARS: usize = 4000;

/// Frames buffered between the upstream and a slow client; beyond this the upstream waits
/// (TCP backpressure), so a slow reader costs a few kilobytes, not a whole answer.
const FRAME_BUFFER: usize = 32;

const INVALID_CHAT_BODY: ApiError = ApiError::custom(
    StatusCode::UNPROCESSABLE_ENTITY,
    "invalid_body",
    "expected a JSON object {\"conversation_id\": uuid or null, \"message\": string of 1 to 4000 characters}",
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
    if request.message.trim().is_empty() || length > MAX_MESSAGE_CHARS {
        return Err(INVALID_CHAT_BODY);
    }
    Ok(request)
}

/// `POST /chat`: admits the request (stream slot, then the database quota), loads the
/// conversation's earlier messages, starts the model, and streams its answer as it arrives.
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
    let db = app.db()?;
    let mut messages = bounded(app.config.db_timeout, async {
        let mut tx = db.begin_as(&claims).await?;
        match admit(&mut tx, &chat, user, rpm, request.conversation_id).await {
            Ok(earlier) => {
                // Committed at once: the quota row stays locked until then, and a lock held
                // for the whole answer would queue this user's other requests behind it.
                tx.commit().await?;
                Ok(earlier)
            }
            Err(e) => {
                // A failed rollback closed the connection, which rolled back too.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    })
    .await?;
    messages.push(Message {
        role: "user".to_owned(),
        content: request.message.clone(),
    });
    let answer = chat.model.start(&messages).await?;

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
/// caller's), then the quota, so a refused conversation costs no quota.
async fn admit(
    tx: &mut UserTx,
    chat: &ChatState,
    user: Uuid,
    rpm: u32,
    conversation: Option<Uuid>,
) -> Result<Vec<Message>, ApiError> {
    let earlier = match conversation {
        Some(id) => history::earlier(tx.conn(), user, id)
            .await
            .map_err(unavailable)?
            .ok_or(NO_SUCH_CONVERSATION)?,
        None => Vec::new(),
    };
    quota::admit(tx.conn(), user, rpm, chat.limits.tokens_per_day).await?;
    Ok(earlier)
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
    /// Held until the answer ends, however it ends.
    _slot: StreamSlot,
}

/// How the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Complete,
    ClientGone,
    Failed(StreamError),
}

/// Moves the answer from the model to the client, piece by piece, then stores the turn. When
/// the client goes away (its response body is dropped, so the channel closes) the upstream
/// answer is dropped at once, which closes its connection, and what was produced is stored
/// marked incomplete.
async fn relay(relay: Relay) {
    let Relay {
        mut answer,
        frames,
        app,
        claims,
        conversation_id,
        question,
        _slot,
    } = relay;
    let mut text = String::new();
    let mut usage: Option<Usage> = None;
    let ending = loop {
        let next = tokio::select! {
            biased;
            () = frames.closed() => break Ending::ClientGone,
            next = answer.next() => next,
        };
        match next {
            Ok(Some(Piece::Text(piece))) => {
                text.push_str(&piece);
                if frames
                    .send(frame("delta", &json!({ "text": piece })))
                    .await
                    .is_err()
                {
                    break Ending::ClientGone;
                }
            }
            Ok(Some(Piece::Usage(u))) => usage = Some(u),
            Ok(None) => break Ending::Complete,
            Err(e) => break Ending::Failed(e),
        }
    };
    drop(answer);

    let usage = usage.unwrap_or_else(|| Usage {
        // Without the upstream's count, a rough one (about four characters a token) still
        // charges the day's budget.
        prompt_tokens: 0,
        completion_tokens: (text.chars().count() as u64).div_ceil(4),
    });
    let turn = Turn {
        conversation_id,
        question: &question,
        answer: &text,
        incomplete: ending != Ending::Complete,
    };
    let user = claims.sub.uuid();
    // The same pool and the same caller's transaction as the handlers', begun here because
    // the request's own ended when the response head went out.
    let stored = bounded(app.config.db_timeout, async {
        let mut tx = app.db()?.begin_as(&claims).await?;
        history::store(tx.conn(), user, &turn)
            .await
            .map_err(unavailable)?;
        quota::add_tokens(tx.conn(), user, usage.completion_tokens)
            .await
            .map_err(unavailable)?;
        tx.commit().await
    })
    .await;
    tracing::info!(
        user.id = %user,
        ending = ?ending,
        completion_tokens = usage.completion_tokens,
        stored = stored.is_ok(),
        "chat turn ended"
    );

    let last = match (ending, stored) {
        (Ending::ClientGone, _) => return,
        (Ending::Failed(e), _) => frame("error", &e.to_json()),
        (Ending::Complete, Err(_)) => frame(
            "error",
            &json!({"error": "unavailable", "message": "the answer could not be saved; retry shortly"}),
        ),
        (Ending::Complete, Ok(())) => frame("done", &json!({ "usage": usage })),
    };
    let _ = frames.send(last).await;
}

/// `GET /conversations`: the caller's conversations, most recent first. The app commits the
/// `Tx` (read only) when the answer is 2xx.
async fn list_conversations(
    State(app): State<AppState>,
    claims: Claims,
    mut tx: Tx,
) -> Result<Response, ApiError> {
    let user = claims.sub.uuid();
    let conversations = bounded(app.config.db_timeout, async {
        history::list(tx.conn(), user).await.map_err(unavailable)
    })
    .await?;
    Ok(no_store(Json(json!({ "conversations": conversations }))))
}

/// `GET /conversations/{id}`: one of the caller's conversations with its messages; another
/// user's, or an unknown id, is 404.
async fn get_conversation(
    State(app): State<AppState>,
    claims: Claims,
    id: Result<Path<String>, PathRejection>,
    mut tx: Tx,
) -> Result<Response, ApiError> {
    let id = id
        .ok()
        .and_then(|Path(id)| Uuid::try_parse(&id).ok())
        .ok_or(NO_SUCH_CONVERSATION)?;
    let user = claims.sub.uuid();
    let messages = bounded(app.config.db_timeout, async {
        history::messages(tx.conn(), user, id)
            .await
            .map_err(unavailable)
    })
    .await?
    .ok_or(NO_SUCH_CONVERSATION)?;
    Ok(no_store(Json(json!({ "id": id, "messages": messages }))))
}

fn no_store(answer: impl IntoResponse) -> Response {
    let mut response = answer.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
