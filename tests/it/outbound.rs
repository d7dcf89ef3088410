//! Local → Stripe over the PostgreSQL transport, against localstripe: changes arrive with
//! their fields and metadata, bursts collapse, faults converge without duplicates, and what
//! Stripe rejects lands in dead letters and can be replayed.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, settings, syncing_settings, wait_for};
use crate::support::customers::{SYNC_DEADLINE, wait_synced};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::mock_kafka::MockKafka;
use crate::support::reconcile::spawn_app;
use crate::support::stripe::{LOCALSTRIPE, Localstripe, unique_email};

/// The version a deleted customer was synced at (it is 404 in the API).
async fn synced_version_in_db(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar("select stripe_synced_version from customers where id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Metadata as real Stripe would hold it: localstripe keeps a key set to "" (Stripe's way to
/// remove it) with an empty value instead of removing it.
fn without_blank_values(metadata: &Value) -> Value {
    let kept: serde_json::Map<String, Value> = metadata
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| *v != "")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

#[sqlx::test]
async fn creates_updates_and_deletes_reach_stripe(pool: PgPool) {
    let app = TestApp::spawn_syncing(pool, LOCALSTRIPE).await;
    let stripe = Localstripe::new();
    let email = unique_email("roundtrip");
    let created: Value = app
        .post_customer(&json!({
            "email": email, "name": "Ada Lovelace", "phone": "+44 20 7946 0958",
            "description": "first programmer", "metadata": {"plan": "pro", "seats": "3"}
        }))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    let synced = wait_synced(&app, &id, 1).await;
    let stripe_id = synced["sync"]["stripe_id"].as_str().unwrap().to_owned();
    let remote = stripe.customer(&stripe_id).await.unwrap();
    assert_eq!(remote["email"], email);
    assert_eq!(remote["name"], "Ada Lovelace");
    assert_eq!(remote["phone"], "+44 20 7946 0958");
    assert_eq!(remote["description"], "first programmer");
    assert_eq!(
        remote["metadata"],
        json!({"plan": "pro", "seats": "3", "paysync_id": id, "paysync_version": "1"})
    );

    let patched = app
        .patch_customer(&id, &json!({"name": "Augusta Ada King", "phone": null, "metadata": {"plan": null, "seats": "5"}}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    wait_synced(&app, &id, 2).await;
    let remote = stripe.customer(&stripe_id).await.unwrap();
    assert_eq!(remote["name"], "Augusta Ada King");
    assert!(
        remote["phone"].is_null() || remote["phone"] == "",
        "{remote}"
    );
    assert_eq!(
        without_blank_values(&remote["metadata"]),
        json!({"seats": "5", "paysync_id": id, "paysync_version": "2"})
    );

    assert_eq!(
        app.delete_customer(&id).await.status(),
        StatusCode::NO_CONTENT
    );
    wait_for(
        "the Stripe customer to be deleted",
        SYNC_DEADLINE,
        || async {
            match stripe.customer(&stripe_id).await {
                None => Ok(()),
                Some(c) => Err(c.to_string()),
            }
        },
    )
    .await;
    wait_for("the deletion to be recorded", SYNC_DEADLINE, || async {
        match synced_version_in_db(&app, &id).await {
            3 => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
}

/// 100 rapid PATCHes of one customer end with Stripe equal to the last version, once.
async fn burst_of_patches_ends_at_the_last_version(app: &TestApp) {
    let email = unique_email("burst");
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=100 {
        let response = app
            .patch_customer(&id, &json!({"name": format!("revision {i}")}), None)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let synced = wait_synced(app, &id, 101).await;
    let remote = Localstripe::new()
        .customer(synced["sync"]["stripe_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(remote["name"], "revision 100");
    assert_eq!(remote["metadata"]["paysync_version"], "101");
    assert_eq!(
        Localstripe::new().customers_with_email(&email).await.len(),
        1
    );
}

#[sqlx::test]
async fn a_burst_of_patches_ends_with_stripe_at_the_last_version(pool: PgPool) {
    let app = TestApp::spawn_syncing(pool, LOCALSTRIPE).await;
    burst_of_patches_ends_at_the_last_version(&app).await;
}

#[sqlx::test]
async fn faults_between_paysync_and_stripe_converge_without_duplicates(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    proxy
        .set_plan(vec![
            Some(Fault::Status(500)),
            None,
            Some(Fault::RateLimited {
                retry_after_secs: 1,
            }),
            Some(Fault::DropAfterForward),
            None,
            Some(Fault::StatusAfterForward(502)),
            Some(Fault::Status(503)),
            None,
            Some(Fault::Stall(Duration::from_secs(5))),
            None,
        ])
        .await;
    let app = TestApp::spawn_syncing(pool, &proxy.base_url).await;
    let stripe = Localstripe::new();

    let mut customers = Vec::new();
    for i in 0..8 {
        let email = unique_email(&format!("fault{i}"));
        let id = app.create_customer(&email).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = app
            .patch_customer(
                &id,
                &json!({"name": format!("customer {i}"), "metadata": {"n": i.to_string()}}),
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        customers.push((id, email));
    }
    for (i, (id, email)) in customers.iter().enumerate() {
        let synced = wait_synced(&app, id, 2).await;
        let in_stripe = stripe.customers_with_email(email).await;
        assert_eq!(
            in_stripe.len(),
            1,
            "exactly one Stripe customer for {email}: {in_stripe:?}"
        );
        assert_eq!(in_stripe[0]["id"], synced["sync"]["stripe_id"]);
        assert_eq!(in_stripe[0]["name"], format!("customer {i}"));
        assert_eq!(in_stripe[0]["metadata"]["n"], i.to_string());
        assert_eq!(in_stripe[0]["metadata"]["paysync_version"], "2");
    }
    assert!(proxy.requests() > 16, "the faults were exercised");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("paysync_stripe_retries_total"),
        "{metrics}"
    );
}

#[sqlx::test]
async fn a_change_stripe_rejects_is_dead_lettered_and_replays_once_fixed(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    proxy
        .reject_bodies_containing(Some("rejected-by-stripe"))
        .await;
    let app = TestApp::spawn_syncing(pool, &proxy.base_url).await;
    let email = unique_email("rejected-by-stripe");
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let failed = wait_for("the sync to fail", SYNC_DEADLINE, || async {
        let customer: Value = app.get_customer(&id).await.json().await.unwrap();
        if customer["sync"]["state"] == "failed" {
            Ok(customer)
        } else {
            Err(customer["sync"].to_string())
        }
    })
    .await;
    let error = failed["sync"]["error"].as_str().unwrap();
    assert!(
        error.contains("Invalid email address") && error.contains("400"),
        "{error}"
    );

    let letters: Value = app.get_json("/v1/dead-letters").await;
    let letters = letters["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{letters}"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["source"], "outbound");
    assert_eq!(letters[0]["key"], id);
    let letter_id = letters[0]["id"].as_str().unwrap().to_owned();
    assert!(
        Localstripe::new()
            .customers_with_email(&email)
            .await
            .is_empty()
    );

    proxy.reject_bodies_containing(None).await;
    let replay = app
        .request(
            Method::POST,
            &format!("/v1/dead-letters/{letter_id}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    wait_synced(&app, &id, 1).await;
    assert_eq!(
        Localstripe::new().customers_with_email(&email).await.len(),
        1
    );

    let again = app
        .request(
            Method::POST,
            &format!("/v1/dead-letters/{letter_id}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let open: Value = app.get_json("/v1/dead-letters").await;
    assert_eq!(open["data"], json!([]));
    let all: Value = app.get_json("/v1/dead-letters?all=true").await;
    assert!(all["data"][0]["replayed_at"].is_string());
}

#[sqlx::test]
async fn a_burst_of_patches_through_kafka_ends_at_the_last_version(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = TestApp::spawn_kafka(pool, LOCALSTRIPE, &kafka.bootstrap).await;
    burst_of_patches_ends_at_the_last_version(&app).await;
    app.stop().await;
}

/// Stripe stalls every call, the pool has 4 connections and 8 customers are being synced at
/// once: the API still answers, because no pooled connection waits on Stripe (a sync holds
/// its lock on a connection of its own and commits in a short transaction).
#[sqlx::test]
async fn a_stalled_stripe_never_takes_the_connections_that_serve_the_api(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    proxy
        .set_plan(vec![Some(Fault::Stall(Duration::from_secs(10)))])
        .await;
    let small_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    // Eight changes already committed, so the worker claims them in one batch.
    for i in 0..8 {
        let id = uuid::Uuid::now_v7();
        sqlx::query("insert into customers (id, email) values ($1, $2)")
            .bind(id)
            .bind(unique_email(&format!("stalled{i}")))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "insert into outbox (id, customer_id, op, version) values ($1, $2, 'create', 1)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut settings = crate::support::app::syncing_settings(&proxy.base_url);
    settings.outbound.as_mut().unwrap().concurrency = 8;
    settings.stripe_calls.timeout = Duration::from_secs(30);
    let app = TestApp::spawn_settings(small_pool, settings).await;
    wait_for(
        "8 Stripe calls stalled in flight",
        SYNC_DEADLINE,
        || async {
            match proxy.requests() {
                n if n >= 8 => Ok(()),
                n => Err(format!("{n} calls")),
            }
        },
    )
    .await;
    for i in 0..10 {
        let list = app
            .request(Method::GET, "/v1/customers")
            .send()
            .await
            .unwrap();
        assert_eq!(list.status(), StatusCode::OK, "list {i}");
        app.create_customer(&unique_email(&format!("meanwhile{i}")))
            .await;
    }
    // The API answered while every sync was still waiting on Stripe.
    let synced: i64 =
        sqlx::query_scalar("select count(*) from customers where sync_state = 'synced'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(synced, 0, "the stall was over before the API was tried");
    proxy.set_plan(Vec::new()).await;
    app.stop().await;
}

/// The Stripe calls of one operation so far (every result).
async fn stripe_calls(app: &TestApp, operation: &str) -> f64 {
    let wanted = format!("operation=\"{operation}\"");
    app.metrics_text()
        .await
        .lines()
        .filter(|line| line.starts_with("paysync_stripe_requests_total{") && line.contains(&wanted))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A customer never sent before costs one Stripe call: the attempt is recorded before the
/// call, so there is nothing to look up. One whose earlier attempt's outcome is unknown
/// (paysync died waiting for Stripe's answer, which created it) is looked up and linked,
/// never created twice.
#[sqlx::test]
async fn a_first_create_is_one_call_and_an_unknown_attempt_is_looked_up(pool: PgPool) {
    let app = spawn_app(&pool, syncing_settings(LOCALSTRIPE)).await;
    let created = app.create_customer(&unique_email("one-call")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    wait_synced(&app, &id, 1).await;
    assert_eq!(stripe_calls(&app, "create_customer").await, 1.0);
    assert_eq!(stripe_calls(&app, "list_customers").await, 0.0, "no lookup");
    app.stop_replica().await;

    // Queued with no worker running, then "attempted": Stripe holds it, paysync never heard.
    let queued = spawn_app(&pool, settings()).await;
    let email = unique_email("unknown-outcome");
    let created = queued.create_customer(&email).await;
    let id = created["id"].as_str().unwrap().to_owned();
    queued.stop_replica().await;
    sqlx::query("update customers set stripe_create_attempted_at = now() where id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    let stripe = Localstripe::new();
    let made = stripe
        .create_customer(&[
            ("email", email.as_str()),
            ("metadata[paysync_id]", id.as_str()),
        ])
        .await;

    let app = spawn_app(&pool, syncing_settings(LOCALSTRIPE)).await;
    let synced = wait_synced(&app, &id, 1).await;
    assert_eq!(synced["sync"]["stripe_id"], made["id"]);
    assert_eq!(stripe.customers_with_email(&email).await.len(), 1);
    assert_eq!(stripe_calls(&app, "create_customer").await, 0.0);
    assert!(
        stripe_calls(&app, "list_customers").await >= 1.0,
        "looked up"
    );
    app.stop().await;
}
