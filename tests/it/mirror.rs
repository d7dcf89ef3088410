//! The billing mirror's guarantees, for every object kind, on both transports: each event type
//! stores the complete object with its policy; a duplicate is a no-op; an older event never
//! overwrites a newer one; deletions are kept as the kind keeps them and an older event never
//! brings a removed object back; a malformed or unstorable object is dead-lettered while every
//! other event goes on; `spec.objects` and `Observe` decide what is written; a
//! `StripeToLocal` policy without adoption is a pure mirror; catch-up restores what the
//! webhooks missed.

use std::time::Duration;

use paysync::sync::mirror::kinds::{self, Deletion};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, wait_for};
use crate::support::billing::{TABLES, event, object};
use crate::support::events::{deliver_signed, inbound_app_settings, processed};
use crate::support::mock_kafka::MockKafka;
use crate::support::policies::metric;
use crate::support::stripe::{LOCALSTRIPE, Localstripe};
use crate::support::webhooks::now;

const DEADLINE: Duration = Duration::from_secs(60);

async fn spawn(pool: PgPool, kafka: Option<&MockKafka>, spec: Value) -> TestApp {
    let settings = crate::support::app::with_spec(inbound_app_settings(kafka, None), spec);
    TestApp::spawn_settings(pool, settings).await
}

/// The mirror's row of `table` with `id`, as JSON (`None`: no row).
pub async fn row(pool: &PgPool, table: &str, id: &str) -> Option<Value> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select to_jsonb(t) from stripe.\"{table}\" t where id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Delivers an event signed and returns its outcome once it is processed.
async fn apply(app: &TestApp, event_id: &str, event_type: &str, at: i64, object: &Value) -> String {
    deliver_signed(app, &event(event_id, event_type, at, object)).await;
    processed(app, event_id).await
}

fn kind(table: &str) -> &'static kinds::Kind {
    kinds::ALL.into_iter().find(|k| k.table == table).unwrap()
}

/// Every kind: created, a duplicate, a newer state, an older one arriving late, a deletion
/// and an older event after it.
async fn every_kind_keeps_its_guarantees(app: &TestApp, tag: &str) {
    let t0 = now() - 1_000;
    for (table, _) in TABLES {
        let kind = kind(table);
        // A customer id paysync's two-way customers accept too.
        let id = if table == "customers" {
            format!("cus_Mirror{tag}")
        } else {
            format!("{table}_{tag}")
        };
        let update = kind.updates[0];
        let first = object(table, &id, 1, "cus_owner");
        let e = |n: &str| format!("evt_{tag}_{table}_{n}");
        // A customer event's outcome is paysync's two-way customers' (adopted, …): only the
        // mirror's row is checked for those.
        let expect = |got: String, want: &str| {
            if table != "customers" {
                assert_eq!(got, want, "{table}");
            }
        };
        expect(
            apply(app, &e("1"), update, t0 + 10, &first).await,
            "applied",
        );
        let stored = row(&app.pool, table, &id).await.unwrap();
        assert_eq!(
            stored["_raw_data"], first,
            "{table}: the complete object is kept"
        );
        assert_eq!(stored["_account"], "default", "{table}");
        assert_eq!(stored["_event_id"], e("1"), "{table}");
        // A redelivery keeps the first outcome and changes nothing.
        expect(
            apply(app, &e("1"), update, t0 + 10, &first).await,
            "applied",
        );
        let newer = object(table, &id, 2, "cus_owner");
        let last_update = kind.updates[kind.updates.len() - 1];
        expect(
            apply(app, &e("2"), last_update, t0 + 20, &newer).await,
            "applied",
        );
        let older = object(table, &id, 3, "cus_owner");
        expect(apply(app, &e("3"), update, t0 + 15, &older).await, "stale");
        let stored = row(&app.pool, table, &id).await.unwrap();
        assert_eq!(
            stored["_raw_data"], newer,
            "{table}: an older event changed nothing"
        );
        assert_eq!(stored["_event_id"], e("2"), "{table}");
        let Some(deletion) = kind.deletions.first() else {
            continue;
        };
        expect(
            apply(app, &e("4"), deletion, t0 + 30, &newer).await,
            "deleted",
        );
        let late = object(table, &id, 4, "cus_owner");
        expect(apply(app, &e("5"), update, t0 + 25, &late).await, "stale");
        let after = row(&app.pool, table, &id).await;
        match kind.deletion {
            Deletion::Remove => assert_eq!(after, None, "{table}: removed and not brought back"),
            Deletion::Flag => assert_eq!(after.unwrap()["deleted"], true, "{table}"),
        }
    }
    let upcoming = json!({"object": "invoice", "id": null, "customer": "cus_owner", "total": 1});
    let upcoming_event = format!("evt_{tag}_upcoming");
    let outcome = apply(app, &upcoming_event, "invoice.upcoming", t0, &upcoming).await;
    assert_eq!(
        outcome, "not_mirrored",
        "an upcoming invoice has nothing to store"
    );
    let sample = r#"paysync_mirror_events_total{policy="default",kind="tax_ids",outcome="stale"}"#;
    assert!(metric(app, sample).await >= 2.0, "counted per kind");
}

