//! Poison events: content paysync cannot apply (a NUL PostgreSQL cannot store, an invalid
//! email, an over-long name, no email, an id that is not a customer id) never stops the
//! inbound queue, on either transport, whether it came as a webhook or through catch-up. Each
//! is listed as a dead letter with its error; a normal change made afterwards is applied; a
//! replay after the cause is fixed in Stripe applies Stripe's current state.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, wait_for};
use crate::support::events::{
    customer_object, deliver_signed, event, inbound_app_settings, insert_linked, local_row,
    processed, replay, wait_listed,
};
use crate::support::mock_kafka::MockKafka;
use crate::support::stripe::{LOCALSTRIPE, Localstripe, WebhookEndpoint, unique_email};
use crate::support::webhooks::{SECRET, now};

const DEADLINE: Duration = Duration::from_secs(60);

async fn spawn(pool: PgPool, kafka: Option<&MockKafka>, catch_up: bool) -> TestApp {
    let mut settings = inbound_app_settings(kafka, Some(LOCALSTRIPE));
    if catch_up {
        settings.catch_up = Some(Duration::from_secs(1));
    }
    TestApp::spawn_settings(pool, settings).await
}

/// The open dead letter whose payload is an event about `stripe_id`, once there.
async fn letter_about(app: &TestApp, stripe_id: &str) -> Value {
    wait_for(
        &format!("a dead letter about {stripe_id}"),
        DEADLINE,
        || async {
            let letters = app.get_json("/v1/dead-letters?limit=500").await;
            letters["data"]
                .as_array()
                .and_then(|data| {
                    data.iter()
                        .find(|l| l["payload"]["data"]["object"]["id"] == stripe_id)
                })
                .cloned()
                .ok_or_else(|| letters.to_string())
        },
    )
    .await
}

/// The open dead letter with this key.
async fn letter_with_key(app: &TestApp, key: &str) -> Value {
    let letters = app.get_json("/v1/dead-letters?limit=500").await;
    letters["data"]
        .as_array()
        .and_then(|data| data.iter().find(|l| l["key"] == key))
        .cloned()
        .unwrap_or_else(|| panic!("no dead letter {key} in {letters}"))
}

/// Signed deliveries of every poison shape, each followed by the error it must be listed with.
fn poison_deliveries(linked_email: &str) -> Vec<(&'static str, String, &'static str)> {
    let long_name = "n".repeat(5000);
    vec![
        (
            "evt_poison_nul_name",
            event(
                "evt_poison_nul_name",
                "customer.updated",
                now(),
                customer_object("cus_PoisonLinked", linked_email, "Ada\u{0}Lovelace"),
            ),
            "name: must not contain control characters",
        ),
        (
            "evt_poison_bad_email",
            event(
                "evt_poison_bad_email",
                "customer.created",
                now(),
                customer_object("cus_PoisonEmail", "not-an-email", "Bad email"),
            ),
            "email: is not a valid address",
        ),
        (
            "evt_poison_long_name",
            event(
                "evt_poison_long_name",
                "customer.created",
                now(),
                customer_object("cus_PoisonLong", &unique_email("poison-long"), &long_name),
            ),
            "name: must be at most 256 characters",
        ),
        (
            "evt_poison_no_email",
            event(
                "evt_poison_no_email",
                "customer.created",
                now(),
                json!({"id": "cus_PoisonNoEmail", "object": "customer", "email": null,
                       "name": "Guest", "metadata": {}}),
            ),
            "has no email",
        ),
        (
            "evt_poison_bad_id",
            event(
                "evt_poison_bad_id",
                "customer.updated",
                now(),
                json!({"id": "cus_\u{0}", "object": "customer", "email": "x@example.com"}),
            ),
            "data.object.id",
        ),
    ]
}

