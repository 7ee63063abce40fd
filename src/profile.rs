//! The caller's profile: [`UserRow`] (the service's `public.users` row), the [`Profile`] trait
//! that `ValidUser<P>` loads for a type of your own, and the built-in read and write, all on
//! [`Db`].

use std::future::Future;

use serde::Serialize;
use sqlx::postgres::PgRow;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use crate::auth::Claims;
use crate::db::pg::read::CallerRead;
use crate::db::{Caller, Db, DbError, Store, timed};
use crate::error::ApiError;

/// A row of `public.users`: the service's own profile, what `GET /name` and `GET /me` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    /// The auth user's id.
    pub id: Uuid,
    /// Display name.
    pub full_name: Option<String>,
    /// Avatar image URL.
    pub avatar_url: Option<String>,
}

/// What a [`Profile`] decodes from: a Postgres row, and a SQLite row with the `sqlite` feature.
/// `#[derive(sqlx::FromRow)]` gives both.
#[cfg(feature = "sqlite")]
pub trait ProfileRow: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> {}
#[cfg(feature = "sqlite")]
impl<T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow>> ProfileRow for T {}
/// What a [`Profile`] decodes from: a Postgres row, and a SQLite row with the `sqlite` feature.
/// `#[derive(sqlx::FromRow)]` gives both.
#[cfg(not(feature = "sqlite"))]
pub trait ProfileRow: for<'r> FromRow<'r, PgRow> {}
#[cfg(not(feature = "sqlite"))]
impl<T: for<'r> FromRow<'r, PgRow>> ProfileRow for T {}

/// A caller's profile that [`ValidUser<P>`](crate::ValidUser) loads: derive `sqlx::FromRow`
/// and name the query. On Postgres it runs as the caller, under row-level security, in a
/// transaction opened as every caller's work is (`SESSION_CHECK` and `DB_TIMEOUT_SECONDS`
/// apply); no row answers 404 `profile_not_found`.
///
/// ```
/// use supabase_jwt_service::{AppState, Profile, ValidUser};
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
/// let route: axum::routing::MethodRouter<AppState> = axum::routing::get(plan);
/// ```
pub trait Profile: ProfileRow + Send + Unpin + 'static {
    /// The caller's row on Postgres; `$1` is the caller's id, a `uuid`.
    const SELECT: &'static str;
    /// The caller's row on the embedded store; `?1` is the caller's id as text. There is no
    /// row-level security there, so the query must filter by it.
    const SQLITE_SELECT: &'static str;

    /// Loads the caller's profile: by default [`SELECT`](Self::SELECT) (or
    /// [`SQLITE_SELECT`](Self::SQLITE_SELECT)) in a read-only transaction acting as the caller.
    fn load<'a>(
        claims: &'a Claims,
        db: &'a Db,
    ) -> impl Future<Output = Result<Option<Self>, ApiError>> + Send + 'a {
        load_with_select::<Self>(claims, db)
    }
}

async fn load_with_select<P: Profile>(claims: &Claims, db: &Db) -> Result<Option<P>, ApiError> {
    let timeout = db.timeout();
    let mut open = if db.is_postgres() {
        db.open::<sqlx::Postgres>(Some(claims), false).await?
    } else {
        open_embedded(db, claims).await?
    };
    // The server's statement_timeout bounds the query too; this bounds a frozen server.
    let row = tokio::time::timeout(timeout, async {
        match db.store() {
            Store::Postgres(_) => {
                sqlx::query_as::<_, P>(P::SELECT)
                    .bind(claims.sub.uuid())
                    .fetch_optional(open.pg()?)
                    .await
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => {
                sqlx::query_as::<_, P>(P::SQLITE_SELECT)
                    .bind(claims.sub.to_string())
                    .fetch_optional(open.sqlite()?)
                    .await
            }
        }
    })
    .await
    .map_err(|_| {
        tracing::warn!(target: "supabase_jwt_service::db", "profile query: no answer in time");
        ApiError::Unavailable
    })??;
    open.end(true, timeout).await?;
    Ok(row)
}

#[cfg(feature = "sqlite")]
async fn open_embedded(db: &Db, claims: &Claims) -> Result<crate::db::OpenTx, ApiError> {
    Ok(db.open::<sqlx::Sqlite>(Some(claims), false).await?)
}

#[cfg(not(feature = "sqlite"))]
async fn open_embedded(db: &Db, claims: &Claims) -> Result<crate::db::OpenTx, ApiError> {
    Ok(db.open::<sqlx::Postgres>(Some(claims), false).await?)
}

/// The built-in read: the caller's `public.users` row.
const PROFILE: CallerRead = CallerRead {
    name: "profile",
    select: |sub| format!("select id, full_name, avatar_url from public.users where id = {sub}"),
};
const SQLITE_PROFILE: &str = "select id, full_name, avatar_url from users where id = ?1";

/// The service's own profile, loaded the fast way: one round trip, with a statement prepared
/// once per connection where the connection allows it.
impl Profile for UserRow {
    const SELECT: &'static str = "select id, full_name, avatar_url from public.users where id = $1";
    const SQLITE_SELECT: &'static str = SQLITE_PROFILE;

    async fn load(claims: &Claims, db: &Db) -> Result<Option<Self>, ApiError> {
        Ok(read_user_row(claims, db).await?)
    }
}

async fn read_user_row(claims: &Claims, db: &Db) -> Result<Option<UserRow>, DbError> {
    timed("profile", async {
        match db.store() {
            Store::Postgres(pg) => {
                let caller = Caller::new(claims, pg.rules())?;
                let row = pg.read(&caller, &PROFILE).await?;
                row.map(|row| UserRow::from_row(&row))
                    .transpose()
                    .map_err(DbError::unavailable)
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(sqlite) => sqlx::query_as(SQLITE_PROFILE)
                .bind(claims.sub.to_string())
                .fetch_optional(sqlite.pool())
                .await
                .map_err(DbError::unavailable),
        }
    })
    .await
}

/// Longest accepted `full_name`, in characters (the table's check constraint says the same).
pub(crate) const MAX_NAME_CHARS: usize = 200;

/// Sets the caller's own `full_name` (under row-level security on Postgres); `None` when the
/// caller has no row.
pub(crate) async fn set_full_name(
    claims: &Claims,
    db: &Db,
    full_name: Option<&str>,
) -> Result<Option<UserRow>, ApiError> {
    let started = std::time::Instant::now();
    let result = match db.store() {
        Store::Postgres(_) => {
            let mut tx = db.begin_as(claims).await?;
            let row = sqlx::query_as(
                "update public.users set full_name = $2, updated_at = now() \
                 where id = $1 returning id, full_name, avatar_url",
            )
            .bind(claims.sub.uuid())
            .bind(full_name)
            .fetch_optional(&mut tx)
            .await?;
            tx.commit().await?;
            Ok(row)
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite(sqlite) => Ok(sqlx::query_as(
            "update users set full_name = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             where id = ?1 returning id, full_name, avatar_url",
        )
        .bind(claims.sub.to_string())
        .bind(full_name)
        .fetch_optional(sqlite.pool())
        .await?),
    };
    crate::telemetry::metrics::db_query("set_full_name", started.elapsed());
    result
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
