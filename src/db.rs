//! The database: [`Db`] owns the store's pool and opens callers' work on it.
//!
//! On Postgres every piece of a caller's work runs as that caller: `role` is the token's role
//! and `request.jwt.claims` holds its claims, both transaction-local as Supabase's Data API
//! sets them, so `auth.uid()` and the tables' row-level security policies decide what each
//! statement sees; the server bounds each statement, lock wait and idle spell; and with
//! `SESSION_CHECK=on` an ended session is refused. One module builds that
//! (`db/caller.rs`), for the built-in read and write, the [`Tx`](crate::Tx) extractor,
//! [`DbTx`] and `ValidUser<P>` profiles alike.
//!
//! **The embedded SQLite store has no row-level security.** A transaction there is a plain
//! SQLite one: filter every query by the caller's id yourself.

use std::time::{Duration, Instant};

use crate::auth::Claims;
use crate::config::DbConfig;
use crate::telemetry::metrics::PoolStats;
use crate::telemetry::server_timing;

pub(crate) mod caller;
mod error;
mod migrate;
pub(crate) mod pg;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
mod tx;

pub use error::DbError;
pub use migrate::{migrate, migrate_app};
pub use tx::{Backend, DbTx};

pub(crate) use caller::Caller;
pub(crate) use error::timed;
#[cfg(feature = "testing")]
pub(crate) use migrate::pg_migrator;
pub(crate) use tx::{OpenTx, executor_via};

/// The app's database, shared by the built-in routes and yours: one pool, never a second.
/// Cheap to clone. Take it in a handler with `State<Db>` (or from
/// [`AppState::db`](crate::AppState::db)); begin a caller's transaction outside a request with
/// [`begin_as`](Self::begin_as).
///
/// ```
/// use axum::extract::State;
/// use supabase_jwt_service::{ApiError, Db};
///
/// /// Readiness of your own: whether the database answers now.
/// async fn database_up(State(db): State<Db>) -> Result<&'static str, ApiError> {
///     db.ping().await?;
///     Ok("up")
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Db {
    store: Store,
}

/// The store behind a [`Db`].
#[derive(Debug, Clone)]
pub(crate) enum Store {
    Postgres(pg::PgDb),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::SqliteDb),
}

impl Db {
    /// The store `config` names: Postgres over a lazily connecting pool (the app starts while
    /// the database is down, and answers 503 until it is back), or the embedded SQLite file,
    /// opened and migrated now.
    pub async fn connect(config: &DbConfig) -> Result<Self, DbError> {
        let store = if config.url.is_postgres() {
            Store::Postgres(pg::PgDb::connect_lazy(config)?)
        } else {
            Self::embedded(config).await?
        };
        Ok(Self { store })
    }

    #[cfg(feature = "sqlite")]
    async fn embedded(config: &DbConfig) -> Result<Store, DbError> {
        Ok(Store::Sqlite(
            sqlite::SqliteDb::open(config.url.expose(), config.timeout).await?,
        ))
    }

    #[cfg(not(feature = "sqlite"))]
    async fn embedded(_config: &DbConfig) -> Result<Store, DbError> {
        Err(DbError::Unavailable(
            "this build has no embedded SQLite store (feature `sqlite`)".into(),
        ))
    }

    /// A Postgres store over connect options of your own: the test kit's, for the database
    /// `#[sqlx::test]` made.
    #[cfg(feature = "testing")]
    pub(crate) fn with_pg_options(
        options: sqlx::postgres::PgConnectOptions,
        config: &DbConfig,
    ) -> Result<Self, DbError> {
        Ok(Self {
            store: Store::Postgres(pg::PgDb::with_options(options, config)?),
        })
    }

