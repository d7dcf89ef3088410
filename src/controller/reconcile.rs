//! One SyncPolicy's reconcile: put it (with its Secret's credentials) in the registry, and on
//! the leader write its status and tell what changed in Events.
//!
//! paysync puts no finalizer on a policy: a deleted policy only has to leave each replica's
//! registry, which the watch does without holding the object up (its customers stay), so a
//! policy deleted while paysync is scaled to zero, uninstalled or without its database is
//! gone at once. The finalizer earlier versions added is taken off by the leader.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::DynamicObject;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use serde_json::json;
use tracing::{info, warn};

use super::object::{Seen, parse, unparseable};
use super::status::{self, Notice, Observed};
use super::{Context, FIELD_MANAGER, LEGACY_FINALIZER, definition};
use crate::backoff::DEPENDENCY_BACKOFF;
use crate::crd::{CustomerCounts, SyncPolicyStatus, reasons};
use crate::policy::{self, Readiness};
use crate::store::{self, customers};

/// How soon a policy whose new key Stripe has not answered about yet is looked at again.
const CHECKING_AGAIN: Duration = Duration::from_secs(1);
/// How soon a policy that syncs is looked at again: its counts refresh, and a database that
/// became unreadable shows in its status within this long (an unchanged status is not
/// written; a finished reconcile run triggers a look of its own).
const STATUS_REFRESH: Duration = Duration::from_secs(60);
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

pub async fn reconcile(object: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let seen = Seen::of(&object);
    let name = seen.name.clone();
    if ctx.leader.is_leader() && has_legacy_finalizer(&object.metadata) {
        remove_legacy_finalizer(&ctx.policies, &object.metadata).await?;
    }
    if object.metadata.deletion_timestamp.is_some() {
        info!(policy = %name, "SyncPolicy deleted: its work stopped, its customers stay");
        ctx.feed.remove(&name);
        return Ok(Action::await_change());
    }
    match parse(&object) {
        Ok(policy) => {
            let secret = ctx
                .secrets
                .get_opt(&policy.spec.stripe_secret_ref.name)
                .await?;
            ctx.feed.set(definition(&policy, secret.as_ref()));
        }
        Err(problem) => {
            warn!(policy = %name, %problem, "the SyncPolicy does not parse: it is Invalid, the others sync on");
            ctx.feed.set(unparseable(&name, &problem));
        }
    }
    let readiness = readiness(&ctx, &name).await;
    // Asked again after the awaits above: leadership may have ended meanwhile.
    if ctx.leader.is_leader() {
        write_status(&ctx, &seen, &readiness).await?;
    }
    ctx.failures().remove(&name);
    Ok(Action::requeue(next_look(&readiness)))
}

/// Retries a failed reconcile with backoff (a fifth of a second, doubling up to half a
/// minute); the first failure in a row is also an Event.
pub fn error_policy(object: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    let seen = Seen::of(&object);
    let name = seen.name.clone();
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
        tokio::spawn(async move { publish(&ctx, &seen, notice).await });
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

fn next_look(readiness: &Readiness) -> Duration {
    if readiness.ready {
        STATUS_REFRESH
    } else if readiness.reason == "Checking" {
        CHECKING_AGAIN
    } else {
        NOT_READY_AGAIN
    }
}

fn has_legacy_finalizer(meta: &ObjectMeta) -> bool {
    meta.finalizers
        .iter()
        .flatten()
        .any(|f| f == LEGACY_FINALIZER)
}

/// Removes the finalizer earlier versions put on policies, keeping any other controller's.
/// The merge patch carries the `resourceVersion` read, so a concurrent change makes it fail
/// (and retry) instead of dropping the other writer's finalizer.
pub(super) async fn remove_legacy_finalizer(
    policies: &Api<DynamicObject>,
    meta: &ObjectMeta,
) -> Result<(), Error> {
    let finalizers: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != LEGACY_FINALIZER)
        .cloned()
        .collect();
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": meta.resource_version,
        }
    });
    policies
        .patch(
            meta.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Writes the status the policy's state calls for, unless it says that already, and
/// publishes the Events its change is worth.
async fn write_status(ctx: &Context, seen: &Seen, readiness: &Readiness) -> Result<(), Error> {
    let name = &seen.name;
    let read = async {
        let customers = customer_counts(ctx, name).await?;
        let last_run = ctx.reconciler.last_finished(name).await?;
        Ok::<_, Error>((customers, last_run))
    };
    // A database that cannot be read is the status to write, not a reason to write none.
    let (customers, last_run, database_error) = match read.await {
        Ok((customers, last_run)) => (Some(customers), last_run, None),
        Err(e) => {
            warn!(policy = %name, error = %e, "the database cannot be read: the status says so");
            (None, None, Some(e.to_string()))
        }
    };
    let observed = Observed {
        generation: seen.generation,
        readiness,
        customers,
        last_run: last_run.as_ref(),
        database_error: database_error.as_deref(),
    };
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
    let old = seen.status.as_ref();
    let new = status::desired(old, &observed, now);
    if old == Some(&new) || !ctx.leader.is_leader() {
        return Ok(());
    }
    apply_status(&ctx.policies, name, &new).await?;
    for notice in status::notices(old, &new) {
        publish(ctx, seen, notice).await;
    }
    Ok(())
}

/// Server-side applies `status` to the status subresource as field manager `paysync`
/// (forced: paysync owns the status).
pub(super) async fn apply_status(
    policies: &Api<DynamicObject>,
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

/// Publishes an Event about `policy` if this replica still leads (a failure is logged:
/// Events are best effort).
async fn publish(ctx: &Context, seen: &Seen, notice: Notice) {
    if !ctx.leader.is_leader() {
        return;
    }
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
    if let Err(e) = ctx.recorder.publish(&event, &seen.reference).await {
        warn!(policy = %seen.name, error = %e, "could not publish an Event");
    }
}
