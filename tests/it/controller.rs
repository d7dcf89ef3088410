//! The Kubernetes controller against an in-memory API server (no cluster runs here): a
//! SyncPolicy and its Secret put the policy in the registry and in status; a missing Secret,
//! a rotated one, a spec change, Observe → Enforce, deletion with the finalizer, and two
//! replicas of which only the leader writes.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, wait_for};
use crate::support::cluster::{
    POLICIES, event_reasons, replica, secret, sync_policy, wait_condition, wait_event, wait_ready,
};
use crate::support::customers::wait_synced;
use crate::support::events::DEADLINE;
use crate::support::kube_api::KubeApi;
use crate::support::policies::{create_in, wait_delivery};
use crate::support::private_stripe::PrivateStripe;
use crate::support::reconcile::reconcile;
use crate::support::stripe::{LOCALSTRIPE, Localstripe, unique_email};

/// Policy `alpha` (on the shared localstripe, with `spec`) and its Secret in a cluster, and
/// a replica of paysync on it.
async fn alpha_in_a_cluster(
    pool: &PgPool,
    webhook_secret: &str,
    spec: Value,
) -> (KubeApi, TestApp) {
    let api = KubeApi::default();
    api.apply(secret("alpha", webhook_secret));
    api.apply(sync_policy("alpha", LOCALSTRIPE, spec));
    let app = replica(pool, &api, "replica-a").await;
    (api, app)
}

/// The end-to-end path: a SyncPolicy and its Secret created through the API make paysync
/// sync a REST customer to (its own) localstripe; the status says Ready, its customers and
/// its last reconcile, as `GET /v1/policies` does; Events tell Ready and the repair.
#[sqlx::test]
async fn a_policy_created_in_the_cluster_syncs_and_reports_its_status(pool: PgPool) {
    let stripe = PrivateStripe::start().await;
    let api = KubeApi::default();
    api.apply(secret("alpha", "whsec_alpha"));
    api.apply(sync_policy("alpha", &stripe.base, json!({})));
    let app = replica(&pool, &api, "replica-a").await;

    let object = wait_ready(&api, "alpha", "True", Some("Connected")).await;
    assert_eq!(object["status"]["observedGeneration"], 1);
    assert_eq!(
        object["metadata"]["finalizers"],
        json!(["paysync.dev/cleanup"])
    );
    wait_event(&api, "alpha", "Ready").await;

    let created = create_in(&app, "alpha", &unique_email("controller")).await;
    let id = created["id"].as_str().unwrap();
    let synced = wait_synced(&app, id, 1).await;
    let on_stripe = Localstripe::at(&stripe.base).all_customers().await;
    assert!(
        on_stripe
            .iter()
            .any(|c| c["id"] == synced["sync"]["stripe_id"])
    );

    // A customer made in Stripe behind paysync's back: the reconcile repairs it, and the
    // status and an Event say so.
    let outside = unique_email("made-in-stripe");
    Localstripe::at(&stripe.base)
        .create_customer(&[("email", outside.as_str())])
        .await;
    let run = reconcile(&app, "alpha").await;
    assert_eq!(run["repaired"], 1, "{run}");
    let object = wait_condition(&api, "alpha", "Synced", |c| c["status"] == "True").await;
    let status = &object["status"];
    assert_eq!(status["lastReconcile"]["outcome"], "succeeded");
    assert_eq!(status["lastReconcile"]["repaired"], 1);
    wait_event(&api, "alpha", "Repaired").await;
    let policy = app.get_json("/v1/policies/alpha").await;
    assert_eq!(policy["readiness"]["reason"], "Connected");
    assert_eq!(status["customers"]["synced"], policy["customers"]["synced"]);
    assert_eq!(status["customers"]["synced"], 2);
    assert_eq!(
        status["lastReconcile"]["scanned"],
        policy["last_reconcile"]["scanned"]
    );
    app.stop().await;
}

/// A policy whose Secret does not exist is Ready=False/SecretNotFound (and says so in an
/// Event); creating the Secret makes it Ready.
#[sqlx::test]
async fn a_missing_secret_is_not_ready_until_it_is_created(pool: PgPool) {
    let api = KubeApi::default();
    api.apply(sync_policy("alpha", LOCALSTRIPE, json!({})));
    let app = replica(&pool, &api, "replica-a").await;
    wait_ready(&api, "alpha", "False", Some("SecretNotFound")).await;
    wait_event(&api, "alpha", "SecretNotFound").await;
    let policy = app.get_json("/v1/policies/alpha").await;
    assert_eq!(policy["readiness"]["reason"], "SecretNotFound");

    api.apply(secret("alpha", "whsec_alpha"));
    wait_ready(&api, "alpha", "True", Some("Connected")).await;
    wait_condition(&api, "alpha", "Degraded", |c| c["status"] == "False").await;
    app.stop().await;
}

/// Rotating the webhook secrets in the Secret: the ingress takes the new one and refuses the
/// old, without a restart.
#[sqlx::test]
async fn a_rotated_secret_changes_which_webhooks_are_accepted(pool: PgPool) {
    let (api, app) = alpha_in_a_cluster(&pool, "whsec_old", json!({})).await;
    wait_delivery(&app, "whsec_old", StatusCode::OK).await;

    api.apply(secret("alpha", "whsec_new"));
    wait_delivery(&app, "whsec_new", StatusCode::OK).await;
    wait_delivery(&app, "whsec_old", StatusCode::BAD_REQUEST).await;
    app.stop().await;
}

