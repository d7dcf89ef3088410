use std::collections::BTreeMap;

use chrono::Utc;
use proptest::prelude::*;

use super::*;
use crate::crd::{ConflictRules, Resolution};
use crate::domain::Metadata;
use crate::sync::mapping::write_for;

fn spec() -> SyncPolicySpec {
    serde_json::from_value(serde_json::json!({"stripeSecretRef": {"name": "s"}})).unwrap()
}

/// A Stripe customer holding exactly what paysync wrote for `local`.
fn synced_stripe(local: &Customer) -> StripeCustomer {
    let write = write_for(local);
    StripeCustomer {
        id: local.stripe_id.clone().unwrap_or_else(|| "cus_new".into()),
        email: Some(write.email),
        name: write.name,
        phone: write.phone,
        description: write.description,
        metadata: write.metadata,
        deleted: false,
        created: 1_700_000_000,
    }
}

/// A linked customer whose last sync Stripe still holds.
fn in_sync() -> (Customer, StripeCustomer) {
    let mut local = Customer::fixture(2, 2, Utc::now());
    local.stripe_synced_hash = Some(local.fields.content_hash());
    let stripe = synced_stripe(&local);
    (local, stripe)
}

fn kinds(actions: &[Action]) -> Vec<ActionKind> {
    actions.iter().map(|a| a.kind).collect()
}

#[test]
fn customers_in_sync_need_nothing() {
    let (local, stripe) = in_sync();
    assert!(diff(Some(&local), Some(&stripe), &spec()).is_empty());
}

#[test]
fn a_stripe_change_alone_updates_the_local_row_field_by_field() {
    let (local, mut stripe) = in_sync();
    stripe.name = Some("Ada L.".into());
    let actions = diff(Some(&local), Some(&stripe), &spec());
    assert_eq!(kinds(&actions), [ActionKind::UpdateLocal]);
    assert_eq!(actions[0].drift, DriftKind::StripeChanged);
    assert_eq!(
        actions[0].changes,
        [FieldChange {
            field: "name".into(),
            old: Some("Ada".into()),
            new: Some("Ada L.".into())
        }]
    );
}

#[test]
fn a_local_change_alone_updates_stripe() {
    let (mut local, stripe) = in_sync();
    local.version = 3;
    local.fields.phone = Some("+15550100".into());
    let actions = diff(Some(&local), Some(&stripe), &spec());
    assert_eq!(kinds(&actions), [ActionKind::UpdateStripe]);
    assert_eq!(actions[0].changes[0].field, "phone");
}

#[test]
fn both_changed_is_settled_per_field_and_newest_keeps_the_local_change() {
    let (mut local, mut stripe) = in_sync();
    local.version = 3;
    local.fields.email = "ada.local@example.com".into();
    local.fields.name = Some("Ada Local".into());
    stripe.email = Some("ada.stripe@example.com".into());
    stripe.name = Some("Ada Stripe".into());
    let mut policy = spec();
    policy.conflict = ConflictRules {
        default: Resolution::Newest,
        fields: BTreeMap::from([("name".into(), Resolution::StripeWins)]),
    };
    let actions = diff(Some(&local), Some(&stripe), &policy);
    assert_eq!(
        kinds(&actions),
        [ActionKind::UpdateLocal, ActionKind::UpdateStripe]
    );
    // Stripe's name comes here; the local email (Newest, no Stripe time) goes to Stripe.
    assert_eq!(actions[0].changes[0].field, "name");
    assert_eq!(actions[0].changes[0].new.as_deref(), Some("Ada Stripe"));
    assert_eq!(actions[1].changes[0].field, "email");
    assert_eq!(
        actions[1].changes[0].new.as_deref(),
        Some("ada.local@example.com")
    );
    assert!(actions.iter().all(|a| a.drift == DriftKind::BothChanged));
}

#[test]
fn stripe_only_customers_follow_adoption() {
    let (local, stripe) = in_sync();
    let mut unknown = synced_stripe(&local);
    unknown.metadata.clear();
    let _ = stripe;
    for (adoption, kind) in [
        (Adoption::All, ActionKind::Adopt),
        (Adoption::MatchEmail, ActionKind::Report),
        (Adoption::None, ActionKind::Report),
    ] {
        let mut policy = spec();
        policy.adoption = adoption;
        let actions = diff(None, Some(&unknown), &policy);
        assert_eq!(kinds(&actions), [kind], "{adoption:?}");
        assert_eq!(actions[0].drift, DriftKind::StripeOnly);
    }
    unknown.email = None;
    assert_eq!(
        kinds(&diff(None, Some(&unknown), &spec())),
        [ActionKind::Report]
    );
}

