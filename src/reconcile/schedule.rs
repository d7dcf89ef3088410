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

/// How often the schedule looks for a policy that is due (or that became ready: a new key is
/// checked with Stripe first).
const TICK: Duration = Duration::from_secs(1);

impl Reconciler {
    /// Until `shutdown`: every due, ready policy gets a run. A run cut short by shutdown stays
    /// unfinished and the next start resumes it.
    pub async fn schedule(self: Arc<Self>, shutdown: CancellationToken) {
        let mut due: BTreeMap<String, Instant> = BTreeMap::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        let mut runs: JoinSet<String> = JoinSet::new();
        info!("reconciling each policy at start and every reconcile.interval");
        loop {
            let now = Instant::now();
            for policy in self.policies.all() {
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
                let (reconciler, name) = (self.clone(), policy.name.clone());
                runs.spawn(async move {
                    let options = RunOptions {
                        trigger,
                        dry_run: false,
                        plan: None,
                    };
                    if let Err(e) = reconciler.run(&name, options).await {
                        debug!(policy = %name, error = %e, "scheduled reconcile did not run");
                    }
                    name
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(Ok(name)) = runs.join_next(), if !runs.is_empty() => {
                    running.remove(&name);
                    let interval = self.policies.get(&name)
                        .and_then(|p| policy::interval(&p.spec))
                        .unwrap_or(Duration::from_secs(3600));
                    due.insert(name, Instant::now() + interval);
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
