//! The reconciler's pure core: from a local customer, its Stripe customer (as listed now), the
//! sync columns and the policy, the actions that make the two sides agree, each with why.
//!
//! Which side changed is read from the sync columns, never guessed from content alone: a
//! local version Stripe has not been sent (`stripe_synced_version < version`) is a local
//! change; Stripe content other than what paysync last synced (`stripe_synced_hash`) is a
//! Stripe change, unless Stripe holds a write of paysync's older than the one it last
//! recorded (`metadata.paysync_version` < `stripe_written_version`: a request that landed
//! late), which is never a Stripe change: the local version is sent again, as a live event
//! of it does. Only one side changed → that side wins. Both → the policy's conflict rules,
//! field by field; a listed Stripe customer carries no time of change, so `Newest` keeps the
//! local change (DESIGN.md §7a) and the plan says so. The same rules decide live events
//! (`sync::inbound::rules`), so a repair and a live sync end the same way.

pub use super::action::{Action, ActionKind, DriftKind, FieldChange, field_changes};
use crate::crd::{Adoption, Deletion, Direction, SyncPolicySpec};
use crate::domain::{Customer, CustomerFields, SyncState};
use crate::stripe::StripeCustomer;
use crate::sync::inbound::rules::resolve_conflict;
use crate::sync::mapping::{PAYSYNC_ID_KEY, PAYSYNC_VERSION_KEY, RemoteFields};
use crate::sync::outbound::DELETED_AT_KEY;

/// The actions that make `local` and `stripe` agree under `spec`. `local` is the customer the
/// scan matched to `stripe` (linked, named by its `paysync_id`, or with its email), or a local
/// customer the scan did not see; `stripe` is `None` when Stripe has no customer for it (never
/// created, or gone).
pub fn diff(
    local: Option<&Customer>,
    stripe: Option<&StripeCustomer>,
    spec: &SyncPolicySpec,
) -> Vec<Action> {
    let stripe = stripe.filter(|s| !s.deleted);
    let actions = match (local, stripe) {
        (None, None) => Vec::new(),
        (None, Some(stripe)) => stripe_only(stripe, spec),
        (Some(local), None) => without_stripe(local, spec),
        (Some(local), Some(stripe)) => both(local, stripe, spec),
    };
    actions
        .into_iter()
        .map(|action| within_direction(action, spec.direction))
        .collect()
}

/// An action the policy's direction forbids becomes a report of the drift it would repair.
fn within_direction(mut action: Action, direction: Direction) -> Action {
    let forbidden = match direction {
        Direction::Bidirectional => false,
        Direction::StripeToLocal => action.kind.writes_stripe(),
        Direction::LocalToStripe => matches!(
            action.kind,
            ActionKind::Adopt
                | ActionKind::UpdateLocal
                | ActionKind::DeleteLocal
                | ActionKind::Unlink
        ),
    };
    if forbidden {
        action.reason = format!(
            "{} (direction {direction:?}: not repaired, only reported)",
            action.reason
        );
        action.kind = ActionKind::Report;
    }
    action
}

fn action(kind: ActionKind, drift: DriftKind, reason: impl Into<String>) -> Action {
    Action {
        kind,
        drift,
        customer_id: None,
        stripe_id: None,
        changes: Vec::new(),
        reason: reason.into(),
    }
}

impl Action {
    fn on(mut self, local: Option<&Customer>, stripe_id: Option<&str>) -> Self {
        self.customer_id = local.map(|l| l.id);
        self.stripe_id = stripe_id
            .map(str::to_owned)
            .or_else(|| local.and_then(|l| l.stripe_id.clone()));
        self
    }

    fn changing(mut self, changes: Vec<FieldChange>) -> Self {
        self.changes = changes;
        self
    }
}

/// A Stripe customer no local customer matches.
fn stripe_only(stripe: &StripeCustomer, spec: &SyncPolicySpec) -> Vec<Action> {
    let report = |reason: &str| {
        vec![action(ActionKind::Report, DriftKind::StripeOnly, reason).on(None, Some(&stripe.id))]
    };
    let fields = match RemoteFields::from_customer(stripe) {
        Ok(fields) => fields,
        Err(e) => {
            return vec![
                action(ActionKind::Report, DriftKind::Invalid, e).on(None, Some(&stripe.id)),
            ];
        }
    };
    match spec.adoption {
        Adoption::None => report("adoption None: unknown Stripe customers are only reported"),
        Adoption::MatchEmail => report(
            "adoption MatchEmail: no live local customer has this email, and none is created",
        ),
        Adoption::All => match &fields.email {
            None => report("no email: paysync needs one to create a local customer"),
            Some(email) => {
                let adopted = fields.to_local(email);
                let empty = CustomerFields {
                    email: String::new(),
                    name: None,
                    phone: None,
                    description: None,
                    metadata: crate::domain::Metadata::default(),
                };
                vec![
                    action(
                        ActionKind::Adopt,
                        DriftKind::StripeOnly,
                        "created in Stripe",
                    )
                    .on(None, Some(&stripe.id))
                    .changing(field_changes(&empty, &adopted)),
                ]
            }
        },
    }
}