#[test]
fn a_leaked_create_is_linked_not_created_again() {
    let mut local = Customer::fixture(1, 0, Utc::now());
    local.stripe_id = None;
    let mut stripe = synced_stripe(&local);
    stripe.id = "cus_leaked".into();
    let actions = diff(Some(&local), Some(&stripe), &spec());
    // Linked, then its version sent (Stripe holds the content; the sync is recorded).
    assert_eq!(
        kinds(&actions),
        [ActionKind::Link, ActionKind::UpdateStripe]
    );
    assert!(actions[1].changes.is_empty());
    assert_eq!(actions[0].drift, DriftKind::LeakedCreate);
    assert_eq!(actions[0].stripe_id.as_deref(), Some("cus_leaked"));
}

#[test]
fn a_local_customer_without_a_stripe_customer_is_created_or_follows_deletion() {
    let mut never = Customer::fixture(1, 0, Utc::now());
    never.stripe_id = None;
    assert_eq!(
        kinds(&diff(Some(&never), None, &spec())),
        [ActionKind::CreateInStripe]
    );
    let (gone, _) = in_sync();
    for (deletion, kind) in [
        (Deletion::Propagate, ActionKind::DeleteLocal),
        (Deletion::SoftDelete, ActionKind::DeleteLocal),
        (Deletion::Orphan, ActionKind::Unlink),
    ] {
        let mut policy = spec();
        policy.deletion = deletion;
        assert_eq!(kinds(&diff(Some(&gone), None, &policy)), [kind]);
    }
    let mut policy = spec();
    policy.direction = Direction::LocalToStripe;
    assert_eq!(
        kinds(&diff(Some(&gone), None, &policy)),
        [ActionKind::CreateInStripe]
    );
}

#[test]
fn a_local_delete_still_live_in_stripe_follows_deletion() {
    let (mut local, mut stripe) = in_sync();
    local.deleted_at = Some(Utc::now());
    for (deletion, expected) in [
        (Deletion::Propagate, vec![ActionKind::DeleteInStripe]),
        (Deletion::SoftDelete, vec![ActionKind::SoftDeleteInStripe]),
        (Deletion::Orphan, vec![]),
    ] {
        let mut policy = spec();
        policy.deletion = deletion;
        assert_eq!(kinds(&diff(Some(&local), Some(&stripe), &policy)), expected);
    }
    let mut policy = spec();
    policy.deletion = Deletion::SoftDelete;
    stripe
        .metadata
        .insert(DELETED_AT_KEY.into(), "2026-11-29T00:00:00Z".into());
    assert!(diff(Some(&local), Some(&stripe), &policy).is_empty());
}

#[test]
fn plans_render_terraform_like() {
    let (local, mut stripe) = in_sync();
    stripe.name = Some("Ada L.".into());
    let actions = diff(Some(&local), Some(&stripe), &spec());
    assert_eq!(actions[0].kind.sign(), "~");
    let _ = Metadata::default();
}

// Properties over generated customers and policies.

fn text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("a".to_owned())),
        Just(Some("b".to_owned()))
    ]
}

fn fields() -> impl Strategy<Value = CustomerFields> {
    (
        prop_oneof![Just("x@example.com"), Just("y@example.com")],
        text(),
        text(),
        proptest::collection::btree_map(
            prop_oneof![Just("plan".to_owned()), Just("tier".to_owned())],
            prop_oneof![Just("p".to_owned()), Just("q".to_owned())],
            0..2,
        ),
    )
        .prop_map(|(email, name, phone, metadata)| CustomerFields {
            email: email.to_owned(),
            name,
            phone,
            description: None,
            metadata: Metadata::from_stored(metadata),
        })
}

fn resolution() -> impl Strategy<Value = Resolution> {
    prop_oneof![
        Just(Resolution::Newest),
        Just(Resolution::LocalWins),
        Just(Resolution::StripeWins)
    ]
}

fn policy() -> impl Strategy<Value = SyncPolicySpec> {
    (
        prop_oneof![
            Just(Direction::Bidirectional),
            Just(Direction::LocalToStripe),
            Just(Direction::StripeToLocal)
        ],
        resolution(),
        resolution(),
        prop_oneof![
            Just(Adoption::All),
            Just(Adoption::MatchEmail),
            Just(Adoption::None)
        ],
    )
        .prop_map(|(direction, default, name_rule, adoption)| {
            let mut policy = spec();
            policy.direction = direction;
            policy.adoption = adoption;
            policy.conflict = ConflictRules {
                default,
                fields: BTreeMap::from([("name".into(), name_rule)]),
            };
            policy
        })
}

