use chrono::Utc;
use uuid::Uuid;

use super::*;
use crate::store::reconcile_runs::RunCounts;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap_or_default()
}

fn connected() -> Readiness {
    Readiness {
        ready: true,
        reason: reasons::CONNECTED,
        message: "the API key was accepted".to_owned(),
    }
}

fn missing_secret() -> Readiness {
    Readiness {
        ready: false,
        reason: reasons::SECRET_NOT_FOUND,
        message: "Secret stripe-a not found".to_owned(),
    }
}

fn run(mode: &str, outcome: &str, drift: i64, repaired: i64, failed: i64) -> RunReport {
    RunReport {
        id: Uuid::nil(),
        policy: "a".to_owned(),
        mode: mode.to_owned(),
        dry_run: false,
        trigger: "schedule".to_owned(),
        outcome: outcome.to_owned(),
        started_at: Utc::now(),
        finished_at: Some(Utc::now()),
        counts: RunCounts {
            scanned: 10,
            drift,
            repaired,
            failed,
            ..RunCounts::default()
        },
        error: (outcome == "failed").then(|| "Stripe unreachable".to_owned()),
    }
}

fn observed<'a>(readiness: &'a Readiness, last_run: Option<&'a RunReport>) -> Observed<'a> {
    Observed {
        generation: Some(3),
        readiness,
        customers: Some(CustomerCounts::default()),
        last_run,
        database_error: None,
    }
}

fn condition<'s>(status: &'s SyncPolicyStatus, type_: &str) -> &'s Condition {
    find(&status.conditions, type_).unwrap_or_else(|| unreachable!("no {type_} condition"))
}

#[test]
fn a_connected_policy_is_ready_and_its_generation_observed() {
    let ready = connected();
    let status = desired(None, &observed(&ready, None), at(0));
    assert_eq!(status.observed_generation, Some(3));
    let ready = condition(&status, condition_types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Connected")
    );
    assert_eq!(ready.observed_generation, Some(3));
    assert_eq!(ready.last_transition_time, Time(at(0)));
    assert_eq!(
        condition(&status, condition_types::SYNCED).status,
        "Unknown"
    );
    assert_eq!(
        condition(&status, condition_types::DEGRADED).status,
        "False"
    );
}

#[test]
fn the_transition_time_changes_only_with_the_status() {
    let missing = missing_secret();
    let first = desired(None, &observed(&missing, None), at(0));
    // The same state later: nothing changes, so nothing is written.
    let again = desired(Some(&first), &observed(&missing, None), at(60));
    assert_eq!(again, first);
    // Another not-ready reason is not a transition of the status.
    let rejected = Readiness {
        ready: false,
        reason: reasons::STRIPE_REJECTED_KEY,
        message: "invalid key".to_owned(),
    };
    let other = desired(Some(&first), &observed(&rejected, None), at(120));
    let ready_then = condition(&other, condition_types::READY);
    assert_eq!(ready_then.reason, "StripeRejectedKey");
    assert_eq!(ready_then.last_transition_time, Time(at(0)));
    // Becoming ready is.
    let ready = connected();
    let fixed = desired(Some(&other), &observed(&ready, None), at(180));
    assert_eq!(
        condition(&fixed, condition_types::READY).last_transition_time,
        Time(at(180))
    );
}

#[test]
fn a_key_being_checked_is_unknown_and_not_degraded() {
    let checking = Readiness {
        ready: false,
        reason: "Checking",
        message: "not checked yet".to_owned(),
    };
    let status = desired(None, &observed(&checking, None), at(0));
    assert_eq!(condition(&status, condition_types::READY).status, "Unknown");
    assert_eq!(
        condition(&status, condition_types::DEGRADED).status,
        "False"
    );
    assert!(notices(None, &status).is_empty(), "no event while checking");
}

#[test]
fn the_last_run_decides_synced_and_reports_its_counts() {
    let ready = connected();
    let cases = [
        (
            run("enforce", "succeeded", 4, 4, 0),
            "True",
            "Reconciled",
            "succeeded",
        ),
        (
            run("enforce", "succeeded", 4, 3, 1),
            "False",
            "RepairsFailed",
            "succeeded",
        ),
        (
            run("enforce", "failed", 0, 0, 0),
            "False",
            "ReconcileFailed",
            "failed",
        ),
        (
            run("observe", "succeeded", 2, 0, 0),
            "False",
            "DriftObserved",
            "observed",
        ),
        (
            run("observe", "succeeded", 0, 0, 0),
            "True",
            "Reconciled",
            "observed",
        ),
    ];
    for (report, status, reason, outcome) in cases {
        let result = desired(None, &observed(&ready, Some(&report)), at(0));
        let synced = condition(&result, condition_types::SYNCED);
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            (status, reason)
        );
        let last = result
            .last_reconcile
            .as_ref()
            .unwrap_or_else(|| unreachable!());
        assert_eq!(last.outcome, outcome);
        assert_eq!((last.scanned, last.drift), (10, report.counts.drift));
    }
}

