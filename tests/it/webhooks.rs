//! The signed Stripe webhook ingress: what is verified is durably queued before the 2xx
//! (PostgreSQL inbox or Kafka), everything else is refused and nothing is stored.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, error_code, kafka_settings, settings, wait_for, with_webhooks};
use crate::support::mock_kafka::MockKafka;
use crate::support::stripe::{LOCALSTRIPE, unique_email};
use crate::support::webhooks::{ROTATED_SECRET, SECRET, deliver, now, signature};

async fn spawn(pool: PgPool, kafka: Option<&MockKafka>) -> TestApp {
    let mut settings = with_webhooks(settings());
    if let Some(kafka) = kafka {
        settings.kafka = Some(kafka_settings(&kafka.bootstrap));
    }
    TestApp::spawn_settings(pool, settings).await
}

fn customer_event(event_id: &str, kind: &str, stripe_id: &str) -> String {
    json!({
        "id": event_id, "object": "event", "type": kind, "created": now(),
        "data": {"object": {"id": stripe_id, "object": "customer", "email": "hook@example.com"}}
    })
    .to_string()
}

async fn inbox(app: &TestApp) -> Vec<(String, Option<String>, Value)> {
    sqlx::query_as(
        "select event_id, stripe_customer_id, payload from processed_events order by received_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_verified_event_is_in_the_inbox_before_the_2xx_and_stored_once(pool: PgPool) {
    let app = spawn(pool, None).await;
    let body = customer_event("evt_inbox_1", "customer.updated", "cus_Inbox1");
    for secret in [SECRET, ROTATED_SECRET, SECRET, SECRET, SECRET] {
        let response = deliver(&app, &body, Some(&signature(secret, now(), &body))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"received": true, "ignored": false})
        );
        let stored = inbox(&app).await;
        assert_eq!(stored.len(), 1, "the same delivery replayed is stored once");
        assert_eq!(stored[0].0, "evt_inbox_1");
        assert_eq!(stored[0].1.as_deref(), Some("cus_Inbox1"));
        assert_eq!(stored[0].2, serde_json::from_str::<Value>(&body).unwrap());
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"paysync_webhooks_total{policy="default",outcome="accepted"} 5"#),
        "{metrics}"
    );
}