/// A linked, live pair: what was last synced, what each side holds now.
fn linked_pair() -> impl Strategy<Value = (Customer, StripeCustomer)> {
    (fields(), fields(), fields(), any::<bool>()).prop_map(
        |(synced, now_local, now_stripe, bumped)| {
            let mut local = Customer::fixture(if bumped { 3 } else { 2 }, 2, Utc::now());
            local.stripe_synced_hash = Some(synced.content_hash());
            local.fields = if bumped { now_local } else { synced };
            let mut holder = local.clone();
            holder.fields = now_stripe;
            let stripe = synced_stripe(&holder);
            (local, stripe)
        },
    )
}

/// Both sides after the plan is carried out and synced.
fn carry_out(
    local: &Customer,
    stripe: &StripeCustomer,
    actions: &[Action],
) -> (Customer, StripeCustomer) {
    let mut local = local.clone();
    let mut held = local.clone();
    held.fields = RemoteFields::from_customer(stripe)
        .unwrap()
        .to_local(&local.fields.email);
    for action in actions {
        let target = match action.kind {
            ActionKind::UpdateLocal => &mut local.fields,
            ActionKind::UpdateStripe => &mut held.fields,
            _ => continue,
        };
        apply_changes(target, &action.changes);
    }
    local.version += 1;
    local.stripe_synced_version = local.version;
    local.stripe_synced_hash = Some(held.fields.content_hash());
    let stripe = synced_stripe(&held);
    (local, stripe)
}

fn apply_changes(fields: &mut CustomerFields, changes: &[FieldChange]) {
    let mut metadata = fields.metadata.as_map().clone();
    for change in changes {
        match change.field.as_str() {
            "email" => fields.email = change.new.clone().unwrap(),
            "name" => fields.name = change.new.clone(),
            "phone" => fields.phone = change.new.clone(),
            "description" => fields.description = change.new.clone(),
            key => {
                let key = key.strip_prefix("metadata.").unwrap().to_owned();
                match &change.new {
                    Some(value) => metadata.insert(key, value.clone()),
                    None => metadata.remove(&key),
                };
            }
        }
    }
    fields.metadata = Metadata::from_stored(metadata);
}

proptest! {
    /// Carrying out a bidirectional plan leaves nothing to do: a second run finds no drift.
    #[test]
    fn a_plan_carried_out_converges((local, stripe) in linked_pair(), mut policy in policy()) {
        policy.direction = Direction::Bidirectional;
        let actions = diff(Some(&local), Some(&stripe), &policy);
        let (local, stripe) = carry_out(&local, &stripe, &actions);
        prop_assert_eq!(diff(Some(&local), Some(&stripe), &policy), vec![]);
    }

    /// The side that changed alone wins; equal content needs nothing; a direction is never
    /// crossed; nothing creates what already exists.
    #[test]
    fn plans_respect_the_sync_columns_and_the_policy((local, stripe) in linked_pair(), policy in policy()) {
        let actions = diff(Some(&local), Some(&stripe), &policy);
        let remote = RemoteFields::from_customer(&stripe).unwrap().to_local(&local.fields.email);
        let local_changed = local.version > local.stripe_synced_version;
        if remote == local.fields {
            // Nothing to change; at most the sync of a version not recorded as synced.
            prop_assert!(actions.iter().all(|a| a.changes.is_empty()));
            prop_assert!(actions.len() <= usize::from(local_changed));
        }
        let stripe_changed = local.stripe_synced_hash != Some(remote.content_hash());
        for action in &actions {
            prop_assert!(!matches!(action.kind, ActionKind::CreateInStripe | ActionKind::Adopt | ActionKind::Link));
            if policy.direction == Direction::StripeToLocal {
                prop_assert!(!action.kind.writes_stripe());
            }
            if policy.direction == Direction::LocalToStripe {
                prop_assert_ne!(action.kind, ActionKind::UpdateLocal);
            }
            if policy.direction == Direction::Bidirectional && stripe_changed && !local_changed {
                prop_assert_eq!(action.kind, ActionKind::UpdateLocal);
            }
            if local_changed && !stripe_changed {
                prop_assert_ne!(action.kind, ActionKind::UpdateLocal);
            }
        }
    }

    /// An unknown Stripe customer is adopted only under `adoption: All` and never against
    /// the direction; a customer only local is created in Stripe only when it may be.
    #[test]
    fn one_sided_customers_follow_adoption_and_direction(
        (local, stripe) in linked_pair(), policy in policy(),
    ) {
        let adopted = kinds(&diff(None, Some(&stripe), &policy));
        let adopts = adopted == [ActionKind::Adopt];
        prop_assert_eq!(adopts, policy.adoption == Adoption::All && policy.direction != Direction::LocalToStripe);
        let mut never = local.clone();
        never.stripe_id = None;
        let created = kinds(&diff(Some(&never), None, &policy));
        prop_assert_eq!(created == [ActionKind::CreateInStripe], policy.direction != Direction::StripeToLocal);
    }
}