/// Subscription items follow their subscription: each item a row (`price` the price id), an
/// item gone from the complete list `deleted`, and a truncated list flagged.
async fn subscription_items_follow_their_subscription(app: &TestApp, tag: &str) {
    let t0 = now() - 500;
    let id = format!("sub_{tag}");
    let with_two = object("subscriptions", &id, 2, "cus_owner");
    let event_type = "customer.subscription.updated";
    apply(app, &format!("evt_{tag}_s1"), event_type, t0, &with_two).await;
    let item_b = row(&app.pool, "subscription_items", &format!("si_{id}_b"))
        .await
        .unwrap();
    assert_eq!(item_b["price"], "price_2");
    assert_eq!(item_b["deleted"], false);
    let with_one = object("subscriptions", &id, 3, "cus_owner");
    apply(app, &format!("evt_{tag}_s2"), event_type, t0 + 1, &with_one).await;
    let item_b = row(&app.pool, "subscription_items", &format!("si_{id}_b"))
        .await
        .unwrap();
    assert_eq!(item_b["deleted"], true, "gone from the subscription's list");
    let item_a = row(&app.pool, "subscription_items", &format!("si_{id}_a"))
        .await
        .unwrap();
    assert_eq!(
        (item_a["deleted"].clone(), item_a["quantity"].clone()),
        (json!(false), json!(4))
    );
    let mut truncated = object("subscriptions", &id, 4, "cus_owner");
    truncated["items"]["has_more"] = json!(true);
    apply(
        app,
        &format!("evt_{tag}_s3"),
        event_type,
        t0 + 2,
        &truncated,
    )
    .await;
    let stored = row(&app.pool, "subscriptions", &id).await.unwrap();
    assert_eq!(stored["_truncated_lists"], json!(["items"]));
    let invoice = object("invoices", &format!("in_{tag}"), 3, "cus_owner");
    apply(
        app,
        &format!("evt_{tag}_i"),
        "invoice.finalized",
        t0,
        &invoice,
    )
    .await;
    let stored = row(&app.pool, "invoices", &format!("in_{tag}"))
        .await
        .unwrap();
    assert_eq!(
        stored["_truncated_lists"],
        json!(["lines"]),
        "lines past the first page"
    );
}

/// A malformed or unstorable object is dead-lettered with its error; every other event goes on.
async fn unstorable_objects_are_dead_lettered_alone(app: &TestApp, tag: &str) {
    let t0 = now() - 200;
    let mut bad_amount = object("prices", &format!("price_bad_{tag}"), 1, "cus_owner");
    bad_amount["unit_amount"] = json!("a lot");
    let not_a_product = object("invoices", &format!("in_wrong_{tag}"), 1, "cus_owner");
    let mut no_id = object("charges", "x", 1, "cus_owner");
    no_id["id"] = json!(42);
    let poison = [
        (
            format!("evt_{tag}_bad_amount"),
            "price.updated",
            bad_amount,
            "integer",
        ),
        (
            format!("evt_{tag}_wrong"),
            "product.updated",
            not_a_product,
            "not a product",
        ),
        (
            format!("evt_{tag}_no_id"),
            "charge.succeeded",
            no_id,
            "no usable id",
        ),
    ];
    let good = object("products", &format!("prod_good_{tag}"), 1, "cus_owner");
    for (event_id, event_type, object, _) in &poison {
        deliver_signed(app, &event(event_id, event_type, t0, object)).await;
    }
    let good_event = format!("evt_{tag}_good");
    assert_eq!(
        apply(app, &good_event, "product.created", t0, &good).await,
        "applied"
    );
    for (event_id, _, _, error) in &poison {
        assert_eq!(processed(app, event_id).await, "dead_lettered");
        let (letter_error,): (String,) =
            sqlx::query_as("select error from dead_letters where key = $1")
                .bind(event_id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert!(letter_error.contains(error), "{event_id}: {letter_error}");
    }
}

async fn mirror_guarantees(app: &TestApp, tag: &str) {
    every_kind_keeps_its_guarantees(app, tag).await;
    subscription_items_follow_their_subscription(app, tag).await;
    unstorable_objects_are_dead_lettered_alone(app, tag).await;
}

#[sqlx::test]
async fn every_kind_is_mirrored_with_its_guarantees_postgres_transport(pool: PgPool) {
    let app = spawn(pool, None, json!({})).await;
    mirror_guarantees(&app, "pg").await;
    app.stop().await;
}

#[sqlx::test]
async fn every_kind_is_mirrored_with_its_guarantees_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = spawn(pool, Some(&kafka), json!({})).await;
    mirror_guarantees(&app, "kafka").await;
    app.stop().await;
}

