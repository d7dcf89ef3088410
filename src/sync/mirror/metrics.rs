//! `paysync_mirror_*`: what the mirror did with each event, by policy, kind and outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOutcomeLabels {
    pub policy: String,
    pub kind: String,
    pub outcome: String,
}

/// `paysync_mirror_*`.
#[derive(Debug, Default)]
pub struct MirrorMetrics {
    events: Family<KindOutcomeLabels, Counter>,
}

impl MirrorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "mirror_events",
            "Stripe events handled by the billing mirror, by policy, object kind (its table) and \
             outcome (applied, deleted, stale: older than the row's object or replaced by a newer event of its batch, duplicate, not_mirrored, observed, suspended, \
             no_policy, dead_lettered, failed: a customer's mirror row that could not be written)",
            metrics.events.clone(),
        );
        metrics
    }

    pub fn count(&self, policy: &str, kind: &str, outcome: &str) {
        self.events
            .get_or_create(&KindOutcomeLabels {
                policy: policy.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
