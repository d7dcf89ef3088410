//! One run of one policy, start to end.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use tracing::{info, warn};
use uuid::Uuid;

use super::ledger::{Ledger, Start};
use super::page::{PageWork, Tally};
use super::plan::Progress;
use super::repair::Repairer;
use super::scan::{Lister, Pace, Scan, ScanError};
use super::{Reconciler, RunError, RunOptions, RunReport};
use crate::crd::{Mode, reasons};
use crate::policy::Policy;
use crate::store::locks::SessionLock;
use crate::stripe::{
    self as stripe_api, CustomerPage, RateLimit, StripeApi, StripeCustomer, StripeList,
};

/// The policy's Stripe client within the reconciler's budget.
struct Budgeted {
    stripe: Arc<dyn StripeApi>,
    budget: RateLimit,
}

#[async_trait]
impl Lister for Budgeted {
    async fn list(&self, page: &CustomerPage) -> stripe_api::Result<StripeList<StripeCustomer>> {
        self.budget.acquire().await;
        self.stripe.list_customers(page).await
    }
}

/// The reconciler's calls per second: `budgetShare` percent of the policy's rate, at least 1.
fn budget_rate(policy: &Policy) -> u32 {
    let spec = &policy.spec;
    (spec.rate_limit.requests_per_second * u32::from(spec.reconcile.budget_share) / 100).max(1)
}

/// A run that holds its policy's lock and has its ledger, ready to scan.
struct Prepared {
    policy: Arc<Policy>,
    stripe: Arc<dyn StripeApi>,
    lock: SessionLock,
    ledger: Ledger,
    start: Start,
    observe: bool,
}

impl Reconciler {
    /// Runs a reconcile of `name` now, unless one is running already (here or in another
    /// replica).
    pub async fn run(&self, name: &str, options: RunOptions) -> Result<RunReport, RunError> {
        self.run_with(name, options, Arc::default()).await
    }

    /// [`Self::run`], reporting how far it is in `progress`.
    pub async fn run_with(
        &self,
        name: &str,
        options: RunOptions,
        progress: Arc<Progress>,
    ) -> Result<RunReport, RunError> {
        let prepared = self.prepare(name, &options).await?;
        self.execute(prepared, options, progress).await
    }

    /// Starts a run in the background once it holds its lock and has its id.
    pub async fn start(self: Arc<Self>, name: &str, options: RunOptions) -> Result<Uuid, RunError> {
        let prepared = self.prepare(name, &options).await?;
        let id = prepared.ledger.id();
        tokio::spawn(async move {
            if let Err(e) = self.execute(prepared, options, Arc::default()).await {
                warn!(error = %e, "a reconcile run could not be recorded");
            }
        });
        Ok(id)
    }

