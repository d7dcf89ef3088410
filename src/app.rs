//! Builds paysync from its configuration and runs its tasks under one cancellation token,
//! so SIGTERM stops intake, drains in-flight work and exits cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::num::NonZeroU32;

use rdkafka::producer::FutureProducer;

use crate::bus::relay::RelaySettings;
use crate::bus::{self, KafkaProbe, KafkaSettings};
use crate::config::{
    CustomerCommand, DatabaseArgs, DeadLetterCommand, InboundArgs, KafkaArgs, OutboundArgs,
    ServeArgs, StripeArgs,
};
use crate::domain::SyncState;
use crate::http::{self, ApiAuth, AppState, RejectionLog, ServerLimits, WebhookIngress};
use crate::metrics::Metrics;
use crate::store;
use crate::stripe::retry::Backoff;
use crate::stripe::webhook::WebhookVerifier;
use crate::stripe::{HttpStripe, RateLimit, StripeApi, StripeSettings};
use crate::sync::inbound::ConflictPolicy;
use crate::sync::inbound_queue::InboxWriter;
use crate::sync::inbox_worker::{self, InboxSettings};
use crate::sync::outbox_worker::{self, WorkerSettings};
use crate::sync::queue_health::{self, QueueHealth};
use crate::sync::{CreateRetry, InboundQueue, InboundSync, OutboundSync, catch_up};

/// How long a POST's `Idempotency-Key` is remembered (as Stripe does).
const IDEMPOTENCY_KEY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a processed Stripe event's id is remembered: past Stripe's retries (3 days) and
/// the Events API's retention (30 days), so neither can make it apply twice.
const PROCESSED_EVENT_RETENTION: Duration = Duration::from_secs(31 * 24 * 60 * 60);
/// How often expired idempotency keys and processed events are removed.
const JANITOR_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// What the server needs besides a database pool.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub auth: ApiAuth,
    /// Timeouts and connection/request limits of the HTTP server.
    pub http: ServerLimits,
    pub shutdown_timeout: Duration,
    /// The Stripe account paysync talks to; `None` without an API key.
    pub stripe: Option<StripeAccount>,
    /// Sync local changes to Stripe (with `stripe`); `None` leaves them queued in the outbox.
    pub outbound: Option<WorkerSettings>,
    /// Apply Stripe events to PostgreSQL; `None` leaves them queued.
    pub inbound: Option<InboundSettings>,
    /// Read the Events API this often for events missed as webhooks (with `stripe`).
    pub catch_up: Option<Duration>,
    /// The Kafka transport; `None` runs the workers over PostgreSQL.
    pub kafka: Option<KafkaSettings>,
    /// Publish the outbox to Kafka from this process (Kafka transport only).
    pub relay: Option<RelaySettings>,
    /// Accept Stripe webhooks signed with one of these secrets.
    pub webhooks: Option<WebhookVerifier>,
}

/// A Stripe account and the request budget paysync keeps to with it.
#[derive(Debug, Clone)]
pub struct StripeAccount {
    pub api: StripeSettings,
    pub rate: NonZeroU32,
    pub burst: NonZeroU32,
}

/// The inbound side: how Stripe events are applied.
#[derive(Debug, Clone, Copy)]
pub struct InboundSettings {
    /// Batches and workers; the batch size also bounds a Kafka batch.
    pub inbox: InboxSettings,
    pub policy: ConflictPolicy,
}

/// A bound, not yet running paysync server.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    http: ServerLimits,
    pool: PgPool,
    metrics: Arc<Metrics>,
    outbound: Option<(Arc<OutboundSync>, WorkerSettings)>,
    inbound: Option<(Arc<InboundSync>, InboxSettings)>,
    catch_up: Option<(Arc<dyn StripeApi>, Duration)>,
    queue: InboundQueue,
    queue_health: Arc<QueueHealth>,
    kafka: Option<KafkaRuntime>,
    shutdown_timeout: Duration,
}

