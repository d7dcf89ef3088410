//! The inbound worker over the PostgreSQL inbox: claims waiting events (`FOR UPDATE SKIP
//! LOCKED`, so several workers and replicas share it) and hands them to the inbound handler,
//! which applies them in the claiming transaction. With the Kafka transport it still runs:
//! replayed dead letters come back through the inbox.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::super::worker::{self, Waiting, WorkerSettings};
use crate::store;
use crate::store::dead_letters::{NewDeadLetter, Source};
use crate::store::locks::LockPool;
use crate::store::processed_events::{self, EventRef, InboxRow};
use crate::sync::{Delivery, InboundHandler, Received};

/// The inbox workers take their work as every worker does.
pub type InboxSettings = WorkerSettings;

/// Runs `settings.concurrency` workers until `shutdown`; each finishes its batch in hand.
pub async fn run(
    pool: PgPool,
    locks: LockPool,
    handler: Arc<dyn InboundHandler>,
    settings: InboxSettings,
    shutdown: CancellationToken,
) {
    let waiting = Waiting {
        channel: processed_events::NOTIFY_CHANNEL,
        poll_interval: settings.poll_interval,
    };
    let workers = (0..settings.concurrency.max(1)).map(|_| {
        let (pool, locks, handler, shutdown) = (
            pool.clone(),
            locks.clone(),
            handler.clone(),
            shutdown.clone(),
        );
        async move {
            worker::run("inbox", &pool, waiting, shutdown, || {
                drain_batch(&locks, handler.as_ref(), settings.batch_size)
            })
            .await;
        }
    });
    futures::future::join_all(workers).await;
}

/// Claims one batch and hands it on; returns how many events were claimed.
async fn drain_batch(
    locks: &LockPool,
    handler: &dyn InboundHandler,
    limit: i64,
) -> store::Result<usize> {
    let mut tx = locks.begin_by_key_only().await?;
    let rows = processed_events::claim_queued(&mut tx, limit).await?;
    let claimed = rows.len();
    if claimed == 0 {
        return Ok(0);
    }
    let mut events = Vec::with_capacity(claimed);
    let mut unreadable = Vec::new();
    for row in rows {
        match row
            .payload
            .clone()
            .map(|raw| Received::from_raw(raw, &row.account))
        {
            Some(Ok(mut received)) => {
                received.refetch = row.refetch;
                events.push(received);
            }
            Some(Err(reason)) => unreadable.push((row, reason)),
            None => unreadable.push((row, "the inbox row has no payload".to_owned())),
        }
    }
    if unreadable.is_empty() {
        if !handler.apply_claimed_linked(tx, &events).await? {
            apply_claimed_again(locks, handler, events).await?;
        }
        return Ok(claimed);
    }
    // Set those aside first; the readable ones are claimed again at once.
    drop(tx);
    for (row, reason) in unreadable {
        dead_letter_unreadable(handler, &row, &reason).await?;
    }
    Ok(claimed)
}

/// The general path for events the common batch did not apply: claimed again (those another
/// worker took meanwhile are its own now), and applied.
async fn apply_claimed_again(
    locks: &LockPool,
    handler: &dyn InboundHandler,
    events: Vec<Received>,
) -> store::Result<()> {
    let mut tx = locks.begin().await?;
    let ids: Vec<&str> = events.iter().map(|r| r.event.id.as_str()).collect();
    let claimed: HashSet<String> = processed_events::claim_listed(&mut tx, &ids)
        .await?
        .into_iter()
        .collect();
    let events: Vec<Received> = events
        .into_iter()
        .filter(|r| claimed.contains(&r.event.id))
        .collect();
    if !events.is_empty() {
        handler.apply_claimed(tx, &events).await?;
    }
    Ok(())
}

/// An inbox row that is not a Stripe event (it was verified before it was stored, so this
/// means it was altered since): kept in the dead-letter table, out of the worker's way.
async fn dead_letter_unreadable(
    handler: &dyn InboundHandler,
    row: &InboxRow,
    reason: &str,
) -> store::Result<()> {
    warn!(event_id = %row.event_id, reason, "unreadable inbox event");
    let event = EventRef {
        event_id: &row.event_id,
        kind: "",
        account: &row.account,
        stripe_customer_id: None,
    };
    let letter = NewDeadLetter {
        source: Source::Inbound,
        account: &row.account,
        key: &row.event_id,
        payload: row.payload.as_deref().unwrap_or_default().as_bytes(),
        error: reason,
        attempts: 1,
    };
    handler
        .dead_letters()
        .set_aside_event(event, Delivery::Inbox, letter)
        .await?;
    Ok(())
}