    async fn prepare(&self, name: &str, options: &RunOptions) -> Result<Prepared, RunError> {
        let policy = self
            .policies
            .get(name)
            .ok_or_else(|| RunError::NoPolicy(name.to_owned()))?;
        let readiness = policy.readiness();
        let stripe = match policy.stripe() {
            Some(stripe) if !policy.spec.suspend => stripe,
            _ => {
                return Err(RunError::NotReady {
                    policy: name.to_owned(),
                    reason: if policy.spec.suspend {
                        reasons::SUSPENDED
                    } else {
                        readiness.reason
                    },
                    message: readiness.message,
                });
            }
        };
        let lock = self
            .locks
            .try_lock_reconcile(name)
            .await?
            .ok_or_else(|| RunError::AlreadyRunning(name.to_owned()))?;
        let observe = options.dry_run || policy.spec.mode == Mode::Observe;
        let opened = if observe {
            Ledger::unrecorded(&self.pool).await
        } else {
            Ledger::recorded(&self.pool, name, options.trigger.as_str()).await
        };
        let (ledger, start) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                lock.release().await?;
                return Err(e.into());
            }
        };
        Ok(Prepared {
            policy,
            stripe,
            lock,
            ledger,
            start,
            observe,
        })
    }

    async fn execute(
        &self,
        prepared: Prepared,
        options: RunOptions,
        progress: Arc<Progress>,
    ) -> Result<RunReport, RunError> {
        let Prepared {
            policy,
            stripe,
            lock,
            ledger,
            start,
            observe,
        } = prepared;
        let rate = budget_rate(&policy);
        let budget = RateLimit::new(
            NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN),
        );
        let clock = Instant::now();
        let work = Arc::new(PageWork {
            policy: policy.clone(),
            stripe: stripe.clone(),
            budget: budget.clone(),
            ledger: Arc::new(ledger),
            tally: Mutex::new(Tally {
                counts: start.counts.clone(),
                ..Tally::default()
            }),
            progress,
            plan: options.plan.clone(),
            repairer: (!observe).then(|| Repairer {
                handlers: self.handlers.clone(),
                pool: self.pool.clone(),
                policy: policy.clone(),
                budget: budget.clone(),
            }),
        });
        let lister: Arc<dyn Lister> = Arc::new(Budgeted { stripe, budget });
        let result = match self.scan(&work, lister, f64::from(rate), &start).await {
            Ok(()) => work.local_pass(start.scan_from).await,
            Err(e) => Err(e),
        };
        let report = self
            .finish(&policy, &work, &options, &start, observe, result, clock)
            .await;
        lock.release().await?;
        report
    }

    async fn scan(
        &self,
        work: &Arc<PageWork>,
        lister: Arc<dyn Lister>,
        rate: f64,
        start: &Start,
    ) -> Result<(), ScanError> {
        let filtered = filters_by_created(lister.as_ref()).await?;
        if !filtered {
            info!(policy = %work.policy.name, "Stripe here cannot list by `created` (localstripe): scanning with one cursor");
        }
        let scan = Scan {
            lister,
            sink: work.clone(),
            pace: Arc::new(Pace::new(Some(rate), self.max_in_flight)),
            filtered,
            next_id: start.segments.iter().map(|s| s.id).max().unwrap_or(0),
        };
        scan.run(start.segments.clone()).await.map(drop)
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        policy: &Policy,
        work: &PageWork,
        options: &RunOptions,
        start: &Start,
        observe: bool,
        result: Result<(), ScanError>,
        clock: Instant,
    ) -> Result<RunReport, RunError> {
        let tally = work.tally().clone();
        let (outcome, error) = match &result {
            Ok(()) => ("succeeded", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        if let Some(error) = &error {
            warn!(policy = %policy.name, error, "reconcile run failed; the next one starts over");
        }
        let row = work
            .ledger
            .finish(outcome, &tally.counts, error.as_deref())
            .await?;
        let by_field: Vec<((String, String), i64)> = tally.by_field.into_iter().collect();
        let seconds = clock.elapsed().as_secs_f64();
        self.metrics
            .finished(&policy.name, outcome, seconds, &by_field);
        self.metrics.scanned(&policy.name, work.progress.scanned());
        let report = RunReport {
            id: work.ledger.id(),
            policy: policy.name.clone(),
            mode: if observe { "observe" } else { "enforce" }.to_owned(),
            dry_run: options.dry_run,
            trigger: options.trigger.as_str().to_owned(),
            outcome: outcome.to_owned(),
            started_at: start.started_at,
            finished_at: Some(row.and_then(|r| r.finished_at).unwrap_or_else(Utc::now)),
            error,
            counts: tally.counts,
        };
        info!(policy = %policy.name, outcome, scanned = report.counts.scanned, drift = report.counts.drift, repaired = report.counts.repaired, failed = report.counts.failed, "reconcile run finished");
        self.remember(&report);
        Ok(report)
    }
}

/// Whether the account's list filters by `created` (a one-second range far in the past:
/// cheap, and empty). localstripe refuses the parameter with 400.
async fn filters_by_created(lister: &dyn Lister) -> Result<bool, ScanError> {
    let probe = CustomerPage {
        created_gte: Some(0),
        created_lt: Some(1),
        starting_after: None,
    };
    match lister.list(&probe).await {
        Ok(_) => Ok(true),
        Err(stripe_api::Error::Rejected { status: 400, .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
