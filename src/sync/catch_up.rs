//! Catch-up: reads the Stripe Events API from a cursor per account and queues the customer
//! events paysync never received as webhooks (an endpoint down, a delivery lost), so missed
//! changes arrive without a full reconciliation. Events are deduplicated by id, so whatever
//! both paths deliver is applied once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use bytes::Bytes;

use super::inbound_queue::{InboundQueue, QueueError};
use crate::metrics::Metrics;
use crate::store::{self, DEFAULT_ACCOUNT, processed_events, sync_cursors};
use crate::stripe::event::{HANDLED_TYPES, VerifiedEvent};
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
}

/// Runs catch-up at start and then every `interval`, until `shutdown`.
pub async fn run(
    pool: sqlx::PgPool,
    stripe: Arc<dyn StripeApi>,
    queue: InboundQueue,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let run = tokio::select! {
            () = shutdown.cancelled() => break,
            run = catch_up_once(&pool, stripe.as_ref(), &queue) => run,
        };
        match run {
            Ok(CatchUpRun::Done { queued }) => {
                Metrics::count(&metrics.catch_up_runs, "done");
                metrics.catch_up_events.inc_by(queued as u64);
                if queued > 0 {
                    info!(
                        queued,
                        "catch-up found Stripe events that never arrived as webhooks"
                    );
                }
            }
            Ok(CatchUpRun::Skipped) => Metrics::count(&metrics.catch_up_runs, "skipped"),
            Err(e) => {
                Metrics::count(&metrics.catch_up_runs, "failed");
                warn!(error = %error_chain(&e), "catch-up failed; the next run starts from the same cursor");
            }
        }
    }
}

/// One pass over the Events API from the account's cursor. The cursor moves only once every
/// event found is queued, so a failed run loses nothing: the next one reads the same window.
pub async fn catch_up_once(
    pool: &sqlx::PgPool,
    stripe: &dyn StripeApi,
    queue: &InboundQueue,
) -> Result<CatchUpRun, CatchUpError> {
    let mut tx = store::begin(pool).await?;
    if !sync_cursors::try_lock(&mut tx, DEFAULT_ACCOUNT).await? {
        return Ok(CatchUpRun::Skipped);
    }
    let Some(cursor) = sync_cursors::load(&mut tx, DEFAULT_ACCOUNT).await? else {
        // First run: what happened before paysync was installed is the reconciler's job.
        sync_cursors::save(&mut tx, DEFAULT_ACCOUNT, None, Utc::now()).await?;
        store::commit(tx).await?;
        return Ok(CatchUpRun::Done { queued: 0 });
    };
    let since = (cursor - OVERLAP).timestamp();
    let mut newest: Option<(DateTime<Utc>, String)> = None;
    let mut queued = 0;
    for kind in HANDLED_TYPES {
        let mut starting_after: Option<String> = None;
        let mut previous_page: HashSet<String> = HashSet::new();
        for _ in 0..MAX_PAGES_PER_TYPE {
            let page = stripe
                .list_events(kind, since, starting_after.as_deref())
                .await?;
            let events: Vec<VerifiedEvent> = page
                .data
                .into_iter()
                .filter_map(|event| {
                    VerifiedEvent::parse(Bytes::from(event.to_string()))
                        .map_err(|reason| {
                            warn!(
                                reason,
                                "the Events API returned something that is not an event; skipped"
                            );
                        })
                        .ok()
                })
                .collect();
            if events.iter().any(|e| previous_page.contains(&e.id)) {
                warn!(
                    kind,
                    "the Events API repeated a page; stopping this type for this run"
                );
                break;
            }
            for event in &events {
                if let Some(created) = DateTime::from_timestamp(event.created, 0)
                    && newest.as_ref().is_none_or(|(at, _)| created > *at)
                {
                    newest = Some((created, event.id.clone()));
                }
            }
            let last = events.last().map(|e| e.id.clone());
            previous_page = events.iter().map(|e| e.id.clone()).collect();
            queued += queue_unknown(&mut tx, queue, events).await?;
            match (page.has_more, last) {
                (true, Some(last)) => starting_after = Some(last),
                _ => break,
            }
        }
    }
    if let Some((created, event_id)) = newest
        && created > cursor
    {
        sync_cursors::save(&mut tx, DEFAULT_ACCOUNT, Some(&event_id), created).await?;
    }
    store::commit(tx).await?;
    Ok(CatchUpRun::Done { queued })
}

/// Queues the events paysync has not seen; returns how many.
async fn queue_unknown(
    conn: &mut sqlx::PgConnection,
    queue: &InboundQueue,
    events: Vec<VerifiedEvent>,
) -> Result<usize, CatchUpError> {
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let known = processed_events::known(conn, &ids).await?;
    let unknown: Vec<VerifiedEvent> = events
        .into_iter()
        .filter(|e| !known.contains(&e.id))
        .collect();
    let count = unknown.len();
    queue.enqueue(unknown).await?;
    Ok(count)
}
