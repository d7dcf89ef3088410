//! The outbound worker over the PostgreSQL transport: claims outbox rows directly (no Kafka),
//! syncs each customer once per batch, and marks the rows done in the same transaction.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use super::OutboundSync;
use crate::domain::CustomerId;
use crate::metrics::Metrics;
use crate::store::{self, outbox};

#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Outbox rows claimed per transaction.
    pub batch_size: i64,
    /// Customers synced at once (each holds a database connection while Stripe answers).
    pub concurrency: usize,
    /// Fallback poll when no notification arrives (a missed NOTIFY, a restart).
    pub poll_interval: Duration,
}

/// Runs until `shutdown`; the batch in hand is finished first.
pub async fn run(
    pool: PgPool,
    sync: Arc<OutboundSync>,
    metrics: Arc<Metrics>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    let mut wakeup =
        store::Wakeup::new(&pool, outbox::NOTIFY_CHANNEL, settings.poll_interval).await;
    while !shutdown.is_cancelled() {
        match drain_batch(&pool, &sync, settings).await {
            Ok(claimed) if claimed > 0 => continue,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "outbound batch failed; its rows will be claimed again"),
        }
        update_backlog(&pool, &metrics).await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wakeup.wait() => {}
        }
    }
    debug!("outbound worker stopped");
}

/// Publishes the outbox backlog as a gauge; best effort.
pub async fn update_backlog(pool: &PgPool, metrics: &Metrics) {
    if let Ok(mut conn) = store::acquire(pool).await
        && let Ok(backlog) = outbox::backlog(&mut conn).await
    {
        metrics.outbox_backlog.set(backlog);
    }
}

/// Claims one batch and syncs its customers; returns how many rows were claimed.
async fn drain_batch(
    pool: &PgPool,
    sync: &OutboundSync,
    settings: WorkerSettings,
) -> store::Result<usize> {
    let mut tx = store::begin(pool).await?;
    let rows = outbox::claim_unpublished(&mut tx, settings.batch_size).await?;
    if rows.is_empty() {
        store::commit(tx).await?;
        return Ok(0);
    }
    // A burst of changes to one customer is one sync of its latest state.
    let mut seen = HashSet::new();
    let customers: Vec<CustomerId> = rows
        .iter()
        .filter(|row| seen.insert(row.customer_id))
        .map(|row| CustomerId::from_uuid(row.customer_id))
        .collect();
    let results: Vec<_> = futures::stream::iter(customers)
        .map(|id| sync.sync(id))
        .buffer_unordered(settings.concurrency.max(1))
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(e);
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    outbox::mark_published(&mut tx, &ids).await?;
    store::commit(tx).await?;
    Ok(rows.len())
}
