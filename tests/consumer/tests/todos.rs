//! The todos API on Postgres under row-level security, each test on a fresh database that
//! `#[sqlx::test]` makes (set `DATABASE_URL`), migrated with the crate's schema, then ours.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use supabase_jwt_service::testing::{self, TestResponse, call, request};
use supabase_jwt_service::{AccessToken, App, AppState};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The app on the test's database, and a token maker.
async fn app(pool: &sqlx::PgPool) -> Result<(Router, AppState), Box<dyn std::error::Error>> {
    todos::migrator().run(pool).await?;
    let state = testing::state_on(pool, testing::config()).await?;
    let router = App::new(state.clone()).merge(todos::routes()).into_router();
    Ok((router, state))
}

fn token(state: &AppState, user: Uuid) -> String {
    AccessToken::for_user(user)
        .sign(&state.config().auth)
        .expect("test config has a secret")
}

fn assert_error(answer: &TestResponse, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.json["error"], code, "{answer:?}");
    assert!(answer.json["message"].is_string(), "{answer:?}");
}

async fn add(app: &Router, token: &str, title: &str) -> Value {
    let answer = call(
        app,
        request(
            Method::POST,
            "/todos",
            Some(token),
            Some(&json!({"title": title})),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    answer.json
}

async fn list(app: &Router, token: &str) -> Vec<Value> {
    let answer = call(app, request(Method::GET, "/todos", Some(token), None)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.json["todos"]
        .as_array()
        .expect("todos array")
        .clone()
}

#[sqlx::test(migrator = "supabase_jwt_service::testing::MIGRATOR")]
async fn a_user_adds_ticks_and_deletes_a_todo(pool: sqlx::PgPool) -> TestResult {
    let (app, state) = app(&pool).await?;
    let ada = token(&state, Uuid::new_v4());

    assert!(list(&app, &ada).await.is_empty());
    let todo = add(&app, &ada, "  buy milk ").await;
    assert_eq!(todo["title"], "buy milk");
    assert_eq!(todo["done"], false);
    let id = todo["id"].as_str().expect("id").to_owned();

    let answer = call(
        &app,
        request(
            Method::PATCH,
            &format!("/todos/{id}"),
            Some(&ada),
            Some(&json!({"done": true})),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.json["done"], true);
    assert_eq!(list(&app, &ada).await[0]["done"], true);

    let answer = call(
        &app,
        request(Method::DELETE, &format!("/todos/{id}"), Some(&ada), None),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{answer:?}");
    assert!(list(&app, &ada).await.is_empty());
    let answer = call(
        &app,
        request(Method::DELETE, &format!("/todos/{id}"), Some(&ada), None),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    Ok(())
}

#[sqlx::test(migrator = "supabase_jwt_service::testing::MIGRATOR")]
async fn two_users_cannot_see_change_or_delete_each_others_todos(pool: sqlx::PgPool) -> TestResult {
    let (app, state) = app(&pool).await?;
    let ada = token(&state, Uuid::new_v4());
    let bob = token(&state, Uuid::new_v4());

    let adas = add(&app, &ada, "ada's").await;
    let bobs = add(&app, &bob, "bob's").await;
    let ada_list = list(&app, &ada).await;
    let bob_list = list(&app, &bob).await;
    assert_eq!(ada_list.len(), 1);
    assert_eq!(ada_list[0]["id"], adas["id"]);
    assert_eq!(bob_list.len(), 1);
    assert_eq!(bob_list[0]["id"], bobs["id"]);

    let adas_path = format!("/todos/{}", adas["id"].as_str().unwrap());
    let answer = call(
        &app,
        request(
            Method::PATCH,
            &adas_path,
            Some(&bob),
            Some(&json!({"done": true})),
        ),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = call(&app, request(Method::DELETE, &adas_path, Some(&bob), None)).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");

    // Ada's todo is untouched: still there, still not done.
    let ada_list = list(&app, &ada).await;
    assert_eq!(ada_list.len(), 1);
    assert_eq!(ada_list[0]["done"], false);

    // And unknown ids are the same 404.
    let answer = call(
        &app,
        request(
            Method::DELETE,
            &format!("/todos/{}", Uuid::new_v4()),
            Some(&ada),
            None,
        ),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");

    // Under RLS even the database agrees: the rows really belong to their owners.
    let owners: Vec<(String, Uuid)> =
        sqlx::query_as("select title, owner from public.todos order by title")
            .fetch_all(&pool)
            .await?;
    assert_eq!(owners.len(), 2);
    Ok(())
}

#[sqlx::test(migrator = "supabase_jwt_service::testing::MIGRATOR")]
async fn bad_bodies_and_paths_get_json_errors(pool: sqlx::PgPool) -> TestResult {
    let (app, state) = app(&pool).await?;
    let ada = token(&state, Uuid::new_v4());

    // No Content-Type: 415.
    let no_type = Request::builder()
        .method(Method::POST)
        .uri("/todos")
        .header(header::AUTHORIZATION, format!("Bearer {ada}"))
        .body(Body::from(r#"{"title":"x"}"#))?;
    assert_error(
        &call(&app, no_type).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    // Wrong shapes: 422.
    for body in [
        json!({"titel": "x"}),
        json!({"title": 5}),
        json!([]),
        json!({"title": "   "}),
        json!({"title": "a\u{0}b"}),
    ] {
        let answer = call(
            &app,
            request(Method::POST, "/todos", Some(&ada), Some(&body)),
        )
        .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    let not_json = Request::builder()
        .method(Method::POST)
        .uri("/todos")
        .header(header::AUTHORIZATION, format!("Bearer {ada}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))?;
    assert_error(
        &call(&app, not_json).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );

    let id = add(&app, &ada, "real").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = call(
        &app,
        request(
            Method::PATCH,
            &format!("/todos/{id}"),
            Some(&ada),
            Some(&json!({"done": "yes"})),
        ),
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    // A path id that is not a UUID: 404.
    let answer = call(
        &app,
        request(Method::DELETE, "/todos/not-a-uuid", Some(&ada), None),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = call(
        &app,
        request(
            Method::PATCH,
            "/todos/42",
            Some(&ada),
            Some(&json!({"done": true})),
        ),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");

    // Wrong method: 405 JSON.
    let answer = call(&app, request(Method::PUT, "/todos", Some(&ada), None)).await;
    assert_error(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // Nothing was changed by any of it.
    assert_eq!(list(&app, &ada).await.len(), 1);
    Ok(())
}

#[sqlx::test(migrator = "supabase_jwt_service::testing::MIGRATOR")]
async fn an_expired_or_missing_token_gets_401(pool: sqlx::PgPool) -> TestResult {
    let (app, state) = app(&pool).await?;
    let expired = AccessToken::for_user(Uuid::new_v4())
        .expired(Duration::from_secs(3600))
        .sign(&state.config().auth)?;
    for (method, path, body) in [
        (Method::GET, "/todos".to_owned(), None),
        (
            Method::POST,
            "/todos".to_owned(),
            Some(json!({"title": "x"})),
        ),
        (Method::DELETE, format!("/todos/{}", Uuid::new_v4()), None),
    ] {
        let answer = call(
            &app,
            request(method.clone(), &path, Some(&expired), body.as_ref()),
        )
        .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
        let challenge = answer.headers[header::WWW_AUTHENTICATE].to_str()?;
        assert!(challenge.contains("invalid_token"), "{challenge}");

        let answer = call(&app, request(method, &path, None, body.as_ref())).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "missing_token");
    }
    let n: i64 = sqlx::query_scalar("select count(*) from public.todos")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 0);
    Ok(())
}
