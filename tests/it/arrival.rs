//! Applying Stripe events as they arrive (PostgreSQL transport): concurrent deliveries are
//! applied in one transaction before their 2xx; what cannot be applied without waiting on
//! Stripe waits in the inbox for the workers; a SIGKILL under load loses no acknowledged event
//! and applies none twice.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use paysync::app::Settings;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::support::app::{TestApp, wait_for};
use crate::support::events::{
    DEADLINE, SyncInFlight, customer_object, deliver_signed, event, inbound_app_settings,
    insert_linked, insert_linked_many, local_row, processed,
};
use crate::support::serve_process::{PROCESS_DEADLINE, ServeProcess, database_url};
use crate::support::webhooks::{SECRET, now, signature};

/// `processed_at` of the event's dedup record: `None` while it waits in the inbox.
async fn processed_at(pool: &PgPool, event_id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("select processed_at from processed_events where event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `outcome` of the event's dedup record, as it is now.
async fn outcome(pool: &PgPool, event_id: &str) -> Option<String> {
    sqlx::query_scalar("select outcome from processed_events where event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The PostgreSQL transport, applying events as they arrive.
fn arriving() -> Settings {
    Settings {
        apply_on_arrival: true,
        ..inbound_app_settings(None, None)
    }
}

#[sqlx::test]
async fn an_event_is_applied_before_its_2xx(pool: PgPool) {
    let app = TestApp::spawn_settings(pool.clone(), arriving()).await;
    let id = insert_linked(&pool, "arrives@example.com", "Before", "cus_arrives").await;
    let body = event(
        "evt_arrives",
        "customer.updated",
        now(),
        customer_object("cus_arrives", "arrives@example.com", "On arrival"),
    );
    deliver_signed(&app, &body).await;
    // No waiting: the 2xx came after the commit that applied it.
    assert_eq!(
        local_row(&pool, &id).await,
        (Some("On arrival".to_owned()), 2, false)
    );
    assert!(processed_at(&pool, "evt_arrives").await.is_some());
    assert_eq!(
        outcome(&pool, "evt_arrives").await.as_deref(),
        Some("applied")
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("paysync_arrived_events_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

/// Updates of `customers` so far, and how many of them were HOT (no new index entries), as
/// PostgreSQL's statistics count them once the writing session reports them.
async fn customer_updates(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where relname = 'customers'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_stripe_change_to_a_synced_customer_is_written_in_place(pool: PgPool) {
    let app = TestApp::spawn_settings(pool.clone(), arriving()).await;
    insert_linked_many(&pool, "in-place", "inplace", 3).await;
    for n in 1..=3 {
        let body = event(
            &format!("evt_in_place_{n}"),
            "customer.updated",
            now(),
            customer_object(
                &format!("cus_inplace{n}"),
                &format!("in-place-{n}@example.com"),
                "Renamed",
            ),
        );
        deliver_signed(&app, &body).await;
    }
    // Every change bumps the version and the synced version: neither may be read by an index,
    // or each applied event writes a new entry into every index of the table.
    let (updates, in_place) = wait_for("the updates counted", DEADLINE, || async {
        match customer_updates(&pool).await {
            (3, in_place) => Ok((3, in_place)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(in_place, updates, "every update a HOT update");
    app.stop().await;
}

#[sqlx::test]
async fn an_event_for_a_customer_being_synced_waits_in_the_inbox_not_in_the_request(pool: PgPool) {
    let app = TestApp::spawn_settings(pool.clone(), arriving()).await;
    let id = insert_linked(&pool, "syncing@example.com", "Before", "cus_syncing").await;
    let sync = SyncInFlight::hold(&pool, &id).await;
    let body = event(
        "evt_syncing",
        "customer.updated",
        now(),
        customer_object("cus_syncing", "syncing@example.com", "After the sync"),
    );
    deliver_signed(&app, &body).await;
    assert_eq!(
        processed_at(&pool, "evt_syncing").await,
        None,
        "queued, not applied"
    );
    assert_eq!(local_row(&pool, &id).await.0.as_deref(), Some("Before"));
    sync.end().await;
    wait_for("the queued event applied", DEADLINE, || async {
        match local_row(&pool, &id).await.0 {
            Some(name) if name == "After the sync" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    app.stop().await;
}

#[sqlx::test]
async fn an_event_that_cannot_be_applied_is_queued_and_dead_lettered_by_a_worker(pool: PgPool) {
    let app = TestApp::spawn_settings(pool.clone(), arriving()).await;
    // A Stripe customer without an email cannot be adopted: a permanent failure.
    let body = event(
        "evt_no_email",
        "customer.created",
        now(),
        json!({"id": "cus_no_email", "object": "customer", "email": null, "name": "Nobody"}),
    );
    deliver_signed(&app, &body).await;
    assert_eq!(processed(&app, "evt_no_email").await, "dead_lettered");
    let letters: i64 =
        sqlx::query_scalar("select count(*) from dead_letters where key = 'evt_no_email'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(letters, 1);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("paysync_arrived_events_total{outcome=\"queued\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_redelivery_changes_nothing_and_new_customers_are_adopted_on_arrival(pool: PgPool) {
    let app = TestApp::spawn_settings(pool.clone(), arriving()).await;
    let id = insert_linked(&pool, "again@example.com", "Before", "cus_again").await;
    let first = event(
        "evt_again",
        "customer.updated",
        now(),
        customer_object("cus_again", "again@example.com", "Once"),
    );
    deliver_signed(&app, &first).await;
    // Stripe delivers an event again when it missed the 2xx: the record stands, nothing moves.
    deliver_signed(&app, &first).await;
    assert_eq!(
        local_row(&pool, &id).await,
        (Some("Once".to_owned()), 2, false)
    );
    assert_eq!(
        outcome(&pool, "evt_again").await.as_deref(),
        Some("applied")
    );

    // A customer paysync does not know yet, and a linked one, arriving together.
    let created = event(
        "evt_new",
        "customer.created",
        now(),
        customer_object("cus_new", "new@example.com", "New"),
    );
    let updated = event(
        "evt_again_2",
        "customer.updated",
        now() + 1,
        customer_object("cus_again", "again@example.com", "Twice"),
    );
    futures::join!(
        deliver_signed(&app, &created),
        deliver_signed(&app, &updated)
    );
    assert_eq!(
        local_row(&pool, &id).await,
        (Some("Twice".to_owned()), 3, false)
    );
    assert_eq!(outcome(&pool, "evt_new").await.as_deref(), Some("adopted"));
    assert_eq!(
        outcome(&pool, "evt_again_2").await.as_deref(),
        Some("applied")
    );
    let adopted: Option<String> =
        sqlx::query_scalar("select name from customers where stripe_id = 'cus_new'")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(adopted.as_deref(), Some("New"));
    let metrics = app.metrics_text().await;
    for line in [
        "paysync_arrived_events_total{outcome=\"applied\"} 4",
        "paysync_inbound_events_total{policy=\"default\",outcome=\"duplicate\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    app.stop().await;
}

/// Sends every body until it is answered 200, to whichever server `target` names now (a
/// delivery that got no 200 is delivered again, as Stripe does).
async fn deliver_until_acknowledged(bodies: Vec<String>, target: Arc<RwLock<String>>) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    futures::stream::iter(bodies)
        .map(|body| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                loop {
                    let url = format!("{}/webhooks/stripe", target.read().unwrap());
                    let sent = client
                        .post(url)
                        .header("content-type", "application/json")
                        .header("stripe-signature", signature(SECRET, now(), &body))
                        .body(body.clone())
                        .send()
                        .await;
                    match sent.map(|response| response.status()) {
                        Ok(StatusCode::OK) => return,
                        Ok(status) if status.is_client_error() => panic!("{status} for {body}"),
                        // Killed, restarting, or 503 while it cannot queue: deliver again.
                        _ => assert!(Instant::now() < deadline, "no 200 for {body}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

async fn count_processed(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from processed_events where processed_at is not null")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_sigkill_under_webhook_load_loses_no_acknowledged_event_and_applies_none_twice(
    pool: PgPool,
) {
    const CUSTOMERS: usize = 1_000;
    const CHANGES: usize = 100;
    const EVENTS: i64 = (CUSTOMERS * CHANGES) as i64;
    insert_linked_many(&pool, "kill-load", "killload", CUSTOMERS).await;
    let env = vec![
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("PAYSYNC_APPLY_ON_ARRIVAL", "true".to_owned()),
    ];
    let server = ServeProcess::start(&env).await;
    let target = Arc::new(RwLock::new(server.base_url.clone()));
    let base = now() - 1_000;
    // Each customer's changes in order, one second apart; one change of every customer at a time.
    let bodies: Vec<String> = (1..=CHANGES)
        .flat_map(|change| {
            (1..=CUSTOMERS).map(move |n| {
                event(
                    &format!("evt_killload_{n}_{change}"),
                    "customer.updated",
                    base + change as i64,
                    json!({"id": format!("cus_killload{n}"), "object": "customer",
                           "email": format!("kill-load-{n}@example.com"), "name": format!("v{change}")}),
                )
            })
        })
        .collect();
    let load = tokio::spawn(deliver_until_acknowledged(bodies, target.clone()));
    wait_for(
        "a third of the events applied",
        PROCESS_DEADLINE * 4,
        || async {
            match count_processed(&pool).await {
                done if done >= EVENTS / 3 => Ok(()),
                done => Err(done.to_string()),
            }
        },
    )
    .await;
    server.sigkill().await;
    let at_kill = count_processed(&pool).await;
    assert!(
        at_kill < EVENTS,
        "the kill must land part-way ({at_kill} applied)"
    );

    let restarted = ServeProcess::start(&env).await;
    *target.write().unwrap() = restarted.base_url.clone();
    load.await.unwrap();
    wait_for("every event handled", Duration::from_secs(120), || async {
        match count_processed(&pool).await {
            done if done == EVENTS => Ok(()),
            done => Err(format!("{done} of {EVENTS}")),
        }
    })
    .await;
    // Each applied event raised its customer's version by one: a version ahead of the applied
    // events would be an event applied twice, behind it an acknowledged one lost.
    let miscounted: i64 = sqlx::query_scalar(
        "select count(*) from customers c where c.version - 1 <> \
         (select count(*) from processed_events p \
          where p.stripe_customer_id = c.stripe_id and p.outcome = 'applied')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        miscounted, 0,
        "customers whose version is not 1 + their applied events"
    );
    let at_last: i64 = sqlx::query_scalar("select count(*) from customers where name = $1")
        .bind(format!("v{CHANGES}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        at_last, CUSTOMERS as i64,
        "every customer at its last change"
    );
    restarted.sigterm_and_wait().await;
}
