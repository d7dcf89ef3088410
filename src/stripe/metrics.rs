//! The Stripe client's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::{PolicyHistograms, latency_histogram, observe_for, policy_histograms};

/// Labels of a Stripe API call: the policy (account), the operation and how the attempt ended
/// (`ok`, `rejected`, `rate_limited`, `server_error`, `connection_error`, `timeout_or_reset`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StripeCallLabels {
    pub policy: String,
    pub operation: String,
    pub result: String,
}

/// The Stripe metrics, as one policy's client records them (the families are shared by every
/// policy's handle; [`StripeMetrics::for_policy`] makes a handle).
#[derive(Debug, Clone)]
pub struct StripeMetrics {
    policy: String,
    pub requests: Family<StripeCallLabels, Counter>,
    pub retries: Family<StripeCallLabels, Counter>,
    rate_limit_wait: PolicyHistograms,
}

impl StripeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            policy: String::new(),
            requests: Family::default(),
            retries: Family::default(),
            rate_limit_wait: policy_histograms(latency_histogram),
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

    /// The handle `policy`'s client records with.
    pub fn for_policy(&self, policy: &str) -> Self {
        Self {
            policy: policy.to_owned(),
            ..self.clone()
        }
    }

    fn labels(&self, operation: &str, result: &str) -> StripeCallLabels {
        StripeCallLabels {
            policy: self.policy.clone(),
            operation: operation.to_owned(),
            result: result.to_owned(),
        }
    }

    pub fn attempt(&self, operation: &str, result: &str) {
        self.requests
            .get_or_create(&self.labels(operation, result))
            .inc();
    }

    pub fn retry(&self, operation: &str, result: &str) {
        self.retries
            .get_or_create(&self.labels(operation, result))
            .inc();
    }

    pub fn rate_limit_waited(&self, seconds: f64) {
        observe_for(&self.rate_limit_wait, &self.policy, seconds);
    }
}
