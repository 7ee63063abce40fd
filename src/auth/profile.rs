//! [`Profile`]: what [`ValidUser`](super::ValidUser) loads for the caller: the service's
//! `users` row by default, or a type of your own with your own columns.

use std::future::Future;

use sqlx::postgres::PgRow;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};
#[cfg(feature = "sqlite")]
use uuid::Uuid;

use super::Claims;
use super::extractor::log_store_error;
use crate::config::Config;
use crate::db::Conn;
use crate::error::ApiError;
use crate::store::{UserRow, UserStore};

/// What a [`Profile`] decodes from: a Postgres row, and a SQLite row with the `sqlite` feature.
/// Every type that does has it; `#[derive(sqlx::FromRow)]` gives both.
#[cfg(feature = "sqlite")]
pub trait ProfileRow: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> {}
#[cfg(feature = "sqlite")]
impl<T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow>> ProfileRow for T {}
/// What a [`Profile`] decodes from: a Postgres row, and a SQLite row with the `sqlite` feature.
/// Every type that does has it; `#[derive(sqlx::FromRow)]` gives both.
#[cfg(not(feature = "sqlite"))]
pub trait ProfileRow: for<'r> FromRow<'r, PgRow> {}
#[cfg(not(feature = "sqlite"))]
impl<T: for<'r> FromRow<'r, PgRow>> ProfileRow for T {}

/// A caller's profile that [`ValidUser<P>`](super::ValidUser) loads: derive `sqlx::FromRow`
/// and name the query. On Postgres it runs as the caller, under row-level security, in a
/// transaction opened like [`Tx`](crate::Tx)'s (so `SESSION_CHECK` and `DB_TIMEOUT_SECONDS`
/// apply); no row answers 404 `profile_not_found`.
///
/// ```
/// use supabase_jwt_service::auth::Profile;
/// use supabase_jwt_service::ValidUser;
///
/// #[derive(sqlx::FromRow)]
/// struct Account {
///     full_name: Option<String>,
///     plan: String,
/// }
///
/// impl Profile for Account {
///     const SELECT: &'static str =
///         "select full_name, coalesce(auth.jwt() ->> 'plan', 'free') as plan from public.users where id = $1";
///     const SQLITE_SELECT: &'static str = "select full_name, 'free' as plan from users where id = ?1";
/// }
///
/// async fn plan(user: ValidUser<Account>) -> String {
///     user.profile.plan
/// }
/// let route: axum::routing::MethodRouter<supabase_jwt_service::AppState> = axum::routing::get(plan);
/// ```
pub trait Profile: ProfileRow + Send + Unpin + 'static {
    /// The caller's row on Postgres; `$1` is the caller's id, a `uuid`.
    const SELECT: &'static str;
    /// The caller's row on the embedded store; `?1` is the caller's id as text. There is no
    /// row-level security there, so the query must filter by it.
    const SQLITE_SELECT: &'static str;

    /// Loads the caller's profile: by default [`SELECT`](Self::SELECT) (or
    /// [`SQLITE_SELECT`](Self::SQLITE_SELECT)) in a transaction acting as the caller.
    fn load<'a>(
        claims: &'a Claims,
        store: &'a dyn UserStore,
        config: &'a Config,
    ) -> impl Future<Output = Result<Option<Self>, ApiError>> + Send + 'a {
        load_with_select::<Self>(claims, store, config)
    }
}

async fn load_with_select<P: Profile>(
    claims: &Claims,
    store: &dyn UserStore,
    config: &Config,
) -> Result<Option<P>, ApiError> {
    let Some(db) = store.db() else {
        tracing::error!("a Profile's SELECT needs a store backed by Postgres or SQLite");
        return Err(ApiError::Internal);
    };
    let mut open = db.begin(claims, false).await?;
    // The server's statement_timeout bounds the query too; this bounds a frozen server.
    let row = tokio::time::timeout(config.db_timeout, async {
        match open.conn() {
            Conn::Postgres(conn) => {
                sqlx::query_as::<_, P>(P::SELECT)
                    .bind(claims.sub.uuid())
                    .fetch_optional(conn)
                    .await
            }
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(conn) => {
                sqlx::query_as::<_, P>(P::SQLITE_SELECT)
                    .bind(claims.sub.to_string())
                    .fetch_optional(conn)
                    .await
            }
        }
    })
    .await
    .map_err(|_| {
        tracing::warn!(target: "supabase_jwt_service::store", "profile query: no answer in time");
        ApiError::Unavailable
    })??;
    open.commit().await?;
    Ok(row)
}

/// The service's own profile (`public.users`), loaded the fast way: one round trip, with the
/// built-in store's prepared statement when it can.
impl Profile for UserRow {
    const SELECT: &'static str = "select id, full_name, avatar_url from public.users where id = $1";
    const SQLITE_SELECT: &'static str = "select id, full_name, avatar_url from users where id = ?1";

    async fn load(
        claims: &Claims,
        store: &dyn UserStore,
        _config: &Config,
    ) -> Result<Option<Self>, ApiError> {
        store.profile(claims).await.map_err(|e| {
            log_store_error(&e);
            e.into()
        })
    }
}

impl FromRow<'_, PgRow> for UserRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            full_name: row.try_get("full_name")?,
            avatar_url: row.try_get("avatar_url")?,
        })
    }
}

/// The embedded store keeps ids as text.
#[cfg(feature = "sqlite")]
impl FromRow<'_, SqliteRow> for UserRow {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        let id: String = row.try_get("id")?;
        Ok(Self {
            id: Uuid::try_parse(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            full_name: row.try_get("full_name")?,
            avatar_url: row.try_get("avatar_url")?,
        })
    }
}
