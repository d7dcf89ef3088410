//! Wiring: every part paysync runs, built from [`Settings`] on one metrics registry, and the
//! tasks that run them. Nothing here starts a task; [`super::Application::run`] does.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tracing::info;

use super::handlers::handlers;
use super::{PolicySource, Settings, StripeCalls, Task, janitor};
use crate::controller::Leadership;
use crate::http::{AppState, HttpMetrics, RejectionLog, WebhookIngress, WebhookMetrics};
use crate::metrics::{self, Registry};
use crate::policy::file::ReloadMetrics;
use crate::policy::{self, PolicyRegistry, ReadinessCollector, SourceAccess, StripeFactory};
use crate::reconcile::{Handlers, ReconcileMetrics, Reconciler};
use crate::store::locks::{CUSTOMER_LOCK_SESSIONS, LockPool};
use crate::stripe::{HttpStripe, RateLimit, StripeMetrics, StripeSettings};
use crate::sync::EventQueue;
use crate::sync::catch_up::{CatchUp, CatchUpMetrics};
use crate::sync::dead_letters::{DeadLetterMetrics, DeadLetters};
use crate::sync::queue_health::{self, QueueHealth, QueueMetrics};
use crate::transport::InboundQueue;
use crate::transport::kafka::{self, KafkaProbe, KafkaSettings};
use crate::transport::pg::{self, InboxWriter, InboxWriterMetrics};

/// Connections the lock pool keeps besides the sessions holding customers' sync locks and one
/// per inbox worker: the outbox worker's two claims, the outbox relay's claim, catch-up's
/// lock, the reconciler's lock, and spares.
const LOCK_POOL_BASE: u32 = 8;

mod cluster;

/// What [`wire`] built.
pub struct Wired {
    pub state: AppState,
    pub tasks: Vec<Task>,
    /// Closed with the main pool at shutdown.
    pub locks: LockPool,
}

/// The parts shared while wiring.
struct Parts<'a> {
    settings: &'a Settings,
    pool: PgPool,
    locks: LockPool,
    registry: Registry,
    dead_letters: DeadLetters,
    policies: Arc<PolicyRegistry>,
    kafka: Option<KafkaRuntime>,
    health: Arc<QueueHealth>,
    /// In a cluster: whether the policies can be read (`/readyz`).
    cluster_access: Option<Arc<SourceAccess>>,
    tasks: Vec<Task>,
}

/// Kafka clients created at start-up (so configuration errors surface before serving).
struct KafkaRuntime {
    settings: KafkaSettings,
    producer: FutureProducer,
}

pub async fn wire(settings: &Settings, pool: &PgPool) -> anyhow::Result<Wired> {
    let mut registry = metrics::registry();
    let dead_letter_metrics = DeadLetterMetrics::register(&mut registry);
    let mut parts = Parts {
        settings,
        pool: pool.clone(),
        locks: lock_pool(settings, pool),
        dead_letters: DeadLetters::new(pool.clone(), Arc::new(dead_letter_metrics)),
        policies: load_policies(
            &settings.policies,
            settings.stripe_calls,
            settings.webhook_tolerance,
            Some(pool),
            &mut registry,
        )
        .await?,
        kafka: connect_kafka(settings.kafka.as_ref()).await?,
        health: Arc::new(QueueHealth::default()),
        cluster_access: None,
        registry,
        tasks: Vec::new(),
    };
    parts.add_housekeeping();
    parts.add_policy_watch();
    let handlers = handlers(
        settings.stripe_calls,
        (&parts.pool, &parts.locks),
        &parts.policies,
        (&parts.dead_letters, &settings.mirror_schema),
        &mut parts.registry,
    );
    let queue = parts.inbound_queue(&handlers);
    parts.add_outbound(&handlers)?;
    parts.add_inbound(&handlers)?;
    parts.add_catch_up(&queue);
    let leadership = parts.add_leadership();
    let reconciler = parts.add_reconciler(handlers, leadership.as_ref());
    parts.add_controller(&reconciler, leadership);
    let webhooks = Arc::new(WebhookIngress {
        policies: parts.policies.clone(),
        queue: Arc::new(queue) as Arc<dyn EventQueue>,
        rejections: RejectionLog::default(),
    });
    Ok(parts.finish(webhooks, reconciler))
}

/// Connections held while waiting on Stripe or Kafka, apart from the pool serving requests.
fn lock_pool(settings: &Settings, pool: &PgPool) -> LockPool {
    let inbox = settings.inbound.map_or(0, |i| i.concurrency);
    let size = u32::try_from(CUSTOMER_LOCK_SESSIONS + inbox)
        .unwrap_or(u32::MAX)
        .saturating_add(LOCK_POOL_BASE);
    let held = crate::store::pool_options()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    LockPool::new(held)
}

