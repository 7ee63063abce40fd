//! Tokens made by PyJWT (tests/fixtures/hs256), an independent implementation.

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn pyjwt_fixture_tokens_get_the_answers_the_contract_names() {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/hs256/tokens.json")).expect("fixture JSON");
    let secret = fixture["secret"].as_str().unwrap();
    let issuer = fixture["issuer"].as_str().unwrap();
    let user: Uuid = fixture["user"].as_str().unwrap().parse().unwrap();

    let db = TestDb::new().await;
    db.seed_user(user, Some("Fixture User")).await;
    let app = TestApp::spawn(config_with(&db.url, |b| {
        b.jwt_secret(secret).issuer(issuer)
    }))
    .await;

    let cases = fixture["cases"].as_object().unwrap();
    assert!(cases.len() >= 15);
    for (name, case) in cases {
        let r = app
            .get_with_token("/name", case["token"].as_str().unwrap())
            .await;
        let status = case["status"].as_u64().unwrap() as u16;
        assert_eq!(r.status().as_u16(), status, "case {name}");
        let body: Value = r.json().await.unwrap();
        match case["error"].as_str() {
            Some(code) => assert_eq!(body["error"], code, "case {name}"),
            None => assert_eq!(body["full_name"], "Fixture User", "case {name}"),
        }
    }
}
