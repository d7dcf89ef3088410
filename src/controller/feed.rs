//! The controller's side of the policy registry: the definitions the cluster gives (each
//! SyncPolicy with the credentials of its Secret), applied as one complete set, so a policy
//! deleted from the cluster leaves the registry as it would leave a policies file.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Secret;
use sqlx::PgPool;

use crate::crd::{SyncPolicy, reasons};
use crate::policy::file::credentials;
use crate::policy::{self, NotReady, PolicyDefinition, PolicyRegistry};

/// Feeds the registry from the cluster; every replica has one (each serves webhooks and runs
/// workers with its own registry).
pub struct Feed {
    registry: Arc<PolicyRegistry>,
    pool: PgPool,
    definitions: Mutex<BTreeMap<String, PolicyDefinition>>,
}

impl Feed {
    pub fn new(registry: Arc<PolicyRegistry>, pool: PgPool) -> Self {
        Self {
            registry,
            pool,
            definitions: Mutex::default(),
        }
    }

    /// Puts `definition` in effect (a no-op when nothing changed).
    pub fn set(&self, definition: PolicyDefinition) {
        let mut definitions = self.lock();
        if definitions.get(&definition.name) == Some(&definition) {
            return;
        }
        definitions.insert(definition.name.clone(), definition);
        self.apply(&definitions);
    }

    /// Takes the policy out of effect: its customers stay and sync nothing.
    pub fn remove(&self, name: &str) {
        let mut definitions = self.lock();
        if definitions.remove(name).is_some() {
            self.apply(&definitions);
        }
    }

    /// Takes out every policy not in `present` (deleted while this replica was not looking).
    pub fn retain(&self, present: &[String]) {
        let mut definitions = self.lock();
        let before = definitions.len();
        definitions.retain(|name, _| present.contains(name));
        if definitions.len() != before {
            self.apply(&definitions);
        }
    }

    fn apply(&self, definitions: &BTreeMap<String, PolicyDefinition>) {
        let all = definitions.values().cloned().collect();
        drop(policy::apply(&self.registry, Some(&self.pool), all));
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PolicyDefinition>> {
        match self.definitions.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// What `policy` is with `secret` (`None`: the Secret does not exist). A policy the API
/// server let through but paysync's own checks refuse is not in effect, with reason `Invalid`.
pub fn definition(policy: &SyncPolicy, secret: Option<&Secret>) -> PolicyDefinition {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let reference = &policy.spec.stripe_secret_ref;
    let credentials = match (policy::check(policy), secret) {
        (Err(problems), _) => Err(NotReady {
            reason: reasons::INVALID,
            message: problems.join("; "),
        }),
        (Ok(()), None) => Err(NotReady {
            reason: reasons::SECRET_NOT_FOUND,
            message: format!("Secret {} not found", reference.name),
        }),
        (Ok(()), Some(secret)) => Ok(credentials(
            secret,
            &reference.api_key_key,
            &reference.webhook_secrets_key,
        )),
    };
    PolicyDefinition {
        name,
        spec: policy.spec.clone(),
        credentials,
    }
}
