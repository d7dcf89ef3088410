//! Runs each policy's reconcile every `reconcile.interval`, one run per policy at a time;
//! several policies run side by side. A policy without a usable key, or suspended, is tried
//! again at the next tick.
//!
//! A process starting (a restart, a new replica, a rollout) does not scan every account
//! again: a policy's first run is due an interval after the last run any replica finished
//! (or, after a failed one, five minutes after it), and at once only when there is none, or
//! when a run was cut short (it resumes from its checkpoints). A run also starts on demand
//! (`POST /v1/policies/{name}/reconcile`, `paysync reconcile --once`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Reconciler, RunOptions, Trigger};
use crate::policy;
use crate::store::{self, reconcile_runs};

/// How soon a run that failed (Stripe or the database down) is tried again, at most.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// How often the schedule looks for a policy that is due (or that became ready: a new key is
/// checked with Stripe first).
const TICK: Duration = Duration::from_secs(1);

/// The interval of a policy that does not set one.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// What the runs recorded for a policy say about its first run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Never reconciled (or only in Observe mode, which records nothing).
    None,
    /// A run was cut short (its process stopped or was killed): it resumes.
    Unfinished,
    /// The last run finished at this time.
    Finished { at: DateTime<Utc>, succeeded: bool },
}

/// How long after `now` the first run of a policy with this history is due.
pub fn first_run_in(history: History, interval: Duration, now: DateTime<Utc>) -> Duration {
    let (at, wait) = match history {
        History::None | History::Unfinished => return Duration::ZERO,
        History::Finished { at, succeeded } if succeeded => (at, interval),
        History::Finished { at, .. } => (at, interval.min(RETRY_AFTER_FAILURE)),
    };
    let due = at + chrono::TimeDelta::from_std(wait).unwrap_or(chrono::TimeDelta::MAX);
    (due - now).to_std().unwrap_or(Duration::ZERO)
}

impl Reconciler {
    /// Until `shutdown`: every due policy that can call Stripe gets a run; a failed run is
    /// tried again within five minutes. A run cut short by shutdown stays unfinished and the
    /// next start resumes it.
    pub async fn schedule(self: Arc<Self>, shutdown: CancellationToken) {
        let mut due: BTreeMap<String, Instant> = BTreeMap::new();
        let mut ran: BTreeSet<String> = BTreeSet::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        let mut runs: JoinSet<(String, bool)> = JoinSet::new();
        info!("reconciling each policy every reconcile.interval");
        loop {
            let now = Instant::now();
            let open = self
                .schedule_gate
                .as_ref()
                .is_none_or(|gate| *gate.borrow());
            for policy in self.policies.all().into_iter().filter(|_| open) {
                let next = match due.get(&policy.name) {
                    Some(next) => *next,
                    None => {
                        let first = now + self.first_run_in(&policy.name).await;
                        due.insert(policy.name.clone(), first);
                        first
                    }
                };
                // A policy that can call Stripe (a key Stripe has not refused; not
                // suspended) is due; one that cannot is tried again at the next tick.
                let can_run = policy.stripe().is_some() && !policy.spec.suspend;
                if next > Instant::now() || running.contains(&policy.name) || !can_run {
                    continue;
                }
                // The first run of a policy in this process is the one at start.
                let trigger = if ran.insert(policy.name.clone()) {
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
                    let next = Instant::now() + self.wait_after(&name, succeeded);
                    due.insert(name, next);
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// How long until the policy's first run in this process, from the runs recorded by any
    /// replica (logged, so an operator sees why a start did or did not reconcile). If they
    /// cannot be read, at once, as before there was a record to read.
    async fn first_run_in(&self, name: &str) -> Duration {
        let interval = self.interval(name);
        let history = match self.history(name).await {
            Ok(history) => history,
            Err(e) => {
                warn!(policy = %name, error = %e, "reading the last reconcile runs failed; reconciling now");
                return Duration::ZERO;
            }
        };
        let wait = first_run_in(history, interval, Utc::now());
        match history {
            History::None => info!(policy = %name, "never reconciled: reconciling now"),
            History::Unfinished => {
                info!(policy = %name, "a reconcile was cut short: resuming it now")
            }
            History::Finished { at, succeeded } => info!(policy = %name, last_finished_at = %at,
                succeeded, next_in_seconds = wait.as_secs(),
                "last reconcile finished recently enough: the next one is due an interval after it"),
        }
        wait
    }

    async fn history(&self, name: &str) -> store::Result<History> {
        let mut conn = store::acquire(&self.pool).await?;
        if reconcile_runs::unfinished(&mut conn, name).await?.is_some() {
            return Ok(History::Unfinished);
        }
        Ok(
            match reconcile_runs::last_finished(&mut conn, name).await? {
                Some(run) => History::Finished {
                    at: run.finished_at.unwrap_or(run.started_at),
                    succeeded: run.outcome == "succeeded",
                },
                None => History::None,
            },
        )
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

    fn interval(&self, name: &str) -> Duration {
        self.policies
            .get(name)
            .and_then(|p| policy::interval(&p.spec))
            .unwrap_or(DEFAULT_INTERVAL)
    }

    /// How long until the policy's next run: its interval, or sooner after a failure.
    fn wait_after(&self, name: &str, succeeded: bool) -> Duration {
        let interval = self.interval(name);
        if succeeded {
            interval
        } else {
            interval.min(RETRY_AFTER_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap()
    }

    #[test]
    fn a_restart_waits_for_the_interval_after_the_last_run() {
        let ran = |succeeded| History::Finished {
            at: at(0),
            succeeded,
        };
        // Finished ten minutes ago: due fifty minutes from now, not at start.
        assert_eq!(
            first_run_in(ran(true), HOUR, at(600)),
            Duration::from_secs(3000)
        );
        // Overdue: at once.
        assert_eq!(first_run_in(ran(true), HOUR, at(4000)), Duration::ZERO);
        // Failed a minute ago: tried again five minutes after it.
        assert_eq!(
            first_run_in(ran(false), HOUR, at(60)),
            Duration::from_secs(240)
        );
    }

    #[test]
    fn a_policy_never_reconciled_or_cut_short_is_reconciled_at_start() {
        for history in [History::None, History::Unfinished] {
            assert_eq!(first_run_in(history, HOUR, at(10)), Duration::ZERO);
        }
    }
}
