//! SyncPolicies: two Stripe accounts at once (two localstripe instances), each customer
//! synced only with its own account, webhooks verified per policy, the policies API, and the
//! policies file hot-reloaded (secret rotation, rate limit, a broken file, a removed policy).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, error_code, wait_for};
use crate::support::customers::wait_synced;
use crate::support::events::{DEADLINE, customer_object, event, processed, urlencode};
use crate::support::mock_kafka::MockKafka;
use crate::support::policies::{
    ALPHA_SECRET, BETA_SECRET, PolicyFile, PolicyManifest, assert_metric_stays, create_in,
    deliver_to, metric, spawn_with_file, two_accounts, wait_delivery, wait_metric,
};
use crate::support::reconcile::insert_local_only;
use crate::support::stripe::{LOCALSTRIPE, LOCALSTRIPE_B, Localstripe, unique_email};

/// Customers created in each account reach that account's Stripe and never the other's.
async fn each_account_syncs_with_its_own_stripe(app: &TestApp) {
    let (a_email, b_email) = (unique_email("alpha"), unique_email("beta"));
    let alpha = create_in(app, "alpha", &a_email).await;
    let beta = create_in(app, "beta", &b_email).await;
    assert_eq!(
        (alpha["account"].as_str(), beta["account"].as_str()),
        (Some("alpha"), Some("beta"))
    );
    let alpha = wait_synced(app, alpha["id"].as_str().unwrap(), 1).await;
    let beta = wait_synced(app, beta["id"].as_str().unwrap(), 1).await;

    let (first, second) = (Localstripe::at(LOCALSTRIPE), Localstripe::at(LOCALSTRIPE_B));
    let alpha_id = alpha["sync"]["stripe_id"].as_str().unwrap();
    let beta_id = beta["sync"]["stripe_id"].as_str().unwrap();
    assert_eq!(
        first.customer(alpha_id).await.unwrap()["email"],
        a_email.as_str()
    );
    assert_eq!(
        second.customer(beta_id).await.unwrap()["email"],
        b_email.as_str()
    );
    assert!(
        second.customers_with_email(&a_email).await.is_empty(),
        "alpha leaked into beta"
    );
    assert!(
        first.customers_with_email(&b_email).await.is_empty(),
        "beta leaked into alpha"
    );

    let listed = app.get_json("/v1/customers?account=beta&limit=100").await;
    let accounts: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["account"])
        .collect();
    assert!(
        !accounts.is_empty() && accounts.iter().all(|a| *a == "beta"),
        "{accounts:?}"
    );
}

#[sqlx::test]
async fn customers_reach_only_their_own_account_postgres_transport(pool: PgPool) {
    let app = TestApp::spawn_settings(pool, two_accounts(None)).await;
    each_account_syncs_with_its_own_stripe(&app).await;
    app.stop().await;
}

#[sqlx::test]
async fn customers_reach_only_their_own_account_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let app = TestApp::spawn_settings(pool, two_accounts(Some(&kafka))).await;
    each_account_syncs_with_its_own_stripe(&app).await;
    app.stop().await;
}

/// The account is chosen once: named or implied, never unknown, never changed.
#[sqlx::test]
async fn the_account_is_chosen_at_creation_and_never_changes(pool: PgPool) {
    let app = TestApp::spawn_settings(pool, two_accounts(None)).await;
    let email = unique_email("which-account");
    let no_account = app.post_customer(&json!({"email": email})).await;
    assert_eq!(
        error_code(no_account, StatusCode::UNPROCESSABLE_ENTITY).await,
        "account_required"
    );
    let unknown = app
        .post_customer(&json!({"email": email, "account": "gamma"}))
        .await;
    assert_eq!(
        error_code(unknown, StatusCode::UNPROCESSABLE_ENTITY).await,
        "unknown_account"
    );

    let created = create_in(&app, "alpha", &email).await;
    let id = created["id"].as_str().unwrap();
    let moved = app
        .patch_customer(id, &json!({"account": "beta"}), None)
        .await;
    assert_eq!(
        error_code(moved, StatusCode::UNPROCESSABLE_ENTITY).await,
        "account_immutable"
    );
    let same = app
        .patch_customer(id, &json!({"account": "alpha", "name": "Kept"}), None)
        .await;
    assert_eq!(same.status(), StatusCode::OK);
    // Emails are unique per account: the same email may live in the other account.
    create_in(&app, "beta", &email).await;
    let filter = app
        .request(reqwest::Method::GET, "/v1/customers?account=Not_A_Name")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(filter, StatusCode::BAD_REQUEST).await,
        "invalid_account_filter"
    );
    app.stop().await;
}

