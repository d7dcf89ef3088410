//! What a plan is made of: actions on one side or the other, the kind of drift each repairs
//! or reports, and the field-by-field changes.

use crate::domain::{CustomerFields, CustomerId};

/// What an action does, and to which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Create the local customer in Stripe.
    CreateInStripe,
    /// Create a local customer from a Stripe customer.
    Adopt,
    /// Record that a local customer and a Stripe customer are the same.
    Link,
    UpdateStripe,
    UpdateLocal,
    DeleteInStripe,
    /// Set `metadata.paysync_deleted_at` on the Stripe customer (`deletion: SoftDelete`).
    SoftDeleteInStripe,
    /// Soft-delete the local customer.
    DeleteLocal,
    /// Keep the local customer, unlinked (`deletion: Orphan`).
    Unlink,
    /// Drift the policy does not let paysync repair: reported only.
    Report,
}

impl ActionKind {
    /// The plan's sign, as in `terraform plan`.
    pub fn sign(self) -> &'static str {
        match self {
            Self::CreateInStripe | Self::Adopt => "+",
            Self::UpdateStripe | Self::UpdateLocal | Self::SoftDeleteInStripe => "~",
            Self::DeleteInStripe | Self::DeleteLocal | Self::Unlink => "-",
            Self::Link => "=",
            Self::Report => "!",
        }
    }

    /// Short name in plans, metrics and the run's counts.
    pub fn label(self) -> &'static str {
        match self {
            Self::CreateInStripe => "create",
            Self::Adopt => "adopt",
            Self::Link => "link",
            Self::UpdateStripe => "update_stripe",
            Self::UpdateLocal => "update_local",
            Self::DeleteInStripe => "delete_stripe",
            Self::SoftDeleteInStripe => "soft_delete_stripe",
            Self::DeleteLocal => "delete_local",
            Self::Unlink => "unlink",
            Self::Report => "report",
        }
    }

    /// Whether the action changes Stripe (through the outbound handler).
    pub fn writes_stripe(self) -> bool {
        matches!(
            self,
            Self::CreateInStripe
                | Self::UpdateStripe
                | Self::DeleteInStripe
                | Self::SoftDeleteInStripe
        )
    }
}

/// What kind of drift an action repairs or reports (`paysync_drift{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// In Stripe, unknown locally.
    StripeOnly,
    /// Local, never created in Stripe.
    LocalOnly,
    /// A local change Stripe does not hold.
    LocalChanged,
    /// A Stripe change paysync never applied.
    StripeChanged,
    /// Both changed since the last sync.
    BothChanged,
    DeletedInStripe,
    DeletedLocally,
    /// A Stripe customer paysync created whose id was never recorded (a crash between
    /// Stripe's answer and the commit).
    LeakedCreate,
    /// A live local customer with the Stripe customer's email, not linked yet.
    SameEmail,
    /// A Stripe customer that names a local customer linked to another one.
    Duplicate,
    /// A Stripe customer whose content breaks paysync's customer rules.
    Invalid,
    /// Stripe holds a write of paysync's that landed after a newer one.
    StaleWrite,
}

impl DriftKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::StripeOnly => "stripe_only",
            Self::LocalOnly => "local_only",
            Self::LocalChanged => "local_changed",
            Self::StripeChanged => "stripe_changed",
            Self::BothChanged => "both_changed",
            Self::DeletedInStripe => "deleted_in_stripe",
            Self::DeletedLocally => "deleted_locally",
            Self::LeakedCreate => "leaked_create",
            Self::SameEmail => "same_email",
            Self::Duplicate => "duplicate",
            Self::Invalid => "invalid",
            Self::StaleWrite => "stale_write",
        }
    }
}

/// One field's value before and after an action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldChange {
    /// `email`, `name`, `phone`, `description` or `metadata.<key>`.
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Action {
    pub kind: ActionKind,
    pub drift: DriftKind,
    pub customer_id: Option<CustomerId>,
    pub stripe_id: Option<String>,
    pub changes: Vec<FieldChange>,
    pub reason: String,
}

/// The field-by-field difference from `old` to `new`.
pub fn field_changes(old: &CustomerFields, new: &CustomerFields) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    let mut push = |field: String, old: Option<&String>, new: Option<&String>| {
        if old != new {
            changes.push(FieldChange {
                field,
                old: old.cloned(),
                new: new.cloned(),
            });
        }
    };
    push("email".into(), Some(&old.email), Some(&new.email));
    push("name".into(), old.name.as_ref(), new.name.as_ref());
    push("phone".into(), old.phone.as_ref(), new.phone.as_ref());
    push(
        "description".into(),
        old.description.as_ref(),
        new.description.as_ref(),
    );
    let (old_meta, new_meta) = (old.metadata.as_map(), new.metadata.as_map());
    let mut keys: Vec<&String> = old_meta.keys().chain(new_meta.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        push(
            format!("metadata.{key}"),
            old_meta.get(key),
            new_meta.get(key),
        );
    }
    changes
}