/// Kafka clients created at start-up (so configuration errors surface before serving).
struct KafkaRuntime {
    settings: KafkaSettings,
    producer: FutureProducer,
    relay: Option<RelaySettings>,
}

impl Application {
    /// Binds the listener (so callers can learn the port when binding port 0).
    pub async fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let metrics = Arc::new(Metrics::new());
        // One client per account: its token bucket is shared by every caller.
        let stripe = match &settings.stripe {
            Some(account) => {
                let limit = RateLimit::new(account.rate, account.burst);
                let client = HttpStripe::new(account.api.clone(), limit, metrics.clone())?;
                Some(Arc::new(client) as Arc<dyn StripeApi>)
            }
            None => None,
        };
        let outbound = match (settings.outbound, &stripe, &settings.stripe) {
            (Some(worker), Some(stripe), Some(account)) => {
                let create_retry = CreateRetry {
                    max_attempts: account.api.max_attempts,
                    backoff: account.api.backoff,
                };
                let sync =
                    OutboundSync::new(pool.clone(), stripe.clone(), metrics.clone(), create_retry);
                Some((Arc::new(sync), worker))
            }
            _ => None,
        };
        let inbound = settings.inbound.map(|inbound| {
            let sync = InboundSync::new(
                pool.clone(),
                stripe.clone(),
                metrics.clone(),
                inbound.policy,
            );
            (Arc::new(sync), inbound.inbox)
        });
        let kafka = match settings.kafka {
            Some(kafka_settings) => {
                bus::ensure_topics(&kafka_settings).await?;
                let producer = kafka_settings.producer()?;
                Some(KafkaRuntime {
                    settings: kafka_settings,
                    producer,
                    relay: settings.relay,
                })
            }
            None => None,
        };
        let queue = match &kafka {
            Some(k) => InboundQueue::Kafka {
                producer: k.producer.clone(),
                topic: k.settings.inbound_topic(),
            },
            None => InboundQueue::Postgres(InboxWriter::start(pool.clone(), metrics.clone())),
        };
        let webhooks = settings.webhooks.map(|verifier| {
            Arc::new(WebhookIngress {
                verifier,
                queue: queue.clone(),
                rejections: RejectionLog::default(),
            })
        });
        let queue_health = Arc::new(QueueHealth::default());
        let state = AppState {
            pool: pool.clone(),
            metrics: metrics.clone(),
            queue_health: queue_health.clone(),
            kafka: kafka.as_ref().map(|k| KafkaProbe::new(k.producer.clone())),
            webhooks,
        };
        Ok(Self {
            listener,
            router: http::router(state, settings.auth, settings.http),
            http: settings.http,
            pool,
            metrics,
            outbound,
            inbound,
            catch_up: stripe.zip(settings.catch_up),
            queue,
            queue_health,
            kafka,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish for up to
    /// the shutdown timeout.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        info!(%addr, "listening");
        let janitor = spawn_janitor(self.pool.clone(), shutdown.clone());
        let mut workers = self.spawn_outbound(&shutdown)?;
        workers.push(tokio::spawn(queue_health::run(
            self.pool.clone(),
            self.queue_health.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        )));
        workers.extend(self.spawn_inbound(&shutdown)?);
        if let Some((stripe, interval)) = self.catch_up.clone() {
            info!(interval = ?interval, "catching up on missed Stripe events (Events API)");
            workers.push(tokio::spawn(catch_up::run(
                self.pool.clone(),
                stripe,
                self.queue.clone(),
                self.metrics.clone(),
                interval,
                shutdown.clone(),
            )));
        }
        http::server::serve(
            self.listener,
            self.router,
            self.http,
            shutdown.clone(),
            self.shutdown_timeout,
        )
        .await;
        if let Err(e) = janitor.await {
            warn!(error = %e, "janitor task failed");
        }
        for worker in workers {
            if let Err(e) = worker.await {
                warn!(error = %e, "a worker task failed");
            }
        }
        self.pool.close().await;
        info!("stopped");
        Ok(())
    }

    /// The relay (Kafka) and the worker that syncs local changes to Stripe.
    fn spawn_outbound(&self, shutdown: &CancellationToken) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut workers = Vec::new();
        match (&self.kafka, &self.outbound) {
            (Some(kafka), outbound) => {
                if let Some(relay) = kafka.relay {
                    info!(topic = %kafka.settings.outbound_topic(), "relaying the outbox to Kafka");
                    workers.push(tokio::spawn(bus::relay::run(
                        self.pool.clone(),
                        kafka.producer.clone(),
                        kafka.settings.outbound_topic(),
                        self.metrics.clone(),
                        relay,
                        shutdown.clone(),
                    )));
                }
                if let Some((sync, _)) = outbound {
                    let consumer = bus::consumer::outbound_consumer(&kafka.settings)?;
                    info!(group = %kafka.settings.group("outbound"), "syncing local changes to Stripe (Kafka transport)");
                    workers.push(tokio::spawn(bus::consumer::run_outbound(
                        consumer,
                        sync.clone(),
                        shutdown.clone(),
                    )));
                }
            }
            (None, Some((sync, worker_settings))) => {
                info!("syncing local changes to Stripe (PostgreSQL transport)");
                workers.push(tokio::spawn(outbox_worker::run(
                    self.pool.clone(),
                    sync.clone(),
                    self.metrics.clone(),
                    *worker_settings,
                    shutdown.clone(),
                )));
            }
            (None, None) => {}
        }
        Ok(workers)
    }