#[sqlx::test]
async fn every_kind_is_mirrored_with_its_guarantees_on_arrival(pool: PgPool) {
    let mut settings = inbound_app_settings(None, None);
    settings.apply_on_arrival = true;
    let app = TestApp::spawn_settings(pool, settings).await;
    mirror_guarantees(&app, "arrival").await;
    app.stop().await;
}

/// `objects` chooses the kinds; `Observe` writes nothing; a `StripeToLocal` policy without
/// adoption still mirrors every Stripe customer and adopts none.
async fn policies_choose_what_is_mirrored(kafka: Option<&MockKafka>, pool: PgPool) {
    let t0 = now() - 100;
    let spec = json!({"objects": ["invoices", "customers"], "direction": "StripeToLocal",
                      "adoption": "None"});
    let app = spawn(pool, kafka, spec).await;
    let product = object("products", "prod_left_out", 1, "cus_m");
    assert_eq!(
        apply(&app, "evt_left_out", "product.created", t0, &product).await,
        "not_mirrored"
    );
    assert_eq!(row(&app.pool, "products", "prod_left_out").await, None);
    let invoice = object("invoices", "in_chosen", 1, "cus_m");
    assert_eq!(
        apply(&app, "evt_chosen", "invoice.created", t0, &invoice).await,
        "applied"
    );
    let customer = object("customers", "cus_MirrorOnly", 1, "");
    assert_eq!(
        apply(&app, "evt_pure", "customer.created", t0, &customer).await,
        "not_adopted"
    );
    let mirrored = wait_for("the Stripe customer in the mirror", DEADLINE, || async {
        row(&app.pool, "customers", "cus_MirrorOnly")
            .await
            .ok_or_else(|| "no row".to_owned())
    })
    .await;
    assert_eq!(mirrored["email"], "cus_MirrorOnly@example.com");
    let adopted: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(adopted, 0, "a pure mirror adopts nobody");
    app.stop().await;
}

#[sqlx::test]
async fn observe_mode_mirrors_nothing(pool: PgPool) {
    let observing = spawn(pool, None, json!({"mode": "Observe"})).await;
    let price = object("prices", "price_observed", 1, "cus_m");
    let outcome = apply(&observing, "evt_observed", "price.created", now(), &price).await;
    assert_eq!(outcome, "observed");
    assert_eq!(row(&observing.pool, "prices", "price_observed").await, None);
    observing.stop().await;
}

#[sqlx::test]
async fn policies_choose_what_is_mirrored_postgres_transport(pool: PgPool) {
    policies_choose_what_is_mirrored(None, pool).await;
}

#[sqlx::test]
async fn policies_choose_what_is_mirrored_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    policies_choose_what_is_mirrored(Some(&kafka), pool).await;
}

/// Objects made in Stripe while no webhook reached paysync are mirrored by catch-up (the
/// emulator emits `product.created` and `plan.created`).
#[sqlx::test]
async fn catch_up_mirrors_what_the_webhooks_missed(pool: PgPool) {
    let mut settings = inbound_app_settings(None, Some(LOCALSTRIPE));
    settings.catch_up = Some(Duration::from_secs(1));
    let app = TestApp::spawn_settings(pool, settings).await;
    wait_for("the first catch-up run", DEADLINE, || async {
        match metric(
            &app,
            r#"paysync_catch_up_runs_total{policy="default",outcome="done"}"#,
        )
        .await
        {
            0.0 => Err("no run yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let stripe = Localstripe::new();
    let product = stripe.write("/v1/products", &[("name", "Caught up")]).await;
    let product_id = product["id"].as_str().unwrap().to_owned();
    let plan_id = format!("plan_caught_up_{}", uuid::Uuid::now_v7().simple());
    let plan_form = [
        ("id", plan_id.as_str()),
        ("amount", "1500"),
        ("currency", "usd"),
        ("interval", "month"),
        ("product", product_id.as_str()),
    ];
    stripe.write("/v1/plans", &plan_form).await;
    for (table, id) in [("products", &product_id), ("plans", &plan_id)] {
        let stored = wait_for(&format!("{table} {id} mirrored"), DEADLINE, || async {
            row(&app.pool, table, id)
                .await
                .ok_or_else(|| "no row".to_owned())
        })
        .await;
        assert_eq!(stored["_raw_data"]["id"], json!(id));
    }
    app.stop().await;
}