/// A spec change bumps `observedGeneration` and takes effect: Observe → Enforce sends the
/// change that waited in Observe mode.
#[sqlx::test]
async fn a_spec_change_is_observed_and_observe_to_enforce_sends_what_waited(pool: PgPool) {
    let api = KubeApi::default();
    api.apply(secret("alpha", "whsec_alpha"));
    api.apply(sync_policy(
        "alpha",
        LOCALSTRIPE,
        json!({"mode": "Observe"}),
    ));
    let app = replica(&pool, &api, "replica-a").await;
    wait_ready(&api, "alpha", "True", None).await;
    let created = create_in(&app, "alpha", &unique_email("observe")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let waiting = app.get_json(&format!("/v1/customers/{id}")).await;
    assert_eq!(waiting["sync"]["state"], "pending", "{waiting}");

    api.apply(sync_policy(
        "alpha",
        LOCALSTRIPE,
        json!({"mode": "Enforce"}),
    ));
    wait_for("observedGeneration 2", DEADLINE, || async {
        let object = api.get(POLICIES, "alpha").unwrap();
        let observed = &object["status"]["observedGeneration"];
        if *observed == 2 {
            Ok(())
        } else {
            Err(observed.to_string())
        }
    })
    .await;
    assert_eq!(
        app.get_json("/v1/policies/alpha").await["spec"]["mode"],
        "Enforce"
    );
    wait_synced(&app, &id, 1).await;
    app.stop().await;
}

/// Deleting a policy runs the finalizer: the policy leaves the registry (its customers stay)
/// and then the cluster.
#[sqlx::test]
async fn deleting_a_policy_runs_the_finalizer_and_keeps_its_customers(pool: PgPool) {
    let (api, app) = alpha_in_a_cluster(&pool, "whsec_alpha", json!({})).await;
    let object = wait_ready(&api, "alpha", "True", None).await;
    assert_eq!(
        object["metadata"]["finalizers"],
        json!(["paysync.dev/cleanup"])
    );
    let created = create_in(&app, "alpha", &unique_email("deleted-policy")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    wait_synced(&app, &id, 1).await;

    api.delete(POLICIES, "alpha");
    wait_for("the policy to be gone", DEADLINE, || async {
        let in_cluster = api.get(POLICIES, "alpha").is_some();
        let status = app
            .request(reqwest::Method::GET, "/v1/policies/alpha")
            .send()
            .await
            .unwrap()
            .status();
        if !in_cluster && status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(format!(
                "in the cluster: {in_cluster}; the API says {status}"
            ))
        }
    })
    .await;
    let kept = app.get_json(&format!("/v1/customers/{id}")).await;
    assert_eq!(kept["id"], id.as_str());
    app.stop().await;
}

/// Two replicas: both put the policy in their registries, only the leader writes to the
/// cluster; when the leader stops, the other takes over.
#[sqlx::test]
async fn only_the_leader_writes_and_another_takes_over(pool: PgPool) {
    let (api, first) = alpha_in_a_cluster(&pool, "whsec_alpha", json!({})).await;
    wait_ready(&api, "alpha", "True", None).await;
    let second = replica(&pool, &api, "replica-b").await;
    wait_delivery(&second, "whsec_alpha", StatusCode::OK).await;
    api.apply(sync_policy("alpha", LOCALSTRIPE, json!({"suspend": true})));
    wait_ready(&api, "alpha", "False", Some("Suspended")).await;
    let writers: Vec<String> = api.writes().iter().map(|w| w.client.clone()).collect();
    assert!(writers.iter().all(|w| w == "replica-a"), "{writers:?}");
    assert_eq!(
        second.get_json("/v1/policies/alpha").await["readiness"]["reason"],
        "Suspended"
    );

    first.stop_replica().await;
    api.apply(sync_policy("alpha", LOCALSTRIPE, json!({})));
    let object = wait_ready(&api, "alpha", "True", None).await;
    assert_eq!(object["status"]["observedGeneration"], 3);
    assert!(api.writes().iter().any(|w| w.client == "replica-b"));
    assert!(event_reasons(&api, "alpha").contains(&"Suspended".to_owned()));
    second.stop().await;
}

/// A status write the API server refuses is retried with backoff (the first failure in a row
/// is a `SyncError` Event); once the server takes writes again the status is written.
#[sqlx::test]
async fn a_refused_status_write_is_retried_until_it_lands(pool: PgPool) {
    let api = KubeApi::default();
    api.fail_status_writes(3);
    api.apply(secret("alpha", "whsec_alpha"));
    api.apply(sync_policy("alpha", LOCALSTRIPE, json!({})));
    let app = replica(&pool, &api, "replica-a").await;
    wait_event(&api, "alpha", "SyncError").await;
    wait_ready(&api, "alpha", "True", Some("Connected")).await;
    let refused = api
        .writes()
        .iter()
        .filter(|w| w.path.ends_with("/status"))
        .count();
    assert!(
        refused > 3,
        "{refused} status writes: three refused, then one that landed"
    );
    app.stop().await;
}
