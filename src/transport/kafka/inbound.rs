//! The inbound consumer: applies the verified Stripe events of the inbound topic in batches
//! (whatever a poll has ready, up to the batch size: one commit for many events) and stores
//! their offsets only once the batch is applied, so a crash re-reads, never skips.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::consumer::{close, dead_letter_unreadable, subscribed_consumer};
use super::{Envelope, InboundMessage, KafkaSettings, Result};
use crate::backoff::DEPENDENCY_BACKOFF;
use crate::store::dead_letters::Source;
use crate::stripe::event::StripeEvent;
use crate::sync::queue_health::QueueHealth;
use crate::sync::{InboundHandler, QueueError, Received};

/// How long an event may wait for Kafka's acknowledgement: an answer well within Stripe's
/// delivery timeout, so a slow broker shows as a 503, not as a timed-out endpoint.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(8);

pub fn inbound_consumer(settings: &KafkaSettings) -> Result<StreamConsumer> {
    subscribed_consumer(settings, "inbound", &settings.inbound_topic())
}

/// Runs until `shutdown`, then closes the consumer (committing the stored offsets).
///
/// Batches are applied by `lanes` tasks at once, each partition always by the same lane (its
/// number modulo `lanes`): a partition's events, and so each customer's, stay in order, and
/// each lane stores its partitions' offsets in order. One lane's transaction waiting on
/// PostgreSQL no longer holds up the others.
pub async fn run_inbound(
    consumer: StreamConsumer,
    handler: Arc<dyn InboundHandler>,
    health: Arc<QueueHealth>,
    batch_size: usize,
    lanes: usize,
    shutdown: CancellationToken,
) {
    let consumer = Arc::new(consumer);
    let (senders, running): (Vec<_>, Vec<_>) = (0..lanes.max(1))
        .map(|index| {
            let (sender, receiver) = mpsc::channel(LANE_QUEUE);
            let lane = Lane {
                index,
                consumer: consumer.clone(),
                handler: handler.clone(),
                health: health.clone(),
                batch_size,
            };
            let running = tokio::spawn(lane.run(receiver, shutdown.clone()));
            (sender, running)
        })
        .collect();
    while let Some(messages) = next_batch(&consumer, batch_size, &shutdown).await {
        if !dispatch(messages, &senders, &shutdown).await {
            break;
        }
    }
    // The lanes finish what they were handed (or, shutting down mid-retry, leave it unstored
    // to be read again).
    drop(senders);
    for lane in futures::future::join_all(running).await {
        if let Err(e) = lane {
            warn!(error = %e, "an inbound lane failed");
        }
    }
    match Arc::try_unwrap(consumer) {
        Ok(consumer) => close(consumer).await,
        Err(_) => warn!("the inbound consumer is still in use; not closed"),
    }
    info!("inbound consumer stopped");
}

/// Batches a lane may have waiting: bounds what is read ahead of what is applied.
const LANE_QUEUE: usize = 2;

/// Hands each message to its partition's lane; false when shutting down (or a lane stopped).
async fn dispatch(
    messages: Vec<OwnedMessage>,
    lanes: &[mpsc::Sender<Vec<OwnedMessage>>],
    shutdown: &CancellationToken,
) -> bool {
    let mut split: Vec<Vec<OwnedMessage>> = lanes.iter().map(|_| Vec::new()).collect();
    for message in messages {
        let lane = usize::try_from(message.partition()).unwrap_or(0) % lanes.len();
        split[lane].push(message);
    }
    for (lane, messages) in lanes.iter().zip(split) {
        if messages.is_empty() {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            sent = lane.send(messages) => if sent.is_err() { return false },
        }
    }
    true
}

/// Applies the batches of some partitions, in order, and stores their offsets.
struct Lane {
    index: usize,
    consumer: Arc<StreamConsumer>,
    handler: Arc<dyn InboundHandler>,
    health: Arc<QueueHealth>,
    batch_size: usize,
}

impl Lane {
    async fn run(self, mut queue: mpsc::Receiver<Vec<OwnedMessage>>, shutdown: CancellationToken) {
        while let Some(mut messages) = queue.recv().await {
            // What else waits for this lane goes into the same transaction.
            while messages.len() < self.batch_size {
                match queue.try_recv() {
                    Ok(more) => messages.extend(more),
                    Err(_) => break,
                }
            }
            let oldest = messages
                .iter()
                .filter_map(|m| m.timestamp().to_millis())
                .min();
            let since = oldest.unwrap_or_else(|| Utc::now().timestamp_millis());
            self.health.kafka_inbound_holding(self.index, since);
            let handled = handle(&messages, self.handler.as_ref(), &shutdown).await;
            self.health.kafka_inbound_idle(self.index);
            if !handled {
                // Shutting down mid-retry: the offsets stay, the messages are read again.
                return;
            }
            for message in &messages {
                let (topic, partition) = (message.topic(), message.partition());
                if let Err(e) = self
                    .consumer
                    .store_offset(topic, partition, message.offset())
                {
                    warn!(error = %e, "storing the consumer offset failed");
                }
            }
        }
    }
}

/// The next batch: the first message to arrive, and whatever else is ready now (nothing
/// waits for a batch to fill). `None` once shut down.
async fn next_batch(
    consumer: &StreamConsumer,
    batch_size: usize,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedMessage>> {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return None,
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
        while messages.len() < batch_size {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(_)) | None => break,
            }
        }
        return Some(messages);
    }
}

/// Applies a batch to the end. Returns false only when shutdown interrupted a retry.
async fn handle(
    messages: &[OwnedMessage],
    handler: &dyn InboundHandler,
    shutdown: &CancellationToken,
) -> bool {
    let mut events = Vec::with_capacity(messages.len());
    for message in messages {
        match read(message.payload().unwrap_or_default()) {
            Ok(received) => events.push(received),
            Err(reason) => {
                let dead_letters = handler.dead_letters();
                if !dead_letter_unreadable(
                    Source::Inbound,
                    message,
                    dead_letters,
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
    DEPENDENCY_BACKOFF
        .until_ok("an inbound batch (database)", shutdown, || {
            handler.apply_delivered(&events)
        })
        .await
        .is_some()
}

/// A message of the inbound topic: an envelope around a verified Stripe event.
fn read(payload: &[u8]) -> std::result::Result<Received, String> {
    let message = InboundMessage::parse(payload)?;
    Received::from_raw(message.event().to_owned(), message.account())
}

/// Produces a verified event to the inbound topic, keyed by its Stripe customer, and waits
/// for the acknowledgement of all in-sync replicas.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    event: &StripeEvent,
) -> std::result::Result<(), QueueError> {
    let failed = |reason: String| QueueError::Kafka {
        event_id: event.id.clone(),
        reason,
    };
    let occurred_at = chrono::DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
    let message = Envelope::inbound(event.raw.as_bytes(), &event.account, occurred_at);
    let key = event
        .customer_id
        .as_deref()
        .or(event.object_id.as_deref())
        .unwrap_or(&event.id);
    let record = FutureRecord::to(topic).key(key).payload(&message);
    match tokio::time::timeout(ENQUEUE_TIMEOUT, producer.send(record, ENQUEUE_TIMEOUT)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!(
            "no acknowledgement within {ENQUEUE_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::transport::kafka::Envelope;

    #[test]
    fn reads_envelopes_of_stripe_events_only() {
        let event = json!({"id": "evt_1", "type": "customer.created", "created": 1,
                           "data": {"object": {"id": "cus_1", "object": "customer"}}});
        let bytes = Envelope::inbound(event.to_string().as_bytes(), "default", Utc::now());
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