/// The registry, with the policies of the source in effect. A policies file that does not
/// load stops start-up (there are no last good policies yet).
/// Given `requeue`, the changes that waited for a policy are queued (see `policy::apply`).
pub(super) async fn load_policies(
    source: &PolicySource,
    calls: StripeCalls,
    webhook_tolerance: Duration,
    requeue: Option<&PgPool>,
    registry: &mut Registry,
) -> anyhow::Result<Arc<PolicyRegistry>> {
    let factory = stripe_factory(calls, registry);
    let policies = Arc::new(PolicyRegistry::new(factory, webhook_tolerance));
    registry.register_collector(Box::new(ReadinessCollector::new(policies.clone())));
    let definitions = match source {
        PolicySource::Fixed(definitions) => definitions.clone(),
        PolicySource::File(path) => policy::file::load(path)?,
        // The controller puts each in as it sees it (a set loaded here would be cut back to
        // the first policy the controller reconciles).
        PolicySource::Kubernetes(_) => Vec::new(),
    };
    match requeue {
        Some(pool) => drop(policy::apply_at_start(&policies, pool, definitions).await),
        None => drop(policy::apply(&policies, None, definitions)),
    }
    Ok(policies)
}

/// Makes each policy's client: its key, API base and token bucket (shared by every caller of
/// that account), the same timeouts and retries for all.
fn stripe_factory(calls: StripeCalls, registry: &mut Registry) -> StripeFactory {
    let metrics = Arc::new(StripeMetrics::register(registry));
    Arc::new(move |name, key, spec| {
        let rate = &spec.rate_limit;
        let limit = RateLimit::new(
            NonZeroU32::new(rate.requests_per_second).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN),
        );
        let settings = StripeSettings {
            api_key: key.clone(),
            api_base: spec.api_base.clone(),
            timeout: calls.timeout,
            max_attempts: calls.max_attempts,
            backoff: calls.backoff,
        };
        let client = HttpStripe::new(settings, limit, Arc::new(metrics.for_policy(name)))?;
        Ok(Arc::new(client) as Arc<dyn crate::stripe::StripeApi>)
    })
}

async fn connect_kafka(settings: Option<&KafkaSettings>) -> anyhow::Result<Option<KafkaRuntime>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    kafka::ensure_topics(settings).await?;
    Ok(Some(KafkaRuntime {
        producer: settings.producer()?,
        settings: settings.clone(),
    }))
}

