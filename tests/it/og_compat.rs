//! The billing mirror against the peer it must be compatible with, supabase/stripe-sync-engine
//! ("og", installed by `../shared/peer-og/setup`, which `scripts/test` runs): its tables and
//! paysync's introspected side by side, and one stream of signed events, covering every event
//! type the mirror applies, sent to both and every row compared column by column. Each
//! difference the tests allow is named here, with why paysync is right:
//!
//! - Types: og's enum columns (`prices.type`, `subscriptions.status`, `invoices.status`, …) are
//!   `text` in paysync, so a value Stripe adds later is stored instead of refused. Columns
//!   og declares `not null` without a default (`tax_ids.created`) accept nulls in paysync.
//! - paysync's own columns: `_raw_data`, `_account`, `_event_id`, `_truncated_lists`.
//! - `coupon.*`: og applies none of them (its webhook answers 400); paysync mirrors coupons.
//! - `invoice.upcoming` (no id yet): og answers 400 (Stripe retries it for days); paysync
//!   stores nothing and answers 200.
//! - An event older than a deletion, arriving after it: og brings the deleted row back;
//!   paysync keeps it deleted (a tombstone).
//! - A text column holding an object (`subscriptions.plan`, …) holds the same JSON in both, but
//!   spaced differently (PostgreSQL's rendering against JSON.stringify): compared as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use paysync::sync::mirror::kinds;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use crate::support::app::{TestApp, wait_for};
use crate::support::billing::{event, object};
use crate::support::events::{deliver_signed, inbound_app_settings};
use crate::support::og::{OG_TABLES, Og, og_connection, truncate_og};
use crate::support::webhooks::now;

const DEADLINE: Duration = Duration::from_secs(120);

/// Columns paysync adds to every table.
const PAYSYNC_COLUMNS: [&str; 4] = ["_raw_data", "_account", "_event_id", "_truncated_lists"];

/// (column, type) of every column of `table` in schema `stripe`; enum types as `enum`.
async fn columns(conn: &mut PgConnection, table: &str) -> BTreeMap<String, String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select column_name::text, \
                case when data_type = 'USER-DEFINED' then 'enum' else data_type::text end \
         from information_schema.columns where table_schema = 'stripe' and table_name = $1",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.into_iter().collect()
}

#[sqlx::test]
async fn the_mirror_tables_read_as_ogs(pool: PgPool) {
    paysync::store::mirror::migrate(&pool, &Default::default())
        .await
        .unwrap();
    let mut og = og_connection().await;
    let mut ours = pool.acquire().await.unwrap();
    for table in OG_TABLES {
        let theirs = columns(&mut og, table).await;
        assert!(!theirs.is_empty(), "og has no table {table}");
        let mine = columns(&mut ours, table).await;
        for (column, og_type) in &theirs {
            let Some(my_type) = mine.get(column) else {
                panic!("{table}.{column} is missing");
            };
            let compatible = my_type == og_type || (og_type == "enum" && my_type == "text");
            assert!(
                compatible,
                "{table}.{column}: og {og_type}, paysync {my_type}"
            );
        }
        let extra: BTreeSet<&str> = mine
            .keys()
            .map(String::as_str)
            .filter(|c| !theirs.contains_key(*c))
            .collect();
        assert_eq!(extra, PAYSYNC_COLUMNS.into_iter().collect(), "{table}");
    }
}

/// The stream: three objects of every kind, each through every update event type of its kind
/// in turn (a new state each), then a deletion of the first where the kind has one; one
/// second apart, so no two events of an object share a second. Then the named differences:
/// an upcoming invoice, and an older product event after its product's deletion.
fn stream(t0: i64) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut at = t0;
    let mut next = |event_type: &str, object: &Value, events: &mut Vec<(String, String)>| {
        at += 1;
        let id = format!("evt_og_{}", events.len());
        events.push((event_type.to_owned(), event(&id, event_type, at, object)));
    };
    for kind in kinds::ALL {
        for k in 0..3 {
            // Customers with ids paysync's two-way customers accept too.
            let id = if kind.table == "customers" {
                format!("cus_Og{k}")
            } else {
                format!("{}_{k}", kind.table)
            };
            let customer = format!("cus_{k}");
            for (n, event_type) in kind.updates.iter().enumerate() {
                let n = i64::try_from(n).unwrap() + 1;
                next(
                    event_type,
                    &object(kind.table, &id, n, &customer),
                    &mut events,
                );
            }
            if let (0, Some(deletion)) = (k, kind.deletions.first()) {
                next(
                    deletion,
                    &object(kind.table, &id, 99, &customer),
                    &mut events,
                );
            }
        }
    }
    let upcoming = json!({"object": "invoice", "id": null, "customer": "cus_0", "total": 7});
    next("invoice.upcoming", &upcoming, &mut events);
    let late = object("products", "products_0", 5, "cus_0");
    let late = event("evt_og_late", "product.updated", t0, &late);
    events.push(("product.updated".to_owned(), late));
    events
}

