//! The outbound consumer: hands the messages of the outbound topic to the outbound handler,
//! several at once, and stores an offset only once every message before it finished, so a
//! crash re-reads, never skips.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::consumer::{close, dead_letter_unreadable, subscribed_consumer};
use super::in_flight::InFlight;
use super::{Envelope, KafkaSettings, Result};
use crate::backoff::DEPENDENCY_BACKOFF;
use crate::domain::CustomerId;
use crate::store::dead_letters::Source;
use crate::sync::OutboundHandler;

pub fn outbound_consumer(settings: &KafkaSettings) -> Result<StreamConsumer> {
    subscribed_consumer(settings, "outbound", &settings.outbound_topic())
}

/// Runs until `shutdown`: up to `concurrency` messages are synced at once (different
/// customers side by side; one customer's syncs take turns on its lock, each bringing Stripe
/// to the row as it is then, so its changes land in order). An offset is stored only below the
/// lowest message still in flight, so a crash re-delivers, never skips. At shutdown reading
/// stops, the work in flight finishes (or, interrupted mid-retry, is left to be read again)
/// and the consumer closes, committing the stored offsets. After a rebalance a message whose
/// partition moved may run here and on its new owner: the sync is idempotent.
pub async fn run_outbound(
    consumer: StreamConsumer,
    handler: Arc<dyn OutboundHandler>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let mut in_flight = InFlight::default();
    let mut running: JoinSet<Finished> = JoinSet::new();
    loop {
        let full = running.len() >= concurrency.max(1);
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(finished) = running.join_next(), if !running.is_empty() => {
                store(&consumer, &mut in_flight, finished);
            }
            message = consumer.recv(), if !full => match message {
                Ok(message) => {
                    let work = Work { handler: &handler, shutdown: &shutdown };
                    if let Some(finished) = work.take(&message, &mut in_flight, &mut running).await {
                        store(&consumer, &mut in_flight, Ok(finished));
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading from Kafka failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    while let Some(finished) = running.join_next().await {
        store(&consumer, &mut in_flight, finished);
    }
    close(consumer).await;
    info!("outbound consumer stopped");
}

/// What a message is handed to.
struct Work<'a> {
    handler: &'a Arc<dyn OutboundHandler>,
    shutdown: &'a CancellationToken,
}

impl Work<'_> {
    /// Starts syncing the message's customer in `running`; an unreadable message is
    /// dead-lettered here and returned as finished.
    async fn take(
        &self,
        message: &BorrowedMessage<'_>,
        in_flight: &mut InFlight,
        running: &mut JoinSet<Finished>,
    ) -> Option<Finished> {
        let at = Position {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        in_flight.start(at.partition, at.offset);
        match customer_of(message) {
            Ok(id) => {
                let (handler, shutdown) = (self.handler.clone(), self.shutdown.clone());
                running.spawn(async move {
                    let done = DEPENDENCY_BACKOFF
                        .until_ok("an outbound message (database)", &shutdown, || {
                            handler.sync(id)
                        })
                        .await
                        .is_some();
                    Finished { at, done }
                });
                None
            }
            Err(reason) => {
                let dead_letters = self.handler.dead_letters();
                let done = dead_letter_unreadable(
                    Source::Outbound,
                    message,
                    dead_letters,
                    &reason,
                    self.shutdown,
                )
                .await;
                Some(Finished { at, done })
            }
        }
    }
}

/// Where a message is.
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
}

/// A message's work ended: `done`, or interrupted by shutdown (left to be read again).
struct Finished {
    at: Position,
    done: bool,
}

/// Stores the partition's new commit position when finishing `finished` moved it.
fn store(
    consumer: &StreamConsumer,
    in_flight: &mut InFlight,
    finished: Result<Finished, tokio::task::JoinError>,
) {
    let finished = match finished {
        Ok(finished) => finished,
        Err(e) => {
            // Its offset stays in flight: nothing past it is committed, so it is read again.
            warn!(error = %e, "an outbound sync task failed");
            return;
        }
    };
    if !finished.done {
        return;
    }
    let Position {
        topic,
        partition,
        offset,
    } = finished.at;
    if let Some(position) = in_flight.finish(partition, offset) {
        // librdkafka commits the stored offset + 1: the next one to read.
        if let Err(e) = consumer.store_offset(&topic, partition, position - 1) {
            warn!(error = %e, partition, "storing the consumer offset failed");
        }
    }
}

/// The customer a message is about, or why it is unreadable.
fn customer_of(message: &BorrowedMessage<'_>) -> std::result::Result<CustomerId, String> {
    Envelope::parse(message.payload().unwrap_or_default()).and_then(|e| {
        e.customer_id
            .map(CustomerId::from_uuid)
            .ok_or_else(|| "envelope has no customer_id".to_owned())
    })
}