/// A delivery signed for one account is refused on the other's route; the default route
/// belongs to the `default` policy (there is none here).
#[sqlx::test]
async fn webhooks_are_verified_with_the_secrets_of_the_policy_they_name(pool: PgPool) {
    let app = TestApp::spawn_settings(pool, two_accounts(None)).await;
    let email = unique_email("alpha-webhook");
    let body = event(
        "evt_alpha_only",
        "customer.created",
        crate::support::webhooks::now(),
        customer_object("cus_AlphaOnly1", &email, "Alpha"),
    );

    let on_beta = deliver_to(&app, "/webhooks/stripe/beta", ALPHA_SECRET, &body).await;
    assert_eq!(
        error_code(on_beta, StatusCode::BAD_REQUEST).await,
        "invalid_signature"
    );
    let unknown = deliver_to(&app, "/webhooks/stripe/gamma", ALPHA_SECRET, &body).await;
    assert_eq!(
        error_code(unknown, StatusCode::NOT_FOUND).await,
        "unknown_policy"
    );
    let default_route = deliver_to(&app, "/webhooks/stripe", ALPHA_SECRET, &body).await;
    assert_eq!(
        error_code(default_route, StatusCode::NOT_FOUND).await,
        "unknown_policy"
    );
    let beta_signed = deliver_to(&app, "/webhooks/stripe/alpha", BETA_SECRET, &body).await;
    assert_eq!(beta_signed.status(), StatusCode::BAD_REQUEST);

    let on_alpha = deliver_to(&app, "/webhooks/stripe/alpha", ALPHA_SECRET, &body).await;
    assert_eq!(on_alpha.status(), StatusCode::OK);
    assert_eq!(processed(&app, "evt_alpha_only").await, "adopted");
    let page = app
        .get_json(&format!("/v1/customers?email={}", urlencode(&email)))
        .await;
    assert_eq!(page["data"][0]["account"], "alpha", "{page}");
    assert_eq!(
        metric(
            &app,
            r#"paysync_webhooks_total{policy="beta",outcome="bad_signature"}"#
        )
        .await,
        1.0
    );
    app.stop().await;
}

/// `GET /v1/policies`: the specs in effect, readiness, counts; never a secret.
#[sqlx::test]
async fn the_policies_api_shows_specs_readiness_and_counts_but_no_secret(pool: PgPool) {
    let app = TestApp::spawn_settings(pool, two_accounts(None)).await;
    let created = create_in(&app, "alpha", &unique_email("counted")).await;
    wait_synced(&app, created["id"].as_str().unwrap(), 1).await;
    let alpha = wait_for("alpha to be checked against Stripe", DEADLINE, || async {
        let alpha = app.get_json("/v1/policies/alpha").await;
        match alpha["readiness"]["reason"].as_str() {
            Some("Connected") => Ok(alpha),
            _ => Err(alpha["readiness"].to_string()),
        }
    })
    .await;
    assert_eq!(alpha["readiness"]["ready"], true);
    assert_eq!(alpha["spec"]["apiBase"], LOCALSTRIPE);
    assert_eq!(alpha["spec"]["stripeSecretRef"]["name"], "alpha");
    assert_eq!(
        alpha["customers"],
        json!({"pending": 0, "synced": 1, "failed": 0, "orphaned": 0})
    );

    let response = app
        .request(reqwest::Method::GET, "/v1/policies")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for secret in [ALPHA_SECRET, BETA_SECRET, "sk_test_paysync"] {
        assert!(
            !text.contains(secret),
            "a secret in GET /v1/policies: {text}"
        );
    }
    let all: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    let missing = app
        .request(reqwest::Method::GET, "/v1/policies/gamma")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

fn alpha(secret: &str, spec: Value) -> PolicyManifest<'_> {
    PolicyManifest {
        name: "alpha",
        api_base: LOCALSTRIPE,
        webhook_secret: secret,
        spec,
    }
}