/// A row as JSON without og's own timestamp; text holding JSON read as JSON.
fn comparable(row: &Value, columns: &BTreeSet<String>) -> BTreeMap<String, Value> {
    columns
        .iter()
        .filter(|c| c.as_str() != "updated_at")
        .map(|c| {
            let value = match &row[c] {
                Value::String(text) if text.starts_with(['{', '[']) => {
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
                }
                other => other.clone(),
            };
            (c.clone(), value)
        })
        .collect()
}

async fn rows(conn: &mut PgConnection, table: &str) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select id, to_jsonb(t) from stripe.\"{table}\" t"
    )))
    .fetch_all(conn)
    .await
    .unwrap();
    rows.into_iter().collect()
}

#[sqlx::test]
async fn the_same_events_make_the_same_rows_as_og(pool: PgPool) {
    let mut og_db = og_connection().await;
    truncate_og(&mut og_db).await;
    let og = Og::start(10).await;
    let settings = crate::support::app::with_spec(
        inbound_app_settings(None, None),
        json!({"direction": "StripeToLocal", "adoption": "None"}),
    );
    let app = TestApp::spawn_settings(pool, settings).await;
    let client = reqwest::Client::new();
    let events = stream(now() - 10_000);
    let mut refused_by_og = BTreeSet::new();
    for (event_type, body) in &events {
        if og.deliver(&client, body).await != 200 {
            refused_by_og.insert(event_type.clone());
        }
        deliver_signed(&app, body).await;
    }
    let expected_refusals: BTreeSet<String> = [
        "coupon.created",
        "coupon.updated",
        "coupon.deleted",
        "invoice.upcoming",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(
        refused_by_og, expected_refusals,
        "og refuses only the named events"
    );
    let count = i64::try_from(events.len()).unwrap();
    wait_for("paysync to process the stream", DEADLINE, || async {
        let done: i64 = sqlx::query_scalar(
            "select count(*) from processed_events where processed_at is not null",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if done >= count {
            Ok(())
        } else {
            Err(format!("{done} of {count}"))
        }
    })
    .await;
    let mut ours_db = app.pool.acquire().await.unwrap();
    let mut differences = Vec::new();
    for table in OG_TABLES {
        let og_columns: BTreeSet<String> = columns(&mut og_db, table).await.into_keys().collect();
        let theirs = rows(&mut og_db, table).await;
        let mine = rows(&mut ours_db, table).await;
        let ids: BTreeSet<&String> = theirs.keys().chain(mine.keys()).collect();
        assert!(!ids.is_empty(), "no {table} rows at all");
        for id in ids {
            let pair = (theirs.get(id), mine.get(id));
            match pair {
                (Some(a), Some(b)) => {
                    let (a, b) = (comparable(a, &og_columns), comparable(b, &og_columns));
                    for (column, value) in &a {
                        if b.get(column) != Some(value) {
                            differences.push(format!(
                                "{table} {id} {column}: og {value}, paysync {:?}",
                                b.get(column)
                            ));
                        }
                    }
                }
                (Some(_), None) => differences.push(format!("{table} {id}: only in og")),
                (None, Some(_)) => differences.push(format!("{table} {id}: only in paysync")),
                (None, None) => unreachable!(),
            }
        }
    }
    let named: BTreeSet<String> = [
        "coupons coupons_1: only in paysync",
        "coupons coupons_2: only in paysync",
        "products products_0: only in og",
    ]
    .map(str::to_owned)
    .into();
    drop(ours_db);
    assert_eq!(
        differences.iter().cloned().collect::<BTreeSet<_>>(),
        named,
        "every difference from og is a named one"
    );
    app.stop().await;
}
