//! The /v1/customers API: every status code, and the outbox row each write must leave.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, error_code};

#[sqlx::test]
async fn create_returns_the_customer_and_queues_it_for_stripe(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .post_customer(&json!({
            "email": "Ada@Example.com",
            "name": "Ada Lovelace",
            "phone": "+44 20 7946 0958",
            "description": "first programmer",
            "metadata": {"plan": "pro"}
        }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/customers/{id}"));
    assert_eq!(body["email"], "Ada@Example.com");
    assert_eq!(body["name"], "Ada Lovelace");
    assert_eq!(body["phone"], "+44 20 7946 0958");
    assert_eq!(body["description"], "first programmer");
    assert_eq!(body["metadata"], json!({"plan": "pro"}));
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["sync"],
        json!({"state": "pending", "stripe_id": null, "synced_version": 0, "error": null})
    );
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());

    let fetched: Value = app.get_customer(id).await.json().await.unwrap();
    assert_eq!(fetched, body);
    assert_eq!(app.outbox_of(id).await, [("create".to_owned(), 1)]);
}

#[sqlx::test]
async fn bad_create_requests_get_clear_errors_and_write_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let many_keys: serde_json::Map<String, Value> =
        (0..49).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "missing email",
            json!({"name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "invalid email",
            json!({"email": "not-an-email"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "unknown field",
            json!({"email": "a@example.com", "plan": "pro"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "wrong type",
            json!({"email": 42}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "name too long",
            json!({"email": "a@example.com", "name": "n".repeat(257)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "phone too long",
            json!({"email": "a@example.com", "phone": "1".repeat(21)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "49 metadata keys",
            json!({"email": "a@example.com", "metadata": many_keys}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "metadata key too long",
            json!({"email": "a@example.com", "metadata": {"k".repeat(41): "v"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "metadata value too long",
            json!({"email": "a@example.com", "metadata": {"k": "v".repeat(501)}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "reserved metadata key",
            json!({"email": "a@example.com", "metadata": {"paysync_id": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "numeric metadata value",
            json!({"email": "a@example.com", "metadata": {"seats": 3}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (case, body, status, code) in cases {
        let response = app.post_customer(&body).await;
        assert_eq!(response.status(), status, "{case}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{case}: {error}");
    }

    let malformed = app
        .request(Method::POST, "/v1/customers")
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(malformed, StatusCode::BAD_REQUEST).await,
        "malformed_json"
    );

    let not_json = app
        .request(Method::POST, "/v1/customers")
        .header("content-type", "text/plain")
        .body("email=a@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await,
        "unsupported_media_type"
    );

    let huge = json!({"email": "a@example.com", "description": "d".repeat(70 * 1024)});
    let too_large = app.post_customer(&huge).await;
    assert_eq!(
        error_code(too_large, StatusCode::PAYLOAD_TOO_LARGE).await,
        "payload_too_large"
    );

    assert_eq!(app.count("customers").await, 0);
    assert_eq!(app.count("outbox").await, 0);
}

#[sqlx::test]
async fn emails_are_unique_among_live_customers_ignoring_case(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let first = app.create_customer("grace@example.com").await;
    let duplicate = app
        .post_customer(&json!({"email": "GRACE@example.COM"}))
        .await;
    assert_eq!(
        error_code(duplicate, StatusCode::CONFLICT).await,
        "email_taken"
    );
    assert_eq!(app.count("customers").await, 1);
    assert_eq!(app.count("outbox").await, 1);

    let deleted = app.delete_customer(first["id"].as_str().unwrap()).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let reused = app
        .post_customer(&json!({"email": "grace@example.com"}))
        .await;
    assert_eq!(reused.status(), StatusCode::CREATED);
}

#[sqlx::test]
async fn a_retried_post_with_an_idempotency_key_returns_the_first_response(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = json!({"email": "linus@example.com", "metadata": {"source": "signup"}});
    let post = || {
        app.request(Method::POST, "/v1/customers")
            .header("idempotency-key", "signup-7f3a")
            .json(&body)
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first = first.text().await.unwrap();
    assert!(
        first.starts_with("{\"id\":"),
        "fields in documented order: {first}"
    );

    let retry = post().await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["etag"], "\"1\"");
    assert_eq!(retry.headers()["location"], location);
    assert_eq!(
        retry.text().await.unwrap(),
        first,
        "the replay is byte-identical"
    );

    assert_eq!(app.count("customers").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

#[sqlx::test]
async fn concurrent_posts_with_one_idempotency_key_create_one_customer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = json!({"email": "race@example.com"});
    let requests = (0..8).map(|_| {
        app.request(Method::POST, "/v1/customers")
            .header("idempotency-key", "same-key")
            .json(&body)
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one customer for one key: {ids:?}");
    assert_eq!(app.count("customers").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

#[sqlx::test]
async fn an_idempotency_key_reused_for_another_request_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let post = |email: &str| {
        app.request(Method::POST, "/v1/customers")
            .header("idempotency-key", "k-1")
            .json(&json!({ "email": email }))
            .send()
    };
    assert_eq!(
        post("one@example.com").await.unwrap().status(),
        StatusCode::CREATED
    );
    let reused = post("two@example.com").await.unwrap();
    assert_eq!(
        error_code(reused, StatusCode::CONFLICT).await,
        "idempotency_key_reused"
    );
    let bad_key = app
        .request(Method::POST, "/v1/customers")
        .header("idempotency-key", "k".repeat(300))
        .json(&json!({"email": "three@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(bad_key, StatusCode::BAD_REQUEST).await,
        "invalid_idempotency_key"
    );
    assert_eq!(app.count("customers").await, 1);
}

#[sqlx::test]
async fn unknown_and_malformed_ids_are_404_and_400(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let unknown = app
        .get_customer("0190a5a4-0000-7000-8000-000000000000")
        .await;
    assert_eq!(
        error_code(unknown, StatusCode::NOT_FOUND).await,
        "not_found"
    );
    let malformed = app.get_customer("not-a-uuid").await;
    assert_eq!(
        error_code(malformed, StatusCode::BAD_REQUEST).await,
        "invalid_id"
    );
    let patch = app.patch_customer("not-a-uuid", &json!({}), None).await;
    assert_eq!(
        error_code(patch, StatusCode::BAD_REQUEST).await,
        "invalid_id"
    );
}

#[sqlx::test]
async fn listing_pages_through_every_live_customer_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut created = Vec::new();
    for i in 0..25 {
        created.push(
            app.create_customer(&format!("user{i}@example.com")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let removed = created.remove(7);
    assert_eq!(
        app.delete_customer(&removed).await.status(),
        StatusCode::NO_CONTENT
    );

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/customers?limit=10&cursor={c}"),
            None => "/v1/customers?limit=10".to_owned(),
        };
        let page: Value = app.get_json(&path).await;
        pages += 1;
        let data = page["data"].as_array().unwrap();
        seen.extend(data.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(next) => {
                assert_eq!(data.len(), 10);
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every live customer once, in creation order");
}

#[sqlx::test]
async fn listing_filters_by_email_ignoring_case(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_customer("alice@example.com").await;
    let bob = app.create_customer("Bob@Example.com").await;
    let page: Value = app.get_json("/v1/customers?email=bob@example.com").await;
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], bob["id"]);
    assert!(page.get("next_cursor").is_none());
}

#[sqlx::test]
async fn listing_rejects_bad_parameters(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("limit=ten", "invalid_query"),
        ("cursor=garbage!", "invalid_cursor"),
        ("sort=name", "invalid_query"),
    ] {
        let response = app
            .request(Method::GET, &format!("/v1/customers?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(response, StatusCode::BAD_REQUEST).await,
            code,
            "{query}"
        );
    }
}

#[sqlx::test]
async fn patch_changes_fields_bumps_the_version_and_queues_an_update(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let created = app
        .post_customer(&json!({"email": "ken@example.com", "name": "Ken", "metadata": {"plan": "free", "seats": "1"}}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();

    let response = app
        .patch_customer(
            id,
            &json!({"email": "ken.t@example.com", "name": null, "phone": "+1 555 0100", "metadata": {"plan": "pro", "seats": null}}),
            Some("\"1\""),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["email"], "ken.t@example.com");
    assert_eq!(updated["name"], Value::Null);
    assert_eq!(updated["phone"], "+1 555 0100");
    assert_eq!(updated["metadata"], json!({"plan": "pro"}));
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["created_at"], created["created_at"]);

    let fetched: Value = app.get_customer(id).await.json().await.unwrap();
    assert_eq!(fetched, updated);
    assert_eq!(
        app.outbox_of(id).await,
        [("create".to_owned(), 1), ("update".to_owned(), 2)]
    );
}

#[sqlx::test]
async fn patch_that_changes_nothing_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let created = app.create_customer("same@example.com").await;
    let id = created["id"].as_str().unwrap();
    for body in [
        json!({}),
        json!({"email": "same@example.com", "name": null}),
    ] {
        let response = app.patch_customer(id, &body, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["version"], 1);
    }
    assert_eq!(app.outbox_of(id).await.len(), 1);
}

#[sqlx::test]
async fn patch_with_a_stale_if_match_is_refused_and_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create_customer("stale@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.patch_customer(&id, &json!({"name": "v2"}), Some("\"1\""))
            .await
            .status(),
        StatusCode::OK
    );

    let stale = app
        .patch_customer(&id, &json!({"name": "lost update"}), Some("\"1\""))
        .await;
    assert_eq!(
        error_code(stale, StatusCode::PRECONDITION_FAILED).await,
        "version_mismatch"
    );
    let bad = app
        .patch_customer(&id, &json!({"name": "x"}), Some("yesterday"))
        .await;
    assert_eq!(
        error_code(bad, StatusCode::BAD_REQUEST).await,
        "invalid_if_match"
    );

    let current: Value = app.get_customer(&id).await.json().await.unwrap();
    assert_eq!(current["name"], "v2");
    assert_eq!(current["version"], 2);
    assert_eq!(app.outbox_of(&id).await.len(), 2);
}

#[sqlx::test]
async fn concurrent_patches_with_the_same_if_match_let_exactly_one_win(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create_customer("race-patch@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (from_a, from_b) = (json!({"name": "from A"}), json!({"name": "from B"}));
    let (a, b) = tokio::join!(
        app.patch_customer(&id, &from_a, Some("\"1\"")),
        app.patch_customer(&id, &from_b, Some("\"1\"")),
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::PRECONDITION_FAILED]);
    let winner = if a.status() == StatusCode::OK {
        "from A"
    } else {
        "from B"
    };

    let current: Value = app.get_customer(&id).await.json().await.unwrap();
    assert_eq!(current["name"], winner);
    assert_eq!(current["version"], 2);
    assert_eq!(
        app.outbox_of(&id).await,
        [("create".to_owned(), 1), ("update".to_owned(), 2)]
    );
}

#[sqlx::test]
async fn patch_errors_are_specific(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_customer("taken@example.com").await;
    let id = app.create_customer("mine@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let many: serde_json::Map<String, Value> =
        (0..48).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert_eq!(
        app.patch_customer(&id, &json!({"metadata": many}), None)
            .await
            .status(),
        StatusCode::OK
    );

    let cases = [
        (
            json!({"email": "TAKEN@example.com"}),
            StatusCode::CONFLICT,
            "email_taken",
        ),
        (
            json!({"email": null}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"metadata": {"one_too_many": "v"}}),
            StatusCode::CONFLICT,
            "metadata_full",
        ),
        (
            json!({"nickname": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let response = app.patch_customer(&id, &body, None).await;
        assert_eq!(error_code(response, status).await, code, "{body}");
    }
    let unknown = app
        .patch_customer(
            "0190a5a4-0000-7000-8000-000000000000",
            &json!({"name": "x"}),
            None,
        )
        .await;
    assert_eq!(
        error_code(unknown, StatusCode::NOT_FOUND).await,
        "not_found"
    );
    assert_eq!(app.outbox_of(&id).await.len(), 2);
}

#[sqlx::test]
async fn delete_is_soft_queues_a_deletion_and_hides_the_customer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create_customer("gone@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let stale = app
        .request(Method::DELETE, &format!("/v1/customers/{id}"))
        .header("if-match", "\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(stale, StatusCode::PRECONDITION_FAILED).await,
        "version_mismatch"
    );

    let response = app.delete_customer(&id).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get_customer(&id).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete_customer(&id).await.status(),
        StatusCode::NOT_FOUND
    );
    let page: Value = app.get_json("/v1/customers").await;
    assert_eq!(page["data"], json!([]));

    let (deleted, version): (bool, i64) =
        sqlx::query_as("select deleted_at is not null, version from customers where id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(deleted, "the row stays so the deletion can reach Stripe");
    assert_eq!(version, 2);
    assert_eq!(
        app.outbox_of(&id).await,
        [("create".to_owned(), 1), ("delete".to_owned(), 2)]
    );
}

/// Input PostgreSQL cannot store (NUL) is refused or matches nothing; it never reaches the
/// database as a 500 (the schemathesis findings of the hardening issue).
#[sqlx::test]
async fn nul_bytes_are_refused_or_match_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let page = app
        .get_json("/v1/customers?email=a%00b%40example.com")
        .await;
    assert_eq!(page, json!({"data": []}));
    for body in [
        json!({"email": "nul@example.com", "metadata": {"k": "a\u{0}b"}}),
        json!({"email": "nul@example.com", "name": "Ada\u{0}"}),
        json!({"email": "nul\u{0}@example.com"}),
    ] {
        let response = app.post_customer(&body).await;
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
            "validation_failed",
            "{body}"
        );
    }
    let id = app.create_customer("nul-patch@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .patch_customer(&id, &json!({"metadata": {"k": "a\u{0}b"}}), None)
        .await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "validation_failed"
    );
}

/// `sync_state` lists what is not in sync: pending changes and failed ones.
#[sqlx::test]
async fn listing_filters_by_sync_state(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let pending = app.create_customer("pending@example.com").await;
    let failed = app.create_customer("failed@example.com").await;
    sqlx::query("update customers set sync_state = 'failed' where id = $1::uuid")
        .bind(failed["id"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let ids = |page: Value| -> Vec<Value> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect()
    };
    assert_eq!(
        ids(app.get_json("/v1/customers?sync_state=failed").await),
        [failed["id"].clone()]
    );
    assert_eq!(
        ids(app.get_json("/v1/customers?sync_state=pending").await),
        [pending["id"].clone()]
    );
    assert!(ids(app.get_json("/v1/customers?sync_state=synced").await).is_empty());
    let bad = app
        .request(Method::GET, "/v1/customers?sync_state=lost")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// A method a route does not have: 405 with `Allow` and the usual error body.
#[sqlx::test]
async fn an_unsupported_method_gets_405_with_allow_and_a_json_error(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .request(Method::PUT, "/v1/customers")
        .send()
        .await
        .unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(
        error_code(response, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );
}
