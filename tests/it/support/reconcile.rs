//! Running reconciles through the API and seeding drift directly in the database and in a
//! private localstripe (with no webhooks, so nothing repairs the drift but the reconciler).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::app::{TestApp, inbound_settings, syncing_settings, wait_for, with_spec};
use paysync::app::Settings;

/// A run of a few thousand customers at test rates ends well within this.
pub const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Workers on (outbound and inbound), catch-up and webhooks off, the schedule off: only the
/// runs a test starts reconcile.
pub fn reconcile_settings(stripe_base: &str, spec: Value) -> Settings {
    let mut settings = with_spec(syncing_settings(stripe_base), spec);
    settings.inbound = Some(inbound_settings());
    settings
}

/// An app on a pool of its own (stopping it closes its pool, not the test's).
pub async fn spawn_app(pool: &PgPool, settings: Settings) -> TestApp {
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    TestApp::spawn_settings(own, settings).await
}

/// Starts a run of `policy` and waits for it to finish; returns its report.
pub async fn reconcile(app: &TestApp, policy: &str) -> Value {
    let id = start_reconcile(app, policy).await;
    wait_reconciled(app, policy, &id).await
}

/// Starts a run of `policy`; returns its id.
pub async fn start_reconcile(app: &TestApp, policy: &str) -> String {
    let response = app
        .request(Method::POST, &format!("/v1/policies/{policy}/reconcile"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let started: Value = response.json().await.unwrap();
    started["id"].as_str().unwrap().to_owned()
}

/// Waits for run `id` of `policy` to finish; returns its report.
pub async fn wait_reconciled(app: &TestApp, policy: &str, id: &str) -> Value {
    wait_for(&format!("reconcile run {id}"), RUN_DEADLINE, || async {
        let policy: Value = app.get_json(&format!("/v1/policies/{policy}")).await;
        let last = &policy["last_reconcile"];
        if last["id"] == id && last["outcome"] != "running" {
            Ok(last.clone())
        } else {
            Err(last.to_string())
        }
    })
    .await
}

/// A customer inserted directly (never synced: no outbox row, nothing in Stripe).
pub async fn insert_local_only(pool: &PgPool, email: &str) -> String {
    let id = uuid::Uuid::now_v7();
    sqlx::query("insert into customers (id, email) values ($1, $2)")
        .bind(id)
        .bind(email)
        .execute(pool)
        .await
        .unwrap();
    id.to_string()
}

/// A local change the outbound worker never heard of (no outbox row): a new version.
pub async fn change_locally(pool: &PgPool, id: &str, column: &str, value: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update customers set {column} = $2, version = version + 1, sync_state = 'pending', \
         updated_at = now() where id = $1::uuid"
    )))
    .bind(id)
    .bind(value)
    .execute(pool)
    .await
    .unwrap();
}

/// A local delete that never reached the outbox.
pub async fn delete_locally(pool: &PgPool, id: &str) {
    sqlx::query(
        "update customers set deleted_at = now(), version = version + 1, \
         sync_state = 'pending' where id = $1::uuid",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

/// The customer row as JSON (deleted ones too).
pub async fn row(pool: &PgPool, id: &str) -> Value {
    let (email, name, stripe_id, deleted, state): (
        String,
        Option<String>,
        Option<String>,
        bool,
        String,
    ) = sqlx::query_as(
        "select email, name, stripe_id, deleted_at is not null, sync_state from customers \
             where id = $1::uuid",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    json!({"email": email, "name": name, "stripe_id": stripe_id, "deleted": deleted, "state": state})
}

/// Everything paysync stores, to compare before and after a run that must write nothing.
pub async fn database_snapshot(pool: &PgPool) -> Vec<String> {
    let mut snapshot = Vec::new();
    for table in [
        "customers",
        "outbox",
        "processed_events",
        "dead_letters",
        "reconcile_runs",
        "reconcile_segments",
        "reconcile_seen",
        "sync_cursors",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select t::text from {table} t order by 1"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        snapshot.extend(rows.into_iter().map(|row| format!("{table}: {row}")));
    }
    snapshot
}
