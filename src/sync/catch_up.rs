//! Catch-up: reads each policy's Stripe Events API from its own cursor (under its own lock)
//! and queues the customer events paysync never received as webhooks, tagged with the account (an endpoint down, a delivery lost), so missed
//! changes arrive without a full reconciliation. Events are deduplicated by id, so whatever
//! both paths deliver is applied once, and an event already dead-lettered is not queued again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mirror;
use super::queue::{EventQueue, QueueError};
use crate::crd::{MirroredObject, mirrors};
use crate::metrics::{PolicyOutcomes, add_for, count_for};
use crate::policy::{Policy, PolicyRegistry};
use crate::store::locks::LockPool;
use crate::store::{self, processed_events, sync_cursors};
use crate::stripe::event::{EventKind, StripeEvent};
use crate::stripe::{self as stripe_api, StripeApi};
use crate::telemetry::error_chain;

/// Each run re-reads this far behind the newest event it has seen, for events that show up in
/// the Events API a little after their `created` time (the ids already known are skipped).
const OVERLAP: TimeDelta = TimeDelta::seconds(60);

/// Stops a run that keeps being handed pages it has already read (localstripe restarts from
/// the first page when `starting_after` names an event it no longer has).
const MAX_PAGES_PER_TYPE: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("reading the Stripe Events API")]
    Stripe(#[from] stripe_api::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("queueing missed events")]
    Queue(#[from] QueueError),
}

/// What one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpRun {
    /// Queued this many events paysync had not received.
    Done { queued: usize },
    /// Another replica holds the account's catch-up lock.
    Skipped,
    /// The policy is suspended, or has no usable API key.
    Idle,
}

/// `paysync_catch_up_*`.
#[derive(Debug)]
pub struct CatchUpMetrics {
    runs: PolicyOutcomes,
    /// Outcome `queued`: one label set, so it reads as a count per policy.
    events: PolicyOutcomes,
}

impl CatchUpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: PolicyOutcomes::default(),
            events: PolicyOutcomes::default(),
        };
        registry.register(
            "catch_up_events",
            "Stripe events found by catch-up (Events API) that paysync had not received, by policy",
            metrics.events.clone(),
        );
        registry.register(
            "catch_up_runs",
            "Catch-up runs, by outcome (done, skipped: another replica ran it, idle: the \
             policy is suspended or has no usable key, failed)",
            metrics.runs.clone(),
        );
        metrics
    }
}

/// Catch-up of every policy's Stripe account.
pub struct CatchUp {
    pub pool: PgPool,
    pub locks: LockPool,
    /// Read at every run, so a policy added or changed is caught up without a restart.
    pub policies: Arc<PolicyRegistry>,
    pub queue: Arc<dyn EventQueue>,
    pub metrics: Arc<CatchUpMetrics>,
}

