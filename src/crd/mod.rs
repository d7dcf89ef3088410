//! The `SyncPolicy` custom resource (`paysync.dev/v1alpha1`, namespaced): one Stripe account
//! and the rules its customers sync with. Types only, no I/O. `paysync crd` prints the CRD
//! generated from them (committed as `crds/syncpolicy.yaml`); the rules a schema can state
//! (enums, ranges, patterns, CEL for cross-field rules) are in it, so the API server refuses a
//! bad policy, and the file source checks the same CEL rules with `kube`'s evaluator.

mod objects;
mod status;

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use objects::{MirroredObject, mirrors};
pub use status::{CustomerCounts, LastReconcile, SyncPolicyStatus, condition_types, reasons};

#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "paysync.dev",
    version = "v1alpha1",
    kind = "SyncPolicy",
    doc = "A Stripe account and the rules its customers sync with in paysync.",
    plural = "syncpolicies",
    shortname = "sp",
    category = "paysync",
    namespaced,
    status = "SyncPolicyStatus",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Synced", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name": "Mode", "type": "string", "priority": 1, "jsonPath": ".spec.mode"}"#,
    printcolumn = r#"{"name": "Direction", "type": "string", "priority": 1, "jsonPath": ".spec.direction"}"#,
    printcolumn = r#"{"name": "Drift", "type": "integer", "priority": 1, "jsonPath": ".status.lastReconcile.drift"}"#,
    printcolumn = r#"{"name": "Last Reconcile", "type": "date", "priority": 1, "jsonPath": ".status.lastReconcile.finishedAt"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncPolicySpec {
    /// The Secret (same namespace) that holds the account's API key and webhook secrets.
    pub stripe_secret_ref: SecretRef,
    /// Stripe's API base URL; localstripe's in development.
    #[serde(default = "default_api_base")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub api_base: String,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub conflict: ConflictRules,
    #[serde(default)]
    pub deletion: Deletion,
    #[serde(default)]
    pub adoption: Adoption,
    #[serde(default)]
    pub reconcile: ReconcileSettings,
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Stops all sync of this account (nothing is read or written) until unset.
    #[serde(default)]
    pub suspend: bool,
    /// The Stripe objects mirrored into PostgreSQL; every kind paysync mirrors when unset.
    /// The mirror is one-way and follows neither `direction` nor `adoption`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 12))]
    pub objects: Option<Vec<MirroredObject>>,
}

/// The most per-field conflict rules a policy can have.
pub const MAX_CONFLICT_FIELDS: usize = 55;

fn default_api_base() -> String {
    "https://api.stripe.com".to_owned()
}

/// Where the account's secrets are.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.apiKeyKey != self.webhookSecretsKey").message("apiKeyKey and webhookSecretsKey must name different keys"))]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the Stripe secret key (`sk_…` or a restricted `rk_…`).
    #[serde(default = "default_api_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub api_key_key: String,
    /// The key holding the webhook signing secrets, comma-separated (several during a
    /// rotation); without it, the policy's webhook route answers 503.
    #[serde(default = "default_webhook_secrets_key")]
    #[schemars(length(min = 1, max = 253))]
    pub webhook_secrets_key: String,
}

fn default_api_key_key() -> String {
    "apiKey".to_owned()
}

fn default_webhook_secrets_key() -> String {
    "webhookSecrets".to_owned()
}

/// Which way changes flow.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Direction {
    /// Both ways.
    #[default]
    Bidirectional,
    /// Local changes go to Stripe; Stripe events are recorded and counted as drift, never
    /// applied.
    LocalToStripe,
    /// Stripe changes come in; the account's customers are read-only in the API (409) and
    /// nothing is sent to Stripe.
    StripeToLocal,
}

/// Whether paysync writes.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Mode {
    /// Sync for real.
    #[default]
    Enforce,
    /// Compute and count what would happen; write nothing to Stripe and apply no Stripe event.
    /// Local changes wait as pending and are sent when the policy returns to Enforce.
    Observe,
}

/// Who wins a field both sides changed since the last sync.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Resolution {
    /// The later change: the local update time against the Stripe event's time.
    #[default]
    Newest,
    LocalWins,
    StripeWins,
}

/// Conflict resolution, by default and per field.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConflictRules {
    #[serde(default)]
    pub default: Resolution,
    /// Per-field overrides: `email`, `name`, `phone`, `description`, `metadata` (every key) or
    /// `metadata.<key>` (one key). At most 55 (the five fields and Stripe's 50 metadata keys):
    /// the bound keeps the CEL rule over the keys within the API server's cost budget.
    #[serde(default)]
    #[schemars(extend("maxProperties" = MAX_CONFLICT_FIELDS))]
    #[x_kube(validation = Rule::new("self.all(f, f in ['email', 'name', 'phone', 'description', 'metadata'] || (f.startsWith('metadata.') && size(f) > 9 && size(f) <= 49))").message("fields may be email, name, phone, description, metadata or metadata.<key> (key up to 40 characters)"))]
    pub fields: BTreeMap<String, Resolution>,
}

impl ConflictRules {
    /// Who wins `field` (`email`, `name`, `phone`, `description` or `metadata.<key>`): its own
    /// rule, else (for a metadata key) the rule for all metadata, else the default.
    pub fn for_field(&self, field: &str) -> Resolution {
        if let Some(rule) = self.fields.get(field) {
            return *rule;
        }
        if field.starts_with("metadata.")
            && let Some(rule) = self.fields.get("metadata")
        {
            return *rule;
        }
        self.default
    }
}

/// What a deletion on one side does to the other.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Deletion {
    /// A delete on one side deletes on the other.
    #[default]
    Propagate,
    /// A delete on one side unlinks; the other side's record stays (`sync.state` orphaned).
    Orphan,
    /// A local delete marks the Stripe customer (`metadata.paysync_deleted_at`) instead of
    /// deleting it; a Stripe delete soft-deletes locally.
    SoftDelete,
}

/// What happens to Stripe customers paysync does not know.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Adoption {
    /// Link to a live local customer with the email, else create one.
    #[default]
    All,
    /// Link to a live local customer with the email; never create one.
    MatchEmail,
    /// Neither: unknown Stripe customers are counted as drift.
    None,
}

/// The reconciler's schedule and share of the rate budget.
#[derive(JsonSchema, Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconcileSettings {
    /// How often a full reconcile runs, e.g. `30m`, `1h`, `12h` (at least a minute).
    #[serde(default = "default_reconcile_interval")]
    #[schemars(regex(pattern = r"^([1-9][0-9]*m|[1-9][0-9]*h)$"))]
    pub interval: String,
    /// The share of the rate limit (percent) the reconciler may use, so live sync is never
    /// starved.
    #[serde(default = "default_budget_share")]
    #[schemars(range(min = 1, max = 100))]
    pub budget_share: u8,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval: default_reconcile_interval(),
            budget_share: default_budget_share(),
        }
    }
}

fn default_reconcile_interval() -> String {
    "1h".to_owned()
}

fn default_budget_share() -> u8 {
    50
}

/// The account's request budget (a token bucket).
#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second on average (Stripe allows 25 in test mode, 100 live).
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: u32,
    /// Requests allowed in a burst.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests_per_second: default_rate(),
            burst: default_rate(),
        }
    }
}

fn default_rate() -> u32 {
    20
}

/// The CRD as `paysync crd` prints it (committed as `crds/syncpolicy.yaml`).
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt as _;
    serde_yaml_ng::to_string(&SyncPolicy::crd())
}

#[cfg(test)]
mod tests;
