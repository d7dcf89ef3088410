//! Kafka: topic set-up, the outbox relay (producer), and the outbound and inbound consumers.
//!
//! Delivery is at-least-once end to end: the relay marks outbox rows published only after
//! the broker acknowledged them, and the consumer stores an offset only after its message was
//! fully handled. The handlers are idempotent, so duplicates are harmless.

mod consumer;
mod envelope;
mod in_flight;
pub mod inbound;
pub mod lag;
pub mod outbound;
pub mod relay;
mod topics;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

pub use envelope::{Envelope, INBOUND_KIND, InboundMessage};
pub use topics::ensure_topics;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the Kafka {client} client")]
    Client {
        client: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka topic {topic} is missing and could not be created: {reason}")]
    Topic { topic: String, reason: String },
}

/// How to reach Kafka and name the topics.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// librdkafka settings applied to every client (after paysync's own).
    pub options: Vec<(String, String)>,
}

/// How long a produced message may wait for the broker's acknowledgement before the relay
/// gives up on it (the outbox row stays unpublished and is sent again).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fetch may wait on the broker for new messages. Apache Kafka answers as soon as
/// data arrives, but some Kafka-protocol brokers (tansu, librdkafka's mock cluster) hold every
/// fetch for the full wait; librdkafka's default of 500 ms then adds a quarter to half a second
/// to every change (measured, docs/BENCHMARKS.md). 20 ms bounds that, at the cost of more idle
/// fetch requests. Override with `KAFKA_OPTIONS=fetch.wait.max.ms=…`.
const FETCH_WAIT_MAX_MS: &str = "20";

impl KafkaSettings {
    pub fn outbound_topic(&self) -> String {
        format!("{}.outbound", self.topic_prefix)
    }

    pub fn inbound_topic(&self) -> String {
        format!("{}.inbound", self.topic_prefix)
    }

    /// The consumer group of one role, so each role scales out on its own.
    pub fn group(&self, role: &str) -> String {
        format!("{}-{role}", self.topic_prefix)
    }

    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", concat!("paysync/", env!("CARGO_PKG_VERSION")));
        config
    }

    fn with_options(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// An idempotent producer that waits for all in-sync replicas.
    pub fn producer(&self) -> Result<FutureProducer> {
        let mut config = self.base_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                MESSAGE_TIMEOUT.as_millis().to_string(),
            );
        self.with_options(config)
            .create()
            .map_err(|source| Error::Client {
                client: "producer",
                source,
            })
    }

    /// A consumer that never commits an offset its handler has not stored.
    pub fn consumer_config(&self, role: &str) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("group.id", self.group(role))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A member that died is replaced after this long (Kafka's smallest by default),
            // its partitions unconsumed meanwhile (visible in the lag); a live one heartbeats
            // three times within it.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "2000")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
        self.with_options(config)
    }
}

/// Answers whether a Kafka broker can be reached (for `/readyz`).
#[derive(Clone)]
pub struct KafkaProbe {
    producer: FutureProducer,
}

impl KafkaProbe {
    pub fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }

    pub async fn reachable(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            producer.client().fetch_metadata(None, timeout).is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe").finish_non_exhaustive()
    }
}
