//! The Kubernetes controller (`paysync serve` in a cluster, or `--kubernetes`): a kube-runtime
//! [`Controller`] over the SyncPolicies of one namespace and the Secrets they reference.
//! Every replica feeds its own policy registry from it (each serves webhooks and runs
//! workers); the leader (a Lease, `leader`) alone writes status (server-side apply, field
//! manager `paysync`) and Events.

mod access;
mod feed;
mod leader;
mod object;
mod reconcile;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt as _};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use feed::{Feed, definition};
pub use leader::{Elector, LEASE_NAME, Leadership, LeaseTiming};
pub use object::{api_resource, parse};

use crate::policy::{PolicyDefinition, PolicyRegistry, SourceAccess};
use crate::reconcile::Reconciler;

/// The field manager of paysync's status writes (server-side apply).
pub const FIELD_MANAGER: &str = "paysync";

/// The finalizer versions before 0.2 put on every policy (it did nothing the registry's
/// prune does not): the leader removes it wherever it finds it.
pub const LEGACY_FINALIZER: &str = "paysync.dev/cleanup";

/// How often deleted policies leave the registry at the latest (the controller is not called
/// for an object that is already gone).
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// Where the controller runs.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The namespace watched (`PAYSYNC_NAMESPACE`, default the pod's own).
    pub namespace: String,
    /// This replica's name in Events and as the Lease's holder (the pod's name).
    pub instance: String,
    /// The leader election's timing.
    pub lease: LeaseTiming,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// What the reconcile function works with.
pub struct Context {
    /// The namespace's SyncPolicies, untyped (`object`): each is parsed on its own.
    pub(crate) policies: Api<DynamicObject>,
    pub(crate) secrets: Api<Secret>,
    pub(crate) feed: Feed,
    pub(crate) registry: Arc<PolicyRegistry>,
    pub(crate) reconciler: Arc<Reconciler>,
    pub(crate) pool: PgPool,
    pub(crate) leader: Leadership,
    pub(crate) recorder: Recorder,
    /// Whether the policies can be read at all (for `/readyz`).
    pub(crate) access: Arc<SourceAccess>,
    /// The namespace watched.
    namespace: String,
    /// Consecutive failures by policy, for the backoff of their retries.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        cluster: &Cluster,
        registry: Arc<PolicyRegistry>,
        reconciler: Arc<Reconciler>,
        pool: PgPool,
        leader: Leadership,
        access: Arc<SourceAccess>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(cluster.instance.clone()),
        };
        Self {
            policies: Api::namespaced_with(
                cluster.client.clone(),
                &cluster.namespace,
                &api_resource(),
            ),
            secrets: Api::namespaced(cluster.client.clone(), &cluster.namespace),
            feed: Feed::new(registry.clone(), pool.clone()),
            registry,
            reconciler,
            pool,
            leader,
            recorder: Recorder::new(cluster.client.clone(), reporter),
            access,
            namespace: cluster.namespace.clone(),
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let controller = Controller::new_with(
        ctx.policies.clone(),
        watcher::Config::default(),
        api_resource(),
    );
    let store = controller.store();
    let referencing_store = store.clone();
    let triggers = triggers(&ctx);
    info!("watching SyncPolicies and their Secrets");
    let controller = controller
        .watches(
            ctx.secrets.clone(),
            watcher::Config::default(),
            move |secret| referencing(&referencing_store, &secret),
        )
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(policy = %object.name, "reconciled"),
                Err(e) => warn!(error = %e, "SyncPolicy controller"),
            }
        });
    let namespace = ctx.namespace.clone();
    tokio::select! {
        () = controller => {}
        () = prune(&ctx, &store, &shutdown) => {}
        () = access::watch(ctx.policies.clone(), namespace, &ctx.access, &shutdown) => {}
    }
}

/// The namespace's policies as they are now, read once (start-up, `paysync reconcile --once`
/// in a cluster); the controller keeps them current from there. One that does not parse is
/// there, `Invalid`.
pub async fn load(cluster: &Cluster) -> anyhow::Result<Vec<PolicyDefinition>> {
    use anyhow::Context as _;
    let policies: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &api_resource());
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let listed = policies
        .list(&kube::api::ListParams::default())
        .await
        .with_context(|| {
            format!(
                "listing the SyncPolicies of namespace {} (is the CRD installed? `paysync crd | kubectl apply -f -`)",
                cluster.namespace
            )
        })?;
    let mut definitions = Vec::new();
    for object in listed
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let policy = match parse(object) {
            Ok(policy) => policy,
            Err(problem) => {
                definitions.push(object::unparseable(&object.name_any(), &problem));
                continue;
            }
        };
        let secret = secrets
            .get_opt(&policy.spec.stripe_secret_ref.name)
            .await
            .with_context(|| format!("reading the Secret of SyncPolicy {}", policy.name_any()))?;
        definitions.push(definition(&policy, secret.as_ref()));
    }
    Ok(definitions)
}

/// The policies whose Secret `secret` is: a rotated key or webhook secret re-reconciles them.
fn referencing(store: &Store<DynamicObject>, secret: &Secret) -> Vec<ObjectRef<DynamicObject>> {
    let name = secret.name_any();
    let namespace = secret.namespace();
    store
        .state()
        .iter()
        .filter(|policy| {
            object::secret_name(policy) == Some(name.as_str()) && policy.namespace() == namespace
        })
        .map(|policy| ObjectRef::from_obj_with(policy.as_ref(), api_resource()))
        .collect()
}

/// Reconciles every policy when this replica becomes the leader (its status may be stale)
/// and when a reconcile run finishes (its counts go to the status).
fn triggers(ctx: &Context) -> futures::stream::BoxStream<'static, ()> {
    let leadership = futures::stream::unfold(ctx.leader.clone(), |mut leader| async move {
        leader.next_gain().await.then_some(((), leader))
    });
    let runs = futures::stream::unfold(ctx.reconciler.finished_runs(), |mut runs| async move {
        runs.changed().await.ok().map(|()| ((), runs))
    });
    futures::stream::select(leadership, runs).boxed()
}

/// Takes deleted policies out of the registry (the controller is not called for an object
/// that is gone).
async fn prune(ctx: &Context, store: &Store<DynamicObject>, shutdown: &CancellationToken) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let present: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
        ctx.feed.retain(&present);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests;
