//! What each policy setting does, end to end against localstripe: per-field conflicts, every
//! direction, mode, deletion and adoption value; each scenario on both transports
//! (`<scenario>::postgres_transport`, `<scenario>::kafka_transport`).

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, error_code, wait_for};
use crate::support::customers::wait_synced;
use crate::support::events::{DEADLINE, customer_object, event, processed, urlencode};
use crate::support::mock_kafka::MockKafka;
use crate::support::policies::{
    ALPHA_SECRET, PolicyFile, PolicyManifest, create_in, deliver_to, insert_linked_in, metric,
    one_policy, spawn_with_file, stored_state, wait_metric,
};
use crate::support::reconcile::insert_local_only;
use crate::support::stripe::{LOCALSTRIPE, Localstripe, unique_email};
use crate::support::webhooks::now;

async fn spawn(pool: PgPool, spec: Value, kafka: Option<&MockKafka>) -> TestApp {
    TestApp::spawn_settings(pool, one_policy(spec, kafka)).await
}

/// Delivers a signed event to the `default` policy's route.
async fn deliver(app: &TestApp, body: &str) {
    let response = deliver_to(app, "/webhooks/stripe", ALPHA_SECRET, body).await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// Inbound only: local customers stay unlinked unless an event links them.
async fn spawn_inbound(pool: PgPool, spec: Value, kafka: Option<&MockKafka>) -> TestApp {
    let mut settings = one_policy(spec, kafka);
    settings.outbound = None;
    TestApp::spawn_settings(pool, settings).await
}

async fn customer(app: &TestApp, id: &str) -> Value {
    app.get_customer(id).await.json().await.unwrap()
}

/// One event settles a conflict field by field: Stripe's name and `metadata.tier`, the local
/// email and `metadata.seats`; the local-won fields then go back to Stripe.
async fn conflicts_are_settled_field_by_field(pool: PgPool, kafka: Option<&MockKafka>) {
    let conflict = json!({"conflict": {"default": "LocalWins",
        "fields": {"name": "StripeWins", "metadata.tier": "StripeWins"}}});
    let app = spawn(pool, conflict, kafka).await;
    let email = unique_email("field-by-field");
    let stripe = Localstripe::new();
    let remote = stripe
        .create_customer(&[("email", &email), ("name", "Synced")])
        .await;
    let stripe_id = remote["id"].as_str().unwrap();
    let id = insert_linked_in(&app.pool, "default", &email, stripe_id).await;
    let local_email = unique_email("local-email");
    let patch = json!({"email": local_email, "name": "Local name",
        "metadata": {"tier": "silver", "seats": "3"}});
    // A local change the worker has not sent yet: Stripe is slow to answer it.
    sqlx::query("update customers set email = $2, name = 'Local name', metadata = $3, version = 2, sync_state = 'pending', updated_at = now() where id = $1::uuid")
        .bind(&id).bind(&local_email).bind(&patch["metadata"]).execute(&app.pool).await.unwrap();

    let stripe_email = unique_email("stripe-email");
    let fields = [
        ("email", stripe_email.as_str()),
        ("name", "Stripe name"),
        ("metadata[tier]", "gold"),
        ("metadata[seats]", "9"),
    ];
    let object = stripe.update_customer(stripe_id, &fields).await;
    deliver(
        &app,
        &event("evt_field_by_field", "customer.updated", now(), object),
    )
    .await;
    assert_eq!(processed(&app, "evt_field_by_field").await, "merged");

    let merged = wait_synced(&app, &id, 3).await;
    assert_eq!(merged["email"], local_email.as_str());
    assert_eq!(merged["name"], "Stripe name");
    assert_eq!(merged["metadata"], json!({"tier": "gold", "seats": "3"}));
    let in_stripe = stripe.customer(stripe_id).await.unwrap();
    assert_eq!(in_stripe["email"], local_email.as_str());
    assert_eq!(in_stripe["metadata"]["seats"], "3");
    app.stop().await;
}

/// LocalToStripe: a Stripe change is recorded and counted as drift, never applied; local
/// changes still go out.
async fn local_to_stripe_records_drift(pool: PgPool, kafka: Option<&MockKafka>) {
    let running = spawn(pool, json!({"direction": "LocalToStripe"}), kafka).await;
    let app = &running;
    let email = unique_email("one-way-out");
    let id = insert_linked_in(&app.pool, "default", &email, "cus_OneWayOut").await;
    let change = customer_object("cus_OneWayOut", &email, "Changed in Stripe");
    deliver(
        app,
        &event("evt_one_way_out", "customer.updated", now() + 60, change),
    )
    .await;
    assert_eq!(processed(app, "evt_one_way_out").await, "drift");
    assert_eq!(customer(app, &id).await["name"], "Synced");
    wait_metric(
        app,
        r#"paysync_inbound_events_total{policy="default",outcome="drift"}"#,
        1.0,
    )
    .await;
    let created = create_in(app, "default", &unique_email("still-out")).await;
    wait_synced(app, created["id"].as_str().unwrap(), 1).await;
    running.stop().await;
}

/// StripeToLocal: Stripe's customers come in; the API refuses writes to them (409) and
/// nothing is sent to Stripe.
async fn stripe_to_local_is_read_only_in_the_api(pool: PgPool, kafka: Option<&MockKafka>) {
    let app = spawn(pool, json!({"direction": "StripeToLocal"}), kafka).await;
    let email = unique_email("one-way-in");
    let refused = app.post_customer(&json!({"email": email})).await;
    assert_eq!(
        error_code(refused, StatusCode::CONFLICT).await,
        "policy_read_only"
    );

    let object = customer_object("cus_OneWayIn", &email, "From Stripe");
    deliver(
        &app,
        &event("evt_one_way_in", "customer.created", now(), object),
    )
    .await;
    assert_eq!(processed(&app, "evt_one_way_in").await, "adopted");
    let page = app
        .get_json(&format!("/v1/customers?email={}", urlencode(&email)))
        .await;
    let id = page["data"][0]["id"].as_str().unwrap().to_owned();
    let patch = app
        .patch_customer(&id, &json!({"name": "Local edit"}), None)
        .await;
    assert_eq!(
        error_code(patch, StatusCode::CONFLICT).await,
        "policy_read_only"
    );
    let delete = app.delete_customer(&id).await;
    assert_eq!(
        error_code(delete, StatusCode::CONFLICT).await,
        "policy_read_only"
    );
    assert_eq!(app.count("outbox").await, 0, "nothing queued for Stripe");
    app.stop().await;
}

/// Observe: local writes commit and wait as pending, nothing reaches Stripe, Stripe events
/// change no row, what would have happened is counted; Observe → Enforce sends what waited.
async fn observe_writes_nothing_until_enforce(pool: PgPool, kafka: Option<&MockKafka>) {
    let observe = |mode: &str| PolicyManifest {
        name: "default",
        api_base: LOCALSTRIPE,
        webhook_secret: ALPHA_SECRET,
        spec: json!({"mode": mode}),
    };
    let file = PolicyFile::new(&[observe("Observe")]);
    let app = spawn_with_file(pool, &file, kafka).await;
    let email = unique_email("observed");
    let created = create_in(&app, "default", &email).await;
    let id = created["id"].as_str().unwrap().to_owned();
    wait_metric(
        &app,
        r#"paysync_outbound_synced_total{policy="default",outcome="observed_create"}"#,
        1.0,
    )
    .await;
    assert_eq!(customer(&app, &id).await["sync"]["state"], "pending");
    assert!(
        Localstripe::new()
            .customers_with_email(&email)
            .await
            .is_empty()
    );

    let linked = insert_linked_in(
        &app.pool,
        "default",
        &unique_email("observed-in"),
        "cus_Observed",
    )
    .await;
    let change = customer_object("cus_Observed", "x@example.com", "Not applied");
    deliver(
        &app,
        &event("evt_observed", "customer.updated", now() + 60, change),
    )
    .await;
    assert_eq!(processed(&app, "evt_observed").await, "observed");
    assert_eq!(customer(&app, &linked).await["name"], "Synced");

    file.write(&[observe("Enforce")]);
    let synced = wait_synced(&app, &id, 1).await;
    assert!(synced["sync"]["stripe_id"].is_string());
    assert_eq!(
        Localstripe::new().customers_with_email(&email).await.len(),
        1
    );
    app.stop().await;
}

/// Orphan: a local delete leaves Stripe's customer (the row says `orphaned`); a Stripe delete
/// unlinks the local customer, which stays, `orphaned`.
async fn orphan_keeps_the_other_side(pool: PgPool, kafka: Option<&MockKafka>) {
    let app = spawn(pool, json!({"deletion": "Orphan"}), kafka).await;
    let created = create_in(&app, "default", &unique_email("orphan-local")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let synced = wait_synced(&app, &id, 1).await;
    let stripe_id = synced["sync"]["stripe_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.delete_customer(&id).await.status(),
        StatusCode::NO_CONTENT
    );
    wait_for("the local delete to be handled", DEADLINE, || async {
        match stored_state(&app.pool, &id).await {
            (state, _, true) if state == "orphaned" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        Localstripe::new().customer(&stripe_id).await.is_some(),
        "Stripe's customer stays"
    );

    let email = unique_email("orphan-stripe");
    let kept = insert_linked_in(&app.pool, "default", &email, "cus_OrphanMe").await;
    let gone = customer_object("cus_OrphanMe", &email, "Synced");
    deliver(&app, &event("evt_orphan", "customer.deleted", now(), gone)).await;
    assert_eq!(processed(&app, "evt_orphan").await, "orphaned");
    let kept = customer(&app, &kept).await;
    assert_eq!(kept["sync"]["state"], "orphaned");
    assert_eq!(kept["sync"]["stripe_id"], Value::Null);
    app.stop().await;
}

/// SoftDelete: a local delete marks the Stripe customer `paysync_deleted_at` instead of
/// deleting it; a Stripe delete soft-deletes locally.
async fn soft_delete_marks_stripe_instead_of_deleting(pool: PgPool, kafka: Option<&MockKafka>) {
    let app = spawn(pool, json!({"deletion": "SoftDelete"}), kafka).await;
    let created = create_in(&app, "default", &unique_email("soft")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let stripe_id = wait_synced(&app, &id, 1).await["sync"]["stripe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.delete_customer(&id).await.status(),
        StatusCode::NO_CONTENT
    );
    let marked = wait_for("the Stripe customer to be marked", DEADLINE, || async {
        let remote = Localstripe::new()
            .customer(&stripe_id)
            .await
            .ok_or("deleted in Stripe")?;
        match remote["metadata"]["paysync_deleted_at"].as_str() {
            Some(at) => Ok(at.to_owned()),
            None => Err(remote["metadata"].to_string()),
        }
    })
    .await;
    assert!(
        chrono::DateTime::parse_from_rfc3339(&marked).is_ok(),
        "{marked}"
    );

    let email = unique_email("soft-stripe");
    let local = insert_linked_in(&app.pool, "default", &email, "cus_SoftGone").await;
    let gone = customer_object("cus_SoftGone", &email, "Synced");
    deliver(
        &app,
        &event("evt_soft_gone", "customer.deleted", now(), gone),
    )
    .await;
    assert_eq!(processed(&app, "evt_soft_gone").await, "deleted");
    assert_eq!(
        app.get_customer(&local).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        stored_state(&app.pool, &local).await.2,
        "soft-deleted, still stored"
    );
    app.stop().await;
}

/// Adoption None counts unknown Stripe customers as drift; MatchEmail links by email and
/// never creates.
async fn adoption_none_and_match_email(pool: PgPool, kafka: Option<&MockKafka>) {
    let app = spawn_inbound(pool, json!({"adoption": "MatchEmail"}), kafka).await;
    let email = unique_email("match-me");
    let local = insert_local_only(&app.pool, &email).await;
    let unknown = unique_email("nobody-here");
    deliver(
        &app,
        &event(
            "evt_match",
            "customer.created",
            now(),
            customer_object("cus_MatchMe", &email, "Matched"),
        ),
    )
    .await;
    deliver(
        &app,
        &event(
            "evt_no_match",
            "customer.created",
            now(),
            customer_object("cus_NoMatch", &unknown, "Unknown"),
        ),
    )
    .await;
    assert_eq!(processed(&app, "evt_no_match").await, "not_adopted");
    processed(&app, "evt_match").await;
    let matched = customer(&app, &local).await;
    assert_eq!(matched["sync"]["stripe_id"], "cus_MatchMe");
    let page = app
        .get_json(&format!("/v1/customers?email={}", urlencode(&unknown)))
        .await;
    assert_eq!(page["data"], json!([]));
    app.stop().await;
}

async fn adoption_none_leaves_unknown_stripe_customers_alone(
    pool: PgPool,
    kafka: Option<&MockKafka>,
) {
    let app = spawn_inbound(pool, json!({"adoption": "None"}), kafka).await;
    let email = unique_email("not-adopted");
    let local = insert_local_only(&app.pool, &email).await;
    deliver(
        &app,
        &event(
            "evt_none",
            "customer.created",
            now(),
            customer_object("cus_None1", &email, "Same email"),
        ),
    )
    .await;
    assert_eq!(processed(&app, "evt_none").await, "not_adopted");
    let untouched = customer(&app, &local).await;
    assert_eq!(
        untouched["sync"]["stripe_id"],
        Value::Null,
        "not linked by email either"
    );
    assert_eq!(
        metric(
            &app,
            r#"paysync_inbound_events_total{policy="default",outcome="not_adopted"}"#
        )
        .await,
        1.0
    );
    app.stop().await;
}

/// Suspended: nothing is sent to Stripe and no event changes a row until unset.
async fn suspend_stops_all_sync(pool: PgPool, kafka: Option<&MockKafka>) {
    let app = spawn(pool, json!({"suspend": true}), kafka).await;
    let email = unique_email("suspended");
    let created = create_in(&app, "default", &email).await;
    let sample = r#"paysync_outbound_synced_total{policy="default",outcome="suspended"}"#;
    wait_metric(&app, sample, 1.0).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(customer(&app, id).await["sync"]["state"], "pending");
    assert!(
        Localstripe::new()
            .customers_with_email(&email)
            .await
            .is_empty()
    );
    let linked = insert_linked_in(
        &app.pool,
        "default",
        &unique_email("suspended-in"),
        "cus_Susp",
    )
    .await;
    let change = customer_object("cus_Susp", "s@example.com", "Not applied");
    deliver(
        &app,
        &event("evt_suspended", "customer.updated", now() + 60, change),
    )
    .await;
    assert_eq!(processed(&app, "evt_suspended").await, "suspended");
    assert_eq!(customer(&app, &linked).await["name"], "Synced");
    let policy = app.get_json("/v1/policies/default").await;
    assert_eq!(policy["readiness"]["reason"], "Suspended");
    app.stop().await;
}

/// Runs each scenario on both transports, as `<scenario>::postgres_transport` and
/// `<scenario>::kafka_transport` (librdkafka's mock cluster).
macro_rules! on_both_transports {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[sqlx::test]
            async fn postgres_transport(pool: PgPool) {
                super::$scenario(pool, None).await;
            }

            #[sqlx::test]
            async fn kafka_transport(pool: PgPool) {
                let kafka = MockKafka::start().await;
                super::$scenario(pool, Some(&kafka)).await;
            }
        }
    )*};
}

on_both_transports!(
    conflicts_are_settled_field_by_field,
    local_to_stripe_records_drift,
    stripe_to_local_is_read_only_in_the_api,
    observe_writes_nothing_until_enforce,
    orphan_keeps_the_other_side,
    soft_delete_marks_stripe_instead_of_deleting,
    adoption_none_and_match_email,
    adoption_none_leaves_unknown_stripe_customers_alone,
    suspend_stops_all_sync,
);
