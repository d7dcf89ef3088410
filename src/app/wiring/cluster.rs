//! Wiring of the Kubernetes controller (policies from the cluster): the Lease every replica
//! contends for, and the controller itself.

use std::sync::Arc;

use futures::FutureExt as _;
use kube::Api;
use prometheus_client::metrics::gauge::Gauge;

use super::Parts;
use crate::app::PolicySource;
use crate::controller::{self, Context, Leadership};
use crate::policy::SourceAccess;
use crate::reconcile::Reconciler;

impl Parts<'_> {
    /// In a cluster: this replica's leadership (the leader writes status and runs the
    /// scheduled reconciles), contended for by a task of its own.
    pub(super) fn add_leadership(&mut self) -> Option<Leadership> {
        let PolicySource::Kubernetes(cluster) = &self.settings.policies else {
            return None;
        };
        let gauge = Gauge::default();
        self.registry.register(
            "leader",
            "1 while this replica holds the controller's Lease (it writes SyncPolicy status and \
             runs the scheduled reconciles), else 0",
            gauge.clone(),
        );
        let leases = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let (leadership, elector) =
            Leadership::contend(leases, cluster.instance.clone(), cluster.lease, gauge);
        self.task(move |shutdown| elector.run(shutdown).boxed());
        Some(leadership)
    }

    /// The controller that keeps the registry in step with the cluster's SyncPolicies.
    pub(super) fn add_controller(
        &mut self,
        reconciler: &Arc<Reconciler>,
        leadership: Option<Leadership>,
    ) {
        let (PolicySource::Kubernetes(cluster), Some(leadership)) =
            (&self.settings.policies, leadership)
        else {
            return;
        };
        let access = Arc::new(SourceAccess::default());
        self.cluster_access = Some(access.clone());
        let ctx = Arc::new(Context::new(
            cluster,
            self.policies.clone(),
            reconciler.clone(),
            self.pool.clone(),
            leadership,
            access,
        ));
        self.task(move |shutdown| controller::run(ctx, shutdown).boxed());
    }
}