impl CatchUp {
    /// Runs at start and then every `interval`, until `shutdown`.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            for policy in self.policies.all() {
                let run = tokio::select! {
                    () = shutdown.cancelled() => return,
                    run = self.once(&policy) => run,
                };
                self.report(&policy.name, run);
            }
        }
    }

    fn report(&self, policy: &str, run: Result<CatchUpRun, CatchUpError>) {
        match run {
            Ok(CatchUpRun::Done { queued }) => {
                count_for(&self.metrics.runs, policy, "done");
                add_for(&self.metrics.events, policy, "queued", queued as u64);
                if queued > 0 {
                    info!(
                        policy,
                        queued, "catch-up found Stripe events that never arrived as webhooks"
                    );
                }
            }
            Ok(CatchUpRun::Skipped) => count_for(&self.metrics.runs, policy, "skipped"),
            Ok(CatchUpRun::Idle) => count_for(&self.metrics.runs, policy, "idle"),
            Err(e) => {
                count_for(&self.metrics.runs, policy, "failed");
                warn!(policy, error = %error_chain(&e), "catch-up failed; the next run starts from the same cursor");
            }
        }
    }

    /// One pass over the policy's Events API from its cursor, on one replica at a time. The
    /// cursor moves only once every event found is queued, so a failed run loses nothing: the
    /// next one reads the same window.
    pub async fn once(&self, policy: &Policy) -> Result<CatchUpRun, CatchUpError> {
        let (false, Some(stripe)) = (policy.spec.suspend, policy.stripe()) else {
            return Ok(CatchUpRun::Idle);
        };
        let Some(lock) = self.locks.try_lock_catch_up(&policy.name).await? else {
            return Ok(CatchUpRun::Skipped);
        };
        let event_types = event_types(policy.spec.objects.as_deref());
        let account = Account {
            name: &policy.name,
            stripe: stripe.as_ref(),
            event_types: &event_types,
        };
        let run = self.read_from_cursor(account).await;
        lock.release().await?;
        run
    }

    async fn read_from_cursor(&self, account: Account<'_>) -> Result<CatchUpRun, CatchUpError> {
        let mut conn = store::acquire(&self.pool).await?;
        let Some(cursor) = sync_cursors::load(&mut conn, account.name).await? else {
            // First run: what happened before paysync was installed is the reconciler's job.
            sync_cursors::save(&mut conn, account.name, None, Utc::now()).await?;
            return Ok(CatchUpRun::Done { queued: 0 });
        };
        drop(conn);
        let since = (cursor - OVERLAP).timestamp();
        let mut newest = Newest::default();
        let mut queued = 0;
        for event_type in account.event_types {
            queued += self
                .read_type(account, event_type, since, &mut newest)
                .await?;
        }
        if let Some((created, event_id)) = newest.0
            && created > cursor
        {
            let mut conn = store::acquire(&self.pool).await?;
            sync_cursors::save(&mut conn, account.name, Some(&event_id), created).await?;
        }
        Ok(CatchUpRun::Done { queued })
    }

    /// Pages through the events of one type since `since`; returns how many were queued.
    async fn read_type(
        &self,
        account: Account<'_>,
        kind: &'static str,
        since: i64,
        newest: &mut Newest,
    ) -> Result<usize, CatchUpError> {
        let mut starting_after: Option<String> = None;
        let mut previous_page: HashSet<String> = HashSet::new();
        let mut queued = 0;
        for _ in 0..MAX_PAGES_PER_TYPE {
            let page = account
                .stripe
                .list_events(kind, since, starting_after.as_deref())
                .await?;
            let events = readable(page.data, account.name);
            if events.iter().any(|e| previous_page.contains(&e.id)) {
                warn!(
                    kind,
                    "the Events API repeated a page; stopping this type for this run"
                );
                break;
            }
            events.iter().for_each(|event| newest.see(event));
            let last = events.last().map(|e| e.id.clone());
            previous_page = events.iter().map(|e| e.id.clone()).collect();
            queued += self.queue_unknown(events).await?;
            match (page.has_more, last) {
                (true, Some(last)) => starting_after = Some(last),
                _ => break,
            }
        }
        Ok(queued)
    }

    /// Queues the events paysync has not seen; returns how many.
    async fn queue_unknown(&self, events: Vec<StripeEvent>) -> Result<usize, CatchUpError> {
        if events.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let mut conn = store::acquire(&self.pool).await?;
        let known = processed_events::known(&mut conn, &ids).await?;
        drop(conn);
        let unknown: Vec<StripeEvent> = events
            .into_iter()
            .filter(|e| !known.contains(&e.id))
            .collect();
        let count = unknown.len();
        self.queue.enqueue(unknown).await?;
        Ok(count)
    }
}

/// The account a run reads.
#[derive(Clone, Copy)]
struct Account<'a> {
    name: &'a str,
    stripe: &'a dyn StripeApi,
    /// The event types the policy applies: paysync's customers', and the billing mirror's
    /// for the kinds it mirrors (the Events API filters by one exact type per call).
    event_types: &'a [&'static str],
}

/// The event types catch-up reads for a policy mirroring `objects`.
fn event_types(objects: Option<&[MirroredObject]>) -> Vec<&'static str> {
    let customers = EventKind::ALL.into_iter().map(EventKind::as_str);
    let mirrored = mirror::kinds::ALL
        .into_iter()
        .filter(|kind| kind.table != "customers" && mirrors(objects, kind.selector))
        .flat_map(mirror::kinds::event_types);
    customers.chain(mirrored).collect()
}

/// The newest event a run has seen: where the cursor moves once the run is done.
#[derive(Default)]
struct Newest(Option<(DateTime<Utc>, String)>);

impl Newest {
    fn see(&mut self, event: &StripeEvent) {
        if let Some(created) = DateTime::from_timestamp(event.created, 0)
            && self.0.as_ref().is_none_or(|(at, _)| created > *at)
        {
            self.0 = Some((created, event.id.clone()));
        }
    }
}

/// The events of a page, as a webhook would carry them; anything else is logged and skipped.
fn readable(page: Vec<serde_json::Value>, account: &str) -> Vec<StripeEvent> {
    page.into_iter()
        .filter_map(|event| {
            StripeEvent::parse(event.to_string())
                .map_err(|reason| {
                    warn!(
                        reason,
                        "the Events API returned something that is not an event; skipped"
                    );
                })
                .ok()
                .map(|event| event.for_account(account))
        })
        .collect()
}
