//! The inbox writer of the PostgreSQL transport: stores verified Stripe events for many
//! concurrent webhook deliveries in one statement and one commit (group commit at the
//! application). Each caller still returns only once its own events are committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::latency_histogram;
use crate::store;
use crate::store::processed_events::{self, EventRef};
use crate::stripe::event::StripeEvent;
use crate::sync::QueueError;
use crate::telemetry::error_chain;

/// Inbox writes in flight at once: one commits while the next gathers its rows.
const CONCURRENT_INBOX_WRITES: usize = 2;
/// Most events in one inbox write.
const MAX_INBOX_BATCH: usize = 500;
/// Events waiting for an inbox write before callers wait for room (backpressure).
const INBOX_QUEUE_DEPTH: usize = 10_000;
/// Shortest time between two wake-ups of the inbox workers. PostgreSQL serializes the commits
/// of transactions that NOTIFY, so the writes do not notify themselves: a separate notifier
/// does, at most this often, and always once after the last write.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(10);

/// `paysync_inbox_write_*`.
#[derive(Debug)]
pub struct InboxWriterMetrics {
    events: Histogram,
    duration: Histogram,
}

impl InboxWriterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            events: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            duration: latency_histogram(),
        };
        registry.register(
            "inbox_write_events",
            "Events per inbox write: concurrent webhook deliveries share one insert and commit",
            metrics.events.clone(),
        );
        registry.register(
            "inbox_write_duration_seconds",
            "Time one inbox write took, insert and commit",
            metrics.duration.clone(),
        );
        metrics
    }
}

/// Writes inbox rows for many concurrent callers in one statement and one commit: while a
/// write is in flight, new events gather, and the next write takes them all (group commit at
/// the application). Each caller still returns only once its own events are committed.
#[derive(Clone)]
pub struct InboxWriter {
    sender: mpsc::Sender<PendingWrite>,
}

/// The writer's tasks, not yet running: started by [`InboxWriterTasks::spawn`] when paysync
/// runs (building paysync starts nothing).
pub struct InboxWriterTasks {
    pool: PgPool,
    metrics: Arc<InboxWriterMetrics>,
    receiver: mpsc::Receiver<PendingWrite>,
}

struct PendingWrite {
    events: Vec<StripeEvent>,
    done: oneshot::Sender<Result<(), String>>,
}

impl InboxWriter {
    /// The writer and its tasks; writes wait until the tasks are spawned. The tasks stop when
    /// the last clone of the writer is dropped.
    pub fn new(pool: PgPool, metrics: Arc<InboxWriterMetrics>) -> (Self, InboxWriterTasks) {
        let (sender, receiver) = mpsc::channel(INBOX_QUEUE_DEPTH);
        let tasks = InboxWriterTasks {
            pool,
            metrics,
            receiver,
        };
        (Self { sender }, tasks)
    }

    pub async fn write(&self, events: Vec<StripeEvent>) -> Result<(), QueueError> {
        let (done, committed) = oneshot::channel();
        self.sender
            .send(PendingWrite { events, done })
            .await
            .map_err(|_| QueueError::Stopped)?;
        committed
            .await
            .map_err(|_| QueueError::Stopped)?
            .map_err(QueueError::Inbox)
    }
}

impl InboxWriterTasks {
    pub fn spawn(self) {
        let (written, wake) = mpsc::channel(1);
        tokio::spawn(notify_workers(self.pool.clone(), wake));
        tokio::spawn(gather_and_write(
            self.pool,
            self.metrics,
            self.receiver,
            written,
        ));
    }
}

async fn gather_and_write(
    pool: PgPool,
    metrics: Arc<InboxWriterMetrics>,
    mut receiver: mpsc::Receiver<PendingWrite>,
    written: mpsc::Sender<()>,
) {
    let writers = Arc::new(Semaphore::new(CONCURRENT_INBOX_WRITES));
    while let Some(first) = receiver.recv().await {
        // Waiting for a free writer is when the next batch gathers.
        let Ok(permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let mut rows = first.events.len();
        let mut batch = vec![first];
        while rows < MAX_INBOX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => {
                    rows += pending.events.len();
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let metrics = metrics.clone();
        let wake = written.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = write_inbox(&pool, &batch).await;
            metrics.events.observe(rows as f64);
            metrics.duration.observe(started.elapsed().as_secs_f64());
            if outcome.is_ok() {
                // Full means a wake-up is pending already, which covers these rows too.
                let _ = wake.try_send(());
            }
            for pending in batch {
                // The caller may have gone (its client disconnected); nothing to tell then.
                let _ = pending.done.send(outcome.clone());
            }
            drop(permit);
        });
    }
}

async fn write_inbox(pool: &PgPool, batch: &[PendingWrite]) -> Result<(), String> {
    let rows: Vec<(EventRef<'_>, &str)> = batch
        .iter()
        .flat_map(|pending| &pending.events)
        .map(|event| {
            let reference = EventRef {
                event_id: &event.id,
                kind: &event.kind,
                account: &event.account,
                stripe_customer_id: event.customer_id.as_deref(),
            };
            (reference, event.raw.as_str())
        })
        .collect();
    let write = async {
        let mut conn = store::acquire(pool).await?;
        processed_events::enqueue(&mut conn, &rows).await
    };
    write.await.map_err(|e| error_chain(&e))
}

/// Wakes the inbox workers of every replica (LISTEN/NOTIFY) after writes, coalescing bursts.
async fn notify_workers(pool: PgPool, mut written: mpsc::Receiver<()>) {
    while written.recv().await.is_some() {
        let notified = sqlx::query("select pg_notify($1, '')")
            .bind(processed_events::NOTIFY_CHANNEL)
            .execute(&pool)
            .await;
        if let Err(e) = notified {
            // The workers' poll picks the events up anyway.
            tracing::debug!(error = %e, "waking the inbox workers failed");
        }
        tokio::time::sleep(NOTIFY_INTERVAL).await;
    }
}
