//! Under `DB_RLS=on` a user's transaction takes the verified token's role, as PostgREST does,
//! in the built-in read's message and in `Db::begin_as`; the name reaches Postgres intact
//! whatever characters it holds.

use sqlx::{AssertSqlSafe, Row};
use supabase_jwt_service::{Db, Profile, UserRow};
use uuid::Uuid;

use crate::helpers::*;

/// `name` as a Postgres identifier, for the test's own statements.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[tokio::test]
async fn rls_the_tokens_role_is_the_one_switched_to_whatever_its_name_holds() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    db.seed_user(user, Some("Ada")).await;
    // Roles are cluster-wide: a name of its own per run. Mixed case, a space, quotes and a
    // semicolon: each breaks, or changes, an unquoted or badly quoted name.
    let role = format!(
        "Sjs \"Odd\"; Role {}",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    // A member of `authenticated`, so that role's grants and policies apply to it too; the
    // restrictive policy then shows Ada's row to this role only, so a read that ran as
    // `authenticated` instead finds nothing.
    for sql in [
        format!("create role {} nologin in role authenticated", ident(&role)),
        format!(
            "create policy only_the_odd_role on public.users as restrictive for select \
             using (current_user = '{}')",
            role.replace('\'', "''")
        ),
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .unwrap();
    }

    let config = config_with(&db.url, |b| b.db_max_connections(1));
    let store = Db::connect(&config.db).await.unwrap();
    let mut claims = verified(&config, &token_for(user)).await;
    claims.role = role.clone();

    let mut tx = store.begin_as(&claims).await.unwrap();
    let row = sqlx::query("select current_user::text, current_setting('role')")
        .persistent(false)
        .fetch_one(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let seen: (String, String) = (row.get(0), row.get(1));

    // The built-in read (`GET /name`'s): the first prepares its statement, the second executes
    // it; both forms switch.
    let mut names = Vec::new();
    for _ in 0..2 {
        let profile = UserRow::load(&claims, &store).await.unwrap();
        names.push(profile.and_then(|p| p.full_name));
    }

    sqlx::raw_sql(AssertSqlSafe(format!(
        "drop policy only_the_odd_role on public.users; drop role {}",
        ident(&role)
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(seen, (role.clone(), role));
    assert_eq!(names, [Some("Ada".to_owned()), Some("Ada".to_owned())]);
}
