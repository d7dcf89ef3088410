//! Command line and environment. Every setting has a flag and an environment variable; the
//! names are a contract with operators (the Helm chart sets the variables).

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use secrecy::SecretString;

use crate::domain::{ConflictPolicy, MirrorSchema};
use crate::telemetry::LogFormat;

mod commands;
pub mod env_file;
mod leader;
mod stripe;

pub use commands::{CustomerCommand, DeadLetterCommand, KubernetesMode, PlanFormat, ReconcileArgs};
pub use leader::LeaderArgs;
pub use stripe::StripeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "paysync",
    version,
    about = "Two-way sync of customers between PostgreSQL and Stripe"
)]
pub struct Cli {
    /// Log format: text, json, or auto (text on a terminal, JSON otherwise).
    #[arg(long, env = "PAYSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line and environment, exiting with a usage error (code 2) when the
    /// settings are incomplete.
    pub fn parse_and_check() -> Self {
        let cli = Self::parse();
        if let Err(message) = cli.check() {
            Self::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, message)
                .exit();
        }
        cli
    }

    /// Cross-field rules clap cannot express with a message that names the variables.
    fn check(&self) -> Result<(), String> {
        if let Command::Serve(serve) = &self.command {
            serve.leader.check()?;
        }
        if let Command::Serve(serve) = &self.command
            && serve.api_tokens.is_empty()
            && !serve.insecure_no_auth
        {
            return Err(
                "no API token configured: set PAYSYNC_API_TOKENS (or --api-tokens) to a \
                        comma-separated list of bearer tokens, or pass --insecure-no-auth for a \
                        local experiment"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the sync machinery until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Print the OpenAPI document of the HTTP API (JSON) to stdout.
    Openapi,
    /// Print the SyncPolicy CustomResourceDefinition (YAML) to stdout.
    Crd,
    /// Inspect and replay changes that could not be synced.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Inspect customers (e.g. the ones not in sync).
    #[command(subcommand)]
    Customers(CustomerCommand),
    /// Reconcile PostgreSQL with Stripe now: a diff of every customer of each policy, applied
    /// (or with --dry-run only printed as a plan). Takes the settings `serve` takes.
    Reconcile(Box<ReconcileArgs>),
}

/// The Kafka transport. Without brokers, paysync runs the same workers over PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, e.g. `kafka-0:9092,kafka-1:9092`. Unset: PostgreSQL transport.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Topic names are `<prefix>.outbound` and `<prefix>.inbound`.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "paysync")]
    pub kafka_topic_prefix: String,

    /// Partitions of topics paysync creates (more partitions allow more consumers).
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_partitions: i32,

    /// Replication factor of topics paysync creates.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_replication_factor: i32,

    /// Extra librdkafka settings for every client, comma-separated `key=value` pairs: TLS
    /// and SASL for a managed Kafka, e.g. `security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,
    /// sasl.username=paysync,ssl.ca.location=/etc/paysync/ca/ca.crt`.
    #[arg(long, env = "KAFKA_OPTIONS", value_delimiter = ',', hide_env_values = true, value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,

    /// The SASL password (librdkafka's `sasl.password`), apart from KAFKA_OPTIONS so that it
    /// can come from a Secret of its own.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<SecretString>,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{raw:?} has an empty key"));
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

/// The outbound worker.
#[derive(Debug, Clone, Args)]
pub struct OutboundArgs {
    /// Do not sync local changes to Stripe in this process.
    #[arg(long, env = "PAYSYNC_NO_OUTBOUND", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_outbound: bool,

    /// Do not publish outbox rows to Kafka in this process (Kafka transport only).
    #[arg(long, env = "PAYSYNC_NO_RELAY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_relay: bool,

    /// Customers synced to Stripe at once, on either transport; to use the whole budget,
    /// requests/s × Stripe's latency. Those beyond what the budget allows wait for it.
    #[arg(long, env = "PAYSYNC_OUTBOUND_CONCURRENCY", default_value_t = DEFAULT_OUTBOUND_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub outbound_concurrency: u32,

    /// Outbox rows claimed per batch.
    #[arg(long, env = "PAYSYNC_OUTBOX_BATCH", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub outbox_batch: i64,

    /// How often the outbox (and the inbox of Stripe events) is polled when no notification
    /// arrives.
    #[arg(long, env = "PAYSYNC_OUTBOX_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub outbox_poll_interval: Duration,
}

/// The inbound side: Stripe events applied to PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct InboundArgs {
    /// Do not apply Stripe events in this process (the webhook ingress still queues them).
    #[arg(long, env = "PAYSYNC_NO_INBOUND", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_inbound: bool,

    /// Stripe events applied and committed together (a Kafka poll or an inbox claim).
    #[arg(long, env = "PAYSYNC_INBOUND_BATCH", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub inbound_batch: u32,

    /// Apply Stripe events at the webhook ingress (PostgreSQL transport), a transaction per
    /// gathered batch; off, every event is queued for the inbox workers first.
    #[arg(long, env = "PAYSYNC_APPLY_ON_ARRIVAL", default_value = "false", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub apply_on_arrival: bool,

    /// Inbox workers; with Kafka, also lanes applying the inbound topic's partitions at once.
    #[arg(long, env = "PAYSYNC_INBOUND_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub inbound_concurrency: u32,

    /// Who wins when a customer changed on both sides since the last sync: `newest` (the
    /// later change), `local-wins` or `stripe-wins`.
    #[arg(long, env = "PAYSYNC_CONFLICT_POLICY", default_value = "newest")]
    pub conflict_policy: ConflictPolicy,

    /// How often the Stripe Events API is read for customer events that never arrived as
    /// webhooks (also once at start-up). Needs STRIPE_API_KEY.
    #[arg(long, env = "PAYSYNC_CATCH_UP_INTERVAL", default_value = "5m", value_parser = parse_interval)]
    pub catch_up_interval: Duration,

    /// Do not read the Stripe Events API in this process.
    #[arg(long, env = "PAYSYNC_NO_CATCH_UP", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_catch_up: bool,
}

/// A period of at least one second.
fn parse_interval(raw: &str) -> Result<Duration, String> {
    let interval = parse_duration(raw)?;
    if interval < Duration::from_secs(1) {
        return Err(format!("{raw:?} is too short; use at least 1s"));
    }
    Ok(interval)
}

/// Limits of the HTTP server, so slow or idle clients cannot hold connections or handlers.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Time a connection has to send a request's headers, counted from when it opened or its
    /// previous response was sent (so it also closes idle keep-alive connections).
    #[arg(long, env = "PAYSYNC_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub http_header_timeout: Duration,

    /// Time a request's body has to arrive in full (408 after it).
    #[arg(long, env = "PAYSYNC_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub http_body_timeout: Duration,

    /// Time a request has to be answered (503 after it).
    #[arg(long, env = "PAYSYNC_HTTP_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub http_request_timeout: Duration,

    /// Open connections at most; more are answered 503 and closed.
    #[arg(long, env = "PAYSYNC_HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// API and webhook requests in flight at most; more are answered 503 with Retry-After
    /// (/healthz, /readyz and /metrics are not counted).
    #[arg(long, env = "PAYSYNC_HTTP_MAX_REQUESTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_requests: u32,
}

