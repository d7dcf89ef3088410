//! The outbound consumer: hands each message of the outbound topic to the sync handler and
//! stores its offset only once the handler finished, so a crash re-reads, never skips.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Envelope, Error, KafkaSettings, Result};
use crate::domain::CustomerId;
use crate::store::dead_letters::{NewDeadLetter, Source};
use crate::sync::OutboundSync;
use crate::sync::dead_letters::DeadLetters;

/// Longest pause between retries of a message whose handling failed on the database.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

pub fn outbound_consumer(settings: &KafkaSettings) -> Result<StreamConsumer> {
    subscribed_consumer(settings, "outbound", &settings.outbound_topic())
}

/// A consumer of `topic` in the group of `role`.
pub(super) fn subscribed_consumer(
    settings: &KafkaSettings,
    role: &str,
    topic: &str,
) -> Result<StreamConsumer> {
    let consumer: StreamConsumer =
        settings
            .consumer_config(role)
            .create()
            .map_err(|source| Error::Client {
                client: "consumer",
                source,
            })?;
    consumer
        .subscribe(&[topic])
        .map_err(|source| Error::Client {
            client: "consumer",
            source,
        })?;
    Ok(consumer)
}

/// Closes a consumer, which commits the stored offsets and leaves the group. It blocks (for
/// at most about the session timeout when brokers are gone), so it runs off the async
/// threads. A synchronous commit instead would wait forever while every broker is down.
pub(super) async fn close(consumer: StreamConsumer) {
    if let Err(e) = tokio::task::spawn_blocking(move || drop(consumer)).await {
        warn!(error = %e, "closing the Kafka consumer failed; uncommitted messages will be read again");
    }
}

/// Runs until `shutdown`, then closes the consumer (committing the stored offsets).
pub async fn run_outbound(
    consumer: StreamConsumer,
    sync: Arc<OutboundSync>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                if handle(&message, &sync, &shutdown).await {
                    if let Err(e) = consumer.store_offset_from_message(&message) {
                        warn!(error = %e, "storing the consumer offset failed");
                    }
                } else {
                    // Shutting down mid-retry: leave the offset, the message is read again.
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "reading from Kafka failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    close(consumer).await;
    info!("outbound consumer stopped");
}

/// Handles one message to the end. Returns false only when shutdown interrupted a retry.
async fn handle(
    message: &BorrowedMessage<'_>,
    sync: &OutboundSync,
    shutdown: &CancellationToken,
) -> bool {
    let envelope = Envelope::parse(message.payload().unwrap_or_default()).and_then(|e| {
        e.customer_id
            .map(CustomerId::from_uuid)
            .ok_or_else(|| "envelope has no customer_id".to_owned())
    });
    let customer_id = match envelope {
        Ok(id) => id,
        Err(reason) => {
            let at = MessageAt::of(message);
            let payload = message.payload().unwrap_or_default();
            return dead_letter_unreadable(
                Source::Outbound,
                &at,
                payload,
                sync.dead_letters(),
                &reason,
                shutdown,
            )
            .await;
        }
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match sync.sync(customer_id).await {
            Ok(_) => return true,
            Err(e) => {
                warn!(customer_id = %customer_id, error = %e, "outbound message failed on the database; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// Where a message is: its dead-letter key.
pub(super) struct MessageAt(String);

impl MessageAt {
    pub(super) fn of(message: &impl Message) -> Self {
        Self(format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        ))
    }
}

/// A message paysync cannot read goes to the dead-letter table so the partition moves on.
/// Returns false only when shutdown interrupted the retries (the database unreachable).
pub(super) async fn dead_letter_unreadable(
    source: Source,
    at: &MessageAt,
    payload: &[u8],
    dead_letters: &DeadLetters,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    let letter = NewDeadLetter {
        source,
        key: &at.0,
        payload,
        error: reason,
        attempts: 1,
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match dead_letters.set_aside_unreadable(letter).await {
            Ok(()) => return true,
            Err(e) => {
                warn!(error = %e, "recording a dead letter failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}
