//! Whether the policies' source can be read. In a cluster, a SyncPolicy CRD that is not
//! installed, or RBAC that refuses the list, leaves a replica serving with no policies at all,
//! which looks healthy from outside: the controller records the problem here, `/readyz` fails
//! with it, and it is logged at error level until the policies can be read again.

use std::sync::{Mutex, PoisonError};

use tracing::{error, info};

/// What stops paysync from reading its policies' source, if anything.
#[derive(Debug, Default)]
pub struct SourceAccess {
    problem: Mutex<Option<String>>,
}

impl SourceAccess {
    /// Why the policies cannot be read, or `None` when they can (or nothing was tried yet).
    pub fn problem(&self) -> Option<String> {
        self.lock().clone()
    }

    pub fn set(&self, problem: Option<String>) {
        let mut current = self.lock();
        if *current != problem {
            match &problem {
                Some(problem) => {
                    error!(%problem, "the controller cannot read SyncPolicies: this replica reports not ready")
                }
                None if current.is_some() => info!("the controller can read SyncPolicies again"),
                None => {}
            }
            *current = problem;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.problem.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
