//! The outbox relay: publishes committed outbox rows to the outbound topic, keyed by customer
//! id, and marks them published only after the broker acknowledged them. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several replicas can relay at once without double-publishing.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use super::Envelope;
use crate::metrics::Metrics;
use crate::store::{self, outbox};
use crate::sync::outbox_worker::update_backlog;

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
    producer: FutureProducer,
    topic: String,
    metrics: Arc<Metrics>,
    settings: RelaySettings,
    shutdown: CancellationToken,
) {
    let mut wakeup =
        store::Wakeup::new(&pool, outbox::NOTIFY_CHANNEL, settings.poll_interval).await;
    while !shutdown.is_cancelled() {
        match publish_batch(&pool, &producer, &topic, settings.batch_size).await {
            Ok(Published { claimed, failed: 0 }) if claimed > 0 => continue,
            Ok(Published { failed, .. }) if failed > 0 => {
                warn!(
                    failed,
                    "Kafka did not acknowledge some outbox rows; they will be sent again"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "relaying the outbox failed; will retry"),
        }
        update_backlog(&pool, &metrics).await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wakeup.wait() => {}
        }
    }
    debug!("outbox relay stopped");
}

struct Published {
    claimed: usize,
    failed: usize,
}

async fn publish_batch(
    pool: &PgPool,
    producer: &FutureProducer,
    topic: &str,
    batch_size: i64,
) -> store::Result<Published> {
    let mut tx = store::begin(pool).await?;
    let rows = outbox::claim_unpublished(&mut tx, batch_size).await?;
    let deliveries = rows.iter().map(|row| async move {
        let envelope = Envelope::outbound(
            row.id,
            &row.op,
            row.customer_id,
            row.version,
            row.created_at,
        );
        let payload = serde_json::to_vec(&envelope).unwrap_or_default();
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
    });
    let delivered: Vec<Uuid> = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .flatten()
        .collect();
    outbox::mark_published(&mut tx, &delivered).await?;
    store::commit(tx).await?;
    Ok(Published {
        claimed: rows.len(),
        failed: rows.len() - delivered.len(),
    })
}
