//! Conversations and their messages. On Postgres every statement runs as the caller and
//! row-level security decides what it sees, so the reads carry no owner filter on purpose; on
//! SQLite (no RLS) each statement filters by the verified user id.

use serde::Serialize;
use sqlx::{Row, Sqlite};
use supabase_jwt_service::DbTx;

use crate::db::Conn;
use uuid::Uuid;

use crate::upstream::Message;

/// How many earlier messages of a conversation are sent upstream with the new one, at most
/// (`CHAT_MAX_HISTORY_BYTES` bounds their size).
pub const MAX_EARLIER_MESSAGES: i64 = 20;

/// Longest stored message, in characters: the check constraint of migration 20261209000001
/// (`chat_messages_content_length`), which holds for rows written through the Data API too.
pub const MAX_STORED_CHARS: i64 = 32_000;

/// How many conversations `GET /conversations` lists (the most recent).
pub const MAX_LISTED: i64 = 100;

/// A conversation in the list.
#[derive(Debug, Serialize)]
pub struct ConversationSummary {
    /// Its id.
    pub id: Uuid,
    /// The start of its first message.
    pub title: String,
    /// When its last turn was stored (RFC 3339).
    pub updated_at: String,
}

/// A stored message.
#[derive(Debug, Serialize)]
pub struct StoredMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// The answer was cut before its end (client gone, upstream failed).
    pub incomplete: bool,
}

/// One finished (or cut) turn to store.
#[derive(Debug)]
pub struct Turn<'a> {
    /// The conversation (new ones are created).
    pub conversation_id: Uuid,
    /// The user's message.
    pub question: &'a str,
    /// What the model produced.
    pub answer: &'a str,
    /// The answer did not reach its end.
    pub incomplete: bool,
}