    /// The store, for the crate's own queries.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// `postgres` or `sqlite`.
    pub fn store_name(&self) -> &'static str {
        match self.store {
            Store::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Whether the store is Postgres (with row-level security); otherwise it is the embedded
    /// SQLite store, where queries filter by the caller's id themselves.
    pub fn is_postgres(&self) -> bool {
        matches!(self.store, Store::Postgres(_))
    }

    /// The bound on one database call (`DB_TIMEOUT_SECONDS`).
    pub(crate) fn timeout(&self) -> Duration {
        match &self.store {
            Store::Postgres(pg) => pg.rules().timeout,
            #[cfg(feature = "sqlite")]
            Store::Sqlite(db) => db.timeout(),
        }
    }

    /// Begins a transaction acting as `claims`' user on Postgres, exactly as the
    /// [`Tx`](crate::Tx) extractor does (one round trip; see the [module docs](self)), for work
    /// outside a request's handler. End it with [`DbTx::commit`] or [`DbTx::rollback`]. On
    /// the embedded store it is [`DbError::WrongStore`]: see `begin_sqlite` (feature `sqlite`).
    pub async fn begin_as(&self, claims: &Claims) -> Result<DbTx, DbError> {
        let open = self.open::<sqlx::Postgres>(Some(claims), true).await?;
        Ok(DbTx::new(open, self.timeout()))
    }

    /// Begins a transaction as the service itself on Postgres: the database user of
    /// `DATABASE_URL`, with no role switch and no caller's claims (`auth.uid()` is null), and
    /// the same server-side bounds as a caller's. For work that belongs to no caller, such as
    /// settling what a request used after its caller signed out. Row-level security applies
    /// as it does to that database user (on Supabase, `postgres` bypasses it): grant it only
    /// what such work needs, and never run a request's queries here.
    pub async fn begin_as_service(&self) -> Result<DbTx, DbError> {
        let open = self.open::<sqlx::Postgres>(None, true).await?;
        Ok(DbTx::new(open, self.timeout()))
    }

    /// A transaction on the embedded store (`BEGIN IMMEDIATE`): SQLite has no roles and no
    /// row-level security, so there is no caller to become; filter every query by the
    /// caller's id yourself.
    #[cfg(feature = "sqlite")]
    pub async fn begin_sqlite(&self) -> Result<DbTx<sqlx::Sqlite>, DbError> {
        let open = self.open::<sqlx::Sqlite>(None, true).await?;
        Ok(DbTx::new(open, self.timeout()))
    }

    /// Opens a transaction on store `DB` as `claims`' user (the service itself for `None`),
    /// recording a failure. On SQLite it begins deferred unless `for_writes`, so a read never
    /// waits for a writer's lock.
    pub(crate) async fn open<DB: Backend>(
        &self,
        claims: Option<&Claims>,
        for_writes: bool,
    ) -> Result<OpenTx, DbError> {
        let started = Instant::now();
        let opened = match &self.store {
            Store::Postgres(pg) if DB::STORE == "postgres" => {
                let caller = match claims {
                    Some(claims) => Caller::new(claims, pg.rules()),
                    None => Ok(Caller::service(pg.rules())),
                };
                match caller {
                    Ok(caller) => pg
                        .begin(&caller)
                        .await
                        .map(|(lease, wipe)| OpenTx::Postgres { lease, wipe }),
                    Err(e) => Err(e),
                }
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(db) if DB::STORE == "sqlite" => {
                let _ = claims;
                db.begin(for_writes).await.map(OpenTx::Sqlite)
            }
            _ => Err(DbError::WrongStore {
                wanted: DB::STORE,
                actual: self.store_name(),
            }),
        };
        #[cfg(not(feature = "sqlite"))]
        let _ = for_writes;
        server_timing::add_db(started.elapsed());
        opened.map_err(DbError::recorded)
    }

    /// Whether the store answers a trivial query now (what `/readyz` asks).
    pub async fn ping(&self) -> Result<(), DbError> {
        timed("ping", async {
            match &self.store {
                Store::Postgres(pg) => pg.ping().await,
                #[cfg(feature = "sqlite")]
                Store::Sqlite(db) => db.ping().await,
            }
        })
        .await
    }

    /// The pool's occupancy, for the metrics listener.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn pool_stats(&self) -> PoolStats {
        match &self.store {
            Store::Postgres(pg) => pg.pool_stats(),
            #[cfg(feature = "sqlite")]
            Store::Sqlite(db) => db.pool_stats(),
        }
    }
}
