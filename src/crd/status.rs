//! What paysync reports on a `SyncPolicy`: readiness, the last reconcile, customer counts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(JsonSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (secret found, key accepted), `Synced` (last reconcile ok), `Degraded`; one
    /// per type (a map list keyed by `type`, so server-side apply merges them by type).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile: Option<LastReconcile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customers: Option<CustomerCounts>,
}

/// The last reconcile run's counts.
#[derive(JsonSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastReconcile {
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    /// `succeeded`, `failed` or `observed` (Observe mode: reported, not applied).
    pub outcome: String,
    pub scanned: i64,
    pub drift: i64,
    pub repaired: i64,
    pub failed: i64,
}

/// Customers of the policy by sync state.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct CustomerCounts {
    pub synced: i64,
    pub pending: i64,
    pub failed: i64,
    /// Kept after a deletion on the other side under `deletion: Orphan`.
    #[serde(default)]
    pub orphaned: i64,
}

impl CustomerCounts {
    /// Counts `count` customers in sync state `state` (`synced`, `pending`, `failed`,
    /// `orphaned`).
    pub fn add(&mut self, state: &str, count: i64) {
        match state {
            "synced" => self.synced += count,
            "pending" => self.pending += count,
            "failed" => self.failed += count,
            "orphaned" => self.orphaned += count,
            _ => {}
        }
    }
}

/// The condition types paysync sets.
pub mod condition_types {
    pub const READY: &str = "Ready";
    pub const SYNCED: &str = "Synced";
    pub const DEGRADED: &str = "Degraded";
}

/// The reasons of the `Ready` condition.
pub mod reasons {
    pub const CONNECTED: &str = "Connected";
    /// The key's probe has not answered yet.
    pub const CHECKING: &str = "Checking";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const KEY_MISSING: &str = "KeyMissing";
    pub const STRIPE_REJECTED_KEY: &str = "StripeRejectedKey";
    pub const STRIPE_UNREACHABLE: &str = "StripeUnreachable";
    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID: &str = "Invalid";
}
