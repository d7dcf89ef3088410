//! Where verified Stripe events wait until the inbound worker applies them: the inbound Kafka
//! topic, or the `processed_events` inbox with the PostgreSQL transport. The webhook ingress
//! and catch-up both enqueue here, so both paths share the worker's guarantees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::bus::Envelope;
use crate::metrics::Metrics;
use crate::store::processed_events::{self, EventRef};
use crate::store::{self, DEFAULT_ACCOUNT};
use crate::stripe::event::VerifiedEvent;
use crate::telemetry::error_chain;

/// How long an event may wait for Kafka's acknowledgement: an answer well within Stripe's
/// delivery timeout, so a slow broker shows as a 503, not as a timed-out endpoint.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(8);
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

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("storing events in the inbox failed: {0}")]
    Inbox(String),
    #[error("the inbox writer has stopped")]
    Stopped,
    #[error("Kafka did not take event {event_id}: {reason}")]
    Kafka { event_id: String, reason: String },
}

#[derive(Clone)]
pub enum InboundQueue {
    /// The PostgreSQL transport: the `processed_events` inbox, deduplicated by event id.
    Postgres(InboxWriter),
    /// The Kafka transport: the inbound topic, keyed by Stripe customer id (so one customer's
    /// events stay in order on one partition).
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
}

impl std::fmt::Debug for InboundQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres(_) => f.write_str("InboundQueue::Postgres"),
            Self::Kafka { topic, .. } => write!(f, "InboundQueue::Kafka({topic})"),
        }
    }
}

impl InboundQueue {
    /// Queues the events durably: returns only once all of them are stored (committed to
    /// PostgreSQL, or acknowledged by all in-sync Kafka replicas).
    pub async fn enqueue(&self, events: Vec<VerifiedEvent>) -> Result<(), QueueError> {
        match self {
            Self::Postgres(writer) => writer.write(events).await,
            Self::Kafka { producer, topic } => {
                let sends = events.iter().map(|event| produce(producer, topic, event));
                for sent in futures::future::join_all(sends).await {
                    sent?;
                }
                Ok(())
            }
        }
    }
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    event: &VerifiedEvent,
) -> Result<(), QueueError> {
    let failed = |reason: String| QueueError::Kafka {
        event_id: event.id.clone(),
        reason,
    };
    let occurred_at = chrono::DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
    let message = Envelope::inbound(&event.raw, occurred_at);
    let key = event.customer_id.as_deref().unwrap_or(&event.id);
    let record = FutureRecord::to(topic).key(key).payload(&message);
    match tokio::time::timeout(ENQUEUE_TIMEOUT, producer.send(record, ENQUEUE_TIMEOUT)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!(
            "no acknowledgement within {ENQUEUE_TIMEOUT:?}"
        ))),
    }
}

/// Writes inbox rows for many concurrent callers in one statement and one commit: while a
/// write is in flight, new events gather, and the next write takes them all (group commit at
/// the application). Each caller still returns only once its own events are committed.
#[derive(Clone)]
pub struct InboxWriter {
    sender: mpsc::Sender<PendingWrite>,
}

struct PendingWrite {
    events: Vec<VerifiedEvent>,
    done: oneshot::Sender<Result<(), String>>,
}

impl InboxWriter {
    /// Starts the writer; it stops when the last clone is dropped.
    pub fn start(pool: PgPool, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = mpsc::channel(INBOX_QUEUE_DEPTH);
        let (written, wake) = mpsc::channel(1);
        tokio::spawn(notify_workers(pool.clone(), wake));
        tokio::spawn(gather_and_write(pool, metrics, receiver, written));
        Self { sender }
    }

    pub async fn write(&self, events: Vec<VerifiedEvent>) -> Result<(), QueueError> {
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

async fn gather_and_write(
    pool: PgPool,
    metrics: Arc<Metrics>,
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
            metrics.inbox_write_events.observe(rows as f64);
            metrics
                .inbox_write_duration
                .observe(started.elapsed().as_secs_f64());
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
                account: DEFAULT_ACCOUNT,
                stripe_customer_id: event.customer_id.as_deref(),
            };
            // Verified deliveries are JSON, hence UTF-8.
            (reference, std::str::from_utf8(&event.raw).unwrap_or("null"))
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