/// A title from the first message: its first 60 characters on one line.
fn title_of(message: &str) -> String {
    let line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The caller's conversations, most recent first.
pub async fn list(conn: Conn<'_>, user: Uuid) -> Result<Vec<ConversationSummary>, sqlx::Error> {
    let rows = match conn {
        // No owner filter: RLS returns the caller's rows only (tested).
        Conn::Postgres(conn) => sqlx::query(
            "select id, title, to_json(updated_at) #>> '{}' as updated_at \
                 from public.conversations order by updated_at desc limit $1",
        )
        .bind(MAX_LISTED)
        .persistent(false)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| {
            Ok(ConversationSummary {
                id: r.try_get("id")?,
                title: r.try_get("title")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?,
        Conn::Sqlite(conn) => sqlite_list(conn, user).await?,
    };
    Ok(rows)
}

async fn sqlite_list(
    conn: &mut DbTx<Sqlite>,
    user: Uuid,
) -> Result<Vec<ConversationSummary>, sqlx::Error> {
    sqlx::query(
        "select id, title, updated_at from conversations where owner = ?1 \
         order by updated_at desc limit ?2",
    )
    .bind(user.to_string())
    .bind(MAX_LISTED)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        let id: String = r.try_get("id")?;
        Ok(ConversationSummary {
            id: Uuid::try_parse(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            title: r.try_get("title")?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .collect()
}

/// One page of a conversation's messages.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Oldest first, as the conversation reads.
    pub messages: Vec<StoredMessage>,
    /// Pass as `before` for the page of older messages; `None` on the oldest page.
    pub next_cursor: Option<String>,
}

/// A page of a conversation's messages: the `limit` newest ones older than the `before`
/// cursor (the newest of all without one), oldest first. `None` when the conversation is not
/// the caller's (or unknown).
pub async fn page(
    conn: Conn<'_>,
    user: Uuid,
    id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Option<Page>, sqlx::Error> {
    // One more than asked, to know whether an older page exists.
    let rows = match conn {
        Conn::Postgres(conn) => pg_page(conn, id, before, limit + 1).await?,
        Conn::Sqlite(conn) => sqlite_page(conn, user, id, before, limit + 1).await?,
    };
    Ok(rows.map(|mut rows| {
        // Newest first from the database.
        let older = usize::try_from(limit).is_ok_and(|limit| rows.len() > limit);
        if older {
            rows.pop();
        }
        let next_cursor = older
            .then(|| rows.last().map(|(id, _)| id.to_string()))
            .flatten();
        rows.reverse();
        Page {
            messages: rows.into_iter().map(|(_, m)| m).collect(),
            next_cursor,
        }
    }))
}

/// The earlier messages of a conversation to send upstream with a new one: the newest
/// [`MAX_EARLIER_MESSAGES`] at most, and of those only the newest that fit in `max_bytes` of
/// content together, oldest first. `None` when it is not the caller's.
pub async fn earlier(
    conn: Conn<'_>,
    user: Uuid,
    id: Uuid,
    max_bytes: i64,
) -> Result<Option<Vec<Message>>, sqlx::Error> {
    match conn {
        Conn::Postgres(conn) => pg_earlier(conn, id, max_bytes).await,
        Conn::Sqlite(conn) => sqlite_earlier(conn, user, id, max_bytes).await,
    }
}

async fn pg_owns(conn: &mut DbTx, id: Uuid) -> Result<bool, sqlx::Error> {
    // No owner filter: RLS shows the caller's conversations only.
    let exists: Option<i32> =
        sqlx::query_scalar("select 1 from public.conversations where id = $1")
            .bind(id)
            .persistent(false)
            .fetch_optional(conn)
            .await?;
    Ok(exists.is_some())
}

async fn sqlite_owns(conn: &mut DbTx<Sqlite>, user: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let exists: Option<i64> =
        sqlx::query_scalar("select 1 from conversations where id = ?1 and owner = ?2")
            .bind(id.to_string())
            .bind(user.to_string())
            .fetch_optional(conn)
            .await?;
    Ok(exists.is_some())
}

/// The running sum, newest first, keeps the newest messages that fit: it only grows, so the
/// rows under the cap are the newest ones, without a gap. `octet_length` reads a stored
/// value's size without loading it, and a row over the cap is never loaded.
async fn pg_earlier(
    conn: &mut DbTx,
    id: Uuid,
    max_bytes: i64,
) -> Result<Option<Vec<Message>>, sqlx::Error> {
    if !pg_owns(conn, id).await? {
        return Ok(None);
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select role, content from ( \
           select id, role, content, sum(octet_length(content)) over ( \
             order by id desc rows between unbounded preceding and current row) as running \
           from public.chat_messages where conversation_id = $1 and content <> '' \
           order by id desc limit $2 \
         ) newest where running <= $3 order by id",
    )
    .bind(id)
    .bind(MAX_EARLIER_MESSAGES)
    .bind(max_bytes)
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(
        rows.into_iter()
            .map(|(role, content)| Message { role, content })
            .collect(),
    ))
}

async fn sqlite_earlier(
    conn: &mut DbTx<Sqlite>,
    user: Uuid,
    id: Uuid,
    max_bytes: i64,
) -> Result<Option<Vec<Message>>, sqlx::Error> {
    if !sqlite_owns(conn, user, id).await? {
        return Ok(None);
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select role, content from ( \
           select id, role, content, sum(length(cast(content as blob))) over ( \
             order by id desc rows between unbounded preceding and current row) as running \
           from chat_messages where conversation_id = ?1 and owner = ?2 and content <> '' \
           order by id desc limit ?3 \
         ) where running <= ?4 order by id",
    )
    .bind(id.to_string())
    .bind(user.to_string())
    .bind(MAX_EARLIER_MESSAGES)
    .bind(max_bytes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(
        rows.into_iter()
            .map(|(role, content)| Message { role, content })
            .collect(),
    ))
}

/// Newest first, with their ids. Rows stored before the length check existed may be longer
/// than [`MAX_STORED_CHARS`]: only that much of them is read (`substr` fetches a slice of a
/// large value, not all of it).
async fn pg_page(
    conn: &mut DbTx,
    id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Option<Vec<(i64, StoredMessage)>>, sqlx::Error> {
    if !pg_owns(conn, id).await? {
        return Ok(None);
    }
    let rows = sqlx::query(
        "select id, role, substr(content, 1, $4::int) as content, incomplete, \
           to_json(created_at) #>> '{}' as created_at \
         from public.chat_messages where conversation_id = $1 and ($2::bigint is null or id < $2) \
         order by id desc limit $3",
    )
    .bind(id)
    .bind(before)
    .bind(limit)
    .bind(MAX_STORED_CHARS)
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                StoredMessage {
                    role: r.try_get("role")?,
                    content: r.try_get("content")?,
                    created_at: r.try_get("created_at")?,
                    incomplete: r.try_get("incomplete")?,
                },
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map(Some)
}

async fn sqlite_page(
    conn: &mut DbTx<Sqlite>,
    user: Uuid,
    id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Option<Vec<(i64, StoredMessage)>>, sqlx::Error> {
    if !sqlite_owns(conn, user, id).await? {
        return Ok(None);
    }
    let rows = sqlx::query(
        "select id, role, substr(content, 1, ?5) as content, incomplete, created_at \
         from chat_messages where conversation_id = ?1 and owner = ?2 \
           and (?3 is null or id < ?3) \
         order by id desc limit ?4",
    )
    .bind(id.to_string())
    .bind(user.to_string())
    .bind(before)
    .bind(limit)
    .bind(MAX_STORED_CHARS)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                StoredMessage {
                    role: r.try_get("role")?,
                    content: r.try_get("content")?,
                    created_at: r.try_get("created_at")?,
                    incomplete: r.try_get::<i64, _>("incomplete")? != 0,
                },
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map(Some)
}

/// Stores a turn: the conversation (created, or its `updated_at` moved), the user's message
/// and the assistant's answer.
pub async fn store(conn: Conn<'_>, user: Uuid, turn: &Turn<'_>) -> Result<(), sqlx::Error> {
    let title = title_of(turn.question);
    match conn {
        Conn::Postgres(conn) => {
            // `owner` defaults to auth.uid(); the insert policy checks it again.
            sqlx::query(
                "insert into public.conversations (id, title) values ($1, $2) \
                 on conflict (id) do update set updated_at = now()",
            )
            .bind(turn.conversation_id)
            .bind(&title)
            .persistent(false)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "insert into public.chat_messages (conversation_id, role, content, incomplete) \
                 values ($1, 'user', $2, false), ($1, 'assistant', $3, $4)",
            )
            .bind(turn.conversation_id)
            .bind(turn.question)
            .bind(turn.answer)
            .bind(turn.incomplete)
            .persistent(false)
            .execute(&mut *conn)
            .await?;
        }
        Conn::Sqlite(conn) => {
            sqlx::query(
                "insert into conversations (id, owner, title) values (?1, ?2, ?3) \
                 on conflict (id) do update set updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 where owner = ?2",
            )
            .bind(turn.conversation_id.to_string())
            .bind(user.to_string())
            .bind(&title)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "insert into chat_messages (conversation_id, owner, role, content, incomplete) \
                 values (?1, ?2, 'user', ?3, 0), (?1, ?2, 'assistant', ?4, ?5)",
            )
            .bind(turn.conversation_id.to_string())
            .bind(user.to_string())
            .bind(turn.question)
            .bind(turn.answer)
            .bind(i64::from(turn.incomplete))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_short_line() {
        assert_eq!(title_of("  hello\n world "), "hello world");
        let long = "é".repeat(80);
        assert_eq!(title_of(&long).chars().count(), 61);
    }
}
