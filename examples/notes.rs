//! A notes API of your own next to Supabase, written only with the crate's public API: every
//! route authenticated, every query run as the caller, row-level security deciding on Postgres.
//!
//! ```sh
//! cargo run --example notes        # the embedded SQLite store, nothing to install
//! TOKEN=$(cargo run -q -- mint --sub 5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f)
//! curl -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
//!      -d '{"body": "first note"}' http://127.0.0.1:8080/notes
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/notes
//! ```
//!
//! It reads the service's variables (`DATABASE_URL`, `SUPABASE_JWT_SECRET`, `SUPABASE_URL`,
//! `CORS_ALLOWED_ORIGINS`, …). It applies the service's migrations, then its own
//! (`examples/notes/migrations`: `public.notes` with row-level security, policies
//! `owner = auth.uid()`), on `DIRECT_DATABASE_URL`. docs/library.md walks through it.

use std::process::ExitCode;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use supabase_jwt_service::db::{migrate, migrate_app};
use supabase_jwt_service::{
    ApiError, App, AppState, Claims, Config, Json, Path, StartError, Tx, serve, shutdown_signal,
    telemetry,
};
use uuid::Uuid;

/// Longest note, in characters (the tables' check constraints say the same).
const MAX_NOTE_CHARS: usize = 2000;

/// One note as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct Note {
    id: String,
    body: String,
    created_at: String,
}

#[derive(Serialize)]
struct Notes {
    notes: Vec<Note>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    body: String,
}

/// The note's text: 1 to [`MAX_NOTE_CHARS`] characters, not blank, no control characters but
/// line breaks and tabs (Postgres refuses a NUL in `text`: it must be a 422, not a failed insert).
fn note_text(NewNote { body }: NewNote) -> Result<String, ApiError> {
    let control = body
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    if body.trim().is_empty() || body.chars().count() > MAX_NOTE_CHARS || control {
        return Err(ApiError::invalid_body(
            "expected a JSON object {\"body\": string of 1 to 2000 characters, no control characters}",
        ));
    }
    Ok(body)
}

fn no_such_note() -> ApiError {
    ApiError::not_found("no such note")
}

/// The routes on Postgres: row-level security picks the caller's rows, so no query needs an
/// owner filter, and the policies decide alone.
mod postgres {
    use super::*;

    /// `SELECT` with the timestamp as ISO 8601 text, like the embedded store keeps it.
    const NOTE_COLUMNS: &str = "id::text as id, body, \
        to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') as created_at";

    /// `GET /notes`: the caller's notes, newest first (at most 1000).
    async fn list(mut tx: Tx) -> Result<Json<Notes>, ApiError> {
        let notes = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {NOTE_COLUMNS} from public.notes order by created_at desc, id limit 1000"
        )))
        .fetch_all(&mut tx)
        .await?;
        Ok(Json(Notes { notes }))
    }

    /// `POST /notes`: adds a note; 201 with it. The owner is `auth.uid()`, the column's
    /// default; the app commits because the answer is 2xx.
    async fn create(
        mut tx: Tx,
        Json(note): Json<NewNote>,
    ) -> Result<(StatusCode, Json<Note>), ApiError> {
        let body = note_text(note)?;
        let note = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "insert into public.notes (body) values ($1) returning {NOTE_COLUMNS}"
        )))
        .bind(&body)
        .fetch_one(&mut tx)
        .await?;
        Ok((StatusCode::CREATED, Json(note)))
    }

    /// `DELETE /notes/{id}`: 204, or 404 for an unknown note and for another user's (which
    /// row-level security hides).
    async fn remove(mut tx: Tx, Path(id): Path<Uuid>) -> Result<StatusCode, ApiError> {
        let deleted = sqlx::query("delete from public.notes where id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(no_such_note());
        }
        Ok(StatusCode::NO_CONTENT)
    }

    pub(super) fn routes() -> Router<AppState> {
        Router::new()
            .route("/notes", get(list).post(create))
            .route("/notes/{id}", delete(remove))
    }
}

/// The routes on the embedded store: no row-level security there, so every query filters by
/// the caller's id itself.
mod sqlite {
    use super::*;
    use sqlx::Sqlite;

    async fn list(claims: Claims, mut tx: Tx<Sqlite>) -> Result<Json<Notes>, ApiError> {
        let notes = sqlx::query_as(
            "select id, body, created_at from notes where owner = ?1 \
             order by created_at desc, id limit 1000",
        )
        .bind(claims.sub.to_string())
        .fetch_all(&mut tx)
        .await?;
        Ok(Json(Notes { notes }))
    }

    async fn create(
        claims: Claims,
        mut tx: Tx<Sqlite>,
        Json(note): Json<NewNote>,
    ) -> Result<(StatusCode, Json<Note>), ApiError> {
        let body = note_text(note)?;
        let note = sqlx::query_as(
            "insert into notes (id, owner, body) values (?1, ?2, ?3) \
             returning id, body, created_at",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(claims.sub.to_string())
        .bind(&body)
        .fetch_one(&mut tx)
        .await?;
        Ok((StatusCode::CREATED, Json(note)))
    }

    async fn remove(
        claims: Claims,
        mut tx: Tx<Sqlite>,
        Path(id): Path<Uuid>,
    ) -> Result<StatusCode, ApiError> {
        let deleted = sqlx::query("delete from notes where id = ?1 and owner = ?2")
            .bind(id.hyphenated().to_string())
            .bind(claims.sub.to_string())
            .execute(&mut tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(no_such_note());
        }
        Ok(StatusCode::NO_CONTENT)
    }

    pub(super) fn routes() -> Router<AppState> {
        Router::new()
            .route("/notes", get(list).post(create))
            .route("/notes/{id}", delete(remove))
    }
}

/// The service's migrations, then the notes table, before anything serves. Their bookkeeping
/// stays out of `public`, which Supabase's Data API exposes.
async fn migrate_notes(config: &Config) -> Result<(), StartError> {
    migrate(&config.db).await?;
    let mut notes = if config.db.url.is_postgres() {
        let mut m = sqlx::migrate!("examples/notes/migrations");
        m.create_schema("notes_private");
        m.dangerous_set_table_name("notes_private._sqlx_migrations");
        m
    } else {
        let mut m = sqlx::migrate!("examples/notes/migrations/sqlite");
        m.dangerous_set_table_name("_notes_sqlx_migrations");
        m
    };
    // A notes table made by an earlier version of this example (before it kept a migration
    // history) is taken as it is: the migration is idempotent.
    notes.set_ignore_missing(true);
    migrate_app(&config.db, &notes).await?;
    Ok(())
}

async fn run(config: Config) -> Result<(), StartError> {
    migrate_notes(&config).await?;
    let listen = config.http.listen;
    let state = AppState::build(config).await?;
    let routes = if state.db().is_postgres() {
        postgres::routes()
    } else {
        sqlite::routes()
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve(listener, App::new(state).merge(routes), shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("notes: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.telemetry.log_format, std::io::stderr);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notes: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
