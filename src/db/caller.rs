//! The one place our SQL becomes the caller. Every entry point (the built-in read, a
//! transaction of the `Tx` extractor, a `DbTx` begun for work outside a request, a
//! `ValidUser<P>` profile query, the built-in write) opens its work with the settings built
//! here, so they mean the same everywhere:
//!
//! - `role`: the token's role under `DB_RLS=on`, so the tables' row-level security policies
//!   apply; the connecting user's with `DB_RLS=off`.
//! - `request.jwt.claims`: the verified payload, always, so `auth.uid()` and `auth.jwt()` answer
//!   as in Supabase's Data API.
//! - `statement_timeout` and `lock_timeout`: nine tenths of what is left of
//!   `DB_TIMEOUT_SECONDS`, so the server gives up first and answers with an error, which
//!   leaves the connection clean, rather than the caller dropping a connection still at work.
//! - `idle_in_transaction_session_timeout`: `DB_TIMEOUT_SECONDS`, so a transaction whose caller
//!   went away frees its backend on the server too, whatever our side of it does.
//! - with `SESSION_CHECK=on`, the session's state, answered in the same message.
//!
//! All of it transaction-local (`set_config(…, true)`): it ends with the transaction whatever
//! happens, and leaves nothing on a connection that a pooler could lend to another client.
//! Only values we produced or checked are inlined: the claims and role through
//! [`quote_literal`], ids as canonical UUIDs, timeouts as integers.

use std::fmt::Write as _;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::error::DbError;
use crate::auth::Claims;

/// How callers' work runs on this store: `DB_RLS`, `SESSION_CHECK`, `DB_TIMEOUT_SECONDS`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallerRules {
    pub(crate) rls: bool,
    pub(crate) session_check: bool,
    pub(crate) timeout: Duration,
}

/// Who the work runs as: a verified caller, or the service itself (its own database user,
/// for work that belongs to no caller, such as settling a usage count).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    /// `None`: the service itself, with the connecting user's role and no claims.
    claims: Option<&'a Claims>,
    rules: CallerRules,
    /// The session to find active, under `SESSION_CHECK=on`.
    session: Option<Uuid>,
}

impl<'a> Caller<'a> {
    /// The caller of `claims`. Under `SESSION_CHECK=on` a token without a `session_id` is
    /// refused before any query.
    pub(crate) fn new(claims: &'a Claims, rules: CallerRules) -> Result<Self, DbError> {
        let session = if rules.session_check {
            Some(claims.session_id.ok_or(DbError::SessionEnded)?)
        } else {
            None
        };
        Ok(Self {
            claims: Some(claims),
            rules,
            session,
        })
    }

    /// The service itself: the same bounds, no role switch, no claims, no session.
    pub(crate) fn service(rules: CallerRules) -> Self {
        Self {
            claims: None,
            rules,
            session: None,
        }
    }

    /// The caller's id (nil for the service).
    pub(crate) fn sub(&self) -> Uuid {
        self.claims.map_or(Uuid::nil(), |c| c.sub.uuid())
    }

    /// Whether the settings row carries `session_active`.
    pub(crate) fn checks_session(&self) -> bool {
        self.session.is_some()
    }

