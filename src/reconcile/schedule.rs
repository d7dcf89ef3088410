//! Runs each policy's reconcile at start and every `reconcile.interval`, one run per policy
//! at a time; several policies run side by side. A policy without a usable key, or
//! suspended, is tried again at the next tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Reconciler, RunOptions, Trigger};
use crate::policy;

/// How soon a run that failed (Stripe or the database down) is tried again, at most.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// How often the schedule looks for a policy that is due (or that became ready: a new key is
/// checked with Stripe first).
const TICK: Duration = Duration::from_secs(1);

impl Reconciler {
    /// Until `shutdown`: every due policy that can call Stripe gets a run; a failed run is
    /// tried again within five minutes. A run cut short by shutdown stays unfinished and the
    /// next start resumes it.
    pub async fn schedule(self: Arc<Self>, shutdown: CancellationToken) {
        let mut due: BTreeMap<String, Instant> = BTreeMap::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        let mut runs: JoinSet<(String, bool)> = JoinSet::new();
        info!("reconciling each policy at start and every reconcile.interval");
        loop {
            let now = Instant::now();
            let open = self
                .schedule_gate
                .as_ref()
                .is_none_or(|gate| *gate.borrow());
            for policy in self.policies.all().into_iter().filter(|_| open) {
                let next = *due.entry(policy.name.clone()).or_insert(now);
                // A policy that can call Stripe (a key Stripe has not refused; not
                // suspended) is due; one that cannot is tried again at the next tick.
                let can_run = policy.stripe().is_some() && !policy.spec.suspend;
                if next > now || running.contains(&policy.name) || !can_run {
                    continue;
                }
                // The first run of a policy in this process is the one at start.
                let trigger = if next == now {
                    Trigger::Start
                } else {
                    Trigger::Schedule
                };
                running.insert(policy.name.clone());
                runs.spawn(self.clone().scheduled_run(policy.name.clone(), trigger));
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(Ok((name, succeeded))) = runs.join_next(), if !runs.is_empty() => {
                    running.remove(&name);
                    let next = self.next_due(&name, succeeded);
                    due.insert(name, next);
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One scheduled run; the policy's name and whether it succeeded (a run that could not
    /// start, e.g. another replica's is going on, counts as done).
    async fn scheduled_run(self: Arc<Self>, name: String, trigger: Trigger) -> (String, bool) {
        let options = RunOptions {
            trigger,
            dry_run: false,
            plan: None,
        };
        let succeeded = match self.run(&name, options).await {
            Ok(report) => report.outcome == "succeeded",
            Err(e) => {
                debug!(policy = %name, error = %e, "scheduled reconcile did not run");
                true
            }
        };
        (name, succeeded)
    }

    /// When the policy's next run is due: after its interval, or sooner after a failure.
    fn next_due(&self, name: &str, succeeded: bool) -> Instant {
        let mut wait = self
            .policies
            .get(name)
            .and_then(|p| policy::interval(&p.spec))
            .unwrap_or(Duration::from_secs(3600));
        if !succeeded {
            wait = wait.min(RETRY_AFTER_FAILURE);
        }
        Instant::now() + wait
    }
}
