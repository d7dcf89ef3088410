//! What a SyncPolicy's status should say, from what this process knows of it (pure): its
//! conditions, its last reconcile and its customers, and the Events worth telling a human
//! when the status changes. `GET /v1/policies` reads the same inputs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{CustomerCounts, LastReconcile, SyncPolicyStatus, condition_types, reasons};
use crate::policy::Readiness;
use crate::reconcile::RunReport;

/// The reason of `Ready` while a new key waits for Stripe's answer.
const CHECKING: &str = "Checking";
/// The reason of `Ready` (False) and `Degraded` while the database cannot be read.
pub const DATABASE_UNAVAILABLE: &str = "DatabaseUnavailable";
/// The reason of `Synced` (False) while `spec.suspend` pauses the policy.
pub const RECONCILE_PAUSED: &str = "ReconcilePaused";

/// What the status is computed from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The `metadata.generation` the registry applied.
    pub generation: Option<i64>,
    pub readiness: &'a Readiness,
    /// The customers by sync state; `None` when the database could not be read.
    pub customers: Option<CustomerCounts>,
    pub last_run: Option<&'a RunReport>,
    /// Why the database could not be read, if it could not: the status then says so, and
    /// keeps the counts and last reconcile it had.
    pub database_error: Option<&'a str>,
}

/// The status `observed` calls for. A condition keeps its `lastTransitionTime` from `old`
/// unless its status changed, so an unchanged policy yields an unchanged status (and no write).
pub fn desired(
    old: Option<&SyncPolicyStatus>,
    observed: &Observed<'_>,
    now: Timestamp,
) -> SyncPolicyStatus {
    let conditions = [ready(observed), synced(observed), degraded(observed)]
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let previous = old.and_then(|old| find(&old.conditions, type_));
            let since = match previous {
                Some(previous) if previous.status == status => {
                    previous.last_transition_time.clone()
                }
                _ => Time(now),
            };
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: observed.generation,
                last_transition_time: since,
            }
        })
        .collect();
    let kept = |old: Option<&SyncPolicyStatus>| old.and_then(|old| old.last_reconcile.clone());
    SyncPolicyStatus {
        observed_generation: observed.generation,
        conditions,
        last_reconcile: match observed.database_error {
            Some(_) => kept(old),
            None => observed.last_run.map(last_reconcile),
        },
        customers: observed
            .customers
            .or_else(|| old.and_then(|old| old.customers)),
    }
}

type ConditionParts = (&'static str, &'static str, String, String);

fn ready(observed: &Observed<'_>) -> ConditionParts {
    let readiness = observed.readiness;
    if let Some(error) = observed.database_error {
        return (
            condition_types::READY,
            "False",
            DATABASE_UNAVAILABLE.to_owned(),
            format!("PostgreSQL cannot be read: {error}"),
        );
    }
    if readiness.reason == reasons::SUSPENDED {
        // Pausing is a choice, not a failure: Ready stays, Synced says it is paused.
        return (
            condition_types::READY,
            "True",
            reasons::SUSPENDED.to_owned(),
            "spec.suspend is set: nothing syncs until it is unset".to_owned(),
        );
    }
    let status = if readiness.ready {
        "True"
    } else if readiness.reason == CHECKING {
        "Unknown"
    } else {
        "False"
    };
    (
        condition_types::READY,
        status,
        readiness.reason.to_owned(),
        readiness.message.clone(),
    )
}

fn synced(observed: &Observed<'_>) -> ConditionParts {
    if observed.readiness.reason == reasons::SUSPENDED {
        return (
            condition_types::SYNCED,
            "False",
            RECONCILE_PAUSED.to_owned(),
            "spec.suspend is set: no sync and no reconcile until it is unset".to_owned(),
        );
    }
    let (status, reason, message) = match observed.last_run {
        None => (
            "Unknown",
            "NotReconciled",
            "no reconcile has finished yet".to_owned(),
        ),
        Some(run) if run.outcome == "failed" => (
            "False",
            "ReconcileFailed",
            run.error
                .clone()
                .unwrap_or_else(|| "the last reconcile failed".to_owned()),
        ),
        Some(run) if run.mode == "observe" && run.counts.drift > 0 => (
            "False",
            "DriftObserved",
            format!(
                "Observe mode: {} differences found and left as they are",
                run.counts.drift
            ),
        ),
        Some(run) if run.counts.failed > 0 => (
            "False",
            "RepairsFailed",
            format!(
                "{} of {} differences could not be repaired",
                run.counts.failed, run.counts.drift
            ),
        ),
        Some(run) => (
            "True",
            "Reconciled",
            format!(
                "scanned {}, found {} differences, repaired {}",
                run.counts.scanned, run.counts.drift, run.counts.repaired
            ),
        ),
    };
    (condition_types::SYNCED, status, reason.to_owned(), message)
}

