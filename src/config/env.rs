//! The environment variables, named once: [`RawConfig::from_env`] reads them without clap, and
//! the binary's clap definitions derive the same names from the field names (a test checks
//! that the two agree).

use super::{ConfigError, LOCAL_DEFAULTS_ON_NETWORK_VAR, RawConfig};

/// A setting's field in [`RawConfig`].
type Field = fn(&mut RawConfig) -> &mut Option<String>;

/// Every setting's variable and the field it fills, in the README table's order.
const VARS: &[(&str, Field)] = &[
    ("HOST", |r| &mut r.host),
    ("PORT", |r| &mut r.port),
    ("DATABASE_URL", |r| &mut r.database_url),
    ("DIRECT_DATABASE_URL", |r| &mut r.direct_database_url),
    ("SUPABASE_JWT_SECRET", |r| &mut r.supabase_jwt_secret),
    ("SUPABASE_URL", |r| &mut r.supabase_url),
    ("JWT_AUDIENCE", |r| &mut r.jwt_audience),
    ("JWT_ISSUER", |r| &mut r.jwt_issuer),
    ("JWT_LEEWAY_SECONDS", |r| &mut r.jwt_leeway_seconds),
    ("JWT_ALLOWED_ROLES", |r| &mut r.jwt_allowed_roles),
    ("JWT_ALLOWED_CLIENT_IDS", |r| &mut r.jwt_allowed_client_ids),
    ("CORS_ALLOWED_ORIGINS", |r| &mut r.cors_allowed_origins),
    ("METRICS_ADDR", |r| &mut r.metrics_addr),
    ("LOG_FORMAT", |r| &mut r.log_format),
    ("DB_RLS", |r| &mut r.db_rls),
    ("DB_PREPARED_STATEMENTS", |r| &mut r.db_prepared_statements),
    ("SESSION_CHECK", |r| &mut r.session_check),
    ("DB_TIMEOUT_SECONDS", |r| &mut r.db_timeout_seconds),
    ("DB_MAX_CONNECTIONS", |r| &mut r.db_max_connections),
    ("REQUEST_TIMEOUT_SECONDS", |r| {
        &mut r.request_timeout_seconds
    }),
    ("SHUTDOWN_TIMEOUT_SECONDS", |r| {
        &mut r.shutdown_timeout_seconds
    }),
    ("JWT_CACHE_SIZE", |r| &mut r.jwt_cache_size),
    ("JWT_CACHE_BYTES", |r| &mut r.jwt_cache_bytes),
    ("SERVER_TIMING", |r| &mut r.server_timing),
    ("HEADER_READ_TIMEOUT_SECONDS", |r| {
        &mut r.header_read_timeout_seconds
    }),
    ("HTTP_MAX_CONNECTIONS", |r| &mut r.http_max_connections),
    (LOCAL_DEFAULTS_ON_NETWORK_VAR, |r| {
        &mut r.insecure_local_defaults_on_network
    }),
];

impl RawConfig {
    /// The settings of the process environment (the variables of the README's table), not yet
    /// validated: [`Config::from_env`](super::Config::from_env) validates them. Does not read
    /// `.env`. A value that is not UTF-8 is an error naming its variable, and is not echoed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut raw = Self::default();
        for (var, field) in VARS {
            if let Some(value) = std::env::var_os(var) {
                let value = value
                    .into_string()
                    .map_err(|_| ConfigError::new(var, "is not valid UTF-8"))?;
                *field(&mut raw) = Some(value);
            }
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_one_variable() {
        let mut raw = RawConfig::default();
        for (var, field) in VARS {
            let slot = field(&mut raw);
            assert!(slot.is_none(), "{var} fills a field another variable fills");
            *slot = Some(String::new());
        }
    }

    /// clap gives every field a variable, so this also catches a field missing from `VARS`.
    #[cfg(feature = "cli")]
    #[test]
    fn the_command_line_reads_the_same_variables() {
        use clap::CommandFactory;
        let command = crate::cli::Cli::command();
        let mut from_clap: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        let mut ours: Vec<String> = VARS.iter().map(|(v, _)| (*v).to_owned()).collect();
        from_clap.sort();
        ours.sort();
        assert_eq!(from_clap, ours);
    }
}