impl Parts<'_> {
    fn task<F>(&mut self, run: F)
    where
        F: FnOnce(tokio_util::sync::CancellationToken) -> futures::future::BoxFuture<'static, ()>
            + Send
            + 'static,
    {
        self.tasks.push(Box::new(run));
    }

    fn add_housekeeping(&mut self) {
        let pool = self.pool.clone();
        self.task(move |shutdown| janitor::run(pool, shutdown).boxed());
        let (pool, health) = (self.pool.clone(), self.health.clone());
        let metrics = Arc::new(QueueMetrics::register(&mut self.registry));
        self.task(move |shutdown| queue_health::run(pool, health, metrics, shutdown).boxed());
        if let Some(kafka) = &self.kafka {
            let (settings, health) = (kafka.settings.clone(), self.health.clone());
            self.task(move |shutdown| kafka::lag::run(settings, health, shutdown).boxed());
        }
    }

    /// Applies every change of the policies file without a restart.
    fn add_policy_watch(&mut self) {
        let PolicySource::File(path) = &self.settings.policies else {
            return;
        };
        let (path, policies, pool) = (path.clone(), self.policies.clone(), self.pool.clone());
        let metrics = Arc::new(ReloadMetrics::register(&mut self.registry));
        self.task(move |shutdown| {
            policy::file::watch(path, policies, pool, metrics, shutdown).boxed()
        });
    }

    /// Where webhooks and catch-up put Stripe events; with the PostgreSQL transport, where
    /// this process applies events, they are applied as they arrive where they can be.
    fn inbound_queue(&mut self, handlers: &Handlers) -> InboundQueue {
        let writer_metrics = Arc::new(InboxWriterMetrics::register(&mut self.registry));
        match &self.kafka {
            Some(kafka) => InboundQueue::Kafka {
                producer: kafka.producer.clone(),
                topic: kafka.settings.inbound_topic(),
            },
            None => {
                let applying = self.settings.inbound.is_some() && self.settings.apply_on_arrival;
                let applier = applying.then(|| handlers.pipeline.clone());
                let (writer, tasks) = InboxWriter::new(self.pool.clone(), applier, writer_metrics);
                self.task(move |_| async move { tasks.spawn() }.boxed());
                InboundQueue::Postgres(writer)
            }
        }
    }

    fn add_outbound(&mut self, handlers: &Handlers) -> anyhow::Result<()> {
        self.add_relay();
        let Some(worker) = self.settings.outbound else {
            return Ok(());
        };
        let handler = handlers.outbound.clone();
        match &self.kafka {
            Some(kafka) => {
                let consumer = kafka::outbound::outbound_consumer(&kafka.settings)?;
                info!(group = %kafka.settings.group("outbound"), "syncing local changes to Stripe (Kafka transport)");
                let concurrency = worker.concurrency;
                self.task(move |shutdown| {
                    kafka::outbound::run_outbound(consumer, handler, concurrency, shutdown).boxed()
                });
            }
            None => {
                info!("syncing local changes to Stripe (PostgreSQL transport)");
                let (pool, locks) = (self.pool.clone(), self.locks.clone());
                self.task(move |shutdown| {
                    pg::outbox::run(pool, locks, handler, worker, shutdown).boxed()
                });
            }
        }
        Ok(())
    }

    /// The relay publishes the outbox to Kafka (Kafka transport only).
    fn add_relay(&mut self) {
        let (Some(kafka), Some(relay)) = (&self.kafka, self.settings.relay) else {
            return;
        };
        info!(topic = %kafka.settings.outbound_topic(), "relaying the outbox to Kafka");
        let (pool, locks) = (self.pool.clone(), self.locks.clone());
        let (producer, topic) = (kafka.producer.clone(), kafka.settings.outbound_topic());
        self.task(move |shutdown| {
            kafka::relay::run(pool, locks, producer, topic, relay, shutdown).boxed()
        });
    }

    /// The inbox workers always (they also take replayed dead letters), and the inbound
    /// consumer with Kafka.
    fn add_inbound(&mut self, handlers: &Handlers) -> anyhow::Result<()> {
        let Some(inbound) = self.settings.inbound else {
            return Ok(());
        };
        let handler = handlers.pipeline.clone();
        let (pool, locks, inbox) = (self.pool.clone(), self.locks.clone(), inbound);
        let inbox_handler = handler.clone();
        self.task(move |shutdown| {
            pg::inbox::run(pool, locks, inbox_handler, inbox, shutdown).boxed()
        });
        let Some(kafka) = &self.kafka else {
            info!("applying Stripe events (PostgreSQL transport)");
            return Ok(());
        };
        let consumer = kafka::inbound::inbound_consumer(&kafka.settings)?;
        info!(group = %kafka.settings.group("inbound"), "applying Stripe events (Kafka transport)");
        let health = self.health.clone();
        let batch = usize::try_from(inbound.batch_size).unwrap_or(1).max(1);
        let lanes = inbound.concurrency;
        self.task(move |shutdown| {
            kafka::inbound::run_inbound(consumer, handler, health, batch, lanes, shutdown).boxed()
        });
        Ok(())
    }

    fn add_catch_up(&mut self, queue: &InboundQueue) {
        let metrics = Arc::new(CatchUpMetrics::register(&mut self.registry));
        let Some(interval) = self.settings.catch_up else {
            return;
        };
        info!(interval = ?interval, "catching up on missed Stripe events (Events API, per policy)");
        let catch_up = CatchUp {
            pool: self.pool.clone(),
            locks: self.locks.clone(),
            policies: self.policies.clone(),
            queue: Arc::new(queue.clone()),
            metrics,
        };
        self.task(move |shutdown| catch_up.run(interval, shutdown).boxed());
    }

    /// The reconciler (the API runs it on demand), and its schedule unless switched off.
    fn add_reconciler(
        &mut self,
        handlers: Handlers,
        leadership: Option<&Leadership>,
    ) -> Arc<Reconciler> {
        let metrics = Arc::new(ReconcileMetrics::register(&mut self.registry));
        let mut reconciler = Reconciler::new(
            self.pool.clone(),
            self.locks.clone(),
            self.policies.clone(),
            handlers,
            metrics,
        );
        if let Some(leadership) = leadership {
            reconciler = reconciler.with_schedule_gate(leadership.receiver());
        }
        let reconciler = Arc::new(reconciler);
        if self.settings.reconcile {
            let scheduled = reconciler.clone();
            self.task(move |shutdown| scheduled.schedule(shutdown).boxed());
        }
        reconciler
    }

    fn finish(mut self, webhooks: Arc<WebhookIngress>, reconciler: Arc<Reconciler>) -> Wired {
        let http = Arc::new(HttpMetrics::register(&mut self.registry));
        let webhook_metrics = Arc::new(WebhookMetrics::register(&mut self.registry));
        let state = AppState {
            pool: self.pool,
            registry: Arc::new(self.registry),
            http,
            webhook_metrics,
            queue_health: self.health,
            kafka: self.kafka.map(|k| KafkaProbe::new(k.producer)),
            webhooks,
            policies: self.policies,
            reconciler,
            cluster_access: self.cluster_access,
        };
        Wired {
            state,
            tasks: self.tasks,
            locks: self.locks,
        }
    }
}
