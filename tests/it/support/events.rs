//! Stripe events for inbound tests: building them, delivering them signed, and waiting for
//! their effects.

use std::time::Duration;

use paysync::app::Settings;
use paysync::domain::CustomerId;
use paysync::store::locks::customer_key;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection, PgPool};

use super::app::{
    TestApp, inbound_settings, kafka_settings, settings, syncing_settings, wait_for, with_webhooks,
};
use super::mock_kafka::MockKafka;
use super::webhooks::{SECRET, deliver, now, signature};

/// localstripe delivers about a second after a change; generous for a loaded CI machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Webhook ingress and inbound worker; with `kafka`, over the mock cluster; with `stripe`,
/// able to ask that Stripe for a customer's current state.
pub fn inbound_app_settings(kafka: Option<&MockKafka>, stripe: Option<&str>) -> Settings {
    let base = match stripe {
        Some(stripe) => Settings {
            outbound: None,
            ..syncing_settings(stripe)
        },
        None => settings(),
    };
    with_webhooks(Settings {
        inbound: Some(inbound_settings()),
        kafka: kafka.map(|k| kafka_settings(&k.bootstrap)),
        ..base
    })
}

/// A local customer linked to `stripe_id` and in sync with it (as after a sync).
pub async fn insert_linked(pool: &PgPool, email: &str, name: &str, stripe_id: &str) -> String {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into customers (id, email, name, stripe_id, stripe_synced_version, sync_state) \
         values ($1, $2, $3, $4, 1, 'synced')",
    )
    .bind(id)
    .bind(email)
    .bind(name)
    .bind(stripe_id)
    .execute(pool)
    .await
    .unwrap();
    id.to_string()
}

/// `count` local customers named `v0`, `<email>-<n>@example.com` linked to `cus_<stripe><n>`
/// (n from 1), in sync.
pub async fn insert_linked_many(pool: &PgPool, email: &str, stripe: &str, count: usize) {
    sqlx::query(
        "insert into customers (id, email, name, stripe_id, stripe_synced_version, sync_state) \
         select gen_random_uuid(), $2 || '-' || n || '@example.com', 'v0', 'cus_' || $3 || n, \
                1, 'synced' \
         from generate_series(1, $1) n",
    )
    .bind(count as i64)
    .bind(email)
    .bind(stripe)
    .execute(pool)
    .await
    .unwrap();
}

/// A signed `customer.*` event as Stripe sends it.
pub fn event(event_id: &str, kind: &str, created: i64, customer: Value) -> String {
    json!({
        "id": event_id, "object": "event", "type": kind, "created": created,
        "data": {"object": customer}
    })
    .to_string()
}

pub fn customer_object(stripe_id: &str, email: &str, name: &str) -> Value {
    json!({"id": stripe_id, "object": "customer", "email": email, "name": name, "metadata": {}})
}

pub async fn deliver_signed(app: &TestApp, body: &str) {
    let response = deliver(app, body, Some(&signature(SECRET, now(), body))).await;
    assert_eq!(response.status(), StatusCode::OK, "delivery refused");
}

/// The local row of a customer: (name, version, deleted).
pub async fn local_row(pool: &PgPool, id: &str) -> (Option<String>, i64, bool) {
    sqlx::query_as(
        "select name, version, deleted_at is not null from customers where id = $1::uuid",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until the event is processed; returns its outcome.
pub async fn processed(app: &TestApp, event_id: &str) -> String {
    wait_for(&format!("event {event_id} processed"), DEADLINE, || async {
        let outcome: Option<Option<String>> = sqlx::query_scalar(
            "select outcome from processed_events where event_id = $1 \
                 and processed_at is not null",
        )
        .bind(event_id)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        outcome
            .flatten()
            .ok_or_else(|| "not processed yet".to_owned())
    })
    .await
}

/// The customer with this email as the API lists it, once there.
pub async fn wait_listed(app: &TestApp, email: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        &format!("{email} in GET /v1/customers"),
        DEADLINE,
        || async {
            let page = app
                .get_json(&format!("/v1/customers?email={}", urlencode(email)))
                .await;
            match page["data"].as_array().and_then(|data| data.first()) {
                Some(customer) if check(customer) => Ok(customer.clone()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// `POST /v1/dead-letters/{id}/replay` of a listed dead letter.
pub async fn replay(app: &TestApp, letter: &Value) -> StatusCode {
    let path = format!("/v1/dead-letters/{}/replay", letter["id"].as_str().unwrap());
    app.request(reqwest::Method::POST, &path)
        .send()
        .await
        .unwrap()
        .status()
}

pub fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace('@', "%40")
}

/// An outbound sync in flight, as far as inbound sees it: the customer's sync lock held as a
/// session lock on a connection of its own (as `store::locks::customer` holds it).
pub struct SyncInFlight {
    conn: PgConnection,
    pub key: i64,
}

impl SyncInFlight {
    pub async fn hold(pool: &PgPool, customer_id: &str) -> Self {
        let mut conn = PgConnection::connect_with(&pool.connect_options())
            .await
            .unwrap();
        let key = customer_key(CustomerId::from_uuid(customer_id.parse().unwrap()));
        sqlx::query("select pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await
            .unwrap();
        Self { conn, key }
    }

    /// The sync ends: its lock is released.
    pub async fn end(mut self) {
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn)
            .await
            .unwrap();
        self.conn.close().await.unwrap();
    }
}

/// An event for a customer whose outbound sync is in flight (its sync lock held as a session
/// lock, as `store::locks::customer` holds it) waits for the sync (a transaction waits for
/// the lock, the row is unchanged), and is applied once the sync ends.
pub async fn an_event_waits_for_a_sync_in_flight(app: &TestApp) {
    let pool = &app.pool;
    let id = insert_linked(pool, "inflight@example.com", "Before", "cus_InFlight").await;
    let sync = SyncInFlight::hold(pool, &id).await;
    let body = event(
        "evt_in_flight",
        "customer.updated",
        now(),
        customer_object("cus_InFlight", "inflight@example.com", "After the sync"),
    );
    deliver_signed(app, &body).await;
    wait_for(
        "a transaction waiting for the sync lock",
        DEADLINE,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_locks where locktype = 'advisory' and not granted \
             and objsubid = 1 and ((classid::int8 << 32) | objid::int8) = $1",
            )
            .bind(sync.key)
            .fetch_one(pool)
            .await
            .unwrap();
            if waiting == 1 {
                Ok(())
            } else {
                Err("not waiting".to_owned())
            }
        },
    )
    .await;
    assert_eq!(local_row(pool, &id).await.0.as_deref(), Some("Before"));
    sync.end().await;
    wait_for("the event applied after the sync", DEADLINE, || async {
        match local_row(pool, &id).await {
            (Some(name), 2, false) if name == "After the sync" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
