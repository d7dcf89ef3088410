//! The outbound consumer: hands each message of the outbound topic to the outbound handler
//! and stores its offset only once the handler finished, so a crash re-reads, never skips.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::consumer::{close, dead_letter_unreadable, subscribed_consumer};
use super::{Envelope, KafkaSettings, Result};
use crate::backoff::DEPENDENCY_BACKOFF;
use crate::domain::CustomerId;
use crate::store::dead_letters::Source;
use crate::sync::OutboundHandler;

pub fn outbound_consumer(settings: &KafkaSettings) -> Result<StreamConsumer> {
    subscribed_consumer(settings, "outbound", &settings.outbound_topic())
}

/// Runs until `shutdown`, then closes the consumer (committing the stored offsets).
pub async fn run_outbound(
    consumer: StreamConsumer,
    handler: Arc<dyn OutboundHandler>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                warn!(error = %e, "reading from Kafka failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !handle(&message, handler.as_ref(), &shutdown).await {
            // Shutting down mid-retry: leave the offset, the message is read again.
            break;
        }
        if let Err(e) = consumer.store_offset_from_message(&message) {
            warn!(error = %e, "storing the consumer offset failed");
        }
    }
    close(consumer).await;
    info!("outbound consumer stopped");
}

/// Handles one message to the end. Returns false only when shutdown interrupted a retry.
async fn handle(
    message: &BorrowedMessage<'_>,
    handler: &dyn OutboundHandler,
    shutdown: &CancellationToken,
) -> bool {
    let customer = Envelope::parse(message.payload().unwrap_or_default()).and_then(|e| {
        e.customer_id
            .map(CustomerId::from_uuid)
            .ok_or_else(|| "envelope has no customer_id".to_owned())
    });
    match customer {
        Ok(id) => DEPENDENCY_BACKOFF
            .until_ok("an outbound message (database)", shutdown, || {
                handler.sync(id)
            })
            .await
            .is_some(),
        Err(reason) => {
            dead_letter_unreadable(
                Source::Outbound,
                message,
                handler.dead_letters(),
                &reason,
                shutdown,
            )
            .await
        }
    }
}
