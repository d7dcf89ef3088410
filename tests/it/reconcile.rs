//! The reconciler against real PostgreSQL and a localstripe of its own (an empty Stripe
//! account, no webhooks: drift stays until a run repairs it).

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, wait_for};
use crate::support::customers::wait_synced;
use crate::support::policies::insert_linked_in;
use crate::support::private_stripe::PrivateStripe;
use crate::support::reconcile::{
    RUN_DEADLINE, change_locally, database_snapshot, delete_locally, insert_local_only, reconcile,
    reconcile_settings, row, spawn_app,
};
use crate::support::serve_process::{ServeProcess, database_url, paysync};
use crate::support::stripe::Localstripe;

/// A customer created through the API and synced; returns (local id, Stripe id).
async fn synced(app: &TestApp, email: &str) -> (String, String) {
    let created = app.create_customer(email).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let customer = wait_synced(app, &id, 1).await;
    (
        id,
        customer["sync"]["stripe_id"].as_str().unwrap().to_owned(),
    )
}

#[sqlx::test]
async fn every_kind_of_drift_is_repaired_and_a_second_run_finds_none(pool: PgPool) {
    let stripe_account = PrivateStripe::start().await;
    let stripe = Localstripe::at(&stripe_account.base);
    let spec = json!({"conflict": {"default": "Newest", "fields": {"name": "StripeWins"}}});
    let app = spawn_app(&pool, reconcile_settings(&stripe_account.base, spec)).await;

    // In Stripe only.
    stripe
        .create_customer(&[("email", "stripe-only@example.com"), ("name", "Only There")])
        .await;
    // Local only, never synced.
    let local_only = insert_local_only(&pool, "local-only@example.com").await;
    // A Stripe change never delivered.
    let (stripe_changed, stripe_changed_id) = synced(&app, "stripe-changed@example.com").await;
    stripe
        .update_customer(&stripe_changed_id, &[("name", "Changed In Stripe")])
        .await;
    // A local change never sent.
    let (local_changed, local_changed_id) = synced(&app, "local-changed@example.com").await;
    change_locally(&pool, &local_changed, "name", "Changed Here").await;
    // Both: Stripe's name (name: StripeWins), the local email (Newest keeps the local change).
    let (both, both_id) = synced(&app, "both@example.com").await;
    stripe
        .update_customer(
            &both_id,
            &[
                ("name", "Stripe Name"),
                ("email", "both.stripe@example.com"),
            ],
        )
        .await;
    change_locally(&pool, &both, "email", "both.local@example.com").await;
    // Deleted in Stripe.
    let (gone, gone_id) = synced(&app, "gone@example.com").await;
    stripe.delete_customer(&gone_id).await;
    // Deleted locally.
    let (deleted, deleted_id) = synced(&app, "deleted@example.com").await;
    delete_locally(&pool, &deleted).await;
    // A leaked create: in Stripe with our paysync_id, the id never recorded here.
    let leaked = insert_local_only(&pool, "leaked@example.com").await;
    let leaked_customer = stripe
        .create_customer(&[
            ("email", "leaked@example.com"),
            ("metadata[paysync_id]", &leaked),
        ])
        .await;
    // Linked to a Stripe customer that does not exist.
    let dangling = insert_local_only(&pool, "dangling@example.com").await;
    sqlx::query(
        "update customers set stripe_id = 'cus_doesnotexist', stripe_synced_version = 1, \
         sync_state = 'synced' where id = $1::uuid",
    )
    .bind(&dangling)
    .execute(&pool)
    .await
    .unwrap();

    let first = reconcile(&app, "default").await;
    assert_eq!(first["outcome"], "succeeded", "{first}");
    assert_eq!(first["failed"], 0, "{first}");
    for kind in [
        "stripe_only",
        "local_only",
        "stripe_changed",
        "local_changed",
        "both_changed",
        "deleted_in_stripe",
        "deleted_locally",
        "leaked_create",
    ] {
        assert!(
            first["drift_by_kind"][kind].as_i64().unwrap_or(0) >= 1,
            "{kind}: {first}"
        );
    }

    let adopted: Vec<Value> = app
        .get_json("/v1/customers?email=stripe-only@example.com")
        .await["data"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0]["name"], "Only There");
    let local_only_row = row(&pool, &local_only).await;
    let local_only_stripe = local_only_row["stripe_id"]
        .as_str()
        .expect("created in Stripe");
    assert_eq!(
        stripe.customer(local_only_stripe).await.unwrap()["metadata"]["paysync_id"],
        local_only.as_str()
    );
    assert_eq!(
        row(&pool, &stripe_changed).await["name"],
        "Changed In Stripe"
    );
    assert_eq!(
        stripe.customer(&local_changed_id).await.unwrap()["name"],
        "Changed Here"
    );
    let both_row = row(&pool, &both).await;
    assert_eq!(both_row["name"], "Stripe Name");
    assert_eq!(both_row["email"], "both.local@example.com");
    let both_stripe = stripe.customer(&both_id).await.unwrap();
    assert_eq!(both_stripe["email"], "both.local@example.com");
    assert_eq!(both_stripe["name"], "Stripe Name");
    assert_eq!(row(&pool, &gone).await["deleted"], true);
    assert!(
        stripe.customer(&deleted_id).await.is_none(),
        "deleted in Stripe too"
    );
    assert_eq!(
        row(&pool, &leaked).await["stripe_id"],
        leaked_customer["id"]
    );
    assert_eq!(row(&pool, &dangling).await["deleted"], true);
    // One Stripe customer per live local customer, and no other.
    let in_stripe = Localstripe::at(&stripe_account.base).all_customers().await;
    let live: i64 = sqlx::query_scalar("select count(*) from customers where deleted_at is null")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_stripe.len() as i64, live, "{in_stripe:#?}");

    let second = reconcile(&app, "default").await;
    assert_eq!(second["outcome"], "succeeded", "{second}");
    assert_eq!(second["drift"], 0, "{second}");
    let runs = app.get_json("/v1/reconcile-runs?policy=default").await;
    assert_eq!(runs["data"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[sqlx::test]
async fn observe_mode_writes_nothing_and_reports_the_drift(pool: PgPool) {
    let stripe_account = PrivateStripe::start().await;
    let stripe = Localstripe::at(&stripe_account.base);
    let app = spawn_app(&pool, reconcile_settings(&stripe_account.base, json!({}))).await;
    let (changed, changed_id) = synced(&app, "observed@example.com").await;
    stripe
        .update_customer(&changed_id, &[("name", "Observed")])
        .await;
    stripe
        .create_customer(&[("email", "observed-only@example.com")])
        .await;
    insert_local_only(&pool, "observed-local@example.com").await;
    app.stop().await;

    let observing = reconcile_settings(&stripe_account.base, json!({"mode": "Observe"}));
    let app = spawn_app(&pool, observing).await;
    let before = (
        database_snapshot(&pool).await,
        Localstripe::at(&stripe_account.base).all_customers().await,
    );
    let report = reconcile(&app, "default").await;
    assert_eq!(report["mode"], "observe");
    assert_eq!(report["drift"], 3, "{report}");
    assert_eq!(report["repaired"], 0);
    let after = (
        database_snapshot(&pool).await,
        Localstripe::at(&stripe_account.base).all_customers().await,
    );
    assert_eq!(before, after, "an Observe run wrote something");
    assert!(row(&pool, &changed).await["name"].is_null());
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"paysync_drift{policy="default",kind="stripe_changed",field="name"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

/// `paysync reconcile --once` against the test database and a private Stripe.
async fn reconcile_cli(pool: &PgPool, stripe_base: &str, extra: &[&str]) -> Vec<Value> {
    let output = paysync()
        .args(["reconcile", "--once", "--output", "json"])
        .args(extra)
        .env("DATABASE_URL", database_url(pool))
        .env("STRIPE_API_KEY", "sk_test_paysync")
        .env("STRIPE_API_BASE", stripe_base)
        .env("STRIPE_RATE_LIMIT", "1000")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_plain_log_fields(&stderr);
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// JSON log lines carry plain values: ids as strings, an absent value absent (never Rust's
/// `Some(..)`/`None` debug text); each drift line names its customer or Stripe customer.
fn assert_plain_log_fields(logs: &str) {
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    for line in &lines {
        for (field, value) in line.as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            assert!(
                !text.starts_with("Some(") && text != "None" && !text.contains("CustomerId("),
                "{field} is Rust debug text: {line}"
            );
        }
        if line["message"] == "drift" {
            let customer = line["customer_id"].as_str().map(uuid::Uuid::parse_str);
            let stripe = line["stripe_id"].as_str();
            assert!(
                customer.is_some_and(|id| id.is_ok())
                    || stripe.is_some_and(|id| id.starts_with("cus_")),
                "{line}"
            );
        }
    }
}

fn actions(lines: &[Value]) -> Vec<String> {
    let mut actions: Vec<String> = lines
        .iter()
        .filter(|line| line["type"] == "action")
        .map(Value::to_string)
        .collect();
    actions.sort();
    actions
}

#[sqlx::test]
async fn a_dry_run_writes_nothing_and_prints_the_plan_the_next_run_applies(pool: PgPool) {
    let stripe_account = PrivateStripe::start().await;
    let stripe = Localstripe::at(&stripe_account.base);
    let app = spawn_app(&pool, reconcile_settings(&stripe_account.base, json!({}))).await;
    let (changed, changed_id) = synced(&app, "plan-changed@example.com").await;
    stripe
        .update_customer(&changed_id, &[("name", "Renamed")])
        .await;
    change_locally(&pool, &changed, "phone", "+15550100").await;
    let (_, gone_id) = synced(&app, "plan-gone@example.com").await;
    stripe.delete_customer(&gone_id).await;
    stripe
        .create_customer(&[("email", "plan-adopt@example.com")])
        .await;
    insert_local_only(&pool, "plan-local@example.com").await;
    app.stop().await;

    let before = (
        database_snapshot(&pool).await,
        Localstripe::at(&stripe_account.base).all_customers().await,
    );
    let planned = reconcile_cli(&pool, &stripe_account.base, &["--dry-run"]).await;
    let after = (
        database_snapshot(&pool).await,
        Localstripe::at(&stripe_account.base).all_customers().await,
    );
    assert_eq!(before, after, "a dry run wrote something");
    let plan = actions(&planned);
    // Adopt, create, delete local, and one Stripe update for the customer changed on both
    // sides (Newest keeps the local change: Stripe's list has no change time).
    assert_eq!(plan.len(), 4, "{plan:#?}");
    let summary = planned.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["dry_run"], true);

    let applied = reconcile_cli(&pool, &stripe_account.base, &[]).await;
    assert_eq!(
        actions(&applied),
        plan,
        "the run did not apply the dry run's plan"
    );
    assert_eq!(applied.last().unwrap()["repaired"], 4, "{applied:#?}");
    let again = reconcile_cli(&pool, &stripe_account.base, &["--dry-run"]).await;
    assert!(actions(&again).is_empty(), "{again:#?}");
}

#[sqlx::test]
async fn a_reconcile_killed_mid_run_resumes_and_creates_no_duplicates(pool: PgPool) {
    const CUSTOMERS: i64 = 2_000;
    let stripe_account = PrivateStripe::start().await;
    sqlx::query(
        "insert into customers (id, email) select gen_random_uuid(), 'kill-' || n || \
         '@example.com' from generate_series(1, $1) n",
    )
    .bind(CUSTOMERS)
    .execute(&pool)
    .await
    .unwrap();
    let env = [
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_API_KEY", "sk_test_paysync".to_owned()),
        ("STRIPE_API_BASE", stripe_account.base.clone()),
        ("STRIPE_RATE_LIMIT", "2000".to_owned()),
        ("PAYSYNC_NO_CATCH_UP", "true".to_owned()),
        ("PAYSYNC_NO_RECONCILE", "false".to_owned()),
        // Only the reconciler creates customers here (the outbound worker would send the
        // waiting ones too).
        ("PAYSYNC_NO_OUTBOUND", "true".to_owned()),
    ];
    let linked = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from customers where stripe_id is not null")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let server = ServeProcess::start(&env).await;
    wait_for(
        "a quarter of the customers created in Stripe",
        RUN_DEADLINE,
        || async {
            let linked = linked().await;
            if linked >= CUSTOMERS / 4 {
                Ok(())
            } else {
                Err(linked.to_string())
            }
        },
    )
    .await;
    server.sigkill().await;
    let interrupted = linked().await;
    assert!(interrupted < CUSTOMERS, "killed too late to test anything");

    let server = ServeProcess::start(&env).await;
    wait_for("every customer linked", RUN_DEADLINE, || async {
        let linked = linked().await;
        if linked == CUSTOMERS {
            Ok(())
        } else {
            Err(linked.to_string())
        }
    })
    .await;
    let runs: Vec<(String, i64)> =
        sqlx::query_as("select outcome, scanned from reconcile_runs order by started_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        runs.len(),
        1,
        "the killed run was resumed, not started over: {runs:?}"
    );
    let in_stripe = Localstripe::at(&stripe_account.base).all_customers().await;
    assert_eq!(
        in_stripe.len() as i64,
        CUSTOMERS,
        "a customer was created twice in Stripe"
    );
    let mut named: Vec<&str> = in_stripe
        .iter()
        .filter_map(|c| c["metadata"]["paysync_id"].as_str())
        .collect();
    named.sort_unstable();
    named.dedup();
    assert_eq!(named.len() as i64, CUSTOMERS);
    server.sigterm_and_wait().await;
}

#[sqlx::test]
async fn live_changes_reach_stripe_while_a_long_reconcile_runs(pool: PgPool) {
    let stripe_account = PrivateStripe::start().await;
    // The reconciler may use 10% of 10 requests/s: one a second.
    let spec = json!({
        "rateLimit": {"requestsPerSecond": 10, "burst": 10},
        "reconcile": {"budgetShare": 10},
    });
    let app = spawn_app(&pool, reconcile_settings(&stripe_account.base, spec)).await;
    // Linked to Stripe customers that are gone: the reconciler asks Stripe about each, one
    // call a second (~12 s), then deletes them here.
    for n in 0..12 {
        let email = format!("slow-{n}@example.com");
        insert_linked_in(&pool, "default", &email, &format!("cus_gone{n}")).await;
    }
    let started = app
        .request(reqwest::Method::POST, "/v1/policies/default/reconcile")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), reqwest::StatusCode::ACCEPTED);
    let live = app
        .create_customer("live-during-reconcile@example.com")
        .await;
    wait_synced(&app, live["id"].as_str().unwrap(), 1).await;
    let runs = app.get_json("/v1/reconcile-runs?policy=default").await;
    assert_eq!(
        runs["data"][0]["outcome"], "running",
        "the live change waited for the reconcile: {runs}"
    );
    let report = reconcile_finished(&app, &started.json::<Value>().await.unwrap()).await;
    assert_eq!(report["repaired"], 12, "{report}");
    app.stop().await;
}

