//! The privileges on `public.users` after `migrate`, exactly, whatever default privileges the
//! database had: older Supabase projects (and a database built from Supabase's published SQL)
//! give every new table in `public` all rights for `anon` and `authenticated`; current ones
//! give nothing. Row-level security does not apply to TRUNCATE, so a stray grant is a hole.

use uuid::Uuid;

use crate::helpers::*;

const TABLE_RIGHTS: [&str; 7] = [
    "select",
    "insert",
    "update",
    "delete",
    "truncate",
    "references",
    "trigger",
];

/// A database where, as in an older Supabase project, every table created in `public` starts
/// with all rights for `anon` and `authenticated`; then migrated.
async fn migrated_with_broad_default_privileges() -> TestDb {
    let db = TestDb::empty().await;
    // The roles are cluster-wide; another test's migration may create them at the same time.
    sqlx::raw_sql(
        "do $$ declare r text; begin \
           foreach r in array array['anon', 'authenticated'] loop \
             begin execute format('create role %I nologin noinherit', r); \
             exception when duplicate_object or unique_violation then null; end; \
           end loop; end $$; \
         alter default privileges in schema public grant all on tables to anon, authenticated",
    )
    .execute(&db.pool)
    .await
    .expect("broad default privileges");
    supabase_jwt_service::db::migrate(&pg_config(&db.url).db)
        .await
        .expect("migrate");
    db
}

/// The table rights `role` holds on `public.users` (directly or through PUBLIC).
async fn table_rights(db: &TestDb, role: &str) -> Vec<&'static str> {
    let mut held = Vec::new();
    for right in TABLE_RIGHTS {
        let has: bool = sqlx::query_scalar("select has_table_privilege($1, 'public.users', $2)")
            .bind(role)
            .bind(right)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if has {
            held.push(right);
        }
    }
    held
}

/// The columns of `public.users` that `role` may update.
async fn updatable_columns(db: &TestDb, role: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select attname::text from pg_attribute \
         where attrelid = 'public.users'::regclass and attnum > 0 and not attisdropped \
           and has_column_privilege($1, attrelid, attnum, 'update') \
         order by attname",
    )
    .bind(role)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// The SQLSTATE of `sql` run as `role` (inside a transaction that is rolled back).
async fn sqlstate_as(db: &TestDb, role: &str, sql: &str) -> Option<String> {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set local role {role}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await;
    tx.rollback().await.unwrap();
    result.err().and_then(|e| {
        e.as_database_error()
            .and_then(|d| d.code().map(|c| c.into_owned()))
    })
}

async fn assert_exact_grants(db: &TestDb) {
    assert_eq!(table_rights(db, "anon").await, Vec::<&str>::new(), "anon");
    assert_eq!(
        table_rights(db, "public").await,
        Vec::<&str>::new(),
        "PUBLIC"
    );
    assert_eq!(
        table_rights(db, "authenticated").await,
        vec!["select"],
        "authenticated: read (RLS picks the row), nothing table-wide besides"
    );
    assert_eq!(updatable_columns(db, "anon").await, Vec::<String>::new());
    assert_eq!(
        updatable_columns(db, "authenticated").await,
        vec!["avatar_url", "full_name", "updated_at"]
    );

    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    for role in ["anon", "authenticated"] {
        for sql in [
            "truncate public.users",
            "truncate public.users cascade",
            "delete from public.users",
            "insert into public.users (id) values (gen_random_uuid())",
        ] {
            assert_eq!(
                sqlstate_as(db, role, sql).await.as_deref(),
                Some("42501"),
                "{role}: {sql}"
            );
        }
    }
    assert_eq!(
        sqlstate_as(db, "anon", "select count(*) from public.users")
            .await
            .as_deref(),
        Some("42501")
    );
    assert_eq!(db.full_name(user).await.as_deref(), Some("Ada"));
}

#[tokio::test]
async fn grants_on_users_are_exact_after_migrate_over_broad_default_privileges() {
    let db = migrated_with_broad_default_privileges().await;
    assert_exact_grants(&db).await;
}

#[tokio::test]
async fn grants_on_users_are_exact_after_migrate_without_default_privileges() {
    let db = TestDb::new().await;
    assert_exact_grants(&db).await;
}

#[tokio::test]
async fn grants_leave_the_service_working_over_broad_default_privileges() {
    let db = migrated_with_broad_default_privileges().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    let app = TestApp::spawn(pg_config(&db.url)).await;
    let token = token_for(user);
    assert_eq!(app.get_with_token("/name", &token).await.status(), 200);
    let r = app
        .put_name(&token, &serde_json::json!({"full_name": "Ada K"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(db.full_name(user).await.as_deref(), Some("Ada K"));
}
