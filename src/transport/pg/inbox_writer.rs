//! The inbox writer of the PostgreSQL transport: takes verified Stripe events for many
//! concurrent webhook deliveries in one transaction and one commit (group commit at the
//! application). Where this process applies events, the batch is applied right there, with
//! its dedup records (one commit per batch, where queueing and then applying took two per
//! event); what cannot be applied so (an order in doubt, an outbound sync in flight, any
//! failure) is stored in the inbox for the workers instead. Each caller returns only once its
//! own events are committed, applied or queued.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
/// Deliveries waiting for an inbox write before callers wait for room (backpressure).
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
///
/// A delivery that finds a writer free starts one itself (a task, so a client that hangs up
/// cancels nothing of the others' write); a writer takes what waits, writes it, and goes on
/// while more waits. There is no gathering task in between: at one delivery at a time, a
/// hop between tasks (and the threads they wake) is a large part of a delivery's cost.
#[derive(Clone)]
pub struct InboxWriter {
    shared: Arc<Shared>,
}

/// The writer's notifier task, not yet running: started by [`InboxWriterTasks::spawn`] when
/// paysync runs (building paysync starts nothing).
pub struct InboxWriterTasks {
    pool: PgPool,
    wake: mpsc::Receiver<()>,
}

/// What every clone of the writer and its write tasks share.
struct Shared {
    pool: PgPool,
    applier: Option<Arc<dyn InboundHandler>>,
    metrics: Arc<InboxWriterMetrics>,
    /// Room for deliveries waiting for a write: callers wait for it (backpressure).
    room: Semaphore,
    /// Deliveries waiting and writers running, decided under one lock: a delivery that
    /// finds every writer busy is sure to be taken by one of them.
    state: Mutex<Waiting>,
    /// Wakes the notifier after a queued write.
    written: mpsc::Sender<()>,
}

#[derive(Default)]
struct Waiting {
    queue: VecDeque<PendingWrite>,
    /// Writers running, at most [`CONCURRENT_INBOX_WRITES`].
    writers: usize,
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
    /// The writer and its notifier task. With an `applier` (this process applies Stripe
    /// events), events are applied as they arrive where they can be. The notifier stops when
    /// the last clone of the writer is dropped.
    pub fn new(
        pool: PgPool,
        applier: Option<Arc<dyn InboundHandler>>,
        metrics: Arc<InboxWriterMetrics>,
    ) -> (Self, InboxWriterTasks) {
        let (written, wake) = mpsc::channel(1);
        let shared = Shared {
            pool: pool.clone(),
            applier,
            metrics,
            room: Semaphore::new(INBOX_QUEUE_DEPTH),
            state: Mutex::default(),
            written,
        };
        let writer = Self {
            shared: Arc::new(shared),
        };
        (writer, InboxWriterTasks { pool, wake })
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
        let room = self
            .shared
            .room
            .acquire()
            .await
            .map_err(|_| QueueError::Stopped)?;
        // Given back when a writer takes the delivery.
        room.forget();
        let start = {
            let mut state = self.shared.state();
            state.queue.push_back(PendingWrite { events, done });
            let free = state.writers < CONCURRENT_INBOX_WRITES;
            state.writers += usize::from(free);
            free
        };
        if start {
            tokio::spawn(write_waiting(self.shared.clone()));
        }
        committed
            .await
            .map_err(|_| QueueError::Stopped)?
            .map_err(QueueError::Inbox)
    }
}

impl InboxWriterTasks {
    pub fn spawn(self) {
        tokio::spawn(notify_workers(self.pool, self.wake));
    }
}

/// A writer: writes what waits, batch after batch, and stops when nothing does (deciding so
/// under the lock a delivery queues under, so none is left behind).
async fn write_waiting(shared: Arc<Shared>) {
    // A writer that panicked must still give its place back.
    let running = WriterPlace(&shared);
    while let Some(batch) = shared.take_waiting() {
        shared.room.add_permits(batch.callers.len());
        shared.write(batch).await;
    }
    std::mem::forget(running);
}

/// Gives a writer's place back if its task ends without deciding to stop (a panic).
struct WriterPlace<'a>(&'a Shared);

impl Drop for WriterPlace<'_> {
    fn drop(&mut self) {
        self.0.state().writers -= 1;
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What waits now, up to one write's worth; `None` (and this writer stops) when nothing.
    fn take_waiting(&self) -> Option<Batch> {
        let mut state = self.state();
        if state.queue.is_empty() {
            state.writers -= 1;
            return None;
        }
        let mut batch = Batch::default();
        while batch.events.len() < MAX_INBOX_BATCH {
            match state.queue.pop_front() {
                Some(pending) => batch.add(pending),
                None => break,
            }
        }
        Some(batch)
    }

    /// Applies or queues one batch, and answers its callers.
    async fn write(&self, batch: Batch) {
        let started = Instant::now();
        let outcome = apply_or_queue(&self.pool, self.applier.as_deref(), &batch.events).await;
        let metrics = &self.metrics;
        metrics.events.observe(batch.events.len() as f64);
        metrics.duration.observe(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Ok(Written::Applied) => "applied",
            Ok(Written::Queued) => {
                // Full means a wake-up is pending already, which covers these rows too.
                let _ = self.written.try_send(());
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
