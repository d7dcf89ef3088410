//! The controller under test: paysync in-process with its policies from the in-memory
//! Kubernetes API ([`KubeApi`]), and the manifests a user would `kubectl apply`.

use paysync::app::{PolicySource, Settings};
use std::time::Duration;

use paysync::controller::{Cluster, LeaseTiming};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::app::{TestApp, settings, wait_for};
use super::events::DEADLINE;
use super::kube_api::KubeApi;
use super::policies::all_workers;
use super::reconcile::spawn_app;

pub const POLICIES: &str = "paysync.dev/v1alpha1/syncpolicies";
pub const SECRETS: &str = "v1/secrets";
pub const EVENTS: &str = "events.k8s.io/v1/events";
pub const LEASES: &str = "coordination.k8s.io/v1/leases";

/// Leader election at a fifth of client-go's pace, so a takeover is quick to watch.
pub const TEST_LEASE: LeaseTiming = LeaseTiming {
    duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(400),
};

/// Every worker on, the policies from the namespace `payments` of `api`, as replica `name`.
pub fn cluster_settings(api: &KubeApi, name: &str) -> Settings {
    let cluster = Cluster {
        client: api.client(name),
        namespace: "payments".to_owned(),
        instance: name.to_owned(),
        lease: TEST_LEASE,
    };
    all_workers(
        Settings {
            policies: PolicySource::Kubernetes(cluster),
            ..settings()
        },
        None,
    )
}

/// A replica of paysync on `api`, with a pool (so a session and a leader lock) of its own.
pub async fn replica(pool: &PgPool, api: &KubeApi, name: &str) -> TestApp {
    spawn_app(pool, cluster_settings(api, name)).await
}

/// The Secret `stripe-<policy>` with an API key and the webhook secrets.
pub fn secret(policy: &str, webhook_secrets: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("stripe-{policy}"), "namespace": "payments"},
        "stringData": {"apiKey": "sk_test_controller", "webhookSecrets": webhook_secrets},
    })
}

/// A SyncPolicy on the Stripe at `api_base` using Secret `stripe-<name>`, with more `spec`.
pub fn sync_policy(name: &str, api_base: &str, spec: Value) -> Value {
    let mut merged = json!({
        "stripeSecretRef": {"name": format!("stripe-{name}")},
        "apiBase": api_base,
        "rateLimit": {"requestsPerSecond": 1000, "burst": 1000},
    });
    if let (Some(merged), Value::Object(more)) = (merged.as_object_mut(), spec) {
        merged.extend(more);
    }
    json!({
        "apiVersion": "paysync.dev/v1alpha1",
        "kind": "SyncPolicy",
        "metadata": {"name": name, "namespace": "payments"},
        "spec": merged,
    })
}

/// The condition `type_` of the policy's status, once `check` accepts it.
pub async fn wait_condition(
    api: &KubeApi,
    policy: &str,
    type_: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(
        &format!("{policy}'s {type_} condition"),
        DEADLINE,
        || async {
            let object = api.get(POLICIES, policy).ok_or("no such policy")?;
            let condition = object["status"]["conditions"]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["type"] == type_).cloned())
                .unwrap_or(Value::Null);
            if check(&condition) {
                Ok(object)
            } else {
                Err(condition.to_string())
            }
        },
    )
    .await
}

/// The policy's object once `Ready` has `status` (and `reason`, when given).
pub async fn wait_ready(api: &KubeApi, policy: &str, status: &str, reason: Option<&str>) -> Value {
    wait_condition(api, policy, "Ready", |c| {
        c["status"] == status && reason.is_none_or(|r| c["reason"] == r)
    })
    .await
}

/// The reasons of the Events published about `policy`, oldest first.
pub fn event_reasons(api: &KubeApi, policy: &str) -> Vec<String> {
    api.list(EVENTS)
        .iter()
        .filter(|e| e["regarding"]["name"] == policy)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until an Event with `reason` is published about `policy`.
pub async fn wait_event(api: &KubeApi, policy: &str, reason: &str) {
    wait_for(&format!("a {reason} event"), DEADLINE, || async {
        let reasons = event_reasons(api, policy);
        if reasons.iter().any(|r| r == reason) {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
}