/// Waits for the run `started` (a 202 body) to finish; returns its report.
async fn reconcile_finished(app: &TestApp, started: &Value) -> Value {
    let id = started["id"].as_str().unwrap().to_owned();
    wait_for("the reconcile run to finish", RUN_DEADLINE, || async {
        let policy = app.get_json("/v1/policies/default").await;
        let last = &policy["last_reconcile"];
        if last["id"] == id.as_str() {
            Ok(last.clone())
        } else {
            Err(last.to_string())
        }
    })
    .await
}

#[sqlx::test]
async fn adoption_and_deletion_values_are_followed(pool: PgPool) {
    for (adoption, deletion) in [("None", "Orphan"), ("MatchEmail", "SoftDelete")] {
        let tag = adoption.to_lowercase();
        let stripe_account = PrivateStripe::start().await;
        let stripe = Localstripe::at(&stripe_account.base);
        let spec = json!({"adoption": adoption, "deletion": deletion});
        let app = spawn_app(&pool, reconcile_settings(&stripe_account.base, spec)).await;
        let unknown = format!("unknown-{tag}@example.com");
        stripe.create_customer(&[("email", unknown.as_str())]).await;
        let same = format!("same-{tag}@example.com");
        let same_stripe = stripe.create_customer(&[("email", same.as_str())]).await;
        let same_local = insert_local_only(&pool, &same).await;
        let (gone, gone_id) = synced(&app, &format!("gone-{tag}@example.com")).await;
        stripe.delete_customer(&gone_id).await;
        let (deleted, deleted_id) = synced(&app, &format!("deleted-{tag}@example.com")).await;
        delete_locally(&pool, &deleted).await;

        let report = reconcile(&app, "default").await;
        assert_eq!(report["failed"], 0, "{adoption}: {report}");
        let adopted = app
            .get_json(&format!("/v1/customers?email={unknown}"))
            .await;
        assert!(
            adopted["data"].as_array().unwrap().is_empty(),
            "{adoption} adopted {unknown}"
        );
        let same_row = row(&pool, &same_local).await;
        let gone_row = row(&pool, &gone).await;
        let deleted_in_stripe = stripe.customer(&deleted_id).await.expect("kept in Stripe");
        if adoption == "MatchEmail" {
            assert_eq!(same_row["stripe_id"], same_stripe["id"], "linked by email");
            assert_eq!(
                gone_row["deleted"], true,
                "SoftDelete: a Stripe delete soft-deletes here"
            );
            assert!(deleted_in_stripe["metadata"]["paysync_deleted_at"].is_string());
        } else {
            assert_ne!(
                same_row["stripe_id"], same_stripe["id"],
                "None never links by email"
            );
            assert!(
                same_row["stripe_id"].is_string(),
                "created in Stripe instead"
            );
            assert_eq!(gone_row["deleted"], false, "Orphan keeps it");
            assert_eq!(gone_row["state"], "orphaned");
            assert!(deleted_in_stripe["metadata"]["paysync_deleted_at"].is_null());
        }
        let again = reconcile(&app, "default").await;
        // What the policy does not let it repair is reported again, nothing else.
        let reported = again["drift_by_kind"]["stripe_only"].as_i64().unwrap_or(0);
        assert_eq!(
            again["drift"].as_i64().unwrap(),
            reported,
            "{adoption}: {again}"
        );
        app.stop().await;
    }
}
