//! Where verified Stripe events wait to be applied, as the sync layer sees it: the webhook
//! ingress and catch-up put events in; the transport (`crate::transport::queue`) decides
//! whether that is a Kafka topic or the PostgreSQL inbox.

use async_trait::async_trait;

use crate::stripe::event::StripeEvent;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("storing events in the inbox failed: {0}")]
    Inbox(String),
    #[error("the inbox writer has stopped")]
    Stopped,
    #[error("Kafka did not take event {event_id}: {reason}")]
    Kafka { event_id: String, reason: String },
}

#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Queues the events durably: returns only once all of them are stored (committed to
    /// PostgreSQL, or acknowledged by all in-sync Kafka replicas).
    async fn enqueue(&self, events: Vec<StripeEvent>) -> Result<(), QueueError>;
}
