//! Health, readiness, metrics, the OpenAPI document and its docs page, and error hygiene.

use std::time::Duration;

use paysync::app::{Application, Settings};
use paysync::http::ApiAuth;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::support::app::{TestApp, error_code};

#[sqlx::test]
async fn health_and_readiness_need_no_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"], json!({"database": "ok"}));
}

#[tokio::test]
async fn readiness_fails_while_the_database_is_unreachable() {
    // Nothing listens on port 1; the pool connects lazily, so the server starts anyway.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let settings = Settings {
        auth: ApiAuth::Disabled,
        shutdown_timeout: Duration::from_secs(1),
        ..crate::support::app::settings()
    };
    let app = Application::build(settings, pool).await.unwrap();
    let url = format!("http://{}/readyz", app.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run(shutdown.clone()));

    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"], json!({"database": "unreachable"}));
    shutdown.cancel();
}

#[sqlx::test]
async fn metrics_count_requests_by_route_template_and_status(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create_customer("metrics@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.get_customer(&id).await;
    app.get_customer("0190a5a4-0000-7000-8000-000000000000")
        .await;

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    for line in [
        r#"paysync_http_requests_total{method="POST",route="/v1/customers",status="201"} 1"#,
        r#"paysync_http_requests_total{method="GET",route="/v1/customers/{id}",status="200"} 1"#,
        r#"paysync_http_requests_total{method="GET",route="/v1/customers/{id}",status="404"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(text.contains(r#"paysync_http_request_duration_seconds_count{method="POST",route="/v1/customers",status="201"} 1"#));
    assert!(!text.contains(&id), "raw paths must not become labels");
}

#[sqlx::test]
async fn openapi_document_describes_the_api_and_matches_the_committed_copy(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let served: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = served["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/customers", &["get", "post"][..]),
        ("/v1/customers/{id}", &["get", "patch", "delete"][..]),
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"][..]),
        ("/metrics", &["get"][..]),
    ] {
        for method in methods {
            assert!(
                paths[path].get(*method).is_some(),
                "{method} {path} is not documented"
            );
        }
    }
    assert!(served["components"]["securitySchemes"]["bearer"].is_object());

    let generated = paysync::http::openapi().to_pretty_json().unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap_or_default();
    assert_eq!(
        committed.trim_end(),
        generated.trim_end(),
        "docs/openapi.json is stale: run `make generate`"
    );
}

#[sqlx::test]
async fn docs_page_renders_from_local_assets_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for piece in html.split(attribute).skip(1) {
            let target = piece.split('"').next().unwrap();
            assert!(
                !target.starts_with("http") && !target.starts_with("//"),
                "the docs page loads {target} from outside"
            );
            assets.push(target.trim_start_matches("./").to_owned());
        }
    }
    assert!(!assets.is_empty());
    for asset in assets {
        let response = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "/docs/{asset}");
    }
    let initializer = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(initializer.text().await.unwrap().contains("/openapi.json"));
}

#[sqlx::test]
async fn unknown_routes_get_a_json_404(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .request(Method::GET, "/v2/nothing")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response, StatusCode::NOT_FOUND).await,
        "not_found"
    );
}

#[sqlx::test]
async fn internal_errors_are_generic_and_leak_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    sqlx::query("alter table customers rename to customers_moved")
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app
        .request(Method::GET, "/v1/customers")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "internal", "message": "internal error"}})
    );
}