async fn poison_never_blocks_the_queue(app: &TestApp) {
    let endpoint = WebhookEndpoint::register(&app.url("/webhooks/stripe"), SECRET).await;
    let stripe = Localstripe::new();
    // The reported trigger: a NUL in a metadata value, made in Stripe itself.
    let nul_email = unique_email("poison-nul-meta");
    let nul = stripe
        .create_customer(&[("email", &nul_email), ("metadata[k]", "a\u{0}b")])
        .await;
    let nul_id = nul["id"].as_str().unwrap().to_owned();
    let linked_email = unique_email("poison-linked");
    let linked = insert_linked(&app.pool, &linked_email, "Before", "cus_PoisonLinked").await;
    let poisons = poison_deliveries(&linked_email);
    for (_, body, _) in &poisons {
        deliver_signed(app, body).await;
    }

    // A normal change made afterwards is applied.
    let after_email = unique_email("after-poison");
    stripe
        .create_customer(&[("email", &after_email), ("name", "After the poison")])
        .await;
    wait_listed(app, &after_email, |c| c["name"] == "After the poison").await;

    // Every poison is listed with its error; nothing of it was applied.
    let nul_letter = letter_about(app, &nul_id).await;
    assert!(
        nul_letter["error"]
            .as_str()
            .unwrap()
            .contains("metadata.k: values must not contain control characters"),
        "{nul_letter}"
    );
    assert_eq!(
        nul_letter["payload"]["data"]["object"]["metadata"]["k"],
        "a\u{0}b"
    );
    for (event_id, _, error) in &poisons {
        assert_eq!(
            processed(app, event_id).await,
            "dead_lettered",
            "{event_id}"
        );
        let letter = letter_with_key(app, event_id).await;
        assert_eq!(letter["source"], "inbound");
        assert!(
            letter["error"].as_str().unwrap().contains(error),
            "{event_id}: {letter}"
        );
    }
    assert_eq!(
        local_row(&app.pool, &linked).await,
        (Some("Before".to_owned()), 1, false)
    );
    let adopted: i64 = sqlx::query_scalar(
        "select count(*) from customers where stripe_id like 'cus_Poison%' or email = $1",
    )
    .bind(&nul_email)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(adopted, 1, "only the linked customer, unchanged");

    // The cause is fixed in Stripe while no webhook reaches paysync; the replay applies
    // what Stripe holds now, not the old payload.
    endpoint.unregister().await;
    stripe
        .update_customer(&nul_id, &[("metadata[k]", "fixed"), ("name", "Fixed")])
        .await;
    assert_eq!(replay(app, &nul_letter).await, StatusCode::ACCEPTED);
    let fixed = wait_listed(app, &nul_email, |c| c["name"] == "Fixed").await;
    assert_eq!(fixed["metadata"], json!({"k": "fixed"}));
    assert_eq!(fixed["sync"]["stripe_id"], nul_id.as_str());
    let replayed = app.get_json("/v1/dead-letters?limit=500").await;
    assert!(
        !replayed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == nul_letter["id"]),
        "a replayed letter is no longer open: {replayed}"
    );
}

#[sqlx::test]
async fn poison_never_blocks_the_queue_postgres_transport(pool: PgPool) {
    let app = spawn(pool, None, false).await;
    poison_never_blocks_the_queue(&app).await;
    app.stop().await;
}

#[sqlx::test]
async fn poison_never_blocks_the_queue_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = spawn(pool, Some(&kafka), false).await;
    poison_never_blocks_the_queue(&app).await;
    app.stop().await;
}

/// Completed catch-up runs so far.
async fn catch_up_runs(app: &TestApp) -> u64 {
    app.metrics_text()
        .await
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"paysync_catch_up_runs_total{policy="default",outcome="done"} "#)
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_default()
}

