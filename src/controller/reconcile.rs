//! One SyncPolicy's reconcile: put it (with its Secret's credentials) in the registry, and on
//! the leader keep its finalizer, write its status and tell what changed in Events.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource as _, ResourceExt as _};
use serde_json::json;
use tracing::{info, warn};

use super::status::{self, Notice, Observed};
use super::{Context, FIELD_MANAGER, FINALIZER, definition};
use crate::backoff::DEPENDENCY_BACKOFF;
use crate::crd::{CustomerCounts, SyncPolicy, SyncPolicyStatus, reasons};
use crate::policy::{self, Readiness};
use crate::store::{self, customers};

/// How soon a policy whose new key Stripe has not answered about yet is looked at again.
const CHECKING_AGAIN: Duration = Duration::from_secs(1);
/// How soon a policy that cannot sync is looked at again (a change to it or its Secret
/// triggers a reconcile at once anyway).
const NOT_READY_AGAIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub async fn reconcile(policy: Arc<SyncPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let leader = ctx.leader.is_leader();
    if policy.meta().deletion_timestamp.is_some() {
        ctx.feed.remove(&name);
        if leader && has_finalizer(&policy) {
            info!(policy = %name, "SyncPolicy deleted: its work stopped, its customers stay");
            set_finalizer(&ctx.policies, &policy, false).await?;
        }
        return Ok(Action::await_change());
    }
    if leader && !has_finalizer(&policy) {
        set_finalizer(&ctx.policies, &policy, true).await?;
    }
    let secret = ctx
        .secrets
        .get_opt(&policy.spec.stripe_secret_ref.name)
        .await?;
    ctx.feed.set(definition(&policy, secret.as_ref()));
    let readiness = readiness(&ctx, &name).await;
    if leader {
        write_status(&ctx, &policy, &readiness).await?;
    }
    ctx.failures().remove(&name);
    Ok(Action::requeue(next_look(&policy, &readiness)))
}

/// Retries a failed reconcile with backoff (a fifth of a second, doubling up to half a
/// minute); the first failure in a row is also an Event.
pub fn error_policy(policy: Arc<SyncPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = policy.name_any();
    let attempt = {
        let mut failures = ctx.failures();
        let attempt = failures.entry(name.clone()).or_default();
        *attempt += 1;
        *attempt
    };
    warn!(policy = %name, attempt, error = %error, "SyncPolicy reconcile failed; retrying");
    if attempt == 1 && ctx.leader.is_leader() {
        let notice = Notice {
            warning: true,
            reason: "SyncError".to_owned(),
            note: error.to_string(),
        };
        tokio::spawn(async move { publish(&ctx, &policy, notice).await });
    }
    Action::requeue(DEPENDENCY_BACKOFF.jittered(attempt, None))
}

/// The policy's readiness in the registry; a key Stripe could not be asked about is asked
/// again first.
async fn readiness(ctx: &Context, name: &str) -> Readiness {
    let Some(policy) = ctx.registry.get(name) else {
        return status::not_in_registry();
    };
    if policy.readiness().reason == reasons::STRIPE_UNREACHABLE {
        policy::probe(&policy).await;
    }
    policy.readiness()
}

fn next_look(policy: &SyncPolicy, readiness: &Readiness) -> Duration {
    if readiness.ready {
        policy::interval(&policy.spec).unwrap_or(Duration::from_secs(3600))
    } else if readiness.reason == "Checking" {
        CHECKING_AGAIN
    } else {
        NOT_READY_AGAIN
    }
}

fn has_finalizer(policy: &SyncPolicy) -> bool {
    policy.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes paysync's finalizer, keeping any other controller's. The merge patch
/// carries the `resourceVersion` read, so a concurrent change makes it fail (and retry)
/// instead of dropping the other writer's finalizer.
pub(super) async fn set_finalizer(
    policies: &Api<SyncPolicy>,
    policy: &SyncPolicy,
    present: bool,
) -> Result<(), Error> {
    let mut finalizers: Vec<String> = policy
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": policy.resource_version(),
        }
    });
    policies
        .patch(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Writes the status the policy's state calls for, unless it says that already, and
/// publishes the Events its change is worth.
async fn write_status(
    ctx: &Context,
    policy: &SyncPolicy,
    readiness: &Readiness,
) -> Result<(), Error> {
    let name = policy.name_any();
    let customers = customer_counts(ctx, &name).await?;
    let last_run = ctx.reconciler.last_finished(&name).await?;
    let observed = Observed {
        generation: policy.metadata.generation,
        readiness,
        customers,
        last_run: last_run.as_ref(),
    };
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
    let old = policy.status.as_ref();
    let new = status::desired(old, &observed, now);
    if old == Some(&new) {
        return Ok(());
    }
    apply_status(&ctx.policies, &name, &new).await?;
    for notice in status::notices(old, &new) {
        publish(ctx, policy, notice).await;
    }
    Ok(())
}

/// Server-side applies `status` to the status subresource as field manager `paysync`
/// (forced: paysync owns the status).
pub(super) async fn apply_status(
    policies: &Api<SyncPolicy>,
    name: &str,
    status: &SyncPolicyStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": "paysync.dev/v1alpha1",
        "kind": "SyncPolicy",
        "status": status,
    });
    policies
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// The policy's live customers by sync state.
pub async fn customer_counts(ctx: &Context, name: &str) -> Result<CustomerCounts, Error> {
    let mut conn = store::acquire(&ctx.pool).await?;
    let mut counts = CustomerCounts::default();
    for (state, count) in customers::count_states_of(&mut conn, name).await? {
        counts.add(&state, count);
    }
    Ok(counts)
}

/// Publishes an Event about `policy` (a failure is logged: Events are best effort).
async fn publish(ctx: &Context, policy: &SyncPolicy, notice: Notice) {
    let event = Event {
        type_: if notice.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: notice.reason,
        note: Some(notice.note),
        action: "Sync".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(policy = %policy.name_any(), error = %e, "could not publish an Event");
    }
}