/// Editing the file rotates the webhook secret and changes the rate limit without a
/// restart; a broken edit keeps the last good policies.
#[sqlx::test]
async fn the_policies_file_is_applied_without_a_restart(pool: PgPool) {
    let file = PolicyFile::new(&[alpha("whsec_old", json!({}))]);
    let app = spawn_with_file(pool, &file, None).await;
    wait_delivery(&app, "whsec_old", StatusCode::OK).await;

    file.write(&[alpha(
        "whsec_new",
        json!({"rateLimit": {"requestsPerSecond": 1, "burst": 1}}),
    )]);
    wait_delivery(&app, "whsec_old", StatusCode::BAD_REQUEST).await;
    wait_delivery(&app, "whsec_new", StatusCode::OK).await;
    let policy = app.get_json("/v1/policies/alpha").await;
    assert_eq!(
        policy["spec"]["rateLimit"],
        json!({"requestsPerSecond": 1, "burst": 1})
    );
    // At one request a second, three creates (one call each) must wait for the budget: the
    // new token bucket is the one in use.
    let mut ids = Vec::new();
    for n in 0..3 {
        let created = create_in(&app, "alpha", &unique_email(&format!("slow-{n}"))).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_synced(&app, id, 1).await;
    }
    let waited = metric(
        &app,
        r#"paysync_stripe_rate_limit_wait_seconds_sum{policy="alpha"}"#,
    )
    .await;
    assert!(
        waited >= 2.0,
        "the calls waited {waited} s for the 1/s budget"
    );

    file.write_text("apiVersion: paysync.dev/v1alpha1\nkind: SyncPolicy\nmetadata: {name: alpha\n");
    wait_metric(
        &app,
        r#"paysync_policy_reloads_total{outcome="invalid"}"#,
        1.0,
    )
    .await;
    wait_delivery(&app, "whsec_new", StatusCode::OK).await;
    assert_eq!(app.get_json("/v1/policies/alpha").await["name"], "alpha");
    app.stop().await;
}

/// The file is read when it changes, not in a loop: idle, nothing is reloaded; a file written
/// beside it, or the same text saved again, reloads nothing; an edit reloads once.
#[sqlx::test]
async fn the_policies_file_is_reloaded_only_when_it_changes(pool: PgPool) {
    const APPLIED: &str = r#"paysync_policy_reloads_total{outcome="applied"}"#;
    const INVALID: &str = r#"paysync_policy_reloads_total{outcome="invalid"}"#;
    let file = PolicyFile::new(&[alpha("whsec_old", json!({}))]);
    let app = spawn_with_file(pool, &file, None).await;
    wait_delivery(&app, "whsec_old", StatusCode::OK).await;

    assert_metric_stays(&app, APPLIED, 0.0, Duration::from_secs(10)).await;
    std::fs::write(file.dir().join("notes.yaml"), "not: a policy\n").unwrap();
    std::fs::write(file.dir().join("README"), "beside the policies\n").unwrap();
    file.write(&[alpha("whsec_old", json!({}))]);
    assert_metric_stays(&app, APPLIED, 0.0, Duration::from_secs(2)).await;

    file.write(&[alpha("whsec_new", json!({}))]);
    wait_metric(&app, APPLIED, 1.0).await;
    wait_delivery(&app, "whsec_new", StatusCode::OK).await;
    assert_metric_stays(&app, APPLIED, 1.0, Duration::from_secs(2)).await;
    assert_eq!(metric(&app, INVALID).await, 0.0);
    app.stop().await;
}

