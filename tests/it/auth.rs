//! Every /v1 route needs a configured bearer token; operational routes do not.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::support::app::{ROTATED_TOKEN, TestApp, error_code};

const SOME_ID: &str = "0190a5a4-0000-7000-8000-000000000000";

#[sqlx::test]
async fn every_v1_route_rejects_missing_or_wrong_tokens(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let routes = [
        (Method::POST, "/v1/customers".to_owned()),
        (Method::GET, "/v1/customers".to_owned()),
        (Method::GET, format!("/v1/customers/{SOME_ID}")),
        (Method::PATCH, format!("/v1/customers/{SOME_ID}")),
        (Method::DELETE, format!("/v1/customers/{SOME_ID}")),
        (Method::GET, "/v1/dead-letters".to_owned()),
        (Method::POST, format!("/v1/dead-letters/{SOME_ID}/replay")),
    ];
    for (method, path) in &routes {
        let attempts = [
            None,
            Some("Bearer wrong-token".to_owned()),
            Some("Basic dGVzdDp0ZXN0".to_owned()),
            Some("Bearer".to_owned()),
        ];
        for authorization in attempts {
            let mut request = app
                .client
                .request(method.clone(), app.url(path))
                .json(&json!({"email": "intruder@example.com"}));
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer",
                "{method} {path}"
            );
            assert_eq!(
                error_code(response, StatusCode::UNAUTHORIZED).await,
                "unauthorized",
                "{method} {path} with {authorization:?}"
            );
        }
    }
    assert_eq!(app.count("customers").await, 0);
}

#[sqlx::test]
async fn any_configured_token_is_accepted_during_rotation(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .client
        .post(app.url("/v1/customers"))
        .header("authorization", format!("bearer {ROTATED_TOKEN}"))
        .json(&json!({"email": "rotated@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}
