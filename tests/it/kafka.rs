//! Local → Stripe over the Kafka transport (librdkafka's mock cluster in another process):
//! the relay and consumer deliver every change, writes go on while the brokers are down, and
//! a message paysync cannot read is dead-lettered without blocking its partition; the inbound
//! consumer's lanes keep each customer's events in order, and an event waits for its
//! customer's outbound sync in flight.

use std::time::Duration;

use futures::StreamExt as _;

use paysync::transport::kafka::relay::RelaySettings;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, kafka_settings, settings, wait_for};
use crate::support::customers::wait_synced;
use crate::support::events::{
    an_event_waits_for_a_sync_in_flight, customer_object, deliver_signed, event,
    inbound_app_settings, insert_linked_many,
};
use crate::support::mock_kafka::MockKafka;
use crate::support::stripe::{LOCALSTRIPE, Localstripe, unique_email};
use crate::support::webhooks::now;

const DEADLINE: Duration = Duration::from_secs(60);

#[sqlx::test]
async fn changes_travel_through_kafka_to_stripe(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = TestApp::spawn_kafka(pool, LOCALSTRIPE, &kafka.bootstrap).await;
    let stripe = Localstripe::new();
    let email = unique_email("kafka");
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let synced = wait_synced(&app, &id, 1).await;
    let stripe_id = synced["sync"]["stripe_id"].as_str().unwrap().to_owned();

    let patched = app
        .patch_customer(
            &id,
            &json!({"name": "Via Kafka", "metadata": {"tier": "gold"}}),
            None,
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    wait_synced(&app, &id, 2).await;
    let remote = stripe.customer(&stripe_id).await.unwrap();
    assert_eq!(remote["name"], "Via Kafka");
    assert_eq!(remote["metadata"]["tier"], "gold");

    assert_eq!(
        app.delete_customer(&id).await.status(),
        StatusCode::NO_CONTENT
    );
    wait_for("the Stripe customer to be deleted", DEADLINE, || async {
        stripe
            .customer(&stripe_id)
            .await
            .map_or(Ok(()), |c| Err(c.to_string()))
    })
    .await;
    let unpublished: i64 =
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(unpublished, 0, "every outbox row was published");
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["kafka"], "ok");
    app.stop().await;
}

#[sqlx::test]
async fn writes_succeed_while_kafka_is_down_and_sync_once_it_returns(pool: PgPool) {
    let mut kafka = MockKafka::start().await;
    let app = TestApp::spawn_kafka(pool, LOCALSTRIPE, &kafka.bootstrap).await;
    kafka.all_down().await;
    wait_for("readiness to report Kafka down", DEADLINE, || async {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["kafka"] == "unreachable" {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;

    let mut customers = Vec::new();
    for i in 0..5 {
        let email = unique_email(&format!("outage{i}"));
        let created = app.create_customer(&email).await;
        assert_eq!(created["sync"]["state"], "pending");
        customers.push((created["id"].as_str().unwrap().to_owned(), email));
    }

    kafka.all_up().await;
    for (id, email) in &customers {
        wait_synced(&app, id, 1).await;
        assert_eq!(
            Localstripe::new().customers_with_email(email).await.len(),
            1,
            "{email}"
        );
    }
    app.stop().await;
}

#[sqlx::test]
async fn an_unreadable_message_is_dead_lettered_and_the_partition_moves_on(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .unwrap();
    for partition in 0..4 {
        let record = FutureRecord::<str, str>::to("paysync.outbound")
            .partition(partition)
            .payload("this is not an envelope");
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }
    let app = TestApp::spawn_kafka(pool, LOCALSTRIPE, &kafka.bootstrap).await;
    let id = app.create_customer(&unique_email("after-garbage")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_synced(&app, &id, 1).await;

    let letters = wait_for("four dead letters", DEADLINE, || async {
        let body: Value = app.get_json("/v1/dead-letters").await;
        let letters = body["data"].as_array().cloned().unwrap_or_default();
        if letters.len() == 4 {
            Ok(letters)
        } else {
            Err(body.to_string())
        }
    })
    .await;
    for letter in letters {
        assert!(
            letter["key"]
                .as_str()
                .unwrap()
                .starts_with("paysync.outbound/"),
            "{letter}"
        );
        assert!(
            letter["error"]
                .as_str()
                .unwrap()
                .contains("not a paysync envelope"),
            "{letter}"
        );
        // A message that is not JSON is shown as its text.
        assert_eq!(letter["payload"], "this is not an envelope");
    }
    app.stop().await;
}

/// Two relays on one database (two replicas) publish every outbox row exactly once: the
/// topic ends up holding as many messages as there are rows.
#[sqlx::test]
async fn two_relays_publish_each_outbox_row_exactly_once(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let relay_only = || {
        let mut settings = settings();
        settings.kafka = Some(kafka_settings(&kafka.bootstrap));
        settings.relay = Some(RelaySettings {
            batch_size: 7,
            poll_interval: Duration::from_millis(100),
        });
        TestApp::spawn_settings(pool.clone(), settings)
    };
    let (first, second) = (relay_only().await, relay_only().await);
    for i in 0..100 {
        let app = if i % 2 == 0 { &first } else { &second };
        let id = app.create_customer(&unique_email("two-relays")).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            app.patch_customer(&id, &json!({"name": "again"}), None)
                .await
                .status(),
            StatusCode::OK
        );
    }
    wait_for("every outbox row published", DEADLINE, || async {
        let left: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&pool)
                .await
                .unwrap();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} unpublished"))
        }
    })
    .await;

    let messages = kafka.messages_in("paysync.outbound").await;
    assert_eq!(messages, 200, "200 outbox rows, 200 messages");
    // Each waits until no session of the database is left, so both stop together.
    tokio::join!(first.stop(), second.stop());
}

