//! How far behind the consumer groups are, measured from the broker (committed offsets
//! against the log end), not from what a consumer holds: after a replica dies, its partitions
//! have no consumer until the group rebalances, and only the broker can tell that messages
//! wait there. Every replica measures, whether it consumes or not, so `/readyz` and the
//! metrics of any replica show a stalled group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Error, KafkaSettings, Result};
use crate::sync::queue_health::{GroupLag, QueueHealth};

/// How often the lag is measured (a metadata, an offset-fetch and a watermark request per
/// partition).
const MEASURE_INTERVAL: Duration = Duration::from_secs(2);

/// How long one broker request of a measurement may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One consumer group's position on its topic.
struct Group {
    role: &'static str,
    topic: String,
    /// A client of the group that never joins it: it only reads its committed offsets.
    client: BaseConsumer,
    /// Per partition, the committed offset last seen behind the log end, and since when.
    stalled: HashMap<i32, (i64, Instant)>,
}

impl Group {
    fn new(settings: &KafkaSettings, role: &'static str, topic: String) -> Result<Self> {
        let mut config = settings.with_options(settings.base_config());
        config
            .set("group.id", settings.group(role))
            .set("enable.auto.commit", "false");
        let client = config.create().map_err(|source| Error::Client {
            client: "lag probe",
            source,
        })?;
        Ok(Self {
            role,
            topic,
            client,
            stalled: HashMap::new(),
        })
    }

    /// Messages not yet handled, and how long the oldest partition holding some has not moved.
    fn measure(&mut self) -> KafkaResult<GroupLag> {
        let metadata = self
            .client
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)?;
        let mut partitions = TopicPartitionList::new();
        for topic in metadata.topics() {
            for partition in topic.partitions() {
                partitions.add_partition(&self.topic, partition.id());
            }
        }
        let committed = self.client.committed_offsets(partitions, REQUEST_TIMEOUT)?;
        let now = Instant::now();
        let mut lag = GroupLag::default();
        for element in committed.elements() {
            let partition = element.partition();
            let (low, high) =
                self.client
                    .fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT)?;
            // Nothing committed yet: the group starts from the earliest message.
            let position = match element.offset() {
                Offset::Offset(offset) => offset.max(low),
                _ => low,
            };
            let behind = (high - position).max(0);
            lag.messages += behind;
            if behind == 0 {
                self.stalled.remove(&partition);
                continue;
            }
            let since = match self.stalled.get(&partition) {
                Some((seen, since)) if *seen == position => *since,
                _ => {
                    self.stalled.insert(partition, (position, now));
                    now
                }
            };
            lag.stalled_seconds = lag.stalled_seconds.max((now - since).as_secs_f64());
        }
        Ok(lag)
    }
}

/// Measures the inbound and outbound groups until `shutdown`, for [`QueueHealth`].
pub async fn run(settings: KafkaSettings, health: Arc<QueueHealth>, shutdown: CancellationToken) {
    if let Err(e) = measure_until(settings, health, shutdown).await {
        warn!(error = %e, "the Kafka lag probe did not start: /readyz shows no consumer lag");
    }
}

async fn measure_until(
    settings: KafkaSettings,
    health: Arc<QueueHealth>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut groups = vec![
        Group::new(&settings, "inbound", settings.inbound_topic())?,
        Group::new(&settings, "outbound", settings.outbound_topic())?,
    ];
    let mut tick = tokio::time::interval(MEASURE_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // The client calls block: off the async threads.
        let measured = tokio::task::spawn_blocking(move || {
            let lags: Vec<_> = groups
                .iter_mut()
                .map(|group| (group.role, group.measure()))
                .collect();
            (groups, lags)
        })
        .await;
        let Ok((returned, lags)) = measured else {
            return Ok(());
        };
        groups = returned;
        for (role, lag) in lags {
            match lag {
                Ok(lag) => health.kafka_lag(role, lag),
                // The last measurement stays; readiness reports the broker itself.
                Err(e) => debug!(role, error = %e, "measuring the consumer group's lag failed"),
            }
        }
    }
}