/// A duration above zero.
fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    let duration = parse_duration(raw)?;
    if duration.is_zero() {
        return Err(format!("{raw:?} must be longer than zero"));
    }
    Ok(duration)
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@127.0.0.1:5432/paysync.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: SecretString,

    /// Most connections paysync keeps open to PostgreSQL.
    #[arg(long, env = "PAYSYNC_DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,

    /// The schema the billing mirror's tables live in (created if missing; tables of
    /// supabase/stripe-sync-engine already there are taken over in place).
    #[arg(long, env = "PAYSYNC_MIRROR_SCHEMA", default_value = "stripe", value_parser = MirrorSchema::parse)]
    pub mirror_schema: MirrorSchema,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address the HTTP server binds to.
    #[arg(long, env = "PAYSYNC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer tokens accepted by the /v1 API, comma-separated (several, so a token can be
    /// rotated without downtime).
    #[arg(
        long,
        env = "PAYSYNC_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub api_tokens: Vec<SecretString>,

    /// Serve the /v1 API without authentication (local experiments only; logs a warning).
    #[arg(long, env = "PAYSYNC_INSECURE_NO_AUTH", conflicts_with = "api_tokens", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub insecure_no_auth: bool,

    /// Do not apply database migrations at start-up (run `paysync migrate` separately).
    #[arg(long, env = "PAYSYNC_NO_MIGRATE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_migrate: bool,

    /// A YAML file, or a directory of them, holding `SyncPolicy` manifests and the `Secret`s
    /// they reference (what `kubectl apply` would take). Watched: changes apply without a
    /// restart. Without it, the STRIPE_* settings define one policy named `default`.
    #[arg(long, env = "PAYSYNC_POLICIES")]
    pub policies: Option<std::path::PathBuf>,

    /// Take the policies from the SyncPolicies of a Kubernetes namespace (the controller):
    /// `auto` does in a cluster (KUBERNETES_SERVICE_HOST set) unless PAYSYNC_POLICIES is set;
    /// `true` (or a bare `--kubernetes`) also outside one, with the kubeconfig; `false` never.
    #[arg(long, env = "PAYSYNC_KUBERNETES", value_enum, default_value = "auto", num_args = 0..=1, default_missing_value = "true")]
    pub kubernetes: KubernetesMode,

    /// The namespace whose SyncPolicies the controller watches; default: the pod's own (out
    /// of a cluster: the kubeconfig context's).
    #[arg(long, env = "PAYSYNC_NAMESPACE")]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub leader: LeaderArgs,

    #[command(flatten)]
    pub stripe: StripeArgs,

    #[command(flatten)]
    pub outbound: OutboundArgs,

    #[command(flatten)]
    pub inbound: InboundArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub http: HttpArgs,

    /// Do not run scheduled reconciles in this process (every policy's `reconcile.interval`
    /// after the last run); `POST /v1/policies/{name}/reconcile` and `paysync reconcile
    /// --once` still run one.
    #[arg(long, env = "PAYSYNC_NO_RECONCILE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_reconcile: bool,

    /// How long shutdown waits for in-flight requests before exiting anyway.
    #[arg(long, env = "PAYSYNC_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// `PAYSYNC_OUTBOUND_CONCURRENCY` unless set: a live budget (100 requests/s) at 1 s per call.
