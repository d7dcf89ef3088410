//! A run's plan as people and tools read it: one line per action, like `terraform plan`
//! (`+ adopt`, `~ update`, `- delete`, `= link`, `! report`, with the fields and old → new
//! values), then a summary line; or one JSON object per line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::RunReport;
use super::diff::{Action, ActionKind};

/// Receives the plan's actions as a run finds them.
pub trait PlanSink: Send + Sync {
    fn action(&self, policy: &str, action: &Action);
}

/// How far a run is, read by the CLI's progress bar or its log lines.
#[derive(Debug, Default)]
pub struct Progress {
    pub scanned: AtomicU64,
    pub pages: AtomicU64,
}

impl Progress {
    pub fn scanned(&self) -> u64 {
        self.scanned.load(Ordering::Relaxed)
    }

    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }
}

fn shown(value: &Option<String>) -> String {
    match value {
        Some(value) => format!("{value:?}"),
        None => "(none)".to_owned(),
    }
}

/// One action as a plan line.
pub fn text_line(policy: &str, action: &Action) -> String {
    let verb = match action.kind {
        ActionKind::CreateInStripe => "create in Stripe",
        ActionKind::Adopt => "adopt",
        ActionKind::Link => "link",
        ActionKind::UpdateStripe => "update Stripe",
        ActionKind::UpdateLocal => "update local",
        ActionKind::DeleteInStripe => "delete in Stripe",
        ActionKind::SoftDeleteInStripe => "soft-delete in Stripe",
        ActionKind::DeleteLocal => "delete local",
        ActionKind::Unlink => "unlink",
        ActionKind::Report => "report",
    };
    let mut line = format!("{} {verb} [{policy}]", action.kind.sign());
    if let Some(id) = action.customer_id {
        let _ = write!(line, " customer {id}");
    }
    if let Some(stripe_id) = &action.stripe_id {
        let _ = write!(line, " stripe {stripe_id}");
    }
    let _ = write!(line, " ({}: {})", action.drift.label(), action.reason);
    for change in &action.changes {
        let _ = write!(
            line,
            "\n    {}: {} → {}",
            change.field,
            shown(&change.old),
            shown(&change.new)
        );
    }
    line
}

/// One action as a JSON line.
pub fn json_line(policy: &str, action: &Action) -> String {
    let mut value = serde_json::to_value(action).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("policy".into(), policy.into());
        object.insert("type".into(), "action".into());
    }
    value.to_string()
}

/// The summary line after a plan: counts by action, then what was scanned.
pub fn summary(report: &RunReport, by_action: &BTreeMap<ActionKind, u64>) -> String {
    let verb = if report.mode == "observe" || report.dry_run {
        "Plan"
    } else {
        "Applied"
    };
    let counts: Vec<String> = by_action
        .iter()
        .map(|(kind, count)| format!("{count} {}", kind.label()))
        .collect();
    let counts = if counts.is_empty() {
        "no changes".to_owned()
    } else {
        counts.join(", ")
    };
    format!(
        "{verb} [{}]: {counts}; {} customers scanned in {} pages; {} repaired, {} failed; {}",
        report.policy,
        report.counts.scanned,
        report.counts.pages,
        report.counts.repaired,
        report.counts.failed,
        report.outcome
    )
}
