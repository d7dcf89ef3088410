//! The implicit `default` policy: what the `STRIPE_*` settings describe when there is no
//! `PAYSYNC_POLICIES`, so a set-up from before policies keeps working unchanged.

use secrecy::SecretString;

use super::definition::{Credentials, PolicyDefinition};
use crate::crd::{ConflictRules, RateLimit, Resolution, SecretRef, SyncPolicySpec};
use crate::domain::DEFAULT_ACCOUNT;

/// The `STRIPE_*` settings (and `PAYSYNC_CONFLICT_POLICY`) of one account.
#[derive(Debug, Clone)]
pub struct ImplicitPolicy {
    pub api_key: Option<SecretString>,
    pub webhook_secrets: Vec<SecretString>,
    pub api_base: String,
    pub rate: u32,
    pub burst: u32,
    /// `PAYSYNC_CONFLICT_POLICY`: the policy's `conflict.default`.
    pub conflict: Resolution,
}

impl ImplicitPolicy {
    /// The `default` policy with every other setting at its default. Its "secret" is the
    /// environment, which `GET /v1/policies` shows as `stripeSecretRef`.
    pub fn definition(self) -> PolicyDefinition {
        let spec = SyncPolicySpec {
            stripe_secret_ref: SecretRef {
                name: "environment".to_owned(),
                api_key_key: "STRIPE_API_KEY".to_owned(),
                webhook_secrets_key: "STRIPE_WEBHOOK_SECRETS".to_owned(),
            },
            api_base: self.api_base,
            direction: Default::default(),
            mode: Default::default(),
            conflict: ConflictRules {
                default: self.conflict,
                fields: Default::default(),
            },
            deletion: Default::default(),
            adoption: Default::default(),
            reconcile: Default::default(),
            rate_limit: RateLimit {
                requests_per_second: self.rate,
                burst: self.burst,
            },
            suspend: false,
            objects: None,
        };
        PolicyDefinition {
            name: DEFAULT_ACCOUNT.to_owned(),
            spec,
            credentials: Ok(Credentials {
                api_key: self.api_key,
                webhook_secrets: self.webhook_secrets,
            }),
        }
    }
}
