//! No password reaches a log line or a `Debug` string, in any spelling a URL can carry it.

use std::time::{Duration, Instant};

use serde_json::Value;
use supabase_jwt_service::{AppState, Db};
use uuid::Uuid;

use crate::cli::{Server, bin};
use crate::helpers::*;

/// `url` (a trust-auth test database) with `password` added in the userinfo or the query:
/// the server ignores it, and the service must not print it.
fn with_password(url: &str, in_query: bool) -> String {
    let mut url = reqwest::Url::parse(url).expect("url");
    if in_query {
        url.query_pairs_mut().append_pair("password", "hunter2");
    } else {
        url.set_password(Some("hunter2")).expect("password");
    }
    url.to_string()
}

#[tokio::test]
async fn the_listening_line_and_migrate_mask_every_password_form() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    for in_query in [false, true] {
        let url = with_password(&db.url, in_query);
        let mut cmd = bin(dir.path());
        cmd.env("HOST", "127.0.0.1")
            .env("DATABASE_URL", &url)
            .env("SUPABASE_JWT_SECRET", SECRET);
        let server = Server::start(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = loop {
            let found = server.logs().lines().find_map(|l| {
                let line: Value = serde_json::from_str(l).ok()?;
                (line["message"] == "listening").then_some(line)
            });
            if let Some(line) = found {
                break line;
            }
            assert!(Instant::now() < deadline, "{}", server.logs());
            std::thread::sleep(Duration::from_millis(20));
        };
        let store = listening["store"].as_str().unwrap_or_default().to_owned();
        assert!(
            store.contains("***") && store.contains("127.0.0.1"),
            "{store}"
        );
        // The start-up role check connected with these options: sqlx logged nothing of them.
        assert!(!server.logs().contains("hunter2"), "{}", server.logs());

        let out = bin(dir.path())
            .env("DATABASE_URL", &url)
            .env("SUPABASE_JWT_SECRET", SECRET)
            .arg("migrate")
            .output()
            .expect("migrate");
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("migrations applied") && stderr.contains("***"),
            "{stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }

    // An error path that names the URL: nothing listens on port 1.
    for raw in [
        "postgres://app:hunter2@127.0.0.1:1/db",
        "postgres://app@127.0.0.1:1/db?password=hunter2",
    ] {
        let out = bin(dir.path())
            .env("DATABASE_URL", raw)
            .env("SUPABASE_JWT_SECRET", SECRET)
            .arg("migrate")
            .output()
            .expect("migrate");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }

    // Spellings sqlx would ignore and log with their value: refused, value unsaid.
    for raw in [
        "postgres://app@127.0.0.1:1/db?sslpassword=hunter2",
        "postgres://app@127.0.0.1:1/db?PASSWORD=hunter2",
    ] {
        let out = bin(dir.path())
            .env("DATABASE_URL", raw)
            .env("SUPABASE_JWT_SECRET", SECRET)
            .output()
            .expect("serve");
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("DATABASE_URL"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

#[tokio::test]
async fn debug_of_db_transactions_config_and_state_shows_no_password() {
    let db = TestDb::new().await;
    for in_query in [false, true] {
        let config = pg_config(&with_password(&db.url, in_query));
        let store = Db::connect(&config.db).await.expect("store");
        let claims = verified(&config, &token_for(Uuid::new_v4())).await;
        let tx = store.begin_as(&claims).await.expect("transaction");
        let service = store.begin_as_service().await.expect("transaction");
        let shown = [
            format!("{store:?}"),
            format!("{tx:?}"),
            format!("{service:?}"),
            format!("{config:?}"),
            format!("{:?}", config.db),
            format!("{:?}", config.db.url),
        ];
        for text in &shown {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert!(shown[0].contains("127.0.0.1"), "{}", shown[0]);
        tx.rollback().await.expect("rollback");
        service.rollback().await.expect("rollback");
    }
    let state = AppState::build(pg_config(&with_password(&db.url, true)))
        .await
        .expect("state");
    let shown = format!("{state:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains(SECRET),
        "{shown}"
    );
}
