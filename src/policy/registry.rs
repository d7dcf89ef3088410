//! The effective policies by name. Each has its own Stripe client (its token bucket), its
//! webhook verifier and its settings; workers look a customer's policy up when they act, so a
//! change applies without a restart and without dropping work in flight.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use super::definition::{Credentials, NotReady, PolicyDefinition};
use crate::crd::{Direction, Mode, SyncPolicySpec, reasons};
use crate::domain::DEFAULT_ACCOUNT;
use crate::stripe::StripeApi;
use crate::stripe::webhook::WebhookVerifier;

/// Makes the Stripe client of a policy: its name, API key and spec (API base, rate limit).
pub type StripeFactory = Arc<
    dyn Fn(&str, &SecretString, &SyncPolicySpec) -> anyhow::Result<Arc<dyn StripeApi>>
        + Send
        + Sync,
>;

/// Whether a policy can sync, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = PolicyReadiness)]
pub struct Readiness {
    pub ready: bool,
    /// `Connected`, `Checking`, `SecretNotFound`, `KeyMissing`, `StripeRejectedKey`,
    /// `StripeUnreachable`, `Suspended`.
    pub reason: &'static str,
    pub message: String,
}

impl Readiness {
    fn not(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ready: false,
            reason,
            message: message.into(),
        }
    }
}

/// One effective policy.
pub struct Policy {
    pub name: String,
    pub spec: SyncPolicySpec,
    credentials: Option<Credentials>,
    stripe: Option<Arc<dyn StripeApi>>,
    /// Verifies the policy's webhook deliveries; `None` without webhook secrets.
    pub webhooks: Option<WebhookVerifier>,
    readiness: RwLock<Readiness>,
}

impl Policy {
    /// The account's Stripe API, unless there is no key or Stripe rejected it.
    pub fn stripe(&self) -> Option<Arc<dyn StripeApi>> {
        if self.readiness().reason == reasons::STRIPE_REJECTED_KEY {
            return None;
        }
        self.stripe.clone()
    }

    /// Whether the policy can sync; a suspended one says so whatever its key's state (a
    /// rejected key or an invalid policy still says that: it needs fixing before unsuspending).
    pub fn readiness(&self) -> Readiness {
        let current = self.stored_readiness();
        let must_fix = [reasons::STRIPE_REJECTED_KEY, reasons::INVALID].contains(&current.reason);
        if self.spec.suspend && !must_fix {
            return Readiness::not(
                reasons::SUSPENDED,
                "spec.suspend is set: nothing syncs until it is unset",
            );
        }
        current
    }

