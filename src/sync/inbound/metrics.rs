//! `paysync_inbound_*`: what the inbound worker did with each event, by policy.

use prometheus_client::registry::Registry;

use crate::metrics::{PolicyHistograms, PolicyOutcomes, lag_histogram, policy_histograms};

/// `paysync_inbound_*`.
#[derive(Debug)]
pub struct InboundMetrics {
    pub(super) events: PolicyOutcomes,
    pub(super) lag: PolicyHistograms,
}

impl InboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            events: PolicyOutcomes::default(),
            lag: policy_histograms(lag_histogram),
        };
        registry.register(
            "inbound_events",
            "Stripe events handled by the inbound worker, by policy and outcome (applied, adopted, \
             deleted, kept_local, merged, orphaned, duplicate, stale, superseded, echo, \
             no_change, already_deleted, not_linked, not_adopted, dead_lettered, no_policy, \
             suspended, drift, observed)",
            metrics.events.clone(),
        );
        registry.register(
            "inbound_lag_seconds",
            "From a Stripe event being created to paysync having handled it, by policy",
            metrics.lag.clone(),
        );
        metrics
    }
}
