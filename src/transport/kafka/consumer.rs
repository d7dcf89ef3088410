//! What the outbound and inbound consumers share: subscribing, closing (which commits the
//! stored offsets), and setting aside a message nobody can read so the partition moves on.

use rdkafka::Message;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Error, KafkaSettings, Result};
use crate::backoff::DEPENDENCY_BACKOFF;
use crate::domain::DEFAULT_ACCOUNT;
use crate::store::dead_letters::{NewDeadLetter, Source};
use crate::sync::dead_letters::DeadLetters;

/// A consumer of `topic` in the group of `role`.
pub(super) fn subscribed_consumer(
    settings: &KafkaSettings,
    role: &str,
    topic: &str,
) -> Result<StreamConsumer> {
    let client_error = |source| Error::Client {
        client: "consumer",
        source,
    };
    let consumer: StreamConsumer = settings
        .consumer_config(role)
        .create()
        .map_err(client_error)?;
    consumer.subscribe(&[topic]).map_err(client_error)?;
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
/// Returns false only when shutdown interrupted the wait for the database.
pub(super) async fn dead_letter_unreadable(
    source: Source,
    message: &impl Message,
    dead_letters: &DeadLetters,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    let at = MessageAt::of(message);
    // An unreadable message names no account; it is filed under the default one.
    let letter = NewDeadLetter {
        source,
        account: DEFAULT_ACCOUNT,
        key: &at.0,
        payload: message.payload().unwrap_or_default(),
        error: reason,
        attempts: 1,
    };
    DEPENDENCY_BACKOFF
        .until_ok("recording a dead letter", shutdown, || {
            dead_letters.set_aside_unreadable(letter)
        })
        .await
        .is_some()
}