    /// What is known of the key (the client's state), suspended or not.
    fn stored_readiness(&self) -> Readiness {
        match self.readiness.read() {
            Ok(readiness) => readiness.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_readiness(&self, readiness: Readiness) {
        match self.readiness.write() {
            Ok(mut current) => *current = readiness,
            Err(poisoned) => *poisoned.into_inner() = readiness,
        }
    }

    /// Stripe refused the key (401/403): nothing more is sent until the key changes.
    pub fn key_rejected(&self, message: &str) {
        tracing::error!(policy = %self.name, message, "Stripe rejected the policy's API key; nothing is sent to Stripe until it changes");
        self.set_readiness(Readiness::not(reasons::STRIPE_REJECTED_KEY, message));
    }

    /// Local changes go to Stripe (Enforce, not suspended, not StripeToLocal).
    pub fn writes_to_stripe(&self) -> bool {
        !self.spec.suspend
            && self.spec.mode == Mode::Enforce
            && self.spec.direction != Direction::StripeToLocal
    }

    /// Stripe changes are applied locally (Enforce, not suspended, not LocalToStripe).
    pub fn applies_stripe_changes(&self) -> bool {
        !self.spec.suspend
            && self.spec.mode == Mode::Enforce
            && self.spec.direction != Direction::LocalToStripe
    }

    /// The API refuses writes to the policy's customers (StripeToLocal).
    pub fn read_only(&self) -> bool {
        self.spec.direction == Direction::StripeToLocal
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("readiness", &self.readiness())
            .finish_non_exhaustive()
    }
}

/// What a [`PolicyRegistry::replace`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Policies with a new Stripe client, to be checked against Stripe.
    pub to_probe: Vec<String>,
    /// Policies that write to Stripe now and did not before (their waiting changes are sent).
    pub now_writing: Vec<String>,
}

impl Changes {
    /// No policy was added, changed or removed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

pub struct PolicyRegistry {
    policies: RwLock<BTreeMap<String, Arc<Policy>>>,
    factory: StripeFactory,
    /// The webhook timestamp tolerance every verifier uses.
    tolerance: Duration,
    generation: watch::Sender<u64>,
}

impl PolicyRegistry {
    pub fn new(factory: StripeFactory, tolerance: Duration) -> Self {
        Self {
            policies: RwLock::new(BTreeMap::new()),
            factory,
            tolerance,
            generation: watch::channel(0).0,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Policy>> {
        self.read().get(name).cloned()
    }

    /// The account of a customer created without one: `default` when there is such a policy,
    /// else the only policy.
    pub fn default_account(&self) -> Option<String> {
        let policies = self.read();
        if policies.contains_key(DEFAULT_ACCOUNT) {
            return Some(DEFAULT_ACCOUNT.to_owned());
        }
        match policies.keys().collect::<Vec<_>>()[..] {
            [only] => Some(only.clone()),
            _ => None,
        }
    }

    pub fn all(&self) -> Vec<Arc<Policy>> {
        self.read().values().cloned().collect()
    }

    /// Bumped by every replace: what a task waiting for policy changes watches.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Policy>>> {
        match self.policies.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Makes `definitions` (one source's complete set) the effective policies. An unchanged
    /// policy keeps its client (and token bucket); one whose key, API base and rate are
    /// unchanged keeps its client even when other settings change.
    pub fn replace(&self, definitions: Vec<PolicyDefinition>) -> Changes {
        let mut changes = Changes::default();
        let mut next = BTreeMap::new();
        let current = self.read().clone();
        for definition in definitions {
            let old = current.get(&definition.name);
            if let Some(old) = old
                && old.spec == definition.spec
                && old.credentials.as_ref() == definition.credentials.as_ref().ok()
            {
                next.insert(definition.name, old.clone());
                continue;
            }
            let policy = Arc::new(self.build(definition, old.map(Arc::as_ref), &mut changes));
            match old {
                None => changes.added.push(policy.name.clone()),
                Some(_) => changes.changed.push(policy.name.clone()),
            }
            if policy.writes_to_stripe() && !old.is_some_and(|old| old.writes_to_stripe()) {
                changes.now_writing.push(policy.name.clone());
            }
            next.insert(policy.name.clone(), policy);
        }
        changes.removed = current
            .keys()
            .filter(|name| !next.contains_key(*name))
            .cloned()
            .collect();
        match self.policies.write() {
            Ok(mut policies) => *policies = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.generation.send_modify(|generation| *generation += 1);
        changes
    }

    fn build(
        &self,
        definition: PolicyDefinition,
        old: Option<&Policy>,
        changes: &mut Changes,
    ) -> Policy {
        let (credentials, readiness) = match definition.credentials {
            Err(NotReady { reason, message }) => (None, Readiness::not(reason, message)),
            Ok(credentials) => (
                Some(credentials),
                Readiness::not(reasons::CHECKING, "not checked yet"),
            ),
        };
        let webhooks = credentials
            .as_ref()
            .filter(|c| !c.webhook_secrets.is_empty())
            .map(|c| WebhookVerifier::new(c.webhook_secrets.clone(), self.tolerance));
        let key = credentials.as_ref().and_then(|c| c.api_key.clone());
        let mut policy = Policy {
            name: definition.name,
            spec: definition.spec,
            credentials,
            stripe: None,
            webhooks,
            readiness: RwLock::new(readiness),
        };
        let Some(key) = key else {
            if policy.credentials.is_some() {
                policy.set_readiness(Readiness::not(
                    reasons::KEY_MISSING,
                    "no Stripe API key: local changes wait",
                ));
            }
            return policy;
        };
        policy.stripe = self.client(&policy, &key, old, changes);
        policy
    }

    /// The old client when nothing it depends on changed; else a new one, to be probed.
    fn client(
        &self,
        policy: &Policy,
        key: &SecretString,
        old: Option<&Policy>,
        changes: &mut Changes,
    ) -> Option<Arc<dyn StripeApi>> {
        if let Some(old) = old
            && let Some(client) = &old.stripe
            && old.spec.api_base == policy.spec.api_base
            && old.spec.rate_limit == policy.spec.rate_limit
            && old
                .credentials
                .as_ref()
                .and_then(|c| c.api_key.as_ref())
                .is_some_and(|old_key| old_key.expose_secret() == key.expose_secret())
        {
            let readiness = old.stored_readiness();
            // The old policy's probe may still be out, and its answer goes to the old policy
            // object: this one is probed again, or it would stay `Checking`.
            if readiness.reason == reasons::CHECKING {
                changes.to_probe.push(policy.name.clone());
            }
            policy.set_readiness(readiness);
            return Some(client.clone());
        }
        match (self.factory)(&policy.name, key, &policy.spec) {
            Ok(client) => {
                changes.to_probe.push(policy.name.clone());
                Some(client)
            }
            Err(e) => {
                policy.set_readiness(Readiness::not(reasons::INVALID, e.to_string()));
                None
            }
        }
    }
}

#[cfg(test)]
#[path = "registry/tests.rs"]
mod tests;
