//! How far behind sync is: the age of the oldest local change not yet in Stripe, of the
//! oldest Stripe event not yet applied (in the inbox, in a Kafka consumer's hands, or still
//! on the topic with its partition unconsumed), the Kafka consumer groups' lag, and the open
//! dead letters. A stuck queue shows here
//! (readiness details, metrics) so an alert can fire; readiness itself stays up, because a
//! restart does not unstick a queue and Stripe's deliveries must keep being accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use utoipa::ToSchema;

use crate::store::{self, customers, dead_letters, outbox, processed_events};

/// How often the queues are measured (three indexed queries).
const MEASURE_INTERVAL: Duration = Duration::from_secs(2);

/// The last measurement.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct QueueSnapshot {
    /// Seconds the oldest local change not yet in Stripe has waited (0: none waits).
    pub outbound_oldest_pending_seconds: f64,
    /// Seconds the oldest Stripe event not yet applied has waited (0: none waits), wherever
    /// it waits: the inbox, a Kafka consumer's hands, or the inbound topic (at least as long
    /// as its partition's committed offset has not moved).
    pub inbound_oldest_pending_seconds: f64,
    /// Dead letters neither replayed nor closed.
    pub dead_letters_open: i64,
    /// The Kafka consumer groups' lag (Kafka transport only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaLag>,
}

/// The Kafka consumer groups, measured from the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct KafkaLag {
    /// The inbound group (`<prefix>-inbound`): Stripe events not yet applied.
    pub inbound: GroupLag,
    /// The outbound group (`<prefix>-outbound`): local changes not yet synced.
    pub outbound: GroupLag,
}

/// One consumer group's lag on its topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct GroupLag {
    /// Messages between the committed offsets and the end of the topic.
    pub messages: i64,
    /// How long the longest-waiting partition with messages has not moved its committed
    /// offset (0: none waits): a group rebalancing after a crash, or a stuck consumer.
    pub stalled_seconds: f64,
}

/// `paysync_*_backlog` and `paysync_*_oldest_pending_seconds`, `paysync_dead_letters_open`.
#[derive(Debug)]
pub struct QueueMetrics {
    outbox_backlog: Gauge,
    inbox_backlog: Gauge,
    outbound_oldest_pending: Gauge<f64, AtomicU64>,
    inbound_oldest_pending: Gauge<f64, AtomicU64>,
    dead_letters_open: Gauge,
    kafka_lag: Family<RoleLabel, Gauge>,
    kafka_stalled: Family<RoleLabel, Gauge<f64, AtomicU64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

impl QueueMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            outbox_backlog: Gauge::default(),
            inbox_backlog: Gauge::default(),
            outbound_oldest_pending: Gauge::default(),
            inbound_oldest_pending: Gauge::default(),
            dead_letters_open: Gauge::default(),
            kafka_lag: Family::default(),
            kafka_stalled: Family::default(),
        };
        registry.register(
            "outbox_backlog",
            "Outbox rows not yet published (Kafka) or not yet synced (PostgreSQL transport)",
            metrics.outbox_backlog.clone(),
        );
        registry.register(
            "inbox_backlog",
            "Stripe events waiting in the PostgreSQL inbox",
            metrics.inbox_backlog.clone(),
        );
        registry.register(
            "outbound_oldest_pending_seconds",
            "Age of the oldest local change not yet in Stripe (0: none waits); grows while \
             outbound sync is stuck",
            metrics.outbound_oldest_pending.clone(),
        );
        registry.register(
            "inbound_oldest_pending_seconds",
            "Age of the oldest queued Stripe event not yet applied (0: none waits); grows \
             while inbound sync is stuck",
            metrics.inbound_oldest_pending.clone(),
        );
        registry.register(
            "dead_letters_open",
            "Dead letters neither replayed nor closed",
            metrics.dead_letters_open.clone(),
        );
        metrics.register_kafka(registry);
        metrics
    }

    fn register_kafka(&self, registry: &mut Registry) {
        registry.register(
            "kafka_consumer_lag",
            "Messages the consumer group of a role (inbound, outbound) has not handled yet \
             (committed offsets behind the end of its topic; Kafka transport)",
            self.kafka_lag.clone(),
        );
        registry.register(
            "kafka_consumer_stalled_seconds",
            "How long the group's longest-waiting partition with messages has not moved its \
             committed offset (0: none waits); grows while a group rebalances or is stuck",
            self.kafka_stalled.clone(),
        );
    }

    fn show(&self, measured: &Measured) {
        let snapshot = &measured.snapshot;
        self.outbox_backlog.set(measured.outbox_backlog);
        self.inbox_backlog.set(measured.inbox_backlog);
        self.outbound_oldest_pending
            .set(snapshot.outbound_oldest_pending_seconds);
        self.inbound_oldest_pending
            .set(snapshot.inbound_oldest_pending_seconds);
        self.dead_letters_open.set(snapshot.dead_letters_open);
        if let Some(kafka) = snapshot.kafka {
            for (role, lag) in [("inbound", kafka.inbound), ("outbound", kafka.outbound)] {
                self.kafka_lag
                    .get_or_create(&RoleLabel { role })
                    .set(lag.messages);
                self.kafka_stalled
                    .get_or_create(&RoleLabel { role })
                    .set(lag.stalled_seconds);
            }
        }
    }
}