#[sqlx::test]
async fn concurrent_deliveries_share_writes_and_each_is_stored_before_its_2xx(pool: PgPool) {
    let app = spawn(pool, None).await;
    let bodies: Vec<String> = (0..300)
        .map(|i| customer_event(&format!("evt_many_{i}"), "customer.updated", "cus_Many"))
        .collect();
    let signed: Vec<(&String, String)> = bodies
        .iter()
        .map(|body| (body, signature(SECRET, now(), body)))
        .collect();
    let answers = futures::future::join_all(
        signed
            .iter()
            .map(|(body, signature)| deliver(&app, body, Some(signature))),
    )
    .await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(
        inbox(&app).await.len(),
        300,
        "every answered delivery is stored"
    );
    // Group commit: deliveries that arrive while a write is in flight share the next one.
    let metrics = app.metrics_text().await;
    let writes: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("paysync_inbox_write_events_count "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no inbox write count in {metrics}"));
    assert!(
        (1..300).contains(&writes),
        "{writes} writes for 300 deliveries"
    );
}

#[sqlx::test]
async fn forged_expired_oversized_and_malformed_deliveries_store_nothing(pool: PgPool) {
    let app = spawn(pool, None).await;
    let body = customer_event("evt_bad_1", "customer.created", "cus_Bad1");
    let cases: Vec<(&str, String, Option<String>, StatusCode, &str)> = vec![
        (
            "no signature",
            body.clone(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "malformed signature",
            body.clone(),
            Some("v1=abc".to_owned()),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "unknown secret",
            body.clone(),
            Some(signature("whsec_attacker", now(), &body)),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "tampered body",
            body.replace("cus_Bad1", "cus_Evil"),
            Some(signature(SECRET, now(), &body)),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "expired",
            body.clone(),
            Some(signature(SECRET, now() - 400, &body)),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "from the future",
            body.clone(),
            Some(signature(SECRET, now() + 400, &body)),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "signed but not JSON",
            "hello".to_owned(),
            Some(signature(SECRET, now(), "hello")),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "signed but not an event",
            r#"{"id":"cus_1"}"#.to_owned(),
            Some(signature(SECRET, now(), r#"{"id":"cus_1"}"#)),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
    ];
    for (case, body, signature, status, code) in cases {
        let response = deliver(&app, &body, signature.as_deref()).await;
        assert_eq!(error_code(response, status).await, code, "{case}");
    }
    let huge = format!(
        r#"{{"id":"evt_big","padding":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let response = deliver(&app, &huge, Some(&signature(SECRET, now(), &huge))).await;
    assert_eq!(
        error_code(response, StatusCode::PAYLOAD_TOO_LARGE).await,
        "payload_too_large"
    );

    let other = json!({"id": "evt_payout", "type": "payout.paid", "created": now(), "data": {"object": {"object": "payout", "id": "po_1"}}}).to_string();
    let response = deliver(&app, &other, Some(&signature(SECRET, now(), &other))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["ignored"], true);

    assert!(inbox(&app).await.is_empty());
    let metrics = app.metrics_text().await;
    for outcome in [
        "bad_signature",
        "stale",
        "malformed",
        "oversized",
        "ignored_type",
    ] {
        assert!(
            metrics.contains(&format!(
                r#"paysync_webhooks_total{{policy="default",outcome="{outcome}"}}"#
            )),
            "{outcome}: {metrics}"
        );
    }
}

#[sqlx::test]
async fn without_a_secret_the_ingress_answers_503(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = customer_event("evt_nosecret", "customer.updated", "cus_1");
    let response = deliver(&app, &body, Some(&signature(SECRET, now(), &body))).await;
    assert_eq!(
        error_code(response, StatusCode::SERVICE_UNAVAILABLE).await,
        "webhooks_disabled"
    );
}

/// A real delivery: localstripe signs and sends the event of a change made directly in it.
#[sqlx::test]
async fn localstripe_deliveries_are_verified_and_queued(pool: PgPool) {
    let app = spawn(pool, None).await;
    let http = reqwest::Client::new();
    // One fixed registration id, so repeated runs replace it rather than pile up.
    let registered = http
        .post(format!("{LOCALSTRIPE}/_config/webhooks/paysync-it"))
        .form(&[
            ("url", app.url("/webhooks/stripe")),
            ("secret", SECRET.to_owned()),
        ])
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());
    let created: Value = http
        .post(format!("{LOCALSTRIPE}/v1/customers"))
        .bearer_auth("sk_test_paysync")
        .form(&[
            ("email", unique_email("from-stripe")),
            ("name", "Made in Stripe".to_owned()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stripe_id = created["id"].as_str().unwrap().to_owned();
    wait_for(
        "localstripe's customer.created delivery",
        Duration::from_secs(30),
        || async {
            let stored = inbox(&app).await;
            stored
                .iter()
                .find(|(_, customer, payload)| {
                    customer.as_deref() == Some(&stripe_id) && payload["type"] == "customer.created"
                })
                .map(|_| ())
                .ok_or_else(|| format!("{} events, none for {stripe_id}", stored.len()))
        },
    )
    .await;
}

#[sqlx::test]
async fn with_kafka_the_event_is_on_the_inbound_topic_before_the_2xx(pool: PgPool) {
    let mut kafka = MockKafka::start().await;
    let app = spawn(pool, Some(&kafka)).await;
    let body = customer_event("evt_kafka_1", "customer.deleted", "cus_Kafka1");
    let response = deliver(&app, &body, Some(&signature(SECRET, now(), &body))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(kafka.messages_in("paysync.inbound").await, 1);

    kafka.all_down().await;
    let body = customer_event("evt_kafka_2", "customer.updated", "cus_Kafka1");
    let response = deliver(&app, &body, Some(&signature(SECRET, now(), &body))).await;
    assert_eq!(
        error_code(response, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );
    kafka.all_up().await;
    let response = deliver(&app, &body, Some(&signature(SECRET, now(), &body))).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "Stripe's retry is accepted once Kafka is back"
    );
    assert!(kafka.messages_in("paysync.inbound").await >= 2);
    app.stop().await;
}

/// PostgreSQL transport with PostgreSQL unreachable: the event cannot be stored, so Stripe is
/// told to retry (503), never a 2xx for an event that is not durable.
#[tokio::test]
async fn with_postgres_down_the_ingress_answers_503() {
    // Nothing listens on port 1; the pool connects lazily, so the server starts anyway.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let settings = with_webhooks(settings());
    let app = paysync::app::Application::build(settings, pool)
        .await
        .unwrap();
    let url = format!("http://{}/webhooks/stripe", app.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(app.run(shutdown.clone()));

    let body = customer_event("evt_db_down", "customer.updated", "cus_DbDown");
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("stripe-signature", signature(SECRET, now(), &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );
    shutdown.cancel();
}
