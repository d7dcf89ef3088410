//! Wiring of the Kubernetes controller (policies from the cluster): the leader lock every
//! replica contends for, and the controller itself.

use std::sync::Arc;

use futures::FutureExt as _;

use super::Parts;
use crate::app::PolicySource;
use crate::controller::{self, Context, Leadership};
use crate::reconcile::Reconciler;

impl Parts<'_> {
    /// In a cluster: this replica's leadership (the leader writes status and runs the
    /// scheduled reconciles), contended for by a task of its own.
    pub(super) fn add_leadership(&mut self) -> Option<Leadership> {
        let PolicySource::Kubernetes(cluster) = &self.settings.policies else {
            return None;
        };
        let (leadership, contender) =
            Leadership::contend(self.locks.clone(), cluster.namespace.clone());
        self.task(move |shutdown| contender.run(shutdown).boxed());
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
        let ctx = Arc::new(Context::new(
            cluster,
            self.policies.clone(),
            reconciler.clone(),
            self.pool.clone(),
            leadership,
        ));
        self.task(move |shutdown| controller::run(ctx, shutdown).boxed());
    }
}
