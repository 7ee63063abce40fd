//! Per-user quota: requests per minute and completion tokens per day, counted in the database
//! (one row per user and window) so that every instance of the app shares them, and a cap on
//! the answers one user streams at once, counted in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{PgConnection, SqliteConnection};
use supabase_jwt_service::{ApiError, Claims, Conn};
use uuid::Uuid;

use crate::db::unavailable;

/// Anonymous users refused outright (`CHAT_ANON_RPM=0`).
pub const ANONYMOUS_REFUSED: ApiError = ApiError::custom(
    axum::http::StatusCode::FORBIDDEN,
    "anonymous_not_allowed",
    "sign in with an account to use the chat",
);

/// The limits from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `CHAT_RPM`: requests per minute for a signed-in user.
    pub requests_per_minute: u32,
    /// `CHAT_ANON_RPM`: requests per minute for an anonymous user; 0 refuses them.
    pub anonymous_requests_per_minute: u32,
    /// `CHAT_TOKENS_PER_DAY`: completion tokens per user and UTC day.
    pub tokens_per_day: u64,
    /// `CHAT_MAX_STREAMS`: answers one user may stream at once.
    pub max_streams: usize,
}

impl Limits {
    /// The requests-per-minute limit for this caller; anonymous users (who can mint new ids at
    /// will) get their own, stricter one, or a refusal.
    pub fn requests_per_minute(&self, claims: &Claims) -> Result<u32, ApiError> {
        if !claims.is_anonymous {
            return Ok(self.requests_per_minute);
        }
        match self.anonymous_requests_per_minute {
            0 => Err(ANONYMOUS_REFUSED),
            n => Ok(n),
        }
    }
}

/// Admits one request or says how long to wait, as ONE statement that checks and counts
/// atomically, so concurrent requests (on any number of machines) cannot overshoot.
pub async fn admit(
    conn: Conn<'_>,
    user: Uuid,
    rpm: u32,
    tokens_per_day: u64,
) -> Result<(), ApiError> {
    let wait = match conn {
        Conn::Postgres(conn) => admit_pg(conn, rpm, tokens_per_day).await,
        Conn::Sqlite(conn) => admit_sqlite(conn, user, rpm, tokens_per_day).await,
    }
    .map_err(unavailable)?;
    match wait {
        0 => Ok(()),
        seconds => Err(ApiError::RateLimited(seconds)),
    }
}

/// `chat_private.admit` acts on `auth.uid()` (see the migration): 0, or seconds to wait.
async fn admit_pg(
    conn: &mut PgConnection,
    rpm: u32,
    tokens_per_day: u64,
) -> Result<u32, sqlx::Error> {
    let wait: i32 = sqlx::query_scalar("select chat_private.admit($1, $2)")
        .bind(i32::try_from(rpm).unwrap_or(i32::MAX))
        .bind(i64::try_from(tokens_per_day).unwrap_or(i64::MAX))
        .persistent(false)
        .fetch_one(conn)
        .await?;
    Ok(u32::try_from(wait.max(0)).unwrap_or(0))
}

async fn admit_sqlite(
    conn: &mut SqliteConnection,
    user: Uuid,
    rpm: u32,
    tokens_per_day: u64,
) -> Result<u32, sqlx::Error> {
    if rpm == 0 {
        return Ok(60);
    }
    let now = unix_seconds();
    let (minute, day) = (now - now % 60, day_of(now));
    let spent: Option<i64> =
        sqlx::query_scalar("select tokens from chat_token_days where user_id = ?1 and day = ?2")
            .bind(user.to_string())
            .bind(&day)
            .fetch_optional(&mut *conn)
            .await?;
    if spent.is_some_and(|t| u64::try_from(t).unwrap_or(0) >= tokens_per_day) {
        return Ok(seconds_until_next_day(now));
    }
    // The check and the count in one statement: the update's WHERE refuses a full window,
    // and then nothing is returned.
    let counted: Option<i64> = sqlx::query_scalar(
        "insert into chat_request_windows (user_id, window_start, requests) values (?1, ?2, 1) \
         on conflict (user_id, window_start) do update set requests = requests + 1 \
         where requests < ?3 returning requests",
    )
    .bind(user.to_string())
    .bind(minute)
    .bind(i64::from(rpm))
    .fetch_optional(&mut *conn)
    .await?;
    if counted.is_none() {
        return Ok(u32::try_from(minute + 60 - now).unwrap_or(60).max(1));
    }
    sqlx::query("delete from chat_request_windows where user_id = ?1 and window_start < ?2")
        .bind(user.to_string())
        .bind(minute - 3600)
        .execute(&mut *conn)
        .await?;
    Ok(0)
}

/// Adds a finished turn's completion tokens to the caller's day.
pub async fn add_tokens(conn: Conn<'_>, user: Uuid, tokens: u64) -> Result<(), sqlx::Error> {
    let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
    match conn {
        Conn::Postgres(conn) => {
            sqlx::query("select chat_private.add_tokens($1)")
                .bind(tokens)
                .persistent(false)
                .execute(conn)
                .await?;
        }
        Conn::Sqlite(conn) => {
            sqlx::query(
                "insert into chat_token_days (user_id, day, tokens) values (?1, ?2, ?3) \
                 on conflict (user_id, day) do update set tokens = tokens + excluded.tokens",
            )
            .bind(user.to_string())
            .bind(day_of(unix_seconds()))
            .bind(tokens)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// The UTC day of `unix` as days since the epoch (a stable key; no calendar needed).
fn day_of(unix: i64) -> String {
    (unix / 86_400).to_string()
}

fn seconds_until_next_day(unix: i64) -> u32 {
    u32::try_from(86_400 - unix % 86_400).unwrap_or(1).max(1)
}

/// Answers one user may stream at once, per process: a slot is taken before admission and
/// given back when the answer ends, however it ends.
#[derive(Debug, Clone)]
pub struct Streams {
    max: usize,
    active: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One user's stream slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct StreamSlot {
    user: Uuid,
    active: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl Streams {
    /// At most `max` streams per user.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            active: Arc::default(),
        }
    }

    /// A slot for `user`, or 429 when they already stream `max` answers.
    pub fn try_acquire(&self, user: Uuid) -> Result<StreamSlot, ApiError> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let count = active.entry(user).or_insert(0);
        if *count >= self.max {
            return Err(ApiError::RateLimited(1));
        }
        *count += 1;
        Ok(StreamSlot {
            user,
            active: self.active.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = active.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                active.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_are_per_user_and_come_back() {
        let streams = Streams::new(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = streams.try_acquire(a).unwrap();
        let _second = streams.try_acquire(a).unwrap();
        assert_eq!(
            streams.try_acquire(a).unwrap_err(),
            ApiError::RateLimited(1)
        );
        let _other = streams.try_acquire(b).unwrap();
        drop(first);
        assert!(streams.try_acquire(a).is_ok());
    }

    #[test]
    fn the_day_ends_at_utc_midnight() {
        assert_eq!(seconds_until_next_day(86_400 * 3 + 86_399), 1);
        assert_eq!(day_of(86_400 * 3 + 5), "3");
    }
}
