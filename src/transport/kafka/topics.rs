//! Creating paysync's topics at start-up.

use std::time::Duration;

use std::sync::{Mutex, PoisonError};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use tracing::{debug, info, warn};

use super::{Error, KafkaSettings, Result};

/// How long the admin call may take before paysync falls back to checking metadata.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the topics when missing. Where the broker does not support the admin call (or it
/// fails), checks the topics' metadata instead and fails only if a topic is really missing.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<()> {
    let topics = [settings.outbound_topic(), settings.inbound_topic()];
    let mut config = settings.with_options(settings.base_config());
    // librdkafka's error-level lines reach the context (rdkafka derives the level from the
    // `log` crate's, which paysync does not use).
    config.set_log_level(RDKafkaLogLevel::Error);
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|source| Error::Client {
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
    check_topics_exist(&config, &topics).await
}

/// Reads the cluster's metadata with a client whose events are served here, so that
/// librdkafka's own errors (a TLS handshake that failed, a SASL refusal) explain a failure.
async fn check_topics_exist(config: &ClientConfig, topics: &[String]) -> Result<()> {
    let wanted = topics.to_vec();
    let client: BaseProducer<StartUpContext> = config
        .create_with_context(StartUpContext::default())
        .map_err(|source| Error::Client {
            client: "metadata",
            source,
        })?;
    let (metadata, last_error) = tokio::task::spawn_blocking(move || {
        let metadata = client.client().fetch_metadata(None, ADMIN_TIMEOUT);
        // Serving the client's queue delivers its log and error callbacks.
        client.poll(Duration::from_millis(200));
        (metadata, client.context().last_error())
    })
    .await
    .map_err(|e| Error::Topic {
        topic: wanted.join(","),
        reason: e.to_string(),
    })?;
    // A timeout alone says nothing; librdkafka's own last error (a TLS handshake that
    // failed, a SASL refusal, an unknown host) says what to fix.
    let metadata = metadata.map_err(|e| Error::Topic {
        topic: topics.join(","),
        reason: match last_error {
            Some(cause) => format!("{e}; the brokers' last error: {cause}"),
            None => e.to_string(),
        },
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

/// The start-up client's context: librdkafka's errors (a TLS handshake that failed, a SASL
/// refusal) are logged and the last one kept for the start-up error.
#[derive(Default)]
struct StartUpContext {
    last_error: Mutex<Option<String>>,
}

impl StartUpContext {
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn keep(&self, reason: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
    }
}

impl ClientContext for StartUpContext {
    /// Kept unless a log line said more: "1/1 brokers are down" follows the real cause.
    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "Kafka client error");
        if self.last_error().is_none() {
            self.keep(reason);
        }
    }

    /// librdkafka reports a failed TLS handshake or SASL exchange as an error-level log line
    /// (the error callback is not delivered to a client nobody polls).
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) {
            warn!(facility, message, "librdkafka");
            self.keep(message);
        } else {
            debug!(?level, facility, message, "librdkafka");
        }
    }
}

/// The start-up client produces nothing: a producer only for its polled event queue.
impl ProducerContext for StartUpContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, (): ()) {}
}