/// A local customer whose Stripe customer does not exist: never created, or gone.
fn without_stripe(local: &Customer, spec: &SyncPolicySpec) -> Vec<Action> {
    if local.deleted_at.is_some() || local.sync_state == SyncState::Orphaned {
        return Vec::new();
    }
    let one = |kind, drift, reason: &str| vec![action(kind, drift, reason).on(Some(local), None)];
    if local.stripe_id.is_none() {
        return one(
            ActionKind::CreateInStripe,
            DriftKind::LocalOnly,
            "never created in Stripe",
        );
    }
    if spec.direction == Direction::LocalToStripe {
        return one(
            ActionKind::CreateInStripe,
            DriftKind::DeletedInStripe,
            "deleted in Stripe; direction LocalToStripe: created again from the local row",
        );
    }
    match spec.deletion {
        Deletion::Orphan => one(
            ActionKind::Unlink,
            DriftKind::DeletedInStripe,
            "deleted in Stripe; deletion Orphan: kept here, unlinked",
        ),
        Deletion::Propagate | Deletion::SoftDelete => one(
            ActionKind::DeleteLocal,
            DriftKind::DeletedInStripe,
            "deleted in Stripe",
        ),
    }
}

/// A local customer and the Stripe customer the scan matched to it.
fn both(local: &Customer, stripe: &StripeCustomer, spec: &SyncPolicySpec) -> Vec<Action> {
    let mut actions = Vec::new();
    if local.stripe_id.as_deref() != Some(stripe.id.as_str()) {
        match link(local, stripe, spec) {
            Ok(linking) => actions.push(linking),
            Err(report) => return vec![report],
        }
    }
    if local.deleted_at.is_some() {
        actions.extend(deleted_locally(local, stripe, spec));
        return actions;
    }
    actions.extend(compare(local, stripe, spec));
    actions
}

/// Linking a local customer not linked to `stripe` yet, or why it cannot be.
fn link(
    local: &Customer,
    stripe: &StripeCustomer,
    spec: &SyncPolicySpec,
) -> Result<Action, Action> {
    let on = |a: Action| a.on(Some(local), Some(&stripe.id));
    if let Some(other) = &local.stripe_id {
        return Err(on(action(
            ActionKind::Report,
            DriftKind::Duplicate,
            format!(
                "names local customer {} (paysync_id), which is linked to {other}",
                local.id
            ),
        )));
    }
    let named = stripe.metadata.get(PAYSYNC_ID_KEY) == Some(&local.id.to_string());
    if named {
        return Ok(on(action(
            ActionKind::Link,
            DriftKind::LeakedCreate,
            "created by paysync, its id never recorded (metadata.paysync_id)",
        )));
    }
    if spec.direction == Direction::LocalToStripe || spec.adoption == Adoption::None {
        return Err(on(action(
            ActionKind::Report,
            DriftKind::SameEmail,
            "a local customer has this email; the policy does not link by email",
        )));
    }
    Ok(on(action(
        ActionKind::Link,
        DriftKind::SameEmail,
        format!("same email (adoption {:?})", spec.adoption),
    )))
}

/// Deleted locally, still live in Stripe.
fn deleted_locally(
    local: &Customer,
    stripe: &StripeCustomer,
    spec: &SyncPolicySpec,
) -> Vec<Action> {
    let on = |a: Action| vec![a.on(Some(local), Some(&stripe.id))];
    match spec.deletion {
        Deletion::Orphan => Vec::new(),
        Deletion::Propagate => on(action(
            ActionKind::DeleteInStripe,
            DriftKind::DeletedLocally,
            "deleted locally",
        )),
        Deletion::SoftDelete if stripe.metadata.contains_key(DELETED_AT_KEY) => Vec::new(),
        Deletion::SoftDelete => on(action(
            ActionKind::SoftDeleteInStripe,
            DriftKind::DeletedLocally,
            "deleted locally; deletion SoftDelete: marked paysync_deleted_at in Stripe",
        )),
    }
}