    /// The settings, appended to `sql` as `SET LOCAL` statements ending in `; `. `left` is what
    /// remains of the call's budget for the statement and lock timeouts; `None` leaves them to
    /// the session (a connection that proved direct has them set for the session, see
    /// `PoolSettings`). With `SESSION_CHECK=on` a `select` of the session's state follows: the
    /// one row these statements answer, and only then.
    ///
    /// `SET LOCAL`, not `select set_config(…)`: a utility statement is neither planned nor
    /// answered with rows, and the `select` form (planned, and answering the claims back on
    /// every request) cost a tenth of a read's throughput and a third more database CPU.
    pub(crate) fn push_settings(&self, sql: &mut String, left: Option<Duration>) {
        match self.claims {
            Some(claims) => {
                if self.rules.rls {
                    sql.push_str("set local role ");
                    sql.push_str(&quote_ident(&claims.role));
                    sql.push_str("; ");
                }
                sql.push_str("set local request.jwt.claims = ");
                sql.push_str(&quote_literal(claims.raw_json()));
                sql.push_str("; ");
            }
            // The service: nothing to switch; empty claims make `auth.uid()` null.
            None => sql.push_str("set local request.jwt.claims = ''; "),
        }
        if let Some(left) = left {
            let limit = millis(server_limit(left));
            let idle = millis(self.rules.timeout);
            // Integers we computed: nothing from the request.
            let _ = write!(
                sql,
                "set local statement_timeout = {limit}; set local lock_timeout = {limit}; \
                 set local idle_in_transaction_session_timeout = {idle}; "
            );
        }
        if let Some(session) = self.session {
            let _ = write!(
                sql,
                "select jwt_service.session_active('{}'::uuid, '{}'::uuid) as session_active; ",
                session.hyphenated(),
                self.sub().hyphenated()
            );
        }
    }

    /// The message that opens a transaction as the caller: the settings, then `begin`. They
    /// run in the message's implicit transaction, which `begin` turns into the explicit one
    /// (PostgreSQL protocol docs, "Multiple Statements in a Simple Query"), so the
    /// transaction-local settings hold until it ends; were `begin` first, a refused role switch
    /// would leave an aborted transaction behind. One round trip.
    ///
    /// With `wipe_statements` (sqlx's statement cache off on this connection) it first drops
    /// every prepared statement on the backend. sqlx names the statements of a plain
    /// `sqlx::query` even with its cache off (`sqlx_s_1`, `sqlx_s_2`, … counted per client
    /// connection) and never closes them; through a transaction-mode pooler the next
    /// transaction on that backend may come from another client connection, whose `sqlx_s_1`
    /// then collides ("prepared statement already exists"). A backend serves one transaction at
    /// a time there, so whatever it holds when ours begins is left over from a finished one.
    pub(crate) fn begin_message(&self, left: Duration, wipe_statements: bool) -> String {
        let mut sql = String::with_capacity(320 + self.claims.map_or(0, |c| c.raw_json().len()));
        if wipe_statements {
            sql.push_str("deallocate all; ");
        }
        self.push_settings(&mut sql, Some(left));
        sql.push_str("begin");
        sql
    }

    /// Whether the settings' row says the session is still active (always, when unchecked).
    pub(crate) fn session_is_active(&self, settings_row: Option<&PgRow>) -> Result<bool, DbError> {
        if self.session.is_none() {
            return Ok(true);
        }
        match settings_row {
            Some(row) => row
                .try_get::<bool, _>("session_active")
                .map_err(DbError::unavailable),
            None => Ok(false),
        }
    }
}

/// The server-side bound for work that has `left` of the caller's budget: a tenth less, so
/// the server gives up first.
pub(crate) fn server_limit(left: Duration) -> Duration {
    left.mul_f64(0.9)
}

/// Milliseconds as Postgres reads a timeout setting: at least 1 (0 would mean no limit).
fn millis(d: Duration) -> u128 {
    d.as_millis().clamp(1, i32::MAX as u128)
}

/// The session-level form of the same bounds, for a connection that proved direct (its
/// session is ours alone): set once at connect, so a read there is one statement.
pub(crate) fn session_bounds_sql(timeout: Duration) -> String {
    let limit = millis(server_limit(timeout));
    let idle = millis(timeout);
    format!(
        "set statement_timeout = {limit}; set lock_timeout = {limit}; \
         set idle_in_transaction_session_timeout = {idle}"
    )
}

