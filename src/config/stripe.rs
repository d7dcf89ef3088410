//! The settings of the implicit `default` policy's Stripe account, and of every policy's
//! Stripe calls (timeouts, retries, the create fence).

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use super::{parse_duration, parse_secret, parse_token};

/// The Stripe account paysync writes to.
#[derive(Debug, Clone, Args)]
pub struct StripeArgs {
    /// Stripe secret key (sk_test_… / sk_live_… / rk_…). Without it, nothing is synced to
    /// Stripe (changes stay queued in the outbox).
    #[arg(long, env = "STRIPE_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub stripe_api_key: Option<SecretString>,

    /// Stripe API base URL; point it at localstripe (http://127.0.0.1:8420) for local runs.
    #[arg(
        long,
        env = "STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: String,

    /// Stripe requests per second, on average (Stripe's test mode allows 25).
    #[arg(long, env = "STRIPE_RATE_LIMIT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub stripe_rate_limit: u32,

    /// Requests allowed in a burst above the average (default: the rate).
    #[arg(long, env = "STRIPE_RATE_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub stripe_rate_burst: Option<u32>,

    /// Timeout of one Stripe request.
    #[arg(long, env = "STRIPE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub stripe_timeout: Duration,

    /// How long after its timeout a create may still reach Stripe (a request held on the way,
    /// a sender that died waiting): no new create of that customer is sent until then.
    #[arg(long, env = "STRIPE_CREATE_FENCE", default_value = "30s", value_parser = parse_duration)]
    pub stripe_create_fence: Duration,

    /// Attempts per Stripe call before the change goes to the dead-letter table.
    #[arg(long, env = "STRIPE_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub stripe_max_attempts: u32,

    /// First retry delay; it doubles per attempt (with jitter) up to --stripe-backoff-max.
    #[arg(long, env = "STRIPE_BACKOFF_BASE", default_value = "250ms", value_parser = parse_duration)]
    pub stripe_backoff_base: Duration,

    /// Webhook endpoint signing secrets (whsec_…), comma-separated; several during a rotation.
    /// Without any, POST /webhooks/stripe answers 503.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRETS", value_delimiter = ',', hide_env_values = true, value_parser = parse_token)]
    pub stripe_webhook_secrets: Vec<SecretString>,

    /// How far a webhook's signed timestamp may be from now.
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE", default_value = "300s", value_parser = parse_duration)]
    pub stripe_webhook_tolerance: Duration,

    /// Longest wait between attempts (a longer Retry-After is cut to this).
    #[arg(long, env = "STRIPE_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub stripe_backoff_max: Duration,
}
