//! The outbox relay: publishes committed outbox rows to the outbound topic, keyed by customer
//! id, and marks them published only after the broker acknowledged them. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several replicas can relay at once without double-publishing.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use uuid::Uuid;

use super::super::worker::{self, Waiting};
use super::Envelope;
use crate::store::locks::LockPool;
use crate::store::outbox::OutboxRow;
use crate::store::{self, outbox};

/// How long a send may wait for room in librdkafka's local queue.
const LOCAL_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    pub batch_size: i64,
    pub poll_interval: Duration,
}

/// Runs until `shutdown`, finishing the batch in hand.
pub async fn run(
    pool: PgPool,
    locks: LockPool,
    producer: FutureProducer,
    topic: String,
    settings: RelaySettings,
    shutdown: CancellationToken,
) {
    let waiting = Waiting {
        channel: outbox::NOTIFY_CHANNEL,
        poll_interval: settings.poll_interval,
    };
    worker::run("relay", &pool, waiting, shutdown, || {
        publish_batch(&locks, &producer, &topic, settings.batch_size)
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("Kafka did not acknowledge {failed} of {claimed} outbox rows; they will be sent again")]
    Unacknowledged { claimed: usize, failed: usize },
}

/// Publishes one batch; returns how many rows were claimed (and all published).
async fn publish_batch(
    locks: &LockPool,
    producer: &FutureProducer,
    topic: &str,
    batch_size: i64,
) -> Result<usize, RelayError> {
    let mut tx = locks.begin().await?;
    let rows = outbox::claim_unpublished(&mut tx, batch_size).await?;
    let deliveries = rows.iter().map(|row| publish(producer, topic, row));
    let delivered: Vec<Uuid> = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .flatten()
        .collect();
    outbox::mark_published(&mut tx, &delivered).await?;
    store::commit(tx).await?;
    match rows.len() - delivered.len() {
        0 => Ok(rows.len()),
        failed => Err(RelayError::Unacknowledged {
            claimed: rows.len(),
            failed,
        }),
    }
}

/// Publishes one row; its id once the broker acknowledged it.
async fn publish(producer: &FutureProducer, topic: &str, row: &OutboxRow) -> Option<Uuid> {
    let envelope = Envelope::outbound(
        row.id,
        &row.op,
        row.customer_id,
        row.version,
        row.created_at,
    );
    let payload = match serde_json::to_vec(&envelope) {
        Ok(payload) => payload,
        Err(e) => {
            error!(outbox_id = %row.id, error = %e, "encoding an outbox message failed; the row stays unpublished");
            return None;
        }
    };
    let key = row.customer_id.to_string();
    let outbox_id = row.id.to_string();
    let headers = OwnedHeaders::new().insert(Header {
        key: "paysync-outbox-id",
        value: Some(outbox_id.as_bytes()),
    });
    let record = FutureRecord::to(topic)
        .key(&key)
        .payload(&payload)
        .headers(headers);
    // Waits for the broker's acknowledgement (bounded by the producer's message timeout);
    // the duration only bounds waiting for room in the local queue.
    match producer.send(record, LOCAL_QUEUE_TIMEOUT).await {
        Ok(_) => Some(row.id),
        Err((e, _)) => {
            warn!(outbox_id = %row.id, error = %e, "publishing outbox row failed");
            None
        }
    }
}