/// Quotes `name` as a PostgreSQL identifier: inside double quotes, with every double quote
/// doubled, so the identifier ends exactly where we end it and keeps its case.
fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Quotes `text` as a PostgreSQL escape-string literal, `E'…'`: every backslash and quote is
/// doubled, so the literal ends exactly where we end it, whatever the text holds. The `E` form
/// reads backslashes the same way whatever `standard_conforming_strings` says; sqlx connects
/// with `client_encoding` UTF8, where neither byte can occur inside a multi-byte character; and
/// the text comes from `serde_json`, which escapes control characters, so it holds no NUL.
pub(crate) fn quote_literal(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 3);
    quoted.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\'' => quoted.push_str("''"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::from_payload_json(&serde_json::json!({
            "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "role": "authenticated", "x": "a'b", "exp": 0,
            "session_id": "00000000-0000-0000-0000-000000000000",
        }))
        .expect("claims")
    }

    fn rules(rls: bool, session_check: bool) -> CallerRules {
        CallerRules {
            rls,
            session_check,
            timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn quote_literal_doubles_quotes_and_backslashes() {
        assert_eq!(quote_literal(""), "E''");
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
        assert_eq!(quote_literal(r#"{"x":"\"q\""}"#), r#"E'{"x":"\\"q\\""}'"#);
    }

    #[test]
    fn quote_ident_doubles_double_quotes_and_keeps_case() {
        assert_eq!(quote_ident("authenticated"), r#""authenticated""#);
        assert_eq!(quote_ident("Mixed Case"), r#""Mixed Case""#);
        assert_eq!(
            quote_ident(r#"x"; drop table t; --"#),
            r#""x""; drop table t; --""#
        );
    }

    #[test]
    fn a_transaction_sets_role_claims_and_every_bound_before_it_begins() {
        let claims = claims();
        let caller = Caller::new(&claims, rules(true, false)).unwrap();
        let sql = caller.begin_message(Duration::from_secs(3), false);
        assert!(
            sql.starts_with(
                r#"set local role "authenticated"; set local request.jwt.claims = E'{"#
            ),
            "{sql}"
        );
        assert!(sql.contains(r#""x":"a''b""#), "{sql}");
        assert!(
            sql.contains("set local statement_timeout = 2700; set local lock_timeout = 2700; ")
        );
        assert!(sql.contains("set local idle_in_transaction_session_timeout = 3000; "));
        assert!(sql.ends_with("; begin"));
        assert!(!sql.contains("session_active"));
    }

    #[test]
    fn without_rls_the_role_stays_and_the_session_is_checked_in_the_same_message() {
        let claims = claims();
        let caller = Caller::new(&claims, rules(false, true)).unwrap();
        let sql = caller.begin_message(Duration::from_millis(1500), true);
        assert!(
            sql.starts_with("deallocate all; set local request.jwt.claims = "),
            "{sql}"
        );
        assert!(!sql.contains(" role "));
        assert!(sql.contains("= 1350;"), "{sql}");
        assert!(sql.ends_with(
            "select jwt_service.session_active('00000000-0000-0000-0000-000000000000'::uuid, '5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f'::uuid) as session_active; begin"
        ), "{sql}");
    }

    #[test]
    fn a_token_without_a_session_is_refused_when_sessions_are_checked() {
        let claims = Claims::from_payload_json(&serde_json::json!({
            "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "role": "authenticated", "exp": 0,
        }))
        .unwrap();
        assert!(matches!(
            Caller::new(&claims, rules(true, true)),
            Err(DbError::SessionEnded)
        ));
        assert!(Caller::new(&claims, rules(true, false)).is_ok());
    }

    #[test]
    fn the_service_keeps_its_role_and_carries_no_claims_but_the_same_bounds() {
        let sql = Caller::service(rules(true, true)).begin_message(Duration::from_secs(3), false);
        assert_eq!(
            sql,
            "set local request.jwt.claims = ''; set local statement_timeout = 2700; \
             set local lock_timeout = 2700; set local idle_in_transaction_session_timeout = 3000; begin"
        );
    }

    #[test]
    fn bounds_never_reach_zero() {
        let claims = claims();
        let caller = Caller::new(&claims, rules(true, false)).unwrap();
        let mut sql = String::new();
        caller.push_settings(&mut sql, Some(Duration::ZERO));
        assert!(sql.contains("set local statement_timeout = 1;"), "{sql}");
        assert_eq!(
            session_bounds_sql(Duration::from_secs(3)),
            "set statement_timeout = 2700; set lock_timeout = 2700; set idle_in_transaction_session_timeout = 3000"
        );
    }
}