    /// The workers that apply Stripe events: the inbox worker always (it also takes replayed
    /// dead letters), and the inbound consumer with Kafka.
    fn spawn_inbound(&self, shutdown: &CancellationToken) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let Some((sync, inbox)) = &self.inbound else {
            return Ok(Vec::new());
        };
        let mut workers = vec![tokio::spawn(inbox_worker::run(
            sync.clone(),
            self.metrics.clone(),
            *inbox,
            shutdown.clone(),
        ))];
        match &self.kafka {
            Some(kafka) => {
                let consumer = bus::inbound::inbound_consumer(&kafka.settings)?;
                info!(group = %kafka.settings.group("inbound"), "applying Stripe events (Kafka transport)");
                workers.push(tokio::spawn(bus::inbound::run_inbound(
                    consumer,
                    sync.clone(),
                    self.queue_health.clone(),
                    usize::try_from(inbox.batch_size).unwrap_or(1).max(1),
                    shutdown.clone(),
                )));
            }
            None => info!("applying Stripe events (PostgreSQL transport)"),
        }
        Ok(workers)
    }
}

/// Removes expired idempotency keys and processed-event records, hourly.
fn spawn_janitor(pool: PgPool, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(JANITOR_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match store::idempotency::delete_expired(&pool, IDEMPOTENCY_KEY_RETENTION).await {
                Ok(0) => {}
                Ok(deleted) => info!(deleted, "expired idempotency keys removed"),
                Err(e) => warn!(error = %e, "removing expired idempotency keys failed; will retry"),
            }
            let processed =
                store::processed_events::delete_processed_before(&pool, PROCESSED_EVENT_RETENTION);
            match processed.await {
                Ok(0) => {}
                Ok(deleted) => info!(deleted, "old processed Stripe events forgotten"),
                Err(e) => warn!(error = %e, "removing old processed events failed; will retry"),
            }
        }
    })
}