/// Catch-up finds a poison event that never came as a webhook, dead-letters it, applies what
/// came after it, and does not queue it again on later runs.
async fn caught_up_poison_is_dead_lettered_once(app: &TestApp) {
    wait_for("the first catch-up run", DEADLINE, || async {
        match catch_up_runs(app).await {
            0 => Err("no run yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let stripe = Localstripe::new();
    let nul_email = unique_email("caught-up-nul");
    let nul = stripe
        .create_customer(&[("email", &nul_email), ("name", "Nul\u{0}Name")])
        .await;
    let nul_id = nul["id"].as_str().unwrap().to_owned();
    let after_email = unique_email("caught-up-after");
    stripe
        .create_customer(&[("email", &after_email), ("name", "Caught up")])
        .await;
    wait_listed(app, &after_email, |c| c["name"] == "Caught up").await;
    let letter = letter_about(app, &nul_id).await;
    assert!(
        letter["error"].as_str().unwrap().contains("name"),
        "{letter}"
    );
    let event_id = letter["key"].as_str().unwrap().to_owned();

    // Two more complete runs read the same window (they overlap by a minute).
    let runs = catch_up_runs(app).await;
    wait_for("two more catch-up runs", DEADLINE, || async {
        let now = catch_up_runs(app).await;
        if now >= runs + 2 {
            Ok(())
        } else {
            Err(format!("{now} runs"))
        }
    })
    .await;
    let (outcome, letters, attempts): (Option<String>, i64, i32) = sqlx::query_as(
        "select (select outcome from processed_events where event_id = $1), \
                (select count(*) from dead_letters where key = $1), \
                (select attempts from dead_letters where key = $1)",
    )
    .bind(&event_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(outcome.as_deref(), Some("dead_lettered"));
    assert_eq!((letters, attempts), (1, 1), "queued again by a later run");
}

#[sqlx::test]
async fn caught_up_poison_is_dead_lettered_once_postgres_transport(pool: PgPool) {
    let app = spawn(pool, None, true).await;
    caught_up_poison_is_dead_lettered_once(&app).await;
    app.stop().await;
}

#[sqlx::test]
async fn caught_up_poison_is_dead_lettered_once_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = spawn(pool, Some(&kafka), true).await;
    caught_up_poison_is_dead_lettered_once(&app).await;
    app.stop().await;
}

/// A queue that does not move shows in `/readyz` and the metrics (here: the inbound worker
/// is off, so queued events wait), while readiness itself stays up.
#[sqlx::test]
async fn a_stuck_queue_shows_its_age_in_readiness_and_metrics(pool: PgPool) {
    let mut settings = inbound_app_settings(None, None);
    settings.inbound = None;
    let app = TestApp::spawn_settings(pool, settings).await;
    let body = event(
        "evt_stuck_1",
        "customer.created",
        now(),
        customer_object("cus_Stuck1", &unique_email("stuck"), "Waiting"),
    );
    deliver_signed(&app, &body).await;
    app.create_customer(&unique_email("stuck-local")).await;
    let queues = wait_for("both queues older than 2 s", DEADLINE, || async {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        let old = |field: &str| body["queues"][field].as_f64().is_some_and(|age| age >= 2.0);
        if status == StatusCode::OK
            && old("inbound_oldest_pending_seconds")
            && old("outbound_oldest_pending_seconds")
        {
            Ok(body["queues"].clone())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    assert_eq!(queues["dead_letters_open"], 0);
    let metrics = app.metrics_text().await;
    for gauge in [
        "paysync_inbound_oldest_pending_seconds",
        "paysync_outbound_oldest_pending_seconds",
    ] {
        let age: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{gauge} ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {gauge} in {metrics}"));
        assert!(age >= 2.0, "{gauge} = {age}");
    }
    app.stop().await;
}

/// Should the database refuse even the dead letter (here a constraint added by the test makes
/// it), the event is set aside (marked, counted, logged) and the queue still moves on.
async fn a_refused_dead_letter_still_sets_the_event_aside(app: &TestApp) {
    sqlx::query("alter table dead_letters add constraint refuse_one check (key <> 'evt_refused')")
        .execute(&app.pool)
        .await
        .unwrap();
    let poison = event(
        "evt_refused",
        "customer.created",
        now(),
        customer_object("cus_Refused", "not-an-email", "Refused"),
    );
    deliver_signed(app, &poison).await;
    let after_email = unique_email("after-refused");
    let after = event(
        "evt_after_refused",
        "customer.created",
        now(),
        customer_object("cus_AfterRefused", &after_email, "After"),
    );
    deliver_signed(app, &after).await;
    assert_eq!(processed(app, "evt_after_refused").await, "adopted");
    assert_eq!(processed(app, "evt_refused").await, "set_aside");
    let letters: i64 = sqlx::query_scalar("select count(*) from dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(letters, 0);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"paysync_set_aside_total{source="inbound",policy="default"} 1"#),
        "{metrics}"
    );
}

#[sqlx::test]
async fn a_refused_dead_letter_still_sets_the_event_aside_postgres_transport(pool: PgPool) {
    let app = spawn(pool, None, false).await;
    a_refused_dead_letter_still_sets_the_event_aside(&app).await;
    app.stop().await;
}

#[sqlx::test]
async fn a_refused_dead_letter_still_sets_the_event_aside_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = spawn(pool, Some(&kafka), false).await;
    a_refused_dead_letter_still_sets_the_event_aside(&app).await;
    app.stop().await;
}
