//! Per-user quota: requests per minute and tokens (prompt and completion) per day, counted in
//! the database (one row per user and window) so that every instance of the app shares them,
//! and a cap on the answers one user streams at once, counted in this process. A request's
//! tokens are reserved at admission and settled after its answer, each a step of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Sqlite;
use supabase_jwt_service::{ApiError, Claims, Db, DbTx};
use uuid::Uuid;

use crate::db::{ChatTx, Conn, bounded, unavailable};

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
    /// `CHAT_TOKENS_PER_DAY`: tokens (prompt and completion) per user and UTC day.
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

/// What admission charged the caller's day before the model was called; settled to the
/// real usage once the answer has ended ([`settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The UTC day charged (`YYYY-MM-DD` on Postgres, days since the epoch on SQLite): an
    /// answer that ends after midnight is settled on the day it was admitted.
    pub day: String,
    /// Tokens reserved.
    pub tokens: u64,
}

/// Admits one request and reserves `reserve` tokens of the day, or says how long to wait, as
/// ONE statement that checks, counts and reserves atomically, so concurrent requests (on any
/// number of machines) cannot overshoot the minute's requests, and overshoot the day's tokens
/// by at most one reservation.
pub async fn admit(
    conn: Conn<'_>,
    user: Uuid,
    rpm: u32,
    tokens_per_day: u64,
    reserve: u64,
) -> Result<Reservation, ApiError> {
    let admitted = match conn {
        Conn::Postgres(conn) => admit_pg(conn, rpm, tokens_per_day, reserve).await,
        Conn::Sqlite(conn) => admit_sqlite(conn, user, rpm, tokens_per_day, reserve).await,
    }
    .map_err(unavailable)?;
    match admitted {
        (0, day) => Ok(Reservation {
            day,
            tokens: reserve,
        }),
        (seconds, _) => Err(ApiError::RateLimited(seconds)),
    }
}

/// `chat_private.admit_and_reserve` acts on `auth.uid()` (see the migration): 0 or the
/// seconds to wait, and the day it charged.
async fn admit_pg(
    conn: &mut DbTx,
    rpm: u32,
    tokens_per_day: u64,
    reserve: u64,
) -> Result<(u32, String), sqlx::Error> {
    let (wait, day): (i32, String) = sqlx::query_as(
        "select wait_seconds, reserved_day::text from chat_private.admit_and_reserve($1, $2, $3)",
    )
    .bind(i32::try_from(rpm).unwrap_or(i32::MAX))
    .bind(i64::try_from(tokens_per_day).unwrap_or(i64::MAX))
    .bind(i64::try_from(reserve).unwrap_or(i64::MAX))
    .persistent(false)
    .fetch_one(conn)
    .await?;
    Ok((u32::try_from(wait.max(0)).unwrap_or(0), day))
}