/// Both live: the fields each side must take.
fn compare(local: &Customer, stripe: &StripeCustomer, spec: &SyncPolicySpec) -> Vec<Action> {
    let on = |a: Action| a.on(Some(local), Some(&stripe.id));
    let remote = match RemoteFields::from_customer(stripe) {
        Ok(remote) => remote.to_local(&local.fields.email),
        Err(e) => return vec![on(action(ActionKind::Report, DriftKind::Invalid, e))],
    };
    if let Some(action) = stale_write(local, stripe) {
        return vec![on(action)];
    }
    let local_changed = local.stripe_synced_version < local.version;
    if remote == local.fields {
        return unrecorded_sync(local, stripe, local_changed);
    }
    let stripe_changed = local.stripe_synced_hash != Some(remote.content_hash());
    let to_stripe = |drift, reason: &str, fields: &CustomerFields| {
        on(action(ActionKind::UpdateStripe, drift, reason)).changing(field_changes(&remote, fields))
    };
    let to_local = |drift, reason: &str, fields: &CustomerFields| {
        on(action(ActionKind::UpdateLocal, drift, reason))
            .changing(field_changes(&local.fields, fields))
    };
    match (local_changed, stripe_changed) {
        (true, false) => vec![to_stripe(
            DriftKind::LocalChanged,
            "local change not in Stripe",
            &local.fields,
        )],
        (false, false) => vec![to_stripe(
            DriftKind::LocalChanged,
            "local row differs from what was last synced (edited outside paysync)",
            &local.fields,
        )],
        (false, true) if spec.direction == Direction::LocalToStripe => vec![to_stripe(
            DriftKind::StripeChanged,
            "changed in Stripe; direction LocalToStripe: the local row is the source",
            &local.fields,
        )],
        (false, true) => vec![to_local(
            DriftKind::StripeChanged,
            "changed in Stripe",
            &remote,
        )],
        (true, true) => conflict(local, &remote, spec, &to_stripe, &to_local),
    }
}

/// Stripe holds a write of paysync's older than the one it last recorded writing: it landed
/// late, after that one. Sent again, whatever its content (its `paysync_version` is wrong).
fn stale_write(local: &Customer, stripe: &StripeCustomer) -> Option<Action> {
    let held: i64 = stripe.metadata.get(PAYSYNC_VERSION_KEY)?.parse().ok()?;
    let written = local.stripe_written_version?;
    (held < written).then(|| {
        action(
            ActionKind::UpdateStripe,
            DriftKind::StaleWrite,
            format!(
                "Stripe holds paysync's write of version {held}, which landed after its write \
                 of version {written}: the local version is sent again"
            ),
        )
    })
}

/// Stripe holds the local content already; a version not recorded as synced (a link by
/// email, a leaked create) is sent so paysync's metadata and `sync` fields agree.
fn unrecorded_sync(local: &Customer, stripe: &StripeCustomer, local_changed: bool) -> Vec<Action> {
    if !local_changed {
        return Vec::new();
    }
    vec![
        action(
            ActionKind::UpdateStripe,
            DriftKind::LocalChanged,
            "Stripe holds the content; the version is not recorded as synced",
        )
        .on(Some(local), Some(&stripe.id)),
    ]
}

/// Both sides changed: per field, the side the policy's rules name (`Newest` keeps the local
/// change: a listed Stripe customer says nothing of when it changed).
fn conflict(
    local: &Customer,
    remote: &CustomerFields,
    spec: &SyncPolicySpec,
    to_stripe: &dyn Fn(DriftKind, &str, &CustomerFields) -> Action,
    to_local: &dyn Fn(DriftKind, &str, &CustomerFields) -> Action,
) -> Vec<Action> {
    let merged = match spec.direction {
        Direction::LocalToStripe => local.fields.clone(),
        _ => resolve_conflict(&local.fields, remote, &spec.conflict, false),
    };
    let reason = "both changed; settled field by field by the conflict rules (Newest keeps the \
                  local change: Stripe's list has no change time)";
    let mut actions = Vec::new();
    if merged != local.fields {
        actions.push(to_local(DriftKind::BothChanged, reason, &merged));
    }
    if merged != *remote {
        actions.push(to_stripe(DriftKind::BothChanged, reason, &merged));
    }
    actions
}

#[cfg(test)]
#[path = "diff/tests.rs"]
mod tests;