/// `paysync serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let auth = if args.insecure_no_auth {
        warn!("--insecure-no-auth: the /v1 API accepts requests without a token");
        ApiAuth::Disabled
    } else {
        ApiAuth::tokens(&args.api_tokens)
    };
    let pool = connect(&args.database).await?;
    if args.no_migrate {
        info!("skipping migrations (--no-migrate)");
    } else {
        store::migrate(&pool).await?;
        info!("database schema is up to date");
    }
    let stripe = stripe_account(&args.stripe);
    let settings = Settings {
        listen: args.listen,
        auth,
        http: ServerLimits {
            header_timeout: args.http.http_header_timeout,
            body_timeout: args.http.http_body_timeout,
            request_timeout: args.http.http_request_timeout,
            max_connections: args.http.http_max_connections as usize,
            max_requests: args.http.http_max_requests as usize,
        },
        shutdown_timeout: args.shutdown_timeout,
        outbound: outbound_settings(stripe.is_some(), &args.outbound),
        inbound: inbound_settings(&args.inbound, &args.outbound),
        catch_up: catch_up_interval(stripe.is_some(), &args.inbound),
        stripe,
        kafka: kafka_settings(&args.kafka),
        webhooks: webhook_verifier(&args.stripe),
        relay: (!args.outbound.no_relay).then_some(RelaySettings {
            batch_size: args.outbound.outbox_batch,
            poll_interval: args.outbound.outbox_poll_interval,
        }),
    };
    let app = Application::build(settings, pool).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone())?;
    app.run(shutdown).await
}

fn webhook_verifier(stripe: &StripeArgs) -> Option<WebhookVerifier> {
    if stripe.stripe_webhook_secrets.is_empty() {
        warn!("STRIPE_WEBHOOK_SECRETS is not set: POST /webhooks/stripe answers 503");
        return None;
    }
    Some(WebhookVerifier::new(
        stripe.stripe_webhook_secrets.clone(),
        stripe.stripe_webhook_tolerance,
    ))
}

fn kafka_settings(kafka: &KafkaArgs) -> Option<KafkaSettings> {
    let brokers = kafka
        .kafka_brokers
        .clone()
        .filter(|b| !b.trim().is_empty())?;
    info!(brokers = %brokers, "Kafka transport");
    Some(KafkaSettings {
        brokers,
        topic_prefix: kafka.kafka_topic_prefix.clone(),
        partitions: kafka.kafka_partitions,
        replication_factor: kafka.kafka_replication_factor,
        options: kafka.kafka_options.clone(),
    })
}

fn stripe_account(stripe: &StripeArgs) -> Option<StripeAccount> {
    let Some(api_key) = stripe.stripe_api_key.clone() else {
        warn!("STRIPE_API_KEY is not set: local changes stay queued in the outbox");
        return None;
    };
    let rate = NonZeroU32::new(stripe.stripe_rate_limit).unwrap_or(NonZeroU32::MIN);
    let burst = stripe
        .stripe_rate_burst
        .and_then(NonZeroU32::new)
        .unwrap_or(rate);
    info!(api_base = %stripe.stripe_api_base, rate = rate.get(), burst = burst.get(), "Stripe account configured");
    Some(StripeAccount {
        api: StripeSettings {
            api_key,
            api_base: stripe.stripe_api_base.clone(),
            timeout: stripe.stripe_timeout,
            max_attempts: stripe.stripe_max_attempts,
            backoff: Backoff {
                base: stripe.stripe_backoff_base,
                max: stripe.stripe_backoff_max,
            },
        },
        rate,
        burst,
    })
}

fn outbound_settings(has_stripe: bool, outbound: &OutboundArgs) -> Option<WorkerSettings> {
    if outbound.no_outbound {
        info!("outbound sync disabled (--no-outbound)");
        return None;
    }
    has_stripe.then_some(WorkerSettings {
        batch_size: outbound.outbox_batch,
        concurrency: outbound.outbound_concurrency as usize,
        poll_interval: outbound.outbox_poll_interval,
    })
}

fn inbound_settings(inbound: &InboundArgs, outbound: &OutboundArgs) -> Option<InboundSettings> {
    if inbound.no_inbound {
        info!("inbound sync disabled (--no-inbound): Stripe events stay queued");
        return None;
    }
    Some(InboundSettings {
        inbox: InboxSettings {
            batch_size: i64::from(inbound.inbound_batch),
            concurrency: inbound.inbound_concurrency as usize,
            poll_interval: outbound.outbox_poll_interval,
        },
        policy: inbound.conflict_policy,
    })
}

