//! From the command line to [`Settings`]: what `paysync serve` was told, turned into what
//! the application builds.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Application;
use super::cli::connect;
use crate::backoff::Backoff;
use crate::config::{InboundArgs, KafkaArgs, OutboundArgs, ServeArgs, StripeArgs};
use crate::domain::ConflictPolicy;
use crate::http::{ApiAuth, ServerLimits};
use crate::store;
use crate::stripe::StripeSettings;
use crate::stripe::webhook::WebhookVerifier;
use crate::transport::kafka::KafkaSettings;
use crate::transport::kafka::relay::RelaySettings;
use crate::transport::pg::{InboxSettings, WorkerSettings};

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
