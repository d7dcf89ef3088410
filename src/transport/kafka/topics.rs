//! Creating paysync's topics at start-up.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use super::{Error, KafkaSettings, Result};

/// How long the admin call may take before paysync falls back to checking metadata.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the topics when missing. Where the broker does not support the admin call (or it
/// fails), checks the topics' metadata instead and fails only if a topic is really missing.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<()> {
    let topics = [settings.outbound_topic(), settings.inbound_topic()];
    let admin: AdminClient<DefaultClientContext> = settings
        .with_options(settings.base_config())
        .create()
        .map_err(|source| Error::Client {
            client: "admin",
            source,
        })?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    match admin.create_topics(new_topics.iter(), &options).await {
        Ok(results) => {
            let mut all_there = true;
            for result in results {
                match result {
                    Ok(topic) => info!(
                        topic,
                        partitions = settings.partitions,
                        "created Kafka topic"
                    ),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        warn!(topic, error = %code, "could not create Kafka topic; checking metadata");
                        all_there = false;
                    }
                }
            }
            if all_there {
                return Ok(());
            }
        }
        Err(e) => warn!(error = %e, "the broker refused topic creation; checking metadata"),
    }
    check_topics_exist(admin, &topics).await
}

async fn check_topics_exist(
    admin: AdminClient<DefaultClientContext>,
    topics: &[String],
) -> Result<()> {
    let wanted = topics.to_vec();
    let metadata =
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, ADMIN_TIMEOUT))
            .await
            .map_err(|e| Error::Topic {
                topic: wanted.join(","),
                reason: e.to_string(),
            })?;
    let metadata = metadata.map_err(|e| Error::Topic {
        topic: topics.join(","),
        reason: e.to_string(),
    })?;
    for topic in topics {
        let found = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !found {
            return Err(Error::Topic {
                topic: topic.clone(),
                reason: "not in the cluster's metadata".to_owned(),
            });
        }
    }
    info!(topics = %topics.join(","), "Kafka topics exist");
    Ok(())
}
