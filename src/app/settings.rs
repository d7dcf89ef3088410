//! From the command line to [`Settings`]: what `paysync serve` was told, turned into what
//! the application builds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Application;
use super::cli::connect;
use crate::backoff::Backoff;
use crate::config::{InboundArgs, KafkaArgs, KubernetesMode, OutboundArgs, ServeArgs};
use crate::controller::{Cluster, LeaseTiming};
use crate::crd::Resolution;
use crate::domain::{ConflictPolicy, MirrorSchema};
use crate::http::{ApiAuth, ServerLimits};
use crate::policy::{ImplicitPolicy, PolicyDefinition};
use crate::store;
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
    /// Where the policies (one per Stripe account) come from.
    pub policies: PolicySource,
    /// How every policy's client calls Stripe: timeouts and retries.
    pub stripe_calls: StripeCalls,
    /// How far a webhook's signed timestamp may be from now (every policy's verifier).
    pub webhook_tolerance: Duration,
    /// Sync local changes to Stripe; `None` leaves them queued in the outbox.
    pub outbound: Option<WorkerSettings>,
    /// Apply Stripe events to PostgreSQL; `None` leaves them queued. The batch size also
    /// bounds a Kafka batch.
    pub inbound: Option<InboxSettings>,
    /// With `inbound` and the PostgreSQL transport: apply events as they arrive at the
    /// ingress where they can be, instead of queueing every one first.
    pub apply_on_arrival: bool,
    /// Read each policy's Events API this often for events missed as webhooks.
    pub catch_up: Option<Duration>,
    /// The Kafka transport; `None` runs the workers over PostgreSQL.
    pub kafka: Option<KafkaSettings>,
    /// Publish the outbox to Kafka from this process (Kafka transport only).
    pub relay: Option<RelaySettings>,
    /// Reconcile each policy every `reconcile.interval` (after the last run any replica
    /// finished) in this process.
    pub reconcile: bool,
    /// The schema of the billing mirror's tables.
    pub mirror_schema: MirrorSchema,
}

/// Where the policies come from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A fixed set: the implicit `default` policy of the `STRIPE_*` settings (or a test's).
    Fixed(Vec<PolicyDefinition>),
    /// `PAYSYNC_POLICIES`: a file or directory of manifests, watched for changes.
    File(PathBuf),
    /// The SyncPolicies of a Kubernetes namespace, through the controller.
    Kubernetes(Cluster),
}

/// How a Stripe client calls Stripe, the same for every policy (the policy gives the key, the
/// API base and the rate).
#[derive(Debug, Clone, Copy)]
pub struct StripeCalls {
    pub timeout: Duration,
    /// How long after `timeout` a create without an answer may still land in Stripe.
    pub create_fence: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
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
        store::migrate(&pool, &args.database.mirror_schema).await?;
        info!("database schema is up to date");
    }
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
        policies: match cluster(&args).await? {
            Some(cluster) => PolicySource::Kubernetes(cluster),
            None => policy_source(&args),
        },
        stripe_calls: stripe_calls(&args),
        webhook_tolerance: args.stripe.stripe_webhook_tolerance,
        outbound: outbound_settings(&args.outbound),
        inbound: inbound_settings(&args.inbound, &args.outbound),
        mirror_schema: args.database.mirror_schema.clone(),
        apply_on_arrival: args.inbound.apply_on_arrival,
        catch_up: catch_up_interval(&args.inbound),
        kafka: kafka_settings(&args.kafka),
        relay: (!args.outbound.no_relay).then_some(RelaySettings {
            batch_size: args.outbound.outbox_batch,
            poll_interval: args.outbound.outbox_poll_interval,
        }),
        reconcile: !args.no_reconcile,
    };
    let app = Application::build(settings, pool).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone())?;
    app.run(shutdown).await
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
        sasl_password: kafka.kafka_sasl_password.clone(),
    })
}

