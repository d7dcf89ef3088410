//! The inbox writer of the PostgreSQL transport: takes verified Stripe events for many
//! concurrent webhook deliveries in one transaction and one commit (group commit at the
//! application). Where this process applies events, the batch is applied right there, with
//! its dedup records (one commit per batch, where queueing and then applying took two per
//! event); what cannot be applied so (an order in doubt, an outbound sync in flight, any
//! failure) is stored in the inbox for the workers instead. Each caller returns only once its
//! own events are committed, applied or queued.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::{OutcomeLabels, Outcomes, latency_histogram};
use crate::store;
use crate::store::processed_events::{self, EventRef};
use crate::stripe::event::StripeEvent;
use crate::sync::{InboundHandler, QueueError, Received};
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

/// `paysync_inbox_write_*`, `paysync_arrived_events_total`.
#[derive(Debug)]
pub struct InboxWriterMetrics {
    events: Histogram,
    duration: Histogram,
    arrived: Outcomes,
}

impl InboxWriterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            events: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            duration: latency_histogram(),
            arrived: Outcomes::default(),
        };
        registry.register(
            "inbox_write_events",
            "Events per inbox write: concurrent webhook deliveries share one transaction and \
             commit",
            metrics.events.clone(),
        );
        registry.register(
            "inbox_write_duration_seconds",
            "Time one inbox write took, applying or queueing, and commit",
            metrics.duration.clone(),
        );
        registry.register(
            "arrived_events",
            "Stripe events taken by the PostgreSQL transport's ingress, by what became of them \
             before the 2xx: applied (on arrival) or queued (for the inbox workers)",
            metrics.arrived.clone(),
        );
        metrics
    }
}

/// Writes the events of many concurrent callers in one transaction and one commit: while a
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
    applier: Option<Arc<dyn InboundHandler>>,
    metrics: Arc<InboxWriterMetrics>,
    receiver: mpsc::Receiver<PendingWrite>,
}

struct PendingWrite {
    events: Vec<Received>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The events of one write and the callers waiting for it.
#[derive(Default)]
struct Batch {
    events: Vec<Received>,
    callers: Vec<oneshot::Sender<Result<(), String>>>,
}

impl InboxWriter {
    /// The writer and its tasks; writes wait until the tasks are spawned. The tasks stop when
    /// the last clone of the writer is dropped. With an `applier` (this process applies
    /// Stripe events), events are applied as they arrive where they can be.
    pub fn new(
        pool: PgPool,
        applier: Option<Arc<dyn InboundHandler>>,
        metrics: Arc<InboxWriterMetrics>,
    ) -> (Self, InboxWriterTasks) {
        let (sender, receiver) = mpsc::channel(INBOX_QUEUE_DEPTH);
        let tasks = InboxWriterTasks {
            pool,
            applier,
            metrics,
            receiver,
        };
        (Self { sender }, tasks)
    }

    pub async fn write(&self, events: Vec<StripeEvent>) -> Result<(), QueueError> {
        let events = events
            .into_iter()
            .map(|event| Received {
                event,
                refetch: false,
            })
            .collect();
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
        tokio::spawn(gather_and_write(self, written));
    }
}

async fn gather_and_write(tasks: InboxWriterTasks, written: mpsc::Sender<()>) {
    let InboxWriterTasks {
        pool,
        applier,
        metrics,
        mut receiver,
    } = tasks;
    let writers = Arc::new(Semaphore::new(CONCURRENT_INBOX_WRITES));
    while let Some(first) = receiver.recv().await {
        // Waiting for a free writer is when the next batch gathers.
        let Ok(permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Batch::default();
        batch.add(first);
        while batch.events.len() < MAX_INBOX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.add(pending),
                Err(_) => break,
            }
        }
        let (pool, applier, metrics) = (pool.clone(), applier.clone(), metrics.clone());
        let wake = written.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = apply_or_queue(&pool, applier.as_deref(), &batch.events).await;
            metrics.events.observe(batch.events.len() as f64);
            metrics.duration.observe(started.elapsed().as_secs_f64());
            let label = match &outcome {
                Ok(Written::Applied) => "applied",
                Ok(Written::Queued) => {
                    // Full means a wake-up is pending already, which covers these rows too.
                    let _ = wake.try_send(());
                    "queued"
                }
                Err(_) => "failed",
            };
            add(&metrics.arrived, label, batch.events.len() as u64);
            let outcome = outcome.map(|_| ());
            for caller in batch.callers {
                // The caller may have gone (its client disconnected); nothing to tell then.
                let _ = caller.send(outcome.clone());
            }
            drop(permit);
        });
    }
}

/// Counts `events` events of one outcome.
fn add(family: &Outcomes, outcome: &str, events: u64) {
    let labels = OutcomeLabels {
        outcome: outcome.to_owned(),
    };
    family.get_or_create(&labels).inc_by(events);
}

impl Batch {
    fn add(&mut self, pending: PendingWrite) {
        self.events.extend(pending.events);
        self.callers.push(pending.done);
    }
}

/// What a write did with its events.
enum Written {
    Applied,
    Queued,
}

/// Applies the events now if this process applies events and they can be, else queues them in
/// the inbox.
async fn apply_or_queue(
    pool: &PgPool,
    applier: Option<&dyn InboundHandler>,
    events: &[Received],
) -> Result<Written, String> {
    if let Some(applier) = applier {
        match applier.apply_arrived(events).await {
            Ok(true) => return Ok(Written::Applied),
            Ok(false) => {}
            // The commit's outcome may be unknown: queueing stores only what is not recorded.
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "applying on arrival failed; queueing")
            }
        }
    }
    write_inbox(pool, events)
        .await
        .map(|()| Written::Queued)
        .map_err(|e| error_chain(&e))
}

async fn write_inbox(pool: &PgPool, events: &[Received]) -> store::Result<()> {
    let rows: Vec<(EventRef<'_>, &str)> = events
        .iter()
        .map(|received| (received.event_ref(), received.event.raw.as_str()))
        .collect();
    let mut conn = store::acquire(pool).await?;
    processed_events::enqueue(&mut conn, &rows).await
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