#[test]
fn failures_degrade_the_policy() {
    let ready = connected();
    let failed_run = run("enforce", "failed", 0, 0, 0);
    let status = desired(None, &observed(&ready, Some(&failed_run)), at(0));
    assert_eq!(
        condition(&status, condition_types::DEGRADED).reason,
        "ReconcileFailed"
    );
    let mut with_failed = observed(&ready, None);
    with_failed.customers = Some(CustomerCounts {
        failed: 2,
        ..CustomerCounts::default()
    });
    let status = desired(None, &with_failed, at(0));
    let degraded = condition(&status, condition_types::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "CustomersFailed")
    );
    let missing = missing_secret();
    let status = desired(None, &observed(&missing, None), at(0));
    assert_eq!(
        condition(&status, condition_types::DEGRADED).reason,
        "SecretNotFound"
    );
}

#[test]
fn events_tell_readiness_changes_and_new_runs_once() {
    let missing = missing_secret();
    let not_ready = desired(None, &observed(&missing, None), at(0));
    let first = notices(None, &not_ready);
    assert_eq!(first.len(), 1);
    assert!(first[0].warning);
    assert_eq!(first[0].reason, "SecretNotFound");
    assert!(notices(Some(&not_ready), &not_ready).is_empty());

    let ready = connected();
    let repaired = run("enforce", "succeeded", 5, 5, 0);
    let now_ready = desired(Some(&not_ready), &observed(&ready, Some(&repaired)), at(60));
    let told = notices(Some(&not_ready), &now_ready);
    let reasons: Vec<&str> = told.iter().map(|n| n.reason.as_str()).collect();
    assert_eq!(reasons, ["Ready", "Repaired"]);
    assert!(told[1].note.contains("repaired 5 of 5"), "{}", told[1].note);
    assert!(
        notices(Some(&now_ready), &now_ready).is_empty(),
        "told once"
    );
}

#[test]
fn a_suspended_policy_stays_ready_and_is_paused_without_a_warning() {
    let connected = connected();
    let before = desired(None, &observed(&connected, None), at(0));
    let suspended = Readiness {
        ready: false,
        reason: reasons::SUSPENDED,
        message: "spec.suspend".to_owned(),
    };
    let status = desired(Some(&before), &observed(&suspended, None), at(5));
    let ready = condition(&status, condition_types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Suspended")
    );
    assert_eq!(
        ready.last_transition_time,
        Time(at(0)),
        "Ready did not transition"
    );
    let synced = condition(&status, condition_types::SYNCED);
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "ReconcilePaused")
    );
    assert_eq!(
        condition(&status, condition_types::DEGRADED).status,
        "False"
    );
    let notices = notices(Some(&before), &status);
    assert!(notices.iter().all(|n| !n.warning), "{notices:?}");
}

#[test]
fn a_database_outage_is_not_ready_and_keeps_the_last_counts() {
    let connected = connected();
    let last = run("enforce", "succeeded", 2, 2, 0);
    let mut healthy = observed(&connected, Some(&last));
    healthy.customers = Some(CustomerCounts {
        synced: 7,
        ..CustomerCounts::default()
    });
    let before = desired(None, &healthy, at(0));
    let outage = Observed {
        customers: None,
        last_run: None,
        database_error: Some("pool timed out while waiting for an open connection"),
        ..observed(&connected, None)
    };
    let status = desired(Some(&before), &outage, at(9));
    let ready = condition(&status, condition_types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DatabaseUnavailable")
    );
    assert!(
        ready.message.contains("pool timed out"),
        "{}",
        ready.message
    );
    assert_eq!(
        condition(&status, condition_types::DEGRADED).reason,
        "DatabaseUnavailable"
    );
    assert_eq!(status.customers.map(|c| c.synced), Some(7));
    assert_eq!(status.last_reconcile, before.last_reconcile);
    let notices = notices(Some(&before), &status);
    assert!(
        notices
            .iter()
            .any(|n| n.warning && n.reason == "DatabaseUnavailable"),
        "{notices:?}"
    );
}
