//! The reconciler: per policy, a periodic diff-and-apply of the whole Stripe account against
//! PostgreSQL, the guarantee behind webhooks and catch-up (DESIGN.md §7a).
//!
//! A run pages through the account's Stripe customers (`scan`: `created` ranges listed
//! concurrently within the policy's `reconcile.budgetShare`), matches each page to local rows
//! in one query, diffs each pair (`diff`, pure) and repairs through the workers' own handlers
//! (`repair`), then looks at the local customers the scan did not see. One run per policy at a
//! time (an advisory lock); a killed run resumes from its checkpointed segments. A dry run, and
//! any run of a policy in Observe mode, writes nothing and only reports the plan.

mod action;
pub mod diff;
mod ledger;
pub mod metrics;
mod page;
pub mod plan;
mod repair;
mod run;
pub mod scan;
mod schedule;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;
use utoipa::ToSchema;
use uuid::Uuid;

pub use metrics::ReconcileMetrics;
pub use plan::{PlanSink, Progress};

use crate::policy::PolicyRegistry;
use crate::store::locks::LockPool;
use crate::store::reconcile_runs::{RunCounts, RunRow};
use crate::sync::{InboundHandler, InboundSync, OutboundHandler};

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// At start-up.
    Start,
    /// Every `reconcile.interval`.
    Schedule,
    /// `POST /v1/policies/{name}/reconcile` or `paysync reconcile --once`.
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Schedule => "schedule",
            Self::Manual => "manual",
        }
    }
}

/// How a run goes.
#[derive(Clone)]
pub struct RunOptions {
    pub trigger: Trigger,
    /// Only report the plan, as in Observe mode.
    pub dry_run: bool,
    /// Receives every action of the plan as it is found (the CLI prints them).
    pub plan: Option<Arc<dyn PlanSink>>,
}

/// What a run did (also a row of `GET /v1/reconcile-runs`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunReport {
    /// The run's id (runs that record nothing, a dry run or in Observe mode, have one too,
    /// but are not in `reconcile_runs`).
    pub id: Uuid,
    pub policy: String,
    /// `enforce` (repairs) or `observe` (reports only).
    pub mode: String,
    pub dry_run: bool,
    /// `start`, `schedule` or `manual`.
    pub trigger: String,
    /// `running`, `succeeded` or `failed`.
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub error: Option<String>,
}

impl From<RunRow> for RunReport {
    fn from(row: RunRow) -> Self {
        Self {
            id: row.id,
            counts: row.counts(),
            policy: row.policy,
            mode: row.mode,
            dry_run: false,
            trigger: row.trigger,
            outcome: row.outcome,
            started_at: row.started_at,
            finished_at: row.finished_at,
            error: row.error,
        }
    }
}

/// Why a run did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no policy named {0:?}")]
    NoPolicy(String),
    #[error("policy {policy:?} is not ready ({reason}): {message}")]
    NotReady {
        policy: String,
        reason: &'static str,
        message: String,
    },
    #[error("a reconcile of policy {0:?} is already running")]
    AlreadyRunning(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// The handlers repairs go through: the same as the workers'.
#[derive(Clone)]
pub struct Handlers {
    pub outbound: Arc<dyn OutboundHandler>,
    pub inbound: Arc<InboundSync>,
    /// What the transports hand Stripe events to (customers and the billing mirror).
    pub pipeline: Arc<dyn InboundHandler>,
}

/// Runs reconciles; shared by the schedule, the API and the CLI.
pub struct Reconciler {
    pool: PgPool,
    locks: LockPool,
    policies: Arc<PolicyRegistry>,
    handlers: Handlers,
    metrics: Arc<ReconcileMetrics>,
    /// The last finished run of each policy (the status `GET /v1/policies/{name}` shows,
    /// Observe-mode runs included, which record nothing).
    last: Mutex<BTreeMap<String, RunReport>>,
    /// List calls in flight at most, whatever the budget.
    max_in_flight: usize,
    /// Bumped when a run finishes (the Kubernetes controller then updates the status).
    finished: watch::Sender<u64>,
    /// Scheduled runs start only while this says so (in a cluster: while this replica
    /// leads); `None`: always.
    schedule_gate: Option<watch::Receiver<bool>>,
}

impl Reconciler {
    pub fn new(
        pool: PgPool,
        locks: LockPool,
        policies: Arc<PolicyRegistry>,
        handlers: Handlers,
        metrics: Arc<ReconcileMetrics>,
    ) -> Self {
        Self {
            pool,
            locks,
            policies,
            handlers,
            metrics,
            last: Mutex::default(),
            max_in_flight: 32,
            finished: watch::channel(0).0,
            schedule_gate: None,
        }
    }

    /// Scheduled runs start only while `gate` is true (the leader of a cluster's replicas
    /// runs them, so its status reports them, Observe-mode runs included).
    #[must_use]
    pub fn with_schedule_gate(mut self, gate: watch::Receiver<bool>) -> Self {
        self.schedule_gate = Some(gate);
        self
    }

    /// Changes whenever a run of this process finishes.
    pub fn finished_runs(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// The last finished run of `policy`: the newer of this process's last run (Observe
    /// mode and dry runs included) and the last one recorded by any replica.
    pub async fn last_finished(&self, policy: &str) -> crate::store::Result<Option<RunReport>> {
        let mine = self.last_run(policy);
        let mut conn = crate::store::acquire(&self.pool).await?;
        let recorded = crate::store::reconcile_runs::list(&mut conn, Some(policy), 5)
            .await?
            .into_iter()
            .find(|run| run.finished_at.is_some())
            .map(RunReport::from);
        Ok(match (mine, recorded) {
            (Some(mine), Some(recorded)) if recorded.finished_at > mine.finished_at => {
                Some(recorded)
            }
            (mine, recorded) => mine.or(recorded),
        })
    }

    /// The last finished run of `policy`, if this process has run or seen one.
    pub fn last_run(&self, policy: &str) -> Option<RunReport> {
        match self.last.lock() {
            Ok(last) => last.get(policy).cloned(),
            Err(poisoned) => poisoned.into_inner().get(policy).cloned(),
        }
    }

    fn remember(&self, report: &RunReport) {
        let mut last = match self.last.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        last.insert(report.policy.clone(), report.clone());
        drop(last);
        self.finished.send_modify(|runs| *runs += 1);
    }
}