fn catch_up_interval(has_stripe: bool, inbound: &InboundArgs) -> Option<Duration> {
    if inbound.no_catch_up {
        info!("catch-up disabled (--no-catch-up)");
        return None;
    }
    if !has_stripe {
        warn!("STRIPE_API_KEY is not set: no catch-up of missed Stripe events");
        return None;
    }
    Some(inbound.catch_up_interval)
}

/// `paysync dead-letters list|replay`.
pub async fn dead_letters(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List {
            database,
            all,
            limit,
        } => {
            let pool = connect_to_schema(&database).await?;
            let mut conn = store::acquire(&pool).await?;
            for letter in store::dead_letters::list(&mut conn, all, limit).await? {
                println!(
                    "{}",
                    serde_json::to_string(&http::DeadLetterBody::from(letter))?
                );
            }
            Ok(())
        }
        DeadLetterCommand::Replay {
            database,
            ids,
            all_open,
        } => {
            let pool = connect_to_schema(&database).await?;
            let ids = if all_open {
                let mut conn = store::acquire(&pool).await?;
                store::dead_letters::list(&mut conn, false, i64::MAX)
                    .await?
                    .into_iter()
                    .map(|letter| letter.id)
                    .collect()
            } else {
                ids
            };
            for id in ids {
                crate::sync::dead_letters::replay(&pool, id).await?;
                info!(dead_letter = %id, "replay queued");
            }
            Ok(())
        }
    }
}

/// `paysync customers list`.
pub async fn customers(command: CustomerCommand) -> anyhow::Result<()> {
    let CustomerCommand::List {
        database,
        sync_state,
        limit,
    } = command;
    let pool = connect_to_schema(&database).await?;
    let sync_state = sync_state
        .as_deref()
        .map(SyncState::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut conn = store::acquire(&pool).await?;
    let mut after = None;
    let mut printed = 0;
    while printed < limit {
        let filter = store::customers::ListFilter {
            after,
            email: None,
            sync_state,
        };
        let page_size = (limit - printed).min(CLI_PAGE);
        let page =
            store::customers::list_live(&mut conn, store::DEFAULT_ACCOUNT, filter, page_size)
                .await?;
        let Some(last) = page.last().map(|customer| customer.id) else {
            break;
        };
        printed += page.len() as i64;
        for customer in page {
            println!(
                "{}",
                serde_json::to_string(&http::CustomerBody::from(customer))?
            );
        }
        after = Some(last);
    }
    Ok(())
}

/// Rows the customer listing reads at a time.
const CLI_PAGE: i64 = 500;

/// Connects for a command that reads paysync's tables, and says plainly when the database has
/// none (never migrated, or not paysync's database) instead of a bare SQL error.
async fn connect_to_schema(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let pool = connect(args).await?;
    let mut conn = store::acquire(&pool).await?;
    if !store::has_schema(&mut conn).await? {
        anyhow::bail!(
            "the database {} has no paysync tables: run `paysync migrate` first, or set \
             DATABASE_URL to the database paysync serves from (scripts/run uses \
             postgres://postgres:postgres@127.0.0.1:5432/paysync)",
            store::describe_url(&args.database_url)
        );
    }
    Ok(pool)
}

/// `paysync migrate`.
pub async fn migrate(args: DatabaseArgs) -> anyhow::Result<()> {
    let pool = connect(&args).await?;
    store::migrate(&pool).await?;
    info!("database schema is up to date");
    pool.close().await;
    Ok(())
}

async fn connect(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let pool = store::connect(&args.database_url, args.database_max_connections).await?;
    info!(database = %store::describe_url(&args.database_url), "connected to PostgreSQL");
    Ok(pool)
}

/// Cancels `token` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
        token.cancel();
    });
    Ok(())
}
