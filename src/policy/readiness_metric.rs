//! `paysync_policy_ready{policy,reason}`: 1 while a policy can sync, 0 while it cannot (the
//! reason says why), read from the registry at each scrape so it can never go stale. What
//! the "policy not Ready" alert watches, in a cluster or not.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::PolicyRegistry;

pub struct ReadinessCollector {
    policies: Arc<PolicyRegistry>,
}

impl std::fmt::Debug for ReadinessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadinessCollector")
    }
}

impl ReadinessCollector {
    pub fn new(policies: Arc<PolicyRegistry>) -> Self {
        Self { policies }
    }
}

impl Collector for ReadinessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<Vec<(&'static str, String)>, Gauge>::default();
        for policy in self.policies.all() {
            let readiness = policy.readiness();
            let labels = vec![
                ("policy", policy.name.clone()),
                ("reason", readiness.reason.to_owned()),
            ];
            family
                .get_or_create(&labels)
                .set(i64::from(readiness.ready));
        }
        let metric = encoder.encode_descriptor(
            "policy_ready",
            "1 while the policy can sync (Ready), 0 while it cannot; reason says why",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}
