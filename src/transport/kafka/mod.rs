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
use secrecy::{ExposeSecret as _, SecretString};

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
#[derive(Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// librdkafka settings applied to every client (after paysync's own).
    pub options: Vec<(String, String)>,
    /// `sasl.password`, kept out of `options` so that it never shows in a debug print.
    pub sasl_password: Option<SecretString>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Option values that are credentials are left out.
        let options: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(key, value)| {
                let secret = ["password", "secret", ".pem", "jaas"]
                    .iter()
                    .any(|word| key.contains(word));
                (
                    key.as_str(),
                    if secret { "(redacted)" } else { value.as_str() },
                )
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("options", &options)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "(redacted)"),
            )
            .finish()
    }
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
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose_secret());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(options: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:1".to_owned(),
            topic_prefix: "paysync".to_owned(),
            partitions: 1,
            replication_factor: 1,
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            sasl_password: Some(SecretString::from("hunter2")),
        }
    }

    /// librdkafka refuses, at client creation, a protocol or mechanism it was built without:
    /// TLS and SASL PLAIN and SCRAM (which needs OpenSSL) are in this build. GSSAPI (Kerberos)
    /// is not.
    #[test]
    fn tls_and_sasl_plain_and_scram_are_built_in() {
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("PLAIN")),
            ("SASL_SSL", Some("SCRAM-SHA-256")),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
        ] {
            let mut options = vec![("security.protocol", protocol)];
            if let Some(mechanism) = mechanism {
                options.extend([("sasl.mechanisms", mechanism), ("sasl.username", "paysync")]);
            }
            let created = settings(&options).producer();
            assert!(
                created.is_ok(),
                "{protocol} {mechanism:?}: {:?}",
                created.err()
            );
        }
        let kerberos = settings(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "GSSAPI"),
        ]);
        assert!(kerberos.producer().is_err());
    }

    #[test]
    fn credentials_never_show_in_a_debug_print() {
        let printed = format!(
            "{:?}",
            settings(&[("ssl.key.password", "s3cret"), ("sasl.username", "paysync")])
        );
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
        assert!(printed.contains("paysync"), "{printed}");
    }
}
