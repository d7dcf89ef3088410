//! Where verified Stripe events wait until the inbound worker applies them: the inbound Kafka
//! topic, or the `processed_events` inbox with the PostgreSQL transport. The webhook ingress
//! and catch-up both enqueue here, so both paths share the worker's guarantees.

use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

use super::inbound_sync::Received;
use crate::bus::Envelope;
use crate::store::processed_events::{self, EventRef};
use crate::store::{self, DEFAULT_ACCOUNT};

/// How long an event may wait for Kafka's acknowledgement: an answer well within Stripe's
/// delivery timeout, so a slow broker shows as a 503, not as a timed-out endpoint.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("storing events in the inbox failed")]
    Store(#[from] store::Error),
    #[error("Kafka did not take event {event_id}: {reason}")]
    Kafka { event_id: String, reason: String },
}

#[derive(Clone)]
pub enum InboundQueue {
    /// The PostgreSQL transport: the `processed_events` inbox, deduplicated by event id.
    Postgres(PgPool),
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
    pub async fn enqueue(&self, events: &[Received]) -> Result<(), QueueError> {
        match self {
            Self::Postgres(pool) => {
                let rows: Vec<_> = events
                    .iter()
                    .map(|received| {
                        let event = &received.event;
                        let reference = EventRef {
                            event_id: &event.id,
                            kind: &event.kind,
                            account: DEFAULT_ACCOUNT,
                            stripe_customer_id: event.customer_id(),
                        };
                        (reference, &received.payload)
                    })
                    .collect();
                let mut conn = store::acquire(pool).await?;
                processed_events::enqueue(&mut conn, &rows).await?;
                Ok(())
            }
            Self::Kafka { producer, topic } => {
                let sends = events
                    .iter()
                    .map(|received| produce(producer, topic, received));
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
    received: &Received,
) -> Result<(), QueueError> {
    let event = &received.event;
    let failed = |reason: String| QueueError::Kafka {
        event_id: event.id.clone(),
        reason,
    };
    let occurred_at = chrono::DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
    let envelope = Envelope::inbound(&received.payload, occurred_at);
    let body = serde_json::to_vec(&envelope).map_err(|e| failed(e.to_string()))?;
    let key = event.customer_id().unwrap_or(&event.id);
    let record = FutureRecord::to(topic).key(key).payload(&body);
    match tokio::time::timeout(ENQUEUE_TIMEOUT, producer.send(record, ENQUEUE_TIMEOUT)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!(
            "no acknowledgement within {ENQUEUE_TIMEOUT:?}"
        ))),
    }
}