/// One measurement: what `/readyz` shows, and the backlogs only metrics show.
struct Measured {
    snapshot: QueueSnapshot,
    outbox_backlog: i64,
    inbox_backlog: i64,
}

/// Shared by the monitor (writes), the Kafka inbound consumer (reports what it holds) and
/// `/readyz` (reads).
#[derive(Debug, Default)]
pub struct QueueHealth {
    snapshot: RwLock<Option<QueueSnapshot>>,
    /// For each lane of the Kafka inbound consumer holding messages, when the oldest of them
    /// was produced (Unix ms). A lane stuck on a message keeps this old.
    kafka_inbound_in_hand_since: std::sync::Mutex<HashMap<usize, i64>>,
    /// The consumer groups' lag, as last measured from the broker.
    kafka_lag: std::sync::Mutex<Option<KafkaLag>>,
}

impl QueueHealth {
    /// The last measurement, if one was taken yet.
    pub async fn snapshot(&self) -> Option<QueueSnapshot> {
        *self.snapshot.read().await
    }

    /// A lane of the Kafka inbound consumer holds messages produced at `since_ms` and later.
    pub fn kafka_inbound_holding(&self, lane: usize, since_ms: i64) {
        self.in_hand().insert(lane, since_ms);
    }

    /// A lane of the Kafka inbound consumer finished what it held.
    pub fn kafka_inbound_idle(&self, lane: usize) {
        self.in_hand().remove(&lane);
    }

    /// The lag of the consumer group of `role` (`inbound` or `outbound`), as just measured.
    pub fn kafka_lag(&self, role: &str, lag: GroupLag) {
        let mut kafka = self
            .kafka_lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let measured = kafka.get_or_insert_with(KafkaLag::default);
        match role {
            "inbound" => measured.inbound = lag,
            _ => measured.outbound = lag,
        }
    }

    fn kafka(&self) -> Option<KafkaLag> {
        *self
            .kafka_lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn kafka_inbound_age(&self) -> f64 {
        match self.in_hand().values().min() {
            None => 0.0,
            Some(since) => ((Utc::now().timestamp_millis() - since).max(0) as f64) / 1000.0,
        }
    }

    fn in_hand(&self) -> std::sync::MutexGuard<'_, HashMap<usize, i64>> {
        self.kafka_inbound_in_hand_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Measures the queues until `shutdown`.
pub async fn run(
    pool: PgPool,
    health: Arc<QueueHealth>,
    metrics: Arc<QueueMetrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(MEASURE_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match measure(&pool, &health).await {
            Ok(measured) => {
                metrics.show(&measured);
                *health.snapshot.write().await = Some(measured.snapshot);
            }
            // Readiness reports the database itself; the last snapshot stays.
            Err(e) => debug!(error = %e, "measuring the queues failed"),
        }
    }
}

async fn measure(pool: &PgPool, health: &QueueHealth) -> store::Result<Measured> {
    let mut conn = store::acquire(pool).await?;
    let outbound = customers::oldest_pending_age(&mut conn).await?;
    let (inbox_backlog, inbox_age) = processed_events::backlog(&mut conn).await?;
    let outbox_backlog = outbox::backlog(&mut conn).await?;
    let dead_letters_open = dead_letters::open_count(&mut conn).await?;
    let kafka = health.kafka();
    let unfetched_age = kafka.map_or(0.0, |k| k.inbound.stalled_seconds);
    Ok(Measured {
        snapshot: QueueSnapshot {
            outbound_oldest_pending_seconds: outbound,
            inbound_oldest_pending_seconds: inbox_age
                .max(health.kafka_inbound_age())
                .max(unfetched_age),
            dead_letters_open,
            kafka,
        },
        outbox_backlog,
        inbox_backlog,
    })
}
