//! [`DbConfig`]: the store, row-level security, statements, sessions and the pool's bounds.

use std::fmt;
use std::time::Duration;

use super::vars::*;
use super::{ConfigError, DatabaseUrl, check_count, check_seconds, parse_switch};

/// How the Postgres store names its statements (`DB_PREPARED_STATEMENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreparedStatements {
    /// Reads use a statement prepared once per connection, under a name unique to that
    /// connection, until a read meets a transaction-mode pooler (the statement is missing on
    /// the server it landed on); from then on every read carries its SQL inline. sqlx's own
    /// statement cache is on only for connections whose server proved direct.
    Auto,
    /// Named statements always, sqlx's statement cache included: for a connection known to
    /// keep one server (direct, or a session-mode pooler). Behind a transaction-mode pooler
    /// reads fail with 503.
    On,
    /// Nothing named, ever: every read carries its SQL inline.
    Off,
}

impl fmt::Display for PreparedStatements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// The store and how users' work runs on it.
///
/// ```
/// use std::time::Duration;
/// use supabase_jwt_service::Config;
/// use supabase_jwt_service::config::PreparedStatements;
///
/// let config = Config::builder()
///     .database_url("postgres://app:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres")
///     .direct_database_url("postgres://app:pw@db.abcd.supabase.co:5432/postgres")
///     .jwt_secret("a-project-jwt-secret-of-at-least-32-characters")
///     .db_timeout(Duration::from_secs(2))
///     .build()?;
/// // Supabase's transaction pooler (port 6543): nothing is named on the server.
/// assert_eq!(config.db.prepared_statements, PreparedStatements::Off);
/// assert!(config.db.rls);
/// assert_eq!(config.db.timeout, Duration::from_secs(2));
/// # Ok::<(), supabase_jwt_service::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DbConfig {
    /// `DATABASE_URL`: the store (`postgres://…`, or the embedded `sqlite://…`).
    pub url: DatabaseUrl,
    /// `DIRECT_DATABASE_URL` (else `DATABASE_URL`): where migrations run.
    pub direct_url: DatabaseUrl,
    /// `DB_RLS`: users' queries run as the token's role, under row-level security (Postgres).
    pub rls: bool,
    /// `DB_PREPARED_STATEMENTS`; `Auto` already resolved to `Off` for a URL that names a
    /// transaction-mode pooler.
    pub prepared_statements: PreparedStatements,
    /// `SESSION_CHECK`: the token's session must still be active in `auth.sessions`.
    pub session_check: bool,
    /// `DB_TIMEOUT_SECONDS`: the bound on one database call, pool wait included.
    pub timeout: Duration,
    /// `DB_MAX_CONNECTIONS`: the pool's size.
    pub max_connections: u32,
}

/// The typed settings of this part, before defaults and rules.
#[derive(Debug, Clone, Default)]
pub(super) struct DbSettings {
    pub(super) url: Option<DatabaseUrl>,
    pub(super) direct_url: Option<DatabaseUrl>,
    pub(super) rls: Option<bool>,
    pub(super) prepared_statements: Option<PreparedStatements>,
    pub(super) session_check: Option<bool>,
    pub(super) timeout: Option<Duration>,
    pub(super) max_connections: Option<u32>,
}

impl DbSettings {
    /// Defaults and each value's own rules; `url` is `DATABASE_URL` with its default applied.
    pub(super) fn resolve(self, url: DatabaseUrl) -> Result<DbConfig, ConfigError> {
        let prepared_statements = match self.prepared_statements {
            None | Some(PreparedStatements::Auto) if url.looks_like_transaction_pooler() => {
                PreparedStatements::Off
            }
            Some(p) => p,
            None => PreparedStatements::Auto,
        };
        Ok(DbConfig {
            direct_url: self.direct_url.unwrap_or_else(|| url.clone()),
            url,
            rls: self.rls.unwrap_or(true),
            prepared_statements,
            session_check: self.session_check.unwrap_or(false),
            timeout: check_seconds(
                DB_TIMEOUT_SECONDS,
                self.timeout.unwrap_or(Duration::from_secs(3)),
                60.0,
            )?,
            max_connections: check_count(
                DB_MAX_CONNECTIONS,
                self.max_connections.unwrap_or(10),
                1,
                1000,
            )?,
        })
    }
}

/// `DB_PREPARED_STATEMENTS`: `auto`, or a switch.
pub(super) fn parse_prepared(raw: &str) -> Result<PreparedStatements, ConfigError> {
    if raw.eq_ignore_ascii_case("auto") {
        return Ok(PreparedStatements::Auto);
    }
    match parse_switch(DB_PREPARED_STATEMENTS, raw) {
        Ok(true) => Ok(PreparedStatements::On),
        Ok(false) => Ok(PreparedStatements::Off),
        Err(_) => Err(ConfigError::new(
            DB_PREPARED_STATEMENTS,
            "must be auto, on or off",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(url: &str, setting: Option<&str>) -> PreparedStatements {
        let settings = DbSettings {
            prepared_statements: setting.map(|s| parse_prepared(s).unwrap()),
            ..DbSettings::default()
        };
        let url = DatabaseUrl::parse(DATABASE_URL, url).unwrap();
        settings.resolve(url).unwrap().prepared_statements
    }

    #[test]
    fn pooler_port_turns_prepared_statements_off() {
        let supavisor = "postgres://u:p@aws-0.pooler.supabase.com:6543/postgres";
        assert_eq!(prepared(supavisor, None), PreparedStatements::Off);
        let marked = "postgres://u:p@h:5432/db?pgbouncer=true";
        assert_eq!(prepared(marked, None), PreparedStatements::Off);
        assert_eq!(prepared(marked, Some("on")), PreparedStatements::On);
        let bouncer = "postgres://u:p@h:6432/db";
        assert_eq!(prepared(bouncer, None), PreparedStatements::Auto);
        assert_eq!(prepared(bouncer, Some("AUTO")), PreparedStatements::Auto);
        assert_eq!(prepared(bouncer, Some("off")), PreparedStatements::Off);
        let err = parse_prepared("sometimes").unwrap_err();
        assert_eq!(err.var, DB_PREPARED_STATEMENTS);
        assert!(!err.problem.contains("sometimes"), "{err}");
    }
}
