//! Stripe → PostgreSQL: events applied through the inbox (PostgreSQL transport) and through
//! Kafka (librdkafka's mock cluster in another process), with dedup, ordering, echo
//! suppression, conflicts, linking, dead letters and catch-up.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, inbound_settings, syncing_settings, wait_for, with_webhooks};
use crate::support::customers::wait_synced;
use crate::support::events::{
    DEADLINE, an_event_waits_for_a_sync_in_flight, customer_object, deliver_signed, event,
    inbound_app_settings, insert_linked, local_row, processed, replay, wait_listed,
};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::mock_kafka::MockKafka;
use crate::support::stripe::{LOCALSTRIPE, Localstripe, WebhookEndpoint, unique_email};
use crate::support::webhooks::{SECRET, deliver, now, signature};

async fn spawn(pool: PgPool, kafka: Option<&MockKafka>, stripe: Option<&str>) -> TestApp {
    TestApp::spawn_settings(pool, inbound_app_settings(kafka, stripe)).await
}

/// The inbox workers' common batch only tries a customer's sync lock; on finding it held, the
/// events are claimed again and the general path waits for the sync.
#[sqlx::test]
async fn a_queued_event_waits_for_its_customers_sync_in_flight(pool: PgPool) {
    let app = spawn(pool, None, None).await;
    an_event_waits_for_a_sync_in_flight(&app).await;
    app.stop().await;
}

