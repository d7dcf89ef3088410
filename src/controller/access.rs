//! Whether the controller can see the cluster's SyncPolicies. A CRD that is not installed, or
//! RBAC that refuses the list, leaves a replica serving with no policies at all, which looks
//! healthy from outside: `/readyz` fails with the reason instead, and it is logged at error
//! level, until a list succeeds.

use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, ListParams};
use tokio_util::sync::CancellationToken;

use crate::policy::SourceAccess;

/// How often access is checked.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Lists the policies (one at most) every [`CHECK_EVERY`] until `shutdown`.
pub async fn watch(
    policies: Api<DynamicObject>,
    namespace: String,
    access: &SourceAccess,
    shutdown: &CancellationToken,
) {
    loop {
        let listed = policies
            .list_metadata(&ListParams::default().limit(1))
            .await;
        access.set(listed.err().and_then(|e| problem(&e, &namespace)));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// The configuration problem an API error shows (a passing outage of the API server is not
/// one: it makes no replica unready).
fn problem(error: &kube::Error, namespace: &str) -> Option<String> {
    let kube::Error::Api(status) = error else {
        return None;
    };
    match status.code {
        404 => Some(
            "the SyncPolicy CRD is not installed (the chart installs it with crds.install=true, or `kubectl apply -f crds/syncpolicy.yaml`)"
                .to_owned(),
        ),
        401 | 403 => Some(format!(
            "the Kubernetes API refuses listing SyncPolicies in namespace {namespace} ({}): check the Role and RoleBinding the chart creates",
            status.message
        )),
        _ => None,
    }
}