/// Timeouts and retries of every policy's Stripe client.
pub(super) fn stripe_calls(args: &ServeArgs) -> StripeCalls {
    StripeCalls {
        timeout: args.stripe.stripe_timeout,
        create_fence: args.stripe.stripe_create_fence,
        max_attempts: args.stripe.stripe_max_attempts,
        backoff: Backoff {
            base: args.stripe.stripe_backoff_base,
            max: args.stripe.stripe_backoff_max,
        },
    }
}

/// The cluster whose SyncPolicies are the policies, when `PAYSYNC_KUBERNETES` says so.
pub(super) async fn cluster(args: &ServeArgs) -> anyhow::Result<Option<Cluster>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let wanted = match args.kubernetes {
        KubernetesMode::True => true,
        KubernetesMode::False => false,
        KubernetesMode::Auto => in_cluster && args.policies.is_none(),
    };
    if !wanted {
        return Ok(None);
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    // Kubernetes sets a pod's HOSTNAME to its name.
    let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "paysync".to_owned());
    info!(%namespace, %instance, "policies from the SyncPolicies of the namespace (Kubernetes controller)");
    let leader = &args.leader;
    Ok(Some(Cluster {
        client,
        namespace,
        instance,
        lease: LeaseTiming {
            duration: leader.leader_lease_duration,
            renew_deadline: leader.leader_renew_deadline,
            retry_period: leader.leader_retry_period,
        },
    }))
}

/// `PAYSYNC_POLICIES`, else the one policy the `STRIPE_*` settings describe.
pub(super) fn policy_source(args: &ServeArgs) -> PolicySource {
    if let Some(path) = &args.policies {
        info!(path = %path.display(), "policies from PAYSYNC_POLICIES (watched)");
        return PolicySource::File(path.clone());
    }
    let stripe = &args.stripe;
    if stripe.stripe_api_key.is_none() {
        warn!(
            "STRIPE_API_KEY is not set: local changes wait as pending and nothing is sent to Stripe"
        );
    }
    if stripe.stripe_webhook_secrets.is_empty() {
        warn!("STRIPE_WEBHOOK_SECRETS is not set: POST /webhooks/stripe answers 503");
    }
    let rate = stripe.stripe_rate_limit;
    let implicit = ImplicitPolicy {
        api_key: stripe.stripe_api_key.clone(),
        webhook_secrets: stripe.stripe_webhook_secrets.clone(),
        api_base: stripe.stripe_api_base.clone(),
        rate,
        burst: stripe.stripe_rate_burst.unwrap_or(rate),
        conflict: resolution(args.inbound.conflict_policy),
    };
    info!(api_base = %implicit.api_base, rate, "one Stripe account from the STRIPE_* settings (policy `default`)");
    PolicySource::Fixed(vec![implicit.definition()])
}

/// `PAYSYNC_CONFLICT_POLICY` is the implicit policy's `conflict.default`.
fn resolution(policy: ConflictPolicy) -> Resolution {
    match policy {
        ConflictPolicy::Newest => Resolution::Newest,
        ConflictPolicy::LocalWins => Resolution::LocalWins,
        ConflictPolicy::StripeWins => Resolution::StripeWins,
    }
}

fn outbound_settings(outbound: &OutboundArgs) -> Option<WorkerSettings> {
    if outbound.no_outbound {
        info!("outbound sync disabled (--no-outbound)");
        return None;
    }
    Some(WorkerSettings {
        batch_size: outbound.outbox_batch,
        concurrency: outbound.outbound_concurrency as usize,
        poll_interval: outbound.outbox_poll_interval,
    })
}

fn inbound_settings(inbound: &InboundArgs, outbound: &OutboundArgs) -> Option<InboxSettings> {
    if inbound.no_inbound {
        info!("inbound sync disabled (--no-inbound): Stripe events stay queued");
        return None;
    }
    Some(InboxSettings {
        batch_size: i64::from(inbound.inbound_batch),
        concurrency: inbound.inbound_concurrency as usize,
        poll_interval: outbound.outbox_poll_interval,
    })
}

fn catch_up_interval(inbound: &InboundArgs) -> Option<Duration> {
    if inbound.no_catch_up {
        info!("catch-up disabled (--no-catch-up)");
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
