//! A todos API next to Supabase: every route authenticated by `supabase-jwt-service`, every
//! query run as the caller, Postgres row-level security (`owner = auth.uid()`) deciding.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, patch};
use serde::{Deserialize, Serialize};
use supabase_jwt_service::db::{migrate, migrate_app};
use supabase_jwt_service::{ApiError, AppState, Config, DbError, Json, Path, Tx};
use uuid::Uuid;

/// Longest title, in characters (the table's check constraint says the same).
pub const MAX_TITLE_CHARS: usize = 500;

/// One todo as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Todo {
    pub id: Uuid,
    pub title: String,
    pub done: bool,
    pub created_at: String,
}

#[derive(Serialize)]
struct Todos {
    todos: Vec<Todo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTodo {
    title: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TodoPatch {
    done: bool,
}

/// Columns as the API shows them; the timestamp as ISO 8601 text.
const COLUMNS: &str = "id, title, done, \
    to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') as created_at";

fn no_such_todo() -> ApiError {
    ApiError::not_found("no such todo")
}

/// The title: trimmed, 1 to [`MAX_TITLE_CHARS`] characters, no control characters (Postgres
/// refuses NUL in `text`: it must be a 422, not a failed insert).
fn title(NewTodo { title }: NewTodo) -> Result<String, ApiError> {
    let title = title.trim();
    if title.is_empty()
        || title.chars().count() > MAX_TITLE_CHARS
        || title.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_body(
            "expected a JSON object {\"title\": string of 1 to 500 characters, no control characters}",
        ));
    }
    Ok(title.to_owned())
}

/// `GET /todos`: the caller's todos, newest first (at most 1000). No owner filter: RLS.
async fn list(mut tx: Tx) -> Result<Json<Todos>, ApiError> {
    let todos = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from public.todos order by created_at desc, id limit 1000"
    )))
    .fetch_all(&mut tx)
    .await?;
    Ok(Json(Todos { todos }))
}

/// `POST /todos {"title"}`: 201 with the new todo; its owner is `auth.uid()` (column default).
async fn create(
    mut tx: Tx,
    Json(body): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), ApiError> {
    let title = title(body)?;
    let todo = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into public.todos (title) values ($1) returning {COLUMNS}"
    )))
    .bind(&title)
    .fetch_one(&mut tx)
    .await?;
    Ok((StatusCode::CREATED, Json(todo)))
}

/// `PATCH /todos/{id} {"done"}`: 200 with the todo, 404 for an unknown or another user's.
async fn update(
    mut tx: Tx,
    Path(id): Path<Uuid>,
    Json(body): Json<TodoPatch>,
) -> Result<Json<Todo>, ApiError> {
    let todo: Option<Todo> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update public.todos set done = $1 where id = $2 returning {COLUMNS}"
    )))
    .bind(body.done)
    .bind(id)
    .fetch_optional(&mut tx)
    .await?;
    todo.map(Json).ok_or_else(no_such_todo)
}

/// `DELETE /todos/{id}`: 204, or 404 for an unknown todo and for another user's (RLS hides it).
async fn remove(mut tx: Tx, Path(id): Path<Uuid>) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query("delete from public.todos where id = $1")
        .bind(id)
        .execute(&mut tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(no_such_todo());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The four routes, to merge into `App::new(state)`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/todos", get(list).post(create))
        .route("/todos/{id}", patch(update).delete(remove))
}

/// This app's migrations (`./migrations`), bookkeeping out of `public`.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.create_schema("todos_private");
    m.dangerous_set_table_name("todos_private._sqlx_migrations");
    m
}

/// The crate's migrations, then ours, on `DIRECT_DATABASE_URL` (else `DATABASE_URL`).
pub async fn migrate_all(config: &Config) -> Result<(), DbError> {
    migrate(&config.db).await?;
    migrate_app(&config.db, &migrator()).await
}
