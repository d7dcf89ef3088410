//! Where verified Stripe events wait until the inbound worker applies them: the inbound Kafka
//! topic, or the `processed_events` inbox with the PostgreSQL transport. The webhook ingress
//! and catch-up both enqueue here, so both paths share the worker's guarantees.

use async_trait::async_trait;
use rdkafka::producer::FutureProducer;

use super::kafka;
use super::pg::InboxWriter;
use crate::stripe::event::StripeEvent;
use crate::sync::{EventQueue, QueueError};

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

#[async_trait]
impl EventQueue for InboundQueue {
    async fn enqueue(&self, events: Vec<StripeEvent>) -> Result<(), QueueError> {
        match self {
            Self::Postgres(writer) => writer.write(events).await,
            Self::Kafka { producer, topic } => {
                let sends = events
                    .iter()
                    .map(|event| kafka::inbound::produce(producer, topic, event));
                for sent in futures::future::join_all(sends).await {
                    sent?;
                }
                Ok(())
            }
        }
    }
}
