//! The inbound consumer: applies the verified Stripe events of the inbound topic in batches
//! (whatever a poll has ready, up to the batch size: one commit for many events) and stores
//! their offsets only once the batch is applied, so a crash re-reads, never skips.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::consumer::{MessageAt, close, dead_letter_unreadable, subscribed_consumer};
use super::{InboundMessage, KafkaSettings, Result};
use crate::store::dead_letters::Source;
use crate::sync::queue_health::QueueHealth;
use crate::sync::{InboundSync, Received};

/// Longest pause between retries of a batch that failed on the database.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

pub fn inbound_consumer(settings: &KafkaSettings) -> Result<StreamConsumer> {
    subscribed_consumer(settings, "inbound", &settings.inbound_topic())
}

/// Runs until `shutdown`, then closes the consumer (committing the stored offsets).
pub async fn run_inbound(
    consumer: StreamConsumer,
    sync: Arc<InboundSync>,
    health: Arc<QueueHealth>,
    batch_size: usize,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message.map(|m| m.detach()),
        };
        let mut messages = match first {
            Ok(message) => vec![message],
            Err(e) => {
                warn!(error = %e, "reading from Kafka failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Whatever else is ready now joins the batch; nothing waits for a batch to fill.
        while messages.len() < batch_size {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(_)) | None => break,
            }
        }
        let oldest = messages
            .iter()
            .filter_map(|m| m.timestamp().to_millis())
            .min();
        health
            .kafka_inbound_holding(oldest.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()));
        let handled = handle(&messages, &sync, &shutdown).await;
        health.kafka_inbound_idle();
        if !handled {
            // Shutting down mid-retry: the offsets stay, the messages are read again.
            break;
        }
        for message in &messages {
            if let Err(e) =
                consumer.store_offset(message.topic(), message.partition(), message.offset())
            {
                warn!(error = %e, "storing the consumer offset failed");
            }
        }
    }
    close(consumer).await;
    info!("inbound consumer stopped");
}

/// Applies a batch to the end. Returns false only when shutdown interrupted a retry.
async fn handle(
    messages: &[OwnedMessage],
    sync: &InboundSync,
    shutdown: &CancellationToken,
) -> bool {
    let mut events = Vec::with_capacity(messages.len());
    for message in messages {
        let payload = message.payload().unwrap_or_default();
        match read(payload) {
            Ok(received) => events.push(received),
            Err(reason) => {
                let at = MessageAt::of(message);
                if !dead_letter_unreadable(
                    Source::Inbound,
                    &at,
                    payload,
                    sync.dead_letters(),
                    &reason,
                    shutdown,
                )
                .await
                {
                    return false;
                }
            }
        }
    }
    let mut delay = Duration::from_millis(200);
    loop {
        match sync.apply_all(&events).await {
            Ok(()) => return true,
            Err(e) => {
                warn!(error = %e, events = events.len(), "inbound batch failed on the database; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// A message of the inbound topic: an envelope around a verified Stripe event.
fn read(payload: &[u8]) -> std::result::Result<Received, String> {
    let message = InboundMessage::parse(payload)?;
    Received::from_raw(message.event().to_owned())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::bus::Envelope;

    #[test]
    fn reads_envelopes_of_stripe_events_only() {
        let event = json!({"id": "evt_1", "type": "customer.created", "created": 1,
                           "data": {"object": {"id": "cus_1", "object": "customer"}}});
        let bytes = Envelope::inbound(event.to_string().as_bytes(), Utc::now());
        assert_eq!(read(&bytes).unwrap().event.id, "evt_1");
        let outbound = Envelope::outbound(
            uuid::Uuid::now_v7(),
            "update",
            uuid::Uuid::now_v7(),
            1,
            Utc::now(),
        );
        let err = read(&serde_json::to_vec(&outbound).unwrap()).unwrap_err();
        assert!(err.contains("stripe.event"), "{err}");
        assert!(read(b"garbage").is_err());
    }
}