/// An event that fails inside an inbox worker's common batch (a linked customer's new email
/// is another customer's) rolls the batch back; the events are claimed again, the rest of
/// the batch is applied and the failing one dead-lettered, each once.
#[sqlx::test]
async fn a_failure_in_an_inbox_batch_dead_letters_that_event_and_applies_the_rest(pool: PgPool) {
    let renamed = insert_linked(&pool, "renamed@example.com", "Before", "cus_Renamed").await;
    let clashing = insert_linked(&pool, "clashing@example.com", "Before", "cus_Clashing").await;
    insert_linked(&pool, "taken@example.com", "Holder", "cus_Holder").await;
    let updated = |id, object| (id, "customer.updated", now(), object);
    let events = [
        updated(
            "evt_batch_good",
            customer_object("cus_Renamed", "renamed@example.com", "After"),
        ),
        updated(
            "evt_batch_bad",
            customer_object("cus_Clashing", "taken@example.com", "After"),
        ),
    ];
    queue_before_start(&pool, &events).await;
    let app = spawn(pool.clone(), None, None).await;
    assert_eq!(processed(&app, "evt_batch_good").await, "applied");
    assert_eq!(processed(&app, "evt_batch_bad").await, "dead_lettered");
    assert_eq!(
        local_row(&pool, &renamed).await,
        (Some("After".to_owned()), 2, false)
    );
    assert_eq!(
        local_row(&pool, &clashing).await,
        (Some("Before".to_owned()), 1, false)
    );
    let letters: i64 =
        sqlx::query_scalar("select count(*) from dead_letters where key = 'evt_batch_bad'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(letters, 1);
    app.stop().await;
}

/// Events put in the inbox in this order before any worker starts, so one batch claims them
/// all: `(event id, type, created, customer object)`.
async fn queue_before_start(pool: &PgPool, events: &[(&str, &str, i64, Value)]) {
    for (id, kind, created, object) in events {
        sqlx::query(
            "insert into processed_events (event_id, type, stripe_customer_id, payload) \
             values ($1, $2, $3, $4::json)",
        )
        .bind(id)
        .bind(kind)
        .bind(object["id"].as_str().unwrap())
        .bind(event(id, kind, *created, object.clone()))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// A batch of new Stripe customers is adopted together, and a new customer's later update in
/// the same batch is applied to it, as one event at a time would.
#[sqlx::test]
async fn new_customers_in_one_batch_are_adopted_and_their_later_events_applied(pool: PgPool) {
    let at = now() - 60;
    let created = |id, object| (id, "customer.created", at, object);
    let events = [
        created(
            "evt_new_a",
            customer_object("cus_NewA", "a@example.com", "A"),
        ),
        created(
            "evt_new_b",
            customer_object("cus_NewB", "b@example.com", "B"),
        ),
        (
            "evt_new_a_later",
            "customer.updated",
            at + 1,
            customer_object("cus_NewA", "a@example.com", "A later"),
        ),
    ];
    queue_before_start(&pool, &events).await;
    let app = spawn(pool.clone(), None, None).await;
    let outcomes = [
        ("evt_new_a", "adopted"),
        ("evt_new_b", "adopted"),
        ("evt_new_a_later", "applied"),
    ];
    for (id, outcome) in outcomes {
        assert_eq!(processed(&app, id).await, outcome, "{id}");
    }
    let rows: Vec<(String, Option<String>, String, i64)> = sqlx::query_as(
        "select stripe_id, name, sync_state, version from customers order by stripe_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |stripe: &str, name: &str, version| {
        (
            stripe.to_owned(),
            Some(name.to_owned()),
            "synced".to_owned(),
            version,
        )
    };
    assert_eq!(
        rows,
        [row("cus_NewA", "A later", 2), row("cus_NewB", "B", 1)]
    );
    app.stop().await;
}

/// The batched adoption failing (a live customer took one of the emails after the batch
/// checked them: here a trigger inserts it, once, just before the insert) rolls the batch
/// back; its events are applied one at a time, each once, and none is lost.
#[sqlx::test]
async fn a_failed_batched_adoption_is_applied_one_at_a_time(pool: PgPool) {
    sqlx::raw_sql(
        "create sequence race_once; \
         create function take_the_email() returns trigger language plpgsql as $$ \
         begin \
           if new.stripe_id = 'cus_Raced' and nextval('race_once') = 1 then \
             insert into customers (id, email) values (gen_random_uuid(), new.email); \
           end if; \
           return new; \
         end $$; \
         create trigger take_the_email before insert on customers \
         for each row execute function take_the_email();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let at = now() - 60;
    let events = [
        (
            "evt_raced",
            "customer.created",
            at,
            customer_object("cus_Raced", "raced@example.com", "Raced"),
        ),
        (
            "evt_calm",
            "customer.created",
            at,
            customer_object("cus_Calm", "calm@example.com", "Calm"),
        ),
    ];
    queue_before_start(&pool, &events).await;
    let app = spawn(pool.clone(), None, None).await;
    assert_eq!(processed(&app, "evt_raced").await, "adopted");
    assert_eq!(processed(&app, "evt_calm").await, "adopted");
    let tries: i64 = sqlx::query_scalar("select last_value from race_once")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(tries >= 2, "the batched insert was never retried ({tries})");
    let adopted: Vec<String> =
        sqlx::query_scalar("select stripe_id from customers order by stripe_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(adopted, ["cus_Calm", "cus_Raced"]);
    app.stop().await;
}

/// Two new Stripe customers of one batch with one email (in different case): one is adopted,
/// the other dead-lettered (paysync links one local customer to one Stripe customer).
#[sqlx::test]
async fn of_two_new_customers_with_one_email_one_is_adopted(pool: PgPool) {
    let at = now() - 60;
    let events = [
        (
            "evt_twin_1",
            "customer.created",
            at,
            customer_object("cus_Twin1", "twin@example.com", "One"),
        ),
        (
            "evt_twin_2",
            "customer.created",
            at,
            customer_object("cus_Twin2", "TWIN@example.com", "Two"),
        ),
    ];
    queue_before_start(&pool, &events).await;
    let app = spawn(pool.clone(), None, None).await;
    let mut outcomes = [
        processed(&app, "evt_twin_1").await,
        processed(&app, "evt_twin_2").await,
    ];
    outcomes.sort();
    assert_eq!(outcomes, ["adopted", "dead_lettered"]);
    let customers: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(customers, 1);
    app.stop().await;
}

/// Customers created, updated and deleted directly in localstripe appear, change and
/// disappear in PostgreSQL and in the API.
async fn stripe_changes_reach_postgres(app: &TestApp) {
    let endpoint = WebhookEndpoint::register(&app.url("/webhooks/stripe"), SECRET).await;
    let stripe = Localstripe::new();
    let email = unique_email("made-in-stripe");
    let created = stripe
        .create_customer(&[("email", &email), ("name", "Made in Stripe")])
        .await;
    let stripe_id = created["id"].as_str().unwrap().to_owned();
    let adopted = wait_listed(app, &email, |c| {
        c["sync"]["stripe_id"] == stripe_id.as_str()
    })
    .await;
    assert_eq!(adopted["name"], "Made in Stripe");
    assert_eq!(adopted["sync"]["state"], "synced");
    let id = adopted["id"].as_str().unwrap().to_owned();

    stripe
        .update_customer(
            &stripe_id,
            &[("name", "Renamed in Stripe"), ("metadata[tier]", "gold")],
        )
        .await;
    let updated = wait_listed(app, &email, |c| c["name"] == "Renamed in Stripe").await;
    assert_eq!(updated["metadata"], json!({"tier": "gold"}));
    assert_eq!(updated["version"], 2);

    stripe.delete_customer(&stripe_id).await;
    wait_for("the customer to be deleted locally", DEADLINE, || async {
        match app.get_customer(&id).await.status() {
            StatusCode::NOT_FOUND => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    let (_, _, deleted) = local_row(&app.pool, &id).await;
    assert!(deleted);
    let outbox: i64 =
        sqlx::query_scalar("select count(*) from outbox where customer_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(outbox, 0, "changes from Stripe are never pushed back");
    endpoint.unregister().await;
}

#[sqlx::test]
async fn stripe_changes_reach_postgres_postgres_transport(pool: PgPool) {
    let app = spawn(pool, None, Some(LOCALSTRIPE)).await;
    stripe_changes_reach_postgres(&app).await;
    app.stop().await;
}

#[sqlx::test]
async fn stripe_changes_reach_postgres_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = spawn(pool, Some(&kafka), Some(LOCALSTRIPE)).await;
    stripe_changes_reach_postgres(&app).await;
    app.stop().await;
}

/// The same delivery five times is applied once; an older event after a newer one changes
/// nothing.
async fn duplicates_and_stale_events_change_nothing(app: &TestApp) {
    let email = unique_email("dedup");
    let id = insert_linked(&app.pool, &email, "Original", "cus_Dedup1").await;
    let t = now();
    let newer = event(
        "evt_dedup_newer",
        "customer.updated",
        t,
        customer_object("cus_Dedup1", &email, "Newer"),
    );
    for _ in 0..5 {
        deliver_signed(app, &newer).await;
    }
    assert_eq!(processed(app, "evt_dedup_newer").await, "applied");
    let older = event(
        "evt_dedup_older",
        "customer.updated",
        t - 10,
        customer_object("cus_Dedup1", &email, "Older"),
    );
    deliver_signed(app, &older).await;
    assert_eq!(processed(app, "evt_dedup_older").await, "stale");
    // A redelivery of the newer event after all that is still a no-op.
    deliver_signed(app, &newer).await;
    let marker = event(
        "evt_dedup_marker",
        "customer.updated",
        t,
        customer_object("cus_Dedup1", &email, "Newer"),
    );
    deliver_signed(app, &marker).await;
    assert_eq!(processed(app, "evt_dedup_marker").await, "no_change");

    assert_eq!(
        local_row(&app.pool, &id).await,
        (Some("Newer".to_owned()), 2, false),
        "applied exactly once, never regressed"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"paysync_inbound_events_total{policy="default",outcome="stale"} 1"#),
        "{metrics}"
    );
}

#[sqlx::test]
async fn duplicates_and_stale_events_change_nothing_postgres_transport(pool: PgPool) {
    let app = spawn(pool, None, None).await;
    duplicates_and_stale_events_change_nothing(&app).await;
    // The inbox stores a redelivery once: the worker never sees it.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from processed_events where event_id = 'evt_dedup_newer'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    app.stop().await;
}

#[sqlx::test]
async fn duplicates_and_stale_events_change_nothing_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = spawn(pool, Some(&kafka), None).await;
    duplicates_and_stale_events_change_nothing(&app).await;
    // Every Kafka redelivery reached the worker and was recognised.
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"paysync_inbound_events_total{policy="default",outcome="duplicate"} 5"#),
        "{metrics}"
    );
    app.stop().await;
}

/// Two events in the same second: their order is unknown, so Stripe's current state wins.
#[sqlx::test]
async fn a_same_second_tie_ends_in_stripes_current_state(pool: PgPool) {
    let app = spawn(pool, None, Some(LOCALSTRIPE)).await;
    let stripe = Localstripe::new();
    let email = unique_email("tie");
    let remote = stripe
        .create_customer(&[("email", &email), ("name", "What Stripe holds")])
        .await;
    let stripe_id = remote["id"].as_str().unwrap();
    let id = insert_linked(&app.pool, &email, "Local", stripe_id).await;
    let t = now();
    let first = event(
        "evt_tie_1",
        "customer.updated",
        t,
        customer_object(stripe_id, &email, "First of the second"),
    );
    deliver_signed(&app, &first).await;
    assert_eq!(processed(&app, "evt_tie_1").await, "applied");
    let second = event(
        "evt_tie_2",
        "customer.updated",
        t,
        customer_object(stripe_id, &email, "Second of the second"),
    );
    deliver_signed(&app, &second).await;
    assert_eq!(processed(&app, "evt_tie_2").await, "applied");
    let (name, version, _) = local_row(&app.pool, &id).await;
    assert_eq!(name.as_deref(), Some("What Stripe holds"));
    assert_eq!(version, 3);
    app.stop().await;
}

/// A REST change travels to Stripe and its webhook comes back: nothing changes locally and
/// Stripe is written exactly once per local write.
#[sqlx::test]
async fn paysync_own_changes_coming_back_are_not_applied_again(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    let mut settings = with_webhooks(syncing_settings(&proxy.base_url));
    settings.inbound = Some(inbound_settings());
    let app = TestApp::spawn_settings(pool, settings).await;
    let endpoint = WebhookEndpoint::register(&app.url("/webhooks/stripe"), SECRET).await;

    let email = unique_email("echo");
    let created = app
        .post_customer(&json!({"email": email, "name": "v1"}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stripe_id = wait_synced(&app, &id, 1).await["sync"]["stripe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for version in 2..=4 {
        let patch =
            json!({"name": format!("v{version}"), "metadata": {"step": version.to_string()}});
        assert_eq!(
            app.patch_customer(&id, &patch, None).await.status(),
            StatusCode::OK
        );
        wait_synced(&app, &id, version).await;
    }
    // Four writes to Stripe, four events back (created, three updates); wait for them all.
    let echoes = wait_for("the four echoes to be processed", DEADLINE, || async {
        let outcomes: Vec<String> = sqlx::query_scalar(
            "select outcome from processed_events where stripe_customer_id = $1 \
             and processed_at is not null",
        )
        .bind(&stripe_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if outcomes.len() >= 4 {
            Ok(outcomes)
        } else {
            Err(format!("{outcomes:?}"))
        }
    })
    .await;
    for outcome in &echoes {
        assert!(
            ["echo", "no_change", "stale", "superseded"].contains(&outcome.as_str()),
            "an echo was taken for a change: {echoes:?}"
        );
    }
    let customer: Value = app.get_customer(&id).await.json().await.unwrap();
    assert_eq!(customer["version"], 4, "the echoes changed nothing locally");
    assert_eq!(customer["name"], "v4");
    assert_eq!(customer["sync"]["state"], "synced");
    let local_writes = app.outbox_of(&id).await.len();
    let stripe_writes = proxy
        .recorded()
        .await
        .iter()
        .filter(|r| r.method != "GET" && r.path.starts_with("/v1/customers"))
        .count();
    assert_eq!(local_writes, 4);
    assert_eq!(
        stripe_writes, local_writes,
        "one Stripe write per local write"
    );
    endpoint.unregister().await;
    app.stop().await;
}

/// Both sides changed: the later change wins; a losing Stripe change is overwritten by the
/// local change's pending sync.
#[sqlx::test]
async fn conflicts_go_to_the_newest_change(pool: PgPool) {
    let app = spawn(pool, None, None).await;
    let email = unique_email("conflict");
    let id = insert_linked(&app.pool, &email, "Synced", "cus_Conflict1").await;
    let patched = app
        .patch_customer(&id, &json!({"name": "Local change"}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK);

    let older_stripe_change = event(
        "evt_conflict_older",
        "customer.updated",
        now() - 30,
        customer_object("cus_Conflict1", &email, "Older Stripe change"),
    );
    deliver_signed(&app, &older_stripe_change).await;
    assert_eq!(processed(&app, "evt_conflict_older").await, "kept_local");
    assert_eq!(
        local_row(&app.pool, &id).await,
        (Some("Local change".to_owned()), 2, false)
    );
    assert_eq!(
        app.outbox_of(&id).await,
        [("update".to_owned(), 2)],
        "the pending sync corrects Stripe; nothing more is queued"
    );

    let newer_stripe_change = event(
        "evt_conflict_newer",
        "customer.updated",
        now() + 30,
        customer_object("cus_Conflict1", &email, "Newer Stripe change"),
    );
    deliver_signed(&app, &newer_stripe_change).await;
    assert_eq!(processed(&app, "evt_conflict_newer").await, "applied");
    let customer: Value = app.get_customer(&id).await.json().await.unwrap();
    assert_eq!(customer["name"], "Newer Stripe change");
    assert_eq!(customer["version"], 3);
    assert_eq!(customer["sync"]["state"], "synced");
    app.stop().await;
}

/// A customer created in Stripe with the email of an unlinked local customer is linked to
/// it, not adopted twice; one whose email belongs to a customer linked elsewhere is
/// dead-lettered (never a 500), and replays once the cause is fixed.
#[sqlx::test]
async fn emails_link_and_conflicting_emails_are_dead_lettered(pool: PgPool) {
    let app = spawn(pool, None, None).await;
    let email = unique_email("link");
    let local = app.create_customer(&email).await;
    let id = local["id"].as_str().unwrap().to_owned();
    let created = event(
        "evt_link_1",
        "customer.created",
        now(),
        customer_object("cus_LinkMe", &email.to_uppercase(), "From the Dashboard"),
    );
    deliver_signed(&app, &created).await;
    processed(&app, "evt_link_1").await;
    let customers: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(customers, 1, "linked, not adopted");
    let customer: Value = app.get_customer(&id).await.json().await.unwrap();
    assert_eq!(customer["sync"]["stripe_id"], "cus_LinkMe");

    let duplicate = event(
        "evt_link_2",
        "customer.created",
        now(),
        customer_object("cus_Duplicate", &email, "Same email again"),
    );
    deliver_signed(&app, &duplicate).await;
    assert_eq!(processed(&app, "evt_link_2").await, "dead_lettered");
    let letters = app.get_json("/v1/dead-letters").await;
    let letter = &letters["data"][0];
    assert_eq!(letter["source"], "inbound");
    assert_eq!(letter["key"], "evt_link_2");
    assert!(
        letter["error"].as_str().unwrap().contains("cus_LinkMe"),
        "{letter}"
    );

    // The cause is fixed (the local customer is deleted); the replay adopts the new one.
    assert_eq!(
        app.delete_customer(&id).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(replay(&app, letter).await, StatusCode::ACCEPTED);
    assert_eq!(processed(&app, "evt_link_2").await, "adopted");
    let adopted = wait_listed(&app, &email, |c| c["sync"]["stripe_id"] == "cus_Duplicate").await;
    assert_eq!(adopted["name"], "Same email again");
    app.stop().await;
}

/// Kafka down: the ingress answers 503; Stripe's retry is accepted once Kafka is back and
/// applied once. A message paysync cannot read is dead-lettered and the partition moves on.
#[sqlx::test]
async fn with_kafka_down_stripe_retries_and_the_event_is_applied_once(pool: PgPool) {
    let mut kafka = MockKafka::start().await;
    kafka.produce("paysync.inbound", "not an envelope").await;
    let app = spawn(pool, Some(&kafka), None).await;
    let email = unique_email("outage");
    let id = insert_linked(&app.pool, &email, "Before", "cus_Outage1").await;

    kafka.all_down().await;
    let body = event(
        "evt_outage_1",
        "customer.updated",
        now(),
        customer_object("cus_Outage1", &email, "After"),
    );
    let refused = deliver(&app, &body, Some(&signature(SECRET, now(), &body))).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    kafka.all_up().await;
    deliver_signed(&app, &body).await;
    assert_eq!(processed(&app, "evt_outage_1").await, "applied");
    assert_eq!(
        local_row(&app.pool, &id).await,
        (Some("After".to_owned()), 2, false)
    );
    let letters = wait_for("the unreadable message dead-lettered", DEADLINE, || async {
        let letters = app.get_json("/v1/dead-letters").await;
        match letters["data"].as_array() {
            Some(data) if !data.is_empty() => Ok(data.clone()),
            _ => Err(letters.to_string()),
        }
    })
    .await;
    assert_eq!(letters[0]["source"], "inbound");
    assert!(
        letters[0]["key"]
            .as_str()
            .unwrap()
            .starts_with("paysync.inbound/")
    );
    app.stop().await;
}

/// Events never delivered as webhooks (no endpoint registered) are found through the Events
/// API and applied.
#[sqlx::test]
async fn catch_up_applies_events_that_never_arrived_as_webhooks(pool: PgPool) {
    let mut settings = inbound_app_settings(None, Some(LOCALSTRIPE));
    settings.catch_up = Some(Duration::from_secs(1));
    let app = TestApp::spawn_settings(pool, settings).await;
    // The first run sets the cursor at "now"; what happens after it is caught up.
    wait_for("the catch-up cursor", DEADLINE, || async {
        let cursors: i64 = sqlx::query_scalar("select count(*) from sync_cursors")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if cursors == 1 {
            Ok(())
        } else {
            Err("no cursor yet".to_owned())
        }
    })
    .await;
    let stripe = Localstripe::new();
    let email = unique_email("caught-up");
    let created = stripe
        .create_customer(&[("email", &email), ("name", "Missed webhook")])
        .await;
    let stripe_id = created["id"].as_str().unwrap().to_owned();
    stripe
        .update_customer(&stripe_id, &[("name", "Missed twice")])
        .await;
    let adopted = wait_listed(&app, &email, |c| c["name"] == "Missed twice").await;
    assert_eq!(adopted["sync"]["stripe_id"], stripe_id.as_str());
    // The count is taken once the run's cursor is saved, just after its events are queued.
    wait_for(
        "catch-up to count the create and the update",
        DEADLINE,
        || async {
            let metrics = app.metrics_text().await;
            let found: u64 = metrics
                .lines()
                .find_map(|line| {
                    line.strip_prefix(
                        r#"paysync_catch_up_events_total{policy="default",outcome="queued"} "#,
                    )
                })
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or_default();
            if found >= 2
                && metrics
                    .contains(r#"paysync_catch_up_runs_total{policy="default",outcome="done"}"#)
            {
                Ok(())
            } else {
                Err(format!("{found} events counted"))
            }
        },
    )
    .await;
    app.stop().await;
}

/// Stripe down while an event's order is in doubt: the event is retried a bounded number of
/// times, then dead-lettered with its error (the worker moves on); replayed once Stripe is
/// back, it ends in Stripe's current state.
#[sqlx::test]
async fn stripe_down_during_a_refetch_dead_letters_then_replays(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    let mut settings = inbound_app_settings(None, Some(&proxy.base_url));
    settings.stripe_calls.max_attempts = 2;
    let app = TestApp::spawn_settings(pool, settings).await;
    let stripe = Localstripe::new();
    let email = unique_email("refetch-down");
    let remote = stripe
        .create_customer(&[("email", &email), ("name", "Current in Stripe")])
        .await;
    let stripe_id = remote["id"].as_str().unwrap();
    let id = insert_linked(&app.pool, &email, "Local", stripe_id).await;
    let t = now();
    sqlx::query("update customers set stripe_event_at = to_timestamp($2) where id = $1::uuid")
        .bind(&id)
        .bind(t as f64)
        .execute(&app.pool)
        .await
        .unwrap();

    proxy.set_plan(vec![Some(Fault::Status(500))]).await;
    let tied = event(
        "evt_refetch_down",
        "customer.updated",
        t,
        customer_object(stripe_id, &email, "Same second"),
    );
    deliver_signed(&app, &tied).await;
    assert_eq!(processed(&app, "evt_refetch_down").await, "dead_lettered");
    let letters = app.get_json("/v1/dead-letters").await;
    let letter = &letters["data"][0];
    assert_eq!(letter["key"], "evt_refetch_down");
    assert_eq!(letter["attempts"], 5);
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("retrieve_customer"),
        "{letter}"
    );
    assert_eq!(local_row(&app.pool, &id).await.0.as_deref(), Some("Local"));

    proxy.set_plan(Vec::new()).await;
    assert_eq!(replay(&app, letter).await, StatusCode::ACCEPTED);
    assert_eq!(processed(&app, "evt_refetch_down").await, "applied");
    assert_eq!(
        local_row(&app.pool, &id).await,
        (Some("Current in Stripe".to_owned()), 2, false)
    );
    app.stop().await;
}

/// The janitor forgets processed events past the retention, and nothing still waiting.
#[sqlx::test]
async fn old_processed_events_are_forgotten_but_waiting_ones_kept(pool: PgPool) {
    sqlx::query(
        "insert into processed_events (event_id, type, received_at, processed_at, payload) \
         select 'evt_old_' || n, 'customer.updated', now() - interval '40 days', \
                case when n % 2 = 0 then now() - interval '40 days' end, \
                case when n % 2 = 1 then '{}'::json end \
         from generate_series(1, 25000) n \
         union all select 'evt_recent', 'customer.updated', now(), now(), null",
    )
    .execute(&pool)
    .await
    .unwrap();
    let retention = Duration::from_secs(31 * 24 * 60 * 60);
    let deleted = paysync::store::processed_events::delete_processed_before(&pool, retention)
        .await
        .unwrap();
    assert_eq!(
        deleted, 12_500,
        "the old processed ones, over several chunks"
    );
    let left: Vec<(bool, i64)> = sqlx::query_as(
        "select processed_at is null, count(*) from processed_events group by 1 order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(left, [(false, 1), (true, 12_500)]);
}
