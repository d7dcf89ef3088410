//! Prometheus metrics: the registry and what metric groups share. Each component defines its
//! own group (`StripeMetrics`, `OutboundMetrics`, …) that registers itself and is handed only
//! to that component; the composition root (`app`) builds them all on one registry.

use std::fmt;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;

/// The content type of [`encode_text`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry every group registers in, with paysync's prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("paysync")
}

/// The registry in OpenMetrics text format.
pub fn encode_text(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    encode(&mut out, registry)?;
    Ok(out)
}

/// Labels naming what happened (`outcome`), for counters of outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// A counter family by outcome.
pub type Outcomes = Family<OutcomeLabels, Counter>;

/// Counts one outcome.
pub fn count(family: &Outcomes, outcome: &str) {
    family
        .get_or_create(&OutcomeLabels {
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Labels of a sync counter: the policy (Stripe account) and what happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyOutcomeLabels {
    pub policy: String,
    pub outcome: String,
}

/// A counter family by policy and outcome.
pub type PolicyOutcomes = Family<PolicyOutcomeLabels, Counter>;

/// Counts one outcome of one policy.
pub fn count_for(family: &PolicyOutcomes, policy: &str, outcome: &str) {
    add_for(family, policy, outcome, 1);
}

/// Counts `n` outcomes of one policy.
pub fn add_for(family: &PolicyOutcomes, policy: &str, outcome: &str, n: u64) {
    family
        .get_or_create(&PolicyOutcomeLabels {
            policy: policy.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc_by(n);
}

/// Labels naming the policy (Stripe account) a measurement is of.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

/// A histogram family by policy.
pub type PolicyHistograms = Family<PolicyLabels, Histogram, fn() -> Histogram>;

/// Histograms by policy, each with `buckets` (e.g. [`lag_histogram`]).
pub fn policy_histograms(buckets: fn() -> Histogram) -> PolicyHistograms {
    Family::new_with_constructor(buckets)
}

/// Observes `value` for one policy.
pub fn observe_for(family: &PolicyHistograms, policy: &str, value: f64) {
    family
        .get_or_create(&PolicyLabels {
            policy: policy.to_owned(),
        })
        .observe(value);
}

/// Labels naming one side of the sync (`outbound` or `inbound`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// 0.5 ms to ~16 s: from a cached health check to a request stuck behind a slow database.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 5 ms to ~45 min: from a webhook applied at once to an event found by catch-up after an
/// outage.
pub fn lag_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_by_outcome_with_the_prefix() {
        let mut registry = registry();
        let outcomes = Outcomes::default();
        registry.register("things", "Things, by outcome", outcomes.clone());
        count(&outcomes, "done");
        let text = encode_text(&registry).unwrap();
        assert!(
            text.contains(r#"paysync_things_total{outcome="done"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