/// The same steps on SQLite, where the caller's transaction already holds the write lock
/// (`BEGIN IMMEDIATE`), so they cannot interleave with another admission.
async fn admit_sqlite(
    conn: &mut DbTx<Sqlite>,
    user: Uuid,
    rpm: u32,
    tokens_per_day: u64,
    reserve: u64,
) -> Result<(u32, String), sqlx::Error> {
    let now = unix_seconds();
    let (minute, day) = (now - now % 60, day_of(now));
    if rpm == 0 {
        return Ok((60, day));
    }
    let spent: Option<i64> =
        sqlx::query_scalar("select tokens from chat_token_days where user_id = ?1 and day = ?2")
            .bind(user.to_string())
            .bind(&day)
            .fetch_optional(&mut *conn)
            .await?;
    if spent.is_some_and(|t| u64::try_from(t).unwrap_or(0) >= tokens_per_day) {
        return Ok((seconds_until_next_day(now), day));
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
        return Ok((u32::try_from(minute + 60 - now).unwrap_or(60).max(1), day));
    }
    sqlx::query(
        "insert into chat_token_days (user_id, day, tokens) values (?1, ?2, ?3) \
         on conflict (user_id, day) do update set tokens = tokens + excluded.tokens",
    )
    .bind(user.to_string())
    .bind(&day)
    .bind(i64::try_from(reserve).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    sqlx::query("delete from chat_request_windows where user_id = ?1 and window_start < ?2")
        .bind(user.to_string())
        .bind(minute - 3600)
        .execute(&mut *conn)
        .await?;
    Ok((0, day))
}

/// Settles a reservation to what the answer really cost, in a step of its own: as the service
/// itself ([`Db::begin_as_service`]), outside any caller's transaction, so neither a failed
/// history write nor a session ended mid-answer (`SESSION_CHECK=on`) can skip it, and no
/// caller can call it (`chat_private.settle` is granted to no API role). The caller bounds the
/// whole step.
pub async fn settle(
    db: &Db,
    user: Uuid,
    reservation: &Reservation,
    used: u64,
) -> Result<(), ApiError> {
    let reserved = i64::try_from(reservation.tokens).unwrap_or(i64::MAX);
    let used = i64::try_from(used).unwrap_or(i64::MAX);
    let mut tx = ChatTx::as_service(db).await?;
    let settled = match tx.conn() {
        Conn::Postgres(tx) => sqlx::query("select chat_private.settle($1, $2::date, $3, $4)")
            .bind(user)
            .bind(&reservation.day)
            .bind(reserved)
            .bind(used)
            .persistent(false)
            .execute(tx)
            .await
            .map(drop),
        Conn::Sqlite(tx) => sqlx::query(
            "update chat_token_days set tokens = max(tokens - ?1, 0) + ?2 \
             where user_id = ?3 and day = ?4",
        )
        .bind(reserved.max(0))
        .bind(used.max(0))
        .bind(user.to_string())
        .bind(&reservation.day)
        .execute(tx)
        .await
        .map(drop),
    };
    match settled {
        Ok(_) => tx.commit().await,
        Err(e) => {
            tx.rollback().await;
            Err(unavailable(e))
        }
    }
}

/// A reservation not yet settled. Exactly one settle is ever sent for it, from a task of its
/// own so that a cancelled handler cannot cut it short (a settle sent twice would refund the
/// reservation twice): by [`Charge::settle`], or, when the charge is dropped unsettled (the
/// handler was dropped while the model was being called, a task panicked), with the
/// `fallback` given at creation.
#[derive(Debug)]
pub struct Charge(Option<Unsettled>);

#[derive(Debug)]
struct Unsettled {
    db: Db,
    user: Uuid,
    reservation: Reservation,
    /// `DB_TIMEOUT_SECONDS`.
    limit: Duration,
    fallback: u64,
}

impl Charge {
    /// A reservation to settle; `fallback` is what it costs if it is dropped unsettled.
    pub fn new(
        db: Db,
        user: Uuid,
        reservation: Reservation,
        limit: Duration,
        fallback: u64,
    ) -> Self {
        Self(Some(Unsettled {
            db,
            user,
            reservation,
            limit,
            fallback,
        }))
    }

    /// Settles to `used` tokens; the task answers whether the database took it.
    pub fn settle(mut self, used: u64) -> tokio::task::JoinHandle<bool> {
        match self.0.take() {
            Some(unsettled) => tokio::spawn(unsettled.settle(used)),
            None => tokio::spawn(async { false }),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(unsettled) = self.0.take() {
            let used = unsettled.fallback;
            // No runtime: the process is ending, and the day keeps the reservation.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(unsettled.settle(used));
            }
        }
    }
}

impl Unsettled {
    async fn settle(self, used: u64) -> bool {
        let Self {
            db,
            user,
            reservation,
            limit,
            ..
        } = self;
        let settled = bounded(limit, settle(&db, user, &reservation, used)).await;
        if settled.is_err() {
            // `unavailable` logged the reason.
            tracing::warn!(
                target: "chat::quota",
                reserved = reservation.tokens,
                used,
                user.id = %user,
                "could not settle the answer's tokens: the day keeps its reservation"
            );
        }
        settled.is_ok()
    }
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
