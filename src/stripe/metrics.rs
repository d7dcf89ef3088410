//! The Stripe client's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::latency_histogram;

/// Labels of a Stripe API call: the operation and how the attempt ended
/// (`ok`, `rejected`, `rate_limited`, `server_error`, `connection_error`, `timeout_or_reset`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StripeCallLabels {
    pub operation: String,
    pub result: String,
}

impl StripeCallLabels {
    pub fn new(operation: &str, result: &str) -> Self {
        Self {
            operation: operation.to_owned(),
            result: result.to_owned(),
        }
    }
}

#[derive(Debug)]
pub struct StripeMetrics {
    pub requests: Family<StripeCallLabels, Counter>,
    pub retries: Family<StripeCallLabels, Counter>,
    pub rate_limit_wait: Histogram,
}

impl StripeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            retries: Family::default(),
            rate_limit_wait: latency_histogram(),
        };
        registry.register(
            "stripe_requests",
            "Stripe API attempts, by operation and result",
            metrics.requests.clone(),
        );
        registry.register(
            "stripe_retries",
            "Stripe API attempts retried after a transient failure, by operation and failure",
            metrics.retries.clone(),
        );
        registry.register(
            "stripe_rate_limit_wait_seconds",
            "Time Stripe calls waited for the policy's rate budget",
            metrics.rate_limit_wait.clone(),
        );
        metrics
    }

    pub fn attempt(&self, operation: &str, result: &str) {
        self.requests
            .get_or_create(&StripeCallLabels::new(operation, result))
            .inc();
    }

    pub fn retry(&self, operation: &str, result: &str) {
        self.retries
            .get_or_create(&StripeCallLabels::new(operation, result))
            .inc();
    }
}
