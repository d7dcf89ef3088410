//! `paysync_reconcile_*` and `paysync_drift`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::{
    PolicyHistograms, PolicyLabels, PolicyOutcomes, add_for, count_for, observe_for,
    policy_histograms,
};

/// The drift a run found, by kind and field (`""` for drift of a whole customer).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub policy: String,
    pub kind: String,
    pub field: String,
}

#[derive(Debug)]
pub struct ReconcileMetrics {
    runs: PolicyOutcomes,
    duration: PolicyHistograms,
    scanned: Family<PolicyLabels, Counter>,
    drift: Family<DriftLabels, Gauge>,
    repairs: PolicyOutcomes,
    drift_series: Mutex<HashSet<DriftLabels>>,
}

/// 1 s to ~9 h: from a small account to 100,000 customers at 25 requests/s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

impl ReconcileMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: PolicyOutcomes::default(),
            duration: policy_histograms(duration_histogram),
            scanned: Family::default(),
            drift: Family::default(),
            repairs: PolicyOutcomes::default(),
            drift_series: Mutex::default(),
        };
        registry.register(
            "reconcile_runs",
            "Reconcile runs by policy and outcome (succeeded, failed)",
            metrics.runs.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile run took, by policy",
            metrics.duration.clone(),
        );
        registry.register(
            "reconcile_scanned",
            "Stripe customers scanned by reconcile runs, by policy",
            metrics.scanned.clone(),
        );
        registry.register(
            "drift",
            "Drift found by the policy's last reconcile run, by kind and field",
            metrics.drift.clone(),
        );
        registry.register(
            "reconcile_repairs",
            "Drift repaired by reconcile runs, by policy and action (outcome label)",
            metrics.repairs.clone(),
        );
        metrics
    }

    pub fn scanned(&self, policy: &str, customers: u64) {
        self.scanned
            .get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
            })
            .inc_by(customers);
    }

    pub fn repaired(&self, policy: &str, action: &str) {
        count_for(&self.repairs, policy, action);
    }

    /// A run ended: its outcome and duration, and the drift it found replaces the last run's.
    pub fn finished(
        &self,
        policy: &str,
        outcome: &str,
        seconds: f64,
        drift: &[((String, String), i64)],
    ) {
        add_for(&self.runs, policy, outcome, 1);
        observe_for(&self.duration, policy, seconds);
        // Series of this policy's earlier drift go to zero rather than stay stale
        // (prometheus-client cannot list a family's series, so they are kept here).
        let mut known = match self.drift_series.lock() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        for labels in known.iter().filter(|labels| labels.policy == policy) {
            self.drift.get_or_create(labels).set(0);
        }
        for ((kind, field), count) in drift {
            let labels = DriftLabels {
                policy: policy.to_owned(),
                kind: kind.clone(),
                field: field.clone(),
            };
            self.drift.get_or_create(&labels).set(*count);
            known.insert(labels);
        }
    }
}
