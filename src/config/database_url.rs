//! [`DatabaseUrl`]: parsed and classified once, masked for logs, and the pooler hint.

use std::fmt;

use reqwest::Url;

use super::{ConfigError, Secret};

/// A database URL; it may carry a password, so it prints masked.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    /// Parses and classifies a database URL.
    pub fn parse(var: &'static str, raw: &str) -> Result<Self, ConfigError> {
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let url = Url::parse(raw)
                .map_err(|e| ConfigError::new(var, format!("not a valid URL ({e})")))?;
            // sqlx logs every query parameter it does not know, value included: a credential
            // it would not use must stop the start instead of reaching the logs.
            for (key, _) in url.query_pairs() {
                if is_credential_key(&key) && key != "password" {
                    return Err(ConfigError::new(
                        var,
                        format!(
                            "the `{}` parameter is not supported (only `password`, or a password in the userinfo); its value is not shown",
                            key.escape_default()
                        ),
                    ));
                }
            }
        } else if !lower.starts_with("sqlite:") {
            return Err(ConfigError::new(
                var,
                "must start with postgres://, postgresql:// or sqlite://",
            ));
        } else if cfg!(not(feature = "sqlite")) {
            return Err(no_embedded_store(var));
        }
        Ok(Self(Secret::new(raw)))
    }

    /// The full URL, password included: for connecting only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether this names a Postgres server (otherwise the embedded SQLite store).
    pub fn is_postgres(&self) -> bool {
        self.expose().to_ascii_lowercase().starts_with("postgres")
    }

    /// The URL with every credential replaced by `***`, safe for logs: the userinfo password
    /// and each query parameter naming a password (`password`, `sslpassword`, in any case or
    /// percent-encoding).
    pub fn masked(&self) -> String {
        let Ok(mut url) = Url::parse(self.expose()) else {
            return "[unparseable url]".to_owned();
        };
        if url.password().is_some() && url.set_password(Some("***")).is_err() {
            return "[unparseable url]".to_owned();
        }
        if url.query_pairs().any(|(k, _)| is_credential_key(&k)) {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_credential_key(&k) {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }

    /// True when the URL points at a transaction-mode pooler: Supabase's port 6543, or
    /// `pgbouncer=true` in the query string (the convention Prisma and Supabase docs use).
    pub fn looks_like_transaction_pooler(&self) -> bool {
        let Ok(url) = Url::parse(self.expose()) else {
            return false;
        };
        url.port() == Some(6543)
            || url
                .query_pairs()
                .any(|(k, v)| k == "pgbouncer" && v.eq_ignore_ascii_case("true"))
    }
}

/// A query parameter that carries a password in libpq or sqlx (`password`, `sslpassword`),
/// matched loosely (any case, any prefix) so that a misspelt one is masked too.
fn is_credential_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The error for a `sqlite:` URL (or an unset `DATABASE_URL`, whose default is one) in a build
/// without the embedded store.
pub(crate) fn no_embedded_store(var: &'static str) -> ConfigError {
    ConfigError::new(
        var,
        "this build has no embedded SQLite store (the crate's `sqlite` feature is off); set a postgres:// URL",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_masks_password() {
        let url = DatabaseUrl::parse("DATABASE_URL", "postgres://app:hunter2@db:5432/x").unwrap();
        assert!(!url.masked().contains("hunter2"));
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(url.masked().contains("***"));
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn database_url_masks_every_password_form() {
        for raw in [
            "postgres://app:hunter2@db:5432/x",
            "postgres://app:hun%40ter2@db:5432/x",
            "postgres://app@db:5432/x?password=hunter2",
            "postgresql://app@db/x?sslmode=require&password=hunter2&application_name=a",
            "postgres://app@db/x?pass%77ord=hunter2",
            "postgres://app:hunter2@db/x?password=hunter2",
        ] {
            let url = DatabaseUrl::parse("DATABASE_URL", raw).unwrap();
            let masked = url.masked();
            assert!(
                !masked.contains("hunter2") && !masked.contains("hun%40ter2"),
                "{masked}"
            );
            assert!(masked.contains("***"), "{masked}");
            assert!(!format!("{url:?}").contains("hunter2"), "{url:?}");
        }
        let url = DatabaseUrl::parse(
            "DATABASE_URL",
            "postgresql://app@db/x?sslmode=require&password=hunter2",
        )
        .unwrap();
        assert!(url.masked().contains("sslmode=require"), "{}", url.masked());
        assert_eq!(
            url.expose(),
            "postgresql://app@db/x?sslmode=require&password=hunter2"
        );
    }

    #[test]
    fn credential_parameters_sqlx_would_log_are_refused_without_their_value() {
        // sqlx uses only `password`; any other spelling it would log, value and all.
        for raw in [
            "postgres://app@db/x?sslpassword=hunter2",
            "postgres://app@db/x?PASSWORD=hunter2",
            "postgres://app@db/x?sslmode=verify-full&SslPassword=hunter2",
            "postgres://app@db/x?sslpass%77ord=hunter2",
            // libpq's key=value form: not accepted at all, and not echoed either.
            "host=db user=app password=hunter2 dbname=x",
        ] {
            let err = DatabaseUrl::parse("DATABASE_URL", raw).unwrap_err();
            assert_eq!(err.var, "DATABASE_URL");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }
}
