//! SyncPolicy at run time: the registry of effective policies (per policy its Stripe client
//! with its own token bucket, its webhook verifier and its settings), and the sources that
//! feed it: the `STRIPE_*` settings (the implicit `default` policy) or a file of manifests
//! (`PAYSYNC_POLICIES`), and in a cluster the Kubernetes controller.

mod access;
mod definition;
pub mod file;
mod implicit;
mod readiness_metric;
mod registry;

use sqlx::PgPool;
use tracing::{info, warn};

pub use access::SourceAccess;
pub use definition::{Credentials, NotReady, PolicyDefinition, check, interval, is_policy_name};
pub use implicit::ImplicitPolicy;
pub use readiness_metric::ReadinessCollector;
pub use registry::{Changes, Policy, PolicyRegistry, Readiness, StripeFactory};

use crate::backoff::DEPENDENCY_BACKOFF;
use crate::crd::reasons;
use crate::store::{self, customers};
use crate::stripe::Error as StripeError;

/// Makes `definitions` the effective policies; then, in the background, checks each new
/// Stripe key against Stripe and (given a pool) sends the changes that waited for a policy
/// that now writes to Stripe (neither holds up start-up or a reload: Stripe or the database
/// may be slow or down). A command that must write nothing (a dry run) passes no pool.
pub fn apply(
    registry: &PolicyRegistry,
    pool: Option<&PgPool>,
    definitions: Vec<PolicyDefinition>,
) -> Changes {
    let changes = registry.replace(definitions);
    for name in &changes.removed {
        warn!(policy = %name, "policy removed: its customers stay as they are and sync nothing");
    }
    for name in changes.added.iter().chain(&changes.changed) {
        if let Some(policy) = registry.get(name) {
            let readiness = policy.readiness();
            if !readiness.ready && readiness.reason != reasons::CHECKING {
                warn!(policy = %name, reason = readiness.reason, message = %readiness.message, "policy is not ready");
            } else {
                info!(policy = %name, "policy in effect");
            }
        }
    }
    // In the background: a Stripe that is slow to answer must not hold up start-up or a
    // reload; until the answer the policy syncs (a rejected key stops it then).
    for name in &changes.to_probe {
        if let Some(policy) = registry.get(name) {
            tokio::spawn(async move { probe(&policy).await });
        }
    }
    if let Some(pool) = pool {
        for name in to_requeue(registry, &changes) {
            tokio::spawn(requeue_pending(pool.clone(), name));
        }
    }
    changes
}

/// [`apply`] at start-up: the changes that waited are queued before it returns, so nothing
/// started next races with it (a database failure leaves it to the background, retried).
pub async fn apply_at_start(
    registry: &PolicyRegistry,
    pool: &PgPool,
    definitions: Vec<PolicyDefinition>,
) -> Changes {
    let changes = apply(registry, None, definitions);
    for name in to_requeue(registry, &changes) {
        let queued = async {
            let mut conn = store::acquire(pool).await?;
            customers::requeue_pending(&mut conn, &name).await
        };
        if let Err(e) = queued.await {
            warn!(policy = %name, error = %e, "could not queue the changes that waited; retrying in the background");
            tokio::spawn(requeue_pending(pool.clone(), name));
        }
    }
    changes
}

/// Policies that write now, or write with a new key or client: their waiting changes are sent.
fn to_requeue(registry: &PolicyRegistry, changes: &Changes) -> Vec<String> {
    let mut names: Vec<String> = changes
        .now_writing
        .iter()
        .chain(&changes.to_probe)
        .filter(|name| registry.get(name).is_some_and(|p| p.writes_to_stripe()))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Queues the policy's waiting changes, retrying while the database is unreachable (the
/// process's lifetime bounds it).
async fn requeue_pending(pool: PgPool, policy: String) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let queued = async {
            let mut conn = store::acquire(&pool).await?;
            customers::requeue_pending(&mut conn, &policy).await
        };
        match queued.await {
            Ok(0) => return,
            Ok(queued) => {
                info!(
                    policy,
                    queued, "the policy writes to Stripe: sending the changes that waited"
                );
                return;
            }
            Err(e) => {
                warn!(policy, error = %e, "could not queue the changes that waited; retrying");
                tokio::time::sleep(DEPENDENCY_BACKOFF.jittered(attempt, None)).await;
            }
        }
    }
}

/// Checks the policy's key against Stripe and records the answer in its readiness.
pub async fn probe(policy: &Policy) {
    let Some(stripe) = policy.stripe() else {
        return;
    };
    let readiness = match stripe.check_key().await {
        Ok(()) => Readiness {
            ready: true,
            reason: reasons::CONNECTED,
            message: "the API key was accepted".to_owned(),
        },
        Err(StripeError::Rejected {
            status: 401 | 403,
            message,
            ..
        }) => {
            policy.key_rejected(&message);
            return;
        }
        Err(e) => Readiness {
            ready: false,
            reason: reasons::STRIPE_UNREACHABLE,
            message: e.to_string(),
        },
    };
    policy.set_readiness(readiness);
}