fn degraded(observed: &Observed<'_>) -> ConditionParts {
    let readiness = observed.readiness;
    let failing = !readiness.ready && ![CHECKING, reasons::SUSPENDED].contains(&readiness.reason);
    let (status, reason, message) = if let Some(error) = observed.database_error {
        ("True", DATABASE_UNAVAILABLE.to_owned(), error.to_owned())
    } else if failing {
        (
            "True",
            readiness.reason.to_owned(),
            readiness.message.clone(),
        )
    } else if observed.last_run.is_some_and(|run| run.outcome == "failed") {
        (
            "True",
            "ReconcileFailed".to_owned(),
            "the last reconcile failed; it is tried again within five minutes".to_owned(),
        )
    } else if let Some(failed) = observed.customers.map(|c| c.failed).filter(|f| *f > 0) {
        (
            "True",
            "CustomersFailed".to_owned(),
            format!("{failed} customers failed to sync (see /v1/dead-letters)"),
        )
    } else {
        ("False", "AsExpected".to_owned(), String::new())
    };
    (condition_types::DEGRADED, status, reason, message)
}

fn find<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn last_reconcile(run: &RunReport) -> LastReconcile {
    let time =
        |at: chrono::DateTime<chrono::Utc>| Timestamp::from_second(at.timestamp()).ok().map(Time);
    LastReconcile {
        started_at: time(run.started_at),
        finished_at: run.finished_at.and_then(time),
        outcome: if run.mode == "observe" && run.outcome == "succeeded" {
            "observed".to_owned()
        } else {
            run.outcome.clone()
        },
        scanned: run.counts.scanned,
        drift: run.counts.drift,
        repaired: run.counts.repaired,
        failed: run.counts.failed,
    }
}

/// A Kubernetes Event to publish about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    /// `Ready`, a not-ready reason (`SecretNotFound`, ...), `Repaired`, `ReconcileFailed`,
    /// `DriftObserved`.
    pub reason: String,
    pub note: String,
}

/// The Events the change from `old` to `new` is worth: readiness gained or lost, and a
/// reconcile that finished since (what it repaired, or that it failed).
pub fn notices(old: Option<&SyncPolicyStatus>, new: &SyncPolicyStatus) -> Vec<Notice> {
    let mut notices = Vec::new();
    let old_ready = old.and_then(|old| find(&old.conditions, condition_types::READY));
    if let Some(ready) = find(&new.conditions, condition_types::READY)
        && old_ready.is_none_or(|old| old.status != ready.status || old.reason != ready.reason)
        && ready.status != "Unknown"
    {
        let warning = ready.status != "True";
        notices.push(Notice {
            warning,
            reason: if warning || ready.reason == reasons::SUSPENDED {
                ready.reason.clone()
            } else {
                condition_types::READY.to_owned()
            },
            note: ready.message.clone(),
        });
    }
    let old_run = old.and_then(|old| old.last_reconcile.as_ref());
    if let Some(run) = &new.last_reconcile
        && old_run.is_none_or(|old| old.finished_at != run.finished_at)
        && let Some(notice) = run_notice(run)
    {
        notices.push(notice);
    }
    notices
}

fn run_notice(run: &LastReconcile) -> Option<Notice> {
    let notice = |warning, reason: &str, note| Notice {
        warning,
        reason: reason.to_owned(),
        note,
    };
    match run.outcome.as_str() {
        "failed" => Some(notice(
            true,
            "ReconcileFailed",
            format!("reconcile failed after scanning {}", run.scanned),
        )),
        "observed" if run.drift > 0 => Some(notice(
            false,
            "DriftObserved",
            format!(
                "found {} differences (Observe mode: left as they are)",
                run.drift
            ),
        )),
        _ if run.repaired > 0 || run.failed > 0 => Some(notice(
            run.failed > 0,
            "Repaired",
            format!(
                "reconcile repaired {} of {} differences ({} failed)",
                run.repaired, run.drift, run.failed
            ),
        )),
        _ => None,
    }
}

/// The readiness of a policy the registry does not hold (paysync's own checks refused it).
pub fn not_in_registry() -> Readiness {
    Readiness {
        ready: false,
        reason: reasons::INVALID,
        message: "the policy is not in effect".to_owned(),
    }
}

#[cfg(test)]
#[path = "status/tests.rs"]
mod tests;
