//! The caller's read in one message: the caller's settings, then a select over the caller's id,
//! as one simple-protocol `Query`. Its statements run as one implicit transaction (PostgreSQL
//! protocol docs, "Multiple Statements in a Simple Query"), so the settings hold for the select
//! and end with it, an error rolls back everything, and nothing outlives the message but a
//! `PREPARE` (not transactional, and named for this connection alone). One round trip, nothing
//! to clean up; through a transaction-mode pooler the message is one transaction on one backend.

use uuid::Uuid;

use crate::db::caller::Caller;

/// A select whose only parameter is the caller's id: the built-in profile read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallerRead {
    /// A short name for the statement prepared for it (`[a-z_]`).
    pub(crate) name: &'static str,
    /// The select over `sub`, a SQL expression of type `uuid` (`$1`, or a literal).
    pub(crate) select: fn(sub: &str) -> String,
}

/// How [`message`] states the select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadForm {
    /// The select's text inline: nothing named, as a transaction-mode pooler needs.
    Inline,
    /// `prepare` under a fresh tag, then `execute`: the first read on a connection.
    Prepare(u64),
    /// `execute` of the statement this connection prepared under that tag.
    Execute(u64),
}

impl ReadForm {
    /// The form for a connection that has the statement prepared under `tag` (or none), when
    /// reads may name statements.
    pub(crate) fn named(tag: Option<u64>) -> Self {
        match tag {
            Some(tag) => Self::Execute(tag),
            None => {
                let (high, low) = Uuid::new_v4().as_u64_pair();
                Self::Prepare(high ^ low)
            }
        }
    }
}

/// The name of a connection's prepared read: `tag` is random and drawn afresh for every attempt
/// to prepare one, so no two connections (nor two attempts on one connection) share a name, and
/// an `execute` can only ever run the statement this connection prepared under it. SQL-level
/// prepared statements share their namespace with the protocol-level ones sqlx names
/// `sqlx_s_N`, hence the prefix.
fn statement_name(read: &CallerRead, tag: u64) -> String {
    format!("sjs_{tag:016x}_{}", read.name)
}

/// The read as one message: the caller's settings (with the statement and lock bounds of
/// `left`, unless the session has them), then the select in `form`. When sessions are checked
/// the first row it answers is the session's state, the rest the select's.
///
/// A prepared statement is planned again when the role that runs it changes the table's
/// row-level security (plancache.c, `dependsOnRLS`), so the policies apply whichever role
/// executes it.
pub(crate) fn message(
    caller: &Caller<'_>,
    read: &CallerRead,
    left: Option<std::time::Duration>,
    form: ReadForm,
) -> String {
    let mut sql = String::with_capacity(384);
    caller.push_settings(&mut sql, left);
    let sub = caller.sub().hyphenated().to_string();
    match form {
        ReadForm::Inline => sql.push_str(&(read.select)(&format!("'{sub}'::uuid"))),
        ReadForm::Prepare(tag) => {
            let name = statement_name(read, tag);
            sql.push_str(&format!(
                "prepare {name}(uuid) as {}; execute {name}('{sub}')",
                (read.select)("$1")
            ));
        }
        ReadForm::Execute(tag) => {
            sql.push_str(&format!("execute {}('{sub}')", statement_name(read, tag)));
        }
    }
    sql
}

/// True for the errors a prepared read meets behind a transaction-mode pooler: the statement
/// is missing on the server that answered (`26000`, invalid_sql_statement_name), or a name this
/// connection prepared is already there (`42P05`, duplicate_prepared_statement).
pub(crate) fn names_not_kept(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("26000" | "42P05")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::Claims;
    use crate::db::caller::CallerRules;

    const PROFILE: CallerRead = CallerRead {
        name: "profile",
        select: |sub| format!("select id, full_name from public.users where id = {sub}"),
    };

    fn claims() -> Claims {
        Claims::from_payload_json(&serde_json::json!({
            "sub": "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f", "role": "support", "exp": 0,
        }))
        .expect("claims")
    }

    #[test]
    fn the_read_switches_to_the_callers_role_before_its_select() {
        let claims = claims();
        let rules = CallerRules {
            rls: true,
            session_check: false,
            timeout: Duration::from_secs(3),
        };
        let caller = Caller::new(&claims, rules).unwrap();
        let sql = message(&caller, &PROFILE, None, ReadForm::Inline);
        assert!(
            sql.starts_with(r#"set local role "support"; set local request.jwt.claims = "#),
            "{sql}"
        );
        assert!(
            !sql.contains("statement_timeout"),
            "the session holds the bounds: {sql}"
        );
        assert!(sql.ends_with(
            "; select id, full_name from public.users where id = '5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f'::uuid"
        ));
        let bounded = message(
            &caller,
            &PROFILE,
            Some(Duration::from_secs(3)),
            ReadForm::Inline,
        );
        assert!(bounded.contains("set local statement_timeout = 2700;"));
    }

    #[test]
    fn every_form_runs_the_same_select() {
        let claims = claims();
        let rules = CallerRules {
            rls: false,
            session_check: false,
            timeout: Duration::from_secs(3),
        };
        let caller = Caller::new(&claims, rules).unwrap();
        let sub = "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f";
        let inline = message(&caller, &PROFILE, None, ReadForm::Inline);
        let first = message(&caller, &PROFILE, None, ReadForm::Prepare(0xab));
        let next = message(&caller, &PROFILE, None, ReadForm::Execute(0xab));
        let name = statement_name(&PROFILE, 0xab);
        assert_eq!(name, "sjs_00000000000000ab_profile");
        assert!(name.len() < 64, "Postgres truncates names at 63 bytes");
        let (settings, _) = inline.rsplit_once("; ").unwrap();
        let settings = format!("{settings}; ");
        let expected = inline.replace(&format!("'{sub}'::uuid"), "$1");
        let select = expected.rsplit_once("; ").unwrap().1;
        assert_eq!(
            first,
            format!("{settings}prepare {name}(uuid) as {select}; execute {name}('{sub}')")
        );
        assert_eq!(next, format!("{settings}execute {name}('{sub}')"));
    }
}
