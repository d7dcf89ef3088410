//! The inbound worker over the PostgreSQL inbox: claims waiting events (`FOR UPDATE SKIP
//! LOCKED`, so several workers and replicas share it), applies a batch in the claiming
//! transaction, and marks each processed in that same transaction. With the Kafka transport
//! it still runs: replayed dead letters come back through the inbox.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::inbound_sync::{Delivery, InboundSync, Outcome, Received};
use crate::metrics::Metrics;
use crate::store::dead_letters::{NewDeadLetter, Source};
use crate::store::processed_events::{self, EventRef, InboxRow};
use crate::store::{self, DEFAULT_ACCOUNT};

#[derive(Debug, Clone, Copy)]
pub struct InboxSettings {
    /// Events claimed and committed together.
    pub batch_size: i64,
    /// Workers draining the inbox at once (each holds a database connection per batch).
    pub concurrency: usize,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
}

/// Runs `settings.concurrency` workers until `shutdown`; each finishes its batch in hand.
pub async fn run(
    sync: Arc<InboundSync>,
    metrics: Arc<Metrics>,
    settings: InboxSettings,
    shutdown: CancellationToken,
) {
    let workers: Vec<_> = (0..settings.concurrency.max(1))
        .map(|_| {
            tokio::spawn(work(
                sync.clone(),
                metrics.clone(),
                settings,
                shutdown.clone(),
            ))
        })
        .collect();
    for worker in workers {
        if let Err(e) = worker.await {
            warn!(error = %e, "an inbox worker failed");
        }
    }
    debug!("inbox workers stopped");
}

async fn work(
    sync: Arc<InboundSync>,
    metrics: Arc<Metrics>,
    settings: InboxSettings,
    shutdown: CancellationToken,
) {
    let pool = sync.pool().clone();
    let mut wakeup = store::Wakeup::new(
        &pool,
        processed_events::NOTIFY_CHANNEL,
        settings.poll_interval,
    )
    .await;
    while !shutdown.is_cancelled() {
        match drain_batch(&sync, &metrics, settings.batch_size).await {
            Ok(claimed) if claimed > 0 => continue,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "inbox batch failed; its events will be claimed again"),
        }
        if let Ok(mut conn) = store::acquire(&pool).await
            && let Ok((backlog, _)) = processed_events::backlog(&mut conn).await
        {
            metrics.inbox_backlog.set(backlog);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wakeup.wait() => {}
        }
    }
}

/// Claims one batch and applies it; returns how many events were claimed.
async fn drain_batch(sync: &InboundSync, metrics: &Metrics, limit: i64) -> store::Result<usize> {
    let mut tx = store::begin(sync.pool()).await?;
    let rows = processed_events::claim_queued(&mut tx, limit).await?;
    if rows.is_empty() {
        store::commit(tx).await?;
        return Ok(0);
    }
    let claimed = rows.len();
    let mut events = Vec::with_capacity(claimed);
    let mut unreadable = Vec::new();
    for row in rows {
        match row.payload.clone().map(Received::from_raw) {
            Some(Ok(mut received)) => {
                received.refetch = row.refetch;
                events.push(received);
            }
            Some(Err(reason)) => unreadable.push((row, reason)),
            None => unreadable.push((row, "the inbox row has no payload".to_owned())),
        }
    }
    if unreadable.is_empty() {
        match sync.apply_batch(&mut tx, &events, Delivery::Inbox).await {
            Ok(outcomes) => {
                store::commit(tx).await?;
                sync.record(events.iter().zip(outcomes));
                return Ok(claimed);
            }
            Err(failure) => {
                debug!(error = %failure, "batch failed; applying its events one by one")
            }
        }
    }
    drop(tx);
    for (row, reason) in unreadable {
        dead_letter_unreadable(sync, metrics, &row, &reason).await?;
    }
    for received in &events {
        sync.apply_alone(received, Delivery::Inbox).await?;
    }
    Ok(claimed)
}

/// An inbox row that is not a Stripe event (it was verified before it was stored, so this
/// means it was altered since): kept in the dead-letter table, out of the worker's way.
async fn dead_letter_unreadable(
    sync: &InboundSync,
    metrics: &Metrics,
    row: &InboxRow,
    reason: &str,
) -> store::Result<()> {
    let event = EventRef {
        event_id: &row.event_id,
        kind: "",
        account: DEFAULT_ACCOUNT,
        stripe_customer_id: None,
    };
    let letter = NewDeadLetter {
        source: Source::Inbound,
        key: &row.event_id,
        payload: row.payload.as_deref().unwrap_or_default().as_bytes(),
        error: reason,
        attempts: 1,
    };
    if sync
        .dead_letters()
        .set_aside_event(event, Delivery::Inbox, letter)
        .await?
    {
        Metrics::count(&metrics.inbound_events, Outcome::DeadLettered.label());
    }
    Ok(())
}
