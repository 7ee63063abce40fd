//! `SESSION_CHECK=on` and Supabase Auth's bans: a user whose `auth.users.banned_until` is in
//! the future is refused at once, in the query that checks the session, although the ban
//! leaves the session row (and the token's signature) intact. Strict mode: a token without a
//! `session_id` is refused too.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// Sets the user's `banned_until` to `now() + seconds` (`None`: not banned), as Supabase Auth's
/// admin API does with `ban_duration` (and `none` to lift the ban).
async fn ban(db: &TestDb, user: Uuid, seconds: Option<f64>) {
    sqlx::query(
        "update auth.users set banned_until = now() + make_interval(secs => $2) where id = $1",
    )
    .bind(user)
    .bind(seconds)
    .execute(&db.pool)
    .await
    .expect("ban");
}

async fn app(db: &TestDb, session_check: &str, rls: &str) -> TestApp {
    TestApp::spawn(config_with(&db.url, |b| {
        b.var("SESSION_CHECK", session_check).var("DB_RLS", rls)
    }))
    .await
}

/// The answers to `GET /name`, `GET /me` and `PUT /name` for `token`, as statuses.
async fn statuses(app: &TestApp, token: &str) -> [u16; 3] {
    [
        app.get_with_token("/name", token).await.status().as_u16(),
        app.get_with_token("/me", token).await.status().as_u16(),
        app.put_name(token, &json!({"full_name": "changed"}))
            .await
            .status()
            .as_u16(),
    ]
}

#[tokio::test]
async fn a_banned_user_is_invalid_token_at_once_with_the_session_check_on() {
    for rls in ["on", "off"] {
        let db = TestDb::new().await;
        let user = Uuid::new_v4();
        db.seed_user(user, Some("Ada")).await;
        let session = Uuid::new_v4();
        db.seed_session(session, user, Some(3600.0)).await;
        let app = app(&db, "on", rls).await;
        let token = sign(&claims_in_session(user, session));
        let r = app.get_with_token("/name", &token).await;
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"full_name": "Ada"})
        );

        ban(&db, user, Some(24.0 * 3600.0)).await;
        // The same token, the same live session row: only the ban changed.
        assert_invalid_token(app.get_with_token("/name", &token).await).await;
        assert_invalid_token(app.get_with_token("/me", &token).await).await;
        assert_invalid_token(app.put_name(&token, &json!({"full_name": "x"})).await).await;
        assert_eq!(
            db.full_name(user).await.as_deref(),
            Some("Ada"),
            "rls={rls}"
        );

        // A ban that has run out, or was lifted, lets the user back in.
        ban(&db, user, Some(-60.0)).await;
        assert_eq!(statuses(&app, &token).await, [200; 3], "rls={rls}");
        ban(&db, user, Some(24.0 * 3600.0)).await;
        assert_invalid_token(app.get_with_token("/name", &token).await).await;
        ban(&db, user, None).await;
        assert_eq!(statuses(&app, &token).await, [200; 3], "rls={rls}");
    }
}

#[tokio::test]
async fn a_ban_does_not_touch_other_users_sessions() {
    let db = TestDb::new().await;
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.seed_user(ada, Some("Ada")).await;
    db.seed_user(bob, Some("Bob")).await;
    let (ada_session, bob_session) = (Uuid::new_v4(), Uuid::new_v4());
    db.seed_session(ada_session, ada, None).await;
    db.seed_session(bob_session, bob, None).await;
    let app = app(&db, "on", "on").await;
    ban(&db, bob, Some(3600.0)).await;
    let ada_token = sign(&claims_in_session(ada, ada_session));
    assert_eq!(statuses(&app, &ada_token).await, [200; 3]);
    let bob_token = sign(&claims_in_session(bob, bob_session));
    assert_invalid_token(app.get_with_token("/name", &bob_token).await).await;
}

#[tokio::test]
async fn with_the_session_check_off_a_banned_users_token_is_served_until_it_expires() {
    // Documented: without SESSION_CHECK the service reads no auth table, so a ban (like a
    // logout) takes effect when the token expires, as in Supabase's Data API before mid-2026.
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let app = app(&db, "off", "on").await;
    ban(&db, user, Some(3600.0)).await;
    assert_eq!(statuses(&app, &token_for(user)).await, [200; 3]);
}

#[tokio::test]
async fn strict_session_check_refuses_a_token_without_a_session_id_with_rls_on_and_off() {
    // What Supabase Auth issues always carries `session_id`; a token without one was made by
    // something else (a script with the legacy secret, an old `mint`), so no session can vouch
    // for it: 401 before any query, whether or not the user is banned.
    for rls in ["on", "off"] {
        let db = TestDb::new().await;
        let user = Uuid::new_v4();
        db.seed_user(user, Some("Ada")).await;
        let app = app(&db, "on", rls).await;
        let mut payload = claims(user);
        payload.as_object_mut().unwrap().remove("session_id");
        let token = sign(&payload);
        assert_invalid_token(app.get_with_token("/name", &token).await).await;
        assert_invalid_token(app.get_with_token("/me", &token).await).await;
        assert_invalid_token(app.put_name(&token, &json!({"full_name": "x"})).await).await;
        assert_eq!(
            db.full_name(user).await.as_deref(),
            Some("Ada"),
            "rls={rls}"
        );
    }
}

#[tokio::test]
async fn the_auth_stand_in_has_banned_until_and_session_active_keeps_its_definition_rules() {
    let db = TestDb::new().await;
    let column: Option<String> = sqlx::query_scalar(
        "select data_type::text from information_schema.columns \
         where table_schema = 'auth' and table_name = 'users' and column_name = 'banned_until'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(column.as_deref(), Some("timestamp with time zone"));
    let (volatility, definer, config): (String, bool, Vec<String>) = sqlx::query_as(
        "select provolatile::text, prosecdef, coalesce(proconfig, '{}') from pg_proc \
         where oid = 'jwt_service.session_active(uuid, uuid)'::regprocedure",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (volatility.as_str(), definer, config),
        ("s", true, vec!["search_path=\"\"".to_owned()])
    );
    let (public, anon, authenticated): (bool, bool, bool) = sqlx::query_as(
        "select has_function_privilege('public', 'jwt_service.session_active(uuid, uuid)', 'execute'), \
                has_function_privilege('anon', 'jwt_service.session_active(uuid, uuid)', 'execute'), \
                has_function_privilege('authenticated', 'jwt_service.session_active(uuid, uuid)', 'execute')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((public, anon, authenticated), (false, false, true));
}