/// A sync in flight costs a task and a lock on a shared session (`store::locks`), no
/// connection; those beyond the budget wait for it, holding only their customer's lock.
pub const DEFAULT_OUTBOUND_CONCURRENCY: u32 = 100;

fn parse_secret(raw: &str) -> Result<SecretString, String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(SecretString::from(raw))
}

fn parse_token(raw: &str) -> Result<SecretString, String> {
    let token = raw.trim();
    if token.is_empty() {
        return Err("the token list contains an empty token".to_owned());
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("tokens must not contain whitespace".to_owned());
    }
    Ok(SecretString::from(token))
}

/// Durations as `<number><unit>` with unit `ms`, `s`, `m` or `h` (e.g. `500ms`, `30s`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} needs a unit: ms, s, m or h"))?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!(
            "{raw:?} has unknown unit {unit:?}; use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, String> {
        let argv = [
            "paysync",
            "serve",
            "--database-url",
            "postgres://localhost/db",
        ]
        .iter()
        .chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.check()?;
        match cli.command {
            Command::Serve(serve) => Ok(*serve),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn tokens_are_comma_separated_and_trimmed() {
        let args = serve(&["--api-tokens", "alpha, beta"]).unwrap();
        let tokens: Vec<_> = args
            .api_tokens
            .iter()
            .map(|t| t.expose_secret().to_owned())
            .collect();
        assert_eq!(tokens, ["alpha", "beta"]);
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn tokens_are_required_unless_auth_is_disabled() {
        let err = serve(&[]).unwrap_err();
        assert!(err.contains("PAYSYNC_API_TOKENS"), "{err}");
        assert!(
            serve(&["--insecure-no-auth"])
                .unwrap()
                .api_tokens
                .is_empty()
        );
        assert!(serve(&["--api-tokens", "a,,b"]).is_err());
        assert!(serve(&["--api-tokens", "a", "--insecure-no-auth"]).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let args = serve(&["--api-tokens", "hunter2-token"]).unwrap();
        let debug = format!("{args:?}");
        assert!(!debug.contains("hunter2-token"), "{debug}");
        assert!(!debug.contains("postgres://localhost/db"), "{debug}");
    }

    #[test]
    fn inbound_settings_parse_and_check_their_ranges() {
        let args = serve(&["--api-tokens", "t"]).unwrap();
        assert_eq!(args.inbound.conflict_policy, ConflictPolicy::Newest);
        assert_eq!(args.inbound.catch_up_interval, Duration::from_secs(300));
        let args = serve(&[
            "--api-tokens",
            "t",
            "--conflict-policy",
            "stripe-wins",
            "--catch-up-interval",
            "30s",
        ])
        .unwrap();
        assert_eq!(args.inbound.conflict_policy, ConflictPolicy::StripeWins);
        assert_eq!(args.inbound.catch_up_interval, Duration::from_secs(30));
        let err = serve(&["--api-tokens", "t", "--conflict-policy", "oldest"]).unwrap_err();
        assert!(err.contains("local-wins"), "{err}");
        assert!(serve(&["--api-tokens", "t", "--catch-up-interval", "0s"]).is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
