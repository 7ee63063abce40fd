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
//! `CORS_ALLOWED_ORIGINS`, …). On Postgres it applies the service's migrations and its own
//! (`examples/notes/postgres.sql`: `public.notes` with row-level security, policies
//! `owner = auth.uid()`) on `DIRECT_DATABASE_URL`; on the embedded store it creates its table.
//! docs/library.md walks through it.

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::Path;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use supabase_jwt_service::{
    ApiError, App, AppState, Claims, Config, Conn, Db, StartError, Tx, build_state, migrate, serve,
    shutdown_signal, spawn_metrics_listener, telemetry,
};
use uuid::Uuid;

/// Longest note, in characters (the tables' check constraints say the same).
const MAX_NOTE_CHARS: usize = 2000;

const INVALID_NOTE: ApiError = ApiError::custom(
    StatusCode::UNPROCESSABLE_ENTITY,
    "invalid_body",
    "expected a JSON object {\"body\": string of 1 to 2000 characters}",
);
const NO_SUCH_NOTE: ApiError = ApiError::custom(StatusCode::NOT_FOUND, "not_found", "no such note");

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

// Both stores' queries filter by owner, so the routes behave the same on each; on Postgres the
// policies stand behind the filter (and decide alone for a query that forgets it).

/// `GET /notes`: the caller's notes, newest first (at most 1000).
async fn list_notes(claims: Claims, mut tx: Tx) -> Result<Json<Notes>, ApiError> {
    let notes = match tx.conn() {
        Conn::Postgres(conn) => {
            sqlx::query_as(
                "select id::text as id, body, \
                 to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') as created_at \
                 from public.notes where owner = $1 order by created_at desc, id limit 1000",
            )
            .bind(claims.sub.uuid())
            .fetch_all(conn)
            .await?
        }
        Conn::Sqlite(conn) => {
            sqlx::query_as(
                "select id, body, created_at from notes where owner = ?1 \
                 order by created_at desc, id limit 1000",
            )
            .bind(claims.sub.to_string())
            .fetch_all(conn)
            .await?
        }
    };
    Ok(Json(Notes { notes }))
}

/// `POST /notes`: adds a note; 201 with it. Committed by the app because the answer is 2xx.
async fn create_note(
    claims: Claims,
    mut tx: Tx,
    body: Result<Json<NewNote>, JsonRejection>,
) -> Result<(StatusCode, Json<Note>), ApiError> {
    let text = note_body(body)?;
    let note = match tx.conn() {
        Conn::Postgres(conn) => {
            sqlx::query_as(
                "insert into public.notes (owner, body) values ($1, $2) returning id::text as id, body, \
                 to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') as created_at",
            )
            .bind(claims.sub.uuid())
            .bind(&text)
            .fetch_one(conn)
            .await?
        }
        Conn::Sqlite(conn) => {
            sqlx::query_as(
                "insert into notes (id, owner, body) values (?1, ?2, ?3) \
                 returning id, body, created_at",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(claims.sub.to_string())
            .bind(&text)
            .fetch_one(conn)
            .await?
        }
    };
    Ok((StatusCode::CREATED, Json(note)))
}

/// `DELETE /notes/{id}`: 204, or 404 for an unknown note and for another user's (which
/// row-level security hides on Postgres).
async fn delete_note(
    claims: Claims,
    mut tx: Tx,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Some(id) = id.ok().and_then(|Path(id)| Uuid::try_parse(&id).ok()) else {
        return Err(NO_SUCH_NOTE);
    };
    let deleted = match tx.conn() {
        Conn::Postgres(conn) => {
            sqlx::query("delete from public.notes where id = $1 and owner = $2")
                .bind(id)
                .bind(claims.sub.uuid())
                .execute(conn)
                .await?
                .rows_affected()
        }
        Conn::Sqlite(conn) => sqlx::query("delete from notes where id = ?1 and owner = ?2")
            .bind(id.hyphenated().to_string())
            .bind(claims.sub.to_string())
            .execute(conn)
            .await?
            .rows_affected(),
    };
    if deleted == 0 {
        return Err(NO_SUCH_NOTE);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The body's note: `{"body": string}`, 1 to [`MAX_NOTE_CHARS`] characters, not blank.
fn note_body(body: Result<Json<NewNote>, JsonRejection>) -> Result<String, ApiError> {
    let Json(NewNote { body }) = body.map_err(|rejection| match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => INVALID_NOTE,
    })?;
    if body.trim().is_empty() || body.chars().count() > MAX_NOTE_CHARS {
        return Err(INVALID_NOTE);
    }
    Ok(body)
}

/// The example's routes, to merge into an [`App`].
fn notes_routes() -> Router<AppState> {
    Router::new()
        .route("/notes", get(list_notes).post(create_note))
        .route("/notes/{id}", delete(delete_note))
}

/// Applies the service's migrations, then the notes table, before anything serves.
async fn migrate_notes(config: &Config, state: &AppState) -> Result<(), StartError> {
    migrate(config).await?;
    let failed = |e: sqlx::Error| StartError::Store(format!("notes migration: {e}"));
    match state.store.db() {
        Some(Db::Postgres(_)) => {
            let url = config.direct_database_url.expose();
            let mut conn =
                tokio::time::timeout(Duration::from_secs(15), sqlx::PgConnection::connect(url))
                    .await
                    .map_err(|_| {
                        StartError::Store("notes migration: no answer within 15 s".into())
                    })?
                    .map_err(failed)?;
            sqlx::raw_sql(include_str!("notes/postgres.sql"))
                .execute(&mut conn)
                .await
                .map_err(failed)?;
            let _ = conn.close().await;
        }
        Some(Db::Sqlite(pool)) => {
            sqlx::raw_sql(include_str!("notes/sqlite.sql"))
                .execute(&pool)
                .await
                .map_err(failed)?;
        }
        None => {}
    }
    Ok(())
}

async fn run(config: Config) -> Result<(), StartError> {
    let listen = config.listen;
    let state = build_state(config.clone()).await?;
    migrate_notes(&config, &state).await?;
    spawn_metrics_listener(&state).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "notes listening");
    let app = App::new(state).merge(notes_routes());
    serve(listener, app, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
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
    telemetry::init(config.log_format, std::io::stderr);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notes: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
