//! The Kubernetes controller against an in-memory API server (no cluster runs here): a
//! SyncPolicy and its Secret put the policy in the registry and in status; a missing Secret,
//! a rotated one, a spec change, Observe → Enforce, deletion (no finalizer holds it), and two
//! replicas of which only the leader writes.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{TestApp, wait_for};
use crate::support::cluster::{
    LEASES, POLICIES, TEST_LEASE, event_reasons, replica, secret, sync_policy, wait_condition,
    wait_event, wait_ready,
};
use crate::support::customers::wait_synced;
use crate::support::events::DEADLINE;
use crate::support::kube_api::KubeApi;
use crate::support::policies::{create_in, metric, wait_delivery};
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
    assert!(object["metadata"].get("finalizers").is_none(), "{object}");
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

/// Deleting a policy takes it out of the registry (its customers stay) with no finalizer to
/// wait for; a policy carrying the finalizer of earlier versions has it removed.
#[sqlx::test]
async fn deleting_a_policy_leaves_the_registry_and_keeps_its_customers(pool: PgPool) {
    let api = KubeApi::default();
    api.apply(secret("alpha", "whsec_alpha"));
    let mut legacy = sync_policy("alpha", LOCALSTRIPE, json!({}));
    legacy["metadata"]["finalizers"] = json!(["paysync.dev/cleanup"]);
    api.apply(legacy);
    let app = replica(&pool, &api, "replica-a").await;
    wait_for("the legacy finalizer to go", DEADLINE, || async {
        let finalizers = api.get(POLICIES, "alpha").unwrap()["metadata"]["finalizers"].clone();
        if finalizers.as_array().is_none_or(Vec::is_empty) {
            Ok(())
        } else {
            Err(finalizers.to_string())
        }
    })
    .await;
    let created = create_in(&app, "alpha", &unique_email("deleted-policy")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    wait_synced(&app, &id, 1).await;

    api.delete(POLICIES, "alpha");
    assert!(api.get(POLICIES, "alpha").is_none(), "deletion waited");
    wait_for("the policy to leave the registry", DEADLINE, || async {
        let status = app
            .request(reqwest::Method::GET, "/v1/policies/alpha")
            .send()
            .await
            .unwrap()
            .status();
        if status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    let kept = app.get_json(&format!("/v1/customers/{id}")).await;
    assert_eq!(kept["id"], id.as_str());
    app.stop().await;
}

/// With no paysync running (uninstalled, scaled to zero), deleting a policy it managed
/// is immediate: nothing holds the object.
#[sqlx::test]
async fn a_policy_deleted_while_no_paysync_runs_is_gone(pool: PgPool) {
    let (api, app) = alpha_in_a_cluster(&pool, "whsec_alpha", json!({})).await;
    wait_ready(&api, "alpha", "True", None).await;
    app.stop_replica().await;
    api.delete(POLICIES, "alpha");
    assert!(api.get(POLICIES, "alpha").is_none());
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
    // Pausing is not a failure: Ready stays True, Synced says it is paused.
    let object = wait_ready(&api, "alpha", "True", Some("Suspended")).await;
    let synced = object["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Synced")
        .cloned()
        .unwrap();
    assert_eq!(
        (synced["status"].as_str(), synced["reason"].as_str()),
        (Some("False"), Some("ReconcilePaused"))
    );
    let writers: Vec<String> = api.writes().iter().map(|w| w.client.clone()).collect();
    assert!(writers.iter().all(|w| w == "replica-a"), "{writers:?}");
    assert_eq!(
        second.get_json("/v1/policies/alpha").await["readiness"]["reason"],
        "Suspended"
    );

    first.stop_replica().await;
    api.apply(sync_policy("alpha", LOCALSTRIPE, json!({})));
    let object = wait_ready(&api, "alpha", "True", Some("Connected")).await;
    assert_eq!(object["status"]["observedGeneration"], 3);
    assert!(api.writes().iter().any(|w| w.client == "replica-b"));
    assert!(event_reasons(&api, "alpha").contains(&"Suspended".to_owned()));
    second.stop().await;
}

/// A leader whose Lease renewals stop (its calls to the Lease hang; its other calls still go
/// through) stops writing at its renew deadline, and the other replica takes the Lease within
/// the lease duration (plus a retry period to see it) and writes from then on.
#[sqlx::test]
async fn a_leader_that_cannot_renew_stops_writing_and_is_replaced_in_time(pool: PgPool) {
    let (api, first) = alpha_in_a_cluster(&pool, "whsec_alpha", json!({})).await;
    wait_ready(&api, "alpha", "True", None).await;
    wait_holder(&api, "replica-a", DEADLINE).await;
    let second = replica(&pool, &api, "replica-b").await;
    wait_delivery(&second, "whsec_alpha", StatusCode::OK).await;
    assert_eq!(metric(&first, "paysync_leader").await, 1.0);
    assert_eq!(metric(&second, "paysync_leader").await, 0.0);

    let cut = Instant::now();
    api.stall("replica-a", "/leases");
    // Spec changes ask both replicas for status writes all along.
    let churn = {
        let api = api.clone();
        tokio::spawn(async move {
            for n in 1.. {
                let spec = json!({"rateLimit": {"requestsPerSecond": 100 + n, "burst": 100}});
                api.apply(sync_policy("alpha", LOCALSTRIPE, spec));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let takeover = TEST_LEASE.duration + TEST_LEASE.retry_period * 2 + Duration::from_secs(1);
    wait_holder(&api, "replica-b", takeover).await;
    wait_for("replica-b to write status", DEADLINE, || async {
        let by_b = api
            .writes()
            .iter()
            .any(|w| w.client == "replica-b" && w.path.ends_with("/status"));
        if by_b {
            Ok(())
        } else {
            Err("no status write yet".to_owned())
        }
    })
    .await;
    churn.abort();
    let deadline = cut + TEST_LEASE.renew_deadline;
    let late: Vec<String> = api
        .writes()
        .iter()
        .filter(|w| w.client == "replica-a" && w.at > deadline)
        .map(|w| format!("{} {} {:?} after the cut", w.method, w.path, w.at - cut))
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after its deadline: {late:?}"
    );
    assert_eq!(metric(&first, "paysync_leader").await, 0.0);
    assert_eq!(metric(&second, "paysync_leader").await, 1.0);
    first.stop_replica().await;
    second.stop().await;
}

/// Waits until the Lease names `holder`.
async fn wait_holder(api: &KubeApi, holder: &str, within: Duration) {
    wait_for(&format!("{holder} to hold the Lease"), within, || async {
        let lease = api.get(LEASES, "paysync-leader").unwrap_or_default();
        let current = lease["spec"]["holderIdentity"].clone();
        if current == holder {
            Ok(())
        } else {
            Err(current.to_string())
        }
    })
    .await;
}

/// With the CRD missing (404) or RBAC refusing (403), a replica serves no policies: `/readyz`
/// fails and says why, and recovers once the policies can be read.
#[sqlx::test]
async fn readyz_fails_while_the_policies_cannot_be_read(pool: PgPool) {
    let api = KubeApi::default();
    api.refuse("/syncpolicies", 404);
    let app = replica(&pool, &api, "replica-a").await;
    let reason = wait_unready(&app).await;
    assert!(reason.contains("CRD is not installed"), "{reason}");
    api.accept();
    api.refuse("/syncpolicies", 403);
    wait_for("the 403 to be reported", DEADLINE, || async {
        let reason = wait_unready(&app).await;
        if reason.contains("refuses") {
            Ok(())
        } else {
            Err(reason)
        }
    })
    .await;
    api.accept();
    wait_for("readyz to pass", DEADLINE, || async {
        let (status, body) = readyz(&app).await;
        if status == StatusCode::OK && body["checks"]["kubernetes"] == "ok" {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    app.stop_replica().await;
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let response = app
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Waits until `/readyz` answers 503 with a Kubernetes problem; the problem.
async fn wait_unready(app: &TestApp) -> String {
    wait_for("readyz to fail", DEADLINE, || async {
        let (status, body) = readyz(app).await;
        match body["checks"]["kubernetes"].as_str() {
            Some(problem) if status == StatusCode::SERVICE_UNAVAILABLE && problem != "ok" => {
                Ok(problem.to_owned())
            }
            _ => Err(format!("{status} {body}")),
        }
    })
    .await
}

/// A database that cannot be read shows in status (Ready False, `DatabaseUnavailable`, the
/// counts kept) and as a Warning Event; leadership (a Lease) does not depend on it, so the
/// status can be written, and it returns to Ready once the database answers again.
#[sqlx::test]
async fn a_database_outage_shows_in_status_and_as_an_event(pool: PgPool) {
    let (api, app) = alpha_in_a_cluster(&pool, "whsec_alpha", json!({})).await;
    wait_ready(&api, "alpha", "True", Some("Connected")).await;
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let admin = sqlx::PgPool::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"alter database "{database}" allow_connections false"#
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()")
        .bind(&database)
        .execute(&admin)
        .await
        .unwrap();
    // A spec change makes the controller look at the policy now.
    let rate = |n: u32| json!({"rateLimit": {"requestsPerSecond": n, "burst": n}});
    api.apply(sync_policy("alpha", LOCALSTRIPE, rate(900)));
    let object = wait_ready(&api, "alpha", "False", Some("DatabaseUnavailable")).await;
    assert!(
        object["status"]["customers"].is_object(),
        "the counts were dropped: {object}"
    );
    wait_event(&api, "alpha", "DatabaseUnavailable").await;

    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"alter database "{database}" allow_connections true"#
    )))
    .execute(&admin)
    .await
    .unwrap();
    api.apply(sync_policy("alpha", LOCALSTRIPE, rate(800)));
    wait_ready(&api, "alpha", "True", Some("Connected")).await;
    app.stop_replica().await;
}

/// A policy carrying a field this version does not know (written through a newer CRD) or a
/// value it cannot read is `Invalid`, its status and an Event naming the field, while the
/// other policies of the namespace go on syncing.
#[sqlx::test]
async fn a_policy_that_does_not_parse_is_invalid_alone(pool: PgPool) {
    let (api, app) = alpha_in_a_cluster(&pool, "whsec_alpha", json!({})).await;
    wait_ready(&api, "alpha", "True", Some("Connected")).await;
    api.apply(secret("beta", "whsec_beta"));
    api.apply(sync_policy("beta", LOCALSTRIPE, json!({"mood": "happy"})));
    api.apply(secret("gamma", "whsec_gamma"));
    api.apply(sync_policy(
        "gamma",
        LOCALSTRIPE,
        json!({"mode": "Sometimes"}),
    ));
    for (policy, field) in [("beta", "spec.mood"), ("gamma", "spec.mode")] {
        let object = wait_ready(&api, policy, "False", Some("Invalid")).await;
        let ready = object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap();
        assert!(
            ready["message"].as_str().unwrap().contains(field),
            "{ready}"
        );
        wait_event(&api, policy, "Invalid").await;
    }
    let created = create_in(&app, "alpha", &unique_email("beside-invalid")).await;
    wait_synced(&app, created["id"].as_str().unwrap(), 1).await;
    let beta = app.get_json("/v1/policies/beta").await;
    assert_eq!(beta["readiness"]["reason"], "Invalid");
    app.stop_replica().await;
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