/// Changes pending for a policy that is then removed stay pending (reported, not lost) and
/// are sent once the policy is back.
#[sqlx::test]
async fn a_removed_policy_leaves_its_changes_pending_not_lost(pool: PgPool) {
    let file = PolicyFile::new(&[alpha(ALPHA_SECRET, json!({"mode": "Observe"}))]);
    let app = spawn_with_file(pool, &file, None).await;
    let email = unique_email("removed");
    let created = create_in(&app, "alpha", &email).await;
    let id = created["id"].as_str().unwrap().to_owned();
    wait_metric(
        &app,
        r#"paysync_outbound_synced_total{policy="alpha",outcome="observed_create"}"#,
        1.0,
    )
    .await;

    file.write(&[PolicyManifest {
        name: "beta",
        api_base: LOCALSTRIPE_B,
        webhook_secret: BETA_SECRET,
        spec: json!({}),
    }]);
    wait_for("alpha to be removed", DEADLINE, || async {
        match app
            .request(reqwest::Method::GET, "/v1/policies/alpha")
            .send()
            .await
            .unwrap()
            .status()
        {
            StatusCode::NOT_FOUND => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    let patched = app
        .patch_customer(&id, &json!({"name": "Changed while removed"}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    wait_metric(
        &app,
        r#"paysync_outbound_synced_total{policy="alpha",outcome="no_policy"}"#,
        1.0,
    )
    .await;
    let customer: Value = app.get_customer(&id).await.json().await.unwrap();
    assert_eq!(customer["sync"]["state"], "pending");
    assert!(
        Localstripe::new()
            .customers_with_email(&email)
            .await
            .is_empty()
    );

    file.write(&[alpha(ALPHA_SECRET, json!({}))]);
    let synced = wait_synced(&app, &id, 2).await;
    let in_stripe = Localstripe::new()
        .customer(synced["sync"]["stripe_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(in_stripe["name"], "Changed while removed");
    app.stop().await;
}

/// A policy file whose Secret holds `api_key` for alpha (or, without one, no Secret at all).
fn alpha_with_key(api_key: Option<&str>) -> String {
    let policy = json!({
        "apiVersion": "paysync.dev/v1alpha1", "kind": "SyncPolicy", "metadata": {"name": "alpha"},
        "spec": {"stripeSecretRef": {"name": "alpha-stripe"}, "apiBase": LOCALSTRIPE},
    });
    match api_key {
        None => policy.to_string(),
        Some(key) => {
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alpha-stripe"},
                "stringData": {"apiKey": key, "webhookSecrets": ALPHA_SECRET},
            });
            format!("{policy}\n---\n{secret}")
        }
    }
}

async fn wait_reason(app: &TestApp, reason: &str) -> Value {
    wait_for(&format!("alpha to be {reason}"), DEADLINE, || async {
        let alpha = app.get_json("/v1/policies/alpha").await;
        if alpha["readiness"]["reason"] == reason {
            Ok(alpha)
        } else {
            Err(alpha["readiness"].to_string())
        }
    })
    .await
}

/// A policy whose Secret is missing, or whose key Stripe refuses, is not Ready and sends
/// nothing (no dead letter: the change waits); a good key sends what waited.
#[sqlx::test]
async fn a_missing_secret_or_a_rejected_key_syncs_nothing_until_fixed(pool: PgPool) {
    let file = PolicyFile::new(&[]);
    file.write_text(&alpha_with_key(None));
    let app = spawn_with_file(pool, &file, None).await;
    let missing = wait_reason(&app, "SecretNotFound").await;
    assert_eq!(missing["readiness"]["ready"], false);

    file.write_text(&alpha_with_key(Some("not_a_stripe_key")));
    wait_reason(&app, "StripeRejectedKey").await;
    let email = unique_email("rejected-key");
    let created = create_in(&app, "alpha", &email).await;
    let id = created["id"].as_str().unwrap().to_owned();
    wait_metric(
        &app,
        r#"paysync_outbound_synced_total{policy="alpha",outcome="not_ready"}"#,
        1.0,
    )
    .await;
    assert_eq!(app.get_json("/v1/dead-letters").await["data"], json!([]));

    file.write_text(&alpha_with_key(Some("sk_test_paysync")));
    wait_synced(&app, &id, 1).await;
    wait_reason(&app, "Connected").await;
    app.stop().await;
}

/// A policy that starts writing queues what waited. A customer whose message is still waiting
/// to be taken needs nothing more; one whose message a worker holds right now is queued again
/// (the worker may have judged it under the old policy and be about to finish as "waits").
#[sqlx::test]
async fn a_message_a_worker_holds_does_not_count_as_queued(pool: PgPool) {
    let id = insert_local_only(&pool, &unique_email("requeue")).await;
    let customer: uuid::Uuid = id.parse().unwrap();
    sqlx::query("insert into outbox (id, customer_id, op, version) values ($1, $2, 'create', 1)")
        .bind(uuid::Uuid::now_v7())
        .bind(customer)
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let queued = paysync::store::customers::requeue_pending(&mut conn, "default").await;
    assert_eq!(queued.unwrap(), 0, "its message still waits to be taken");

    let mut claim = pool.begin().await.unwrap();
    sqlx::query("select id from outbox where published_at is null for update")
        .fetch_all(&mut *claim)
        .await
        .unwrap();
    let queued = paysync::store::customers::requeue_pending(&mut conn, "default").await;
    assert_eq!(queued.unwrap(), 1, "its message is held by a worker");
    claim.rollback().await.unwrap();
}