/// The inbound consumer applies partitions in lanes at once: 60 customers' events, each
/// customer's delivered in order, all strictly newer than the one before, through 4 lanes
/// over 4 partitions; if a lane ever took a customer's events out of order some would be
/// `stale`. Every event is applied once, and each customer ends at its last event.
#[sqlx::test]
async fn inbound_lanes_keep_each_customers_events_in_order(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let mut settings = inbound_app_settings(Some(&kafka), None);
    if let Some(inbound) = settings.inbound.as_mut() {
        inbound.concurrency = 4;
    }
    let app = TestApp::spawn_settings(pool, settings).await;
    const CUSTOMERS: usize = 60;
    const EVENTS: usize = 8;
    insert_linked_many(&app.pool, "lanes", "Lanes", CUSTOMERS).await;
    let t = now() - 1_000;
    futures::stream::iter(1..=CUSTOMERS)
        .for_each_concurrent(16, |n| {
            let app = &app;
            async move {
                let (stripe_id, email) =
                    (format!("cus_Lanes{n}"), format!("lanes-{n}@example.com"));
                for i in 1..=EVENTS {
                    let body = event(
                        &format!("evt_lanes_{n}_{i}"),
                        "customer.updated",
                        t + i as i64,
                        customer_object(&stripe_id, &email, &format!("v{i}")),
                    );
                    deliver_signed(app, &body).await;
                }
            }
        })
        .await;
    wait_for("every event applied", DEADLINE, || async {
        let outcomes: Vec<(String, i64)> = sqlx::query_as(
            "select coalesce(outcome, 'queued'), count(*) from processed_events \
             group by 1 order by 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        match outcomes.as_slice() {
            [(outcome, count)] if outcome == "applied" && *count == (CUSTOMERS * EVENTS) as i64 => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let wrong: i64 =
        sqlx::query_scalar("select count(*) from customers where name <> $1 or version <> $2")
            .bind(format!("v{EVENTS}"))
            .bind(1 + EVENTS as i64)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        wrong, 0,
        "every customer at its last event, each applied once"
    );
    app.stop().await;
}

/// An event for a customer whose outbound sync is in flight is applied only once the sync
/// ends: the consumer's common batch only tries the sync lock, and on finding it held the
/// general path waits for it, so what the sync wrote to Stripe is known.
#[sqlx::test]
async fn an_event_waits_for_its_customers_sync_in_flight(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = TestApp::spawn_settings(pool.clone(), inbound_app_settings(Some(&kafka), None)).await;
    an_event_waits_for_a_sync_in_flight(&app).await;
    app.stop().await;
}

/// Defect 5 of the chaos run: after a replica died, inbound stalled while `/readyz` said
/// nothing waited (it counted only messages a consumer held). Events on the inbound topic
/// that no consumer takes (here: none runs) now show as the group's lag, measured from the
/// broker, and age the oldest pending event.
#[sqlx::test]
async fn events_no_consumer_takes_show_as_lag_and_age(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let mut settings = inbound_app_settings(Some(&kafka), None);
    settings.inbound = None;
    let app = TestApp::spawn_settings(pool, settings).await;
    for n in 0..3 {
        let body = event(
            &format!("evt_unconsumed_{n}"),
            "customer.updated",
            now(),
            customer_object(&format!("cus_Unconsumed{n}"), "lag@example.com", "x"),
        );
        deliver_signed(&app, &body).await;
    }
    let ready = wait_for("the lag in /readyz", DEADLINE, || async {
        let ready = app.get_json("/readyz").await;
        let queues = &ready["queues"];
        if queues["kafka"]["inbound"]["messages"] == 3
            && queues["inbound_oldest_pending_seconds"].as_f64() >= Some(2.0)
        {
            Ok(ready)
        } else {
            Err(ready.to_string())
        }
    })
    .await;
    assert!(
        ready["queues"]["kafka"]["inbound"]["stalled_seconds"].as_f64() >= Some(2.0),
        "{ready}"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("paysync_kafka_consumer_lag{role=\"inbound\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}
