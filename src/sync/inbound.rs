//! The inbound worker's pure core: what a Stripe customer event does to the local row.
//!
//! Kept free of I/O so every rule of DESIGN.md §3 that concerns inbound events can be tested
//! directly: older events never overwrite newer ones (invariant 5), paysync's own writes
//! coming back are recognised and change nothing (invariant 4), and a conflict between an
//! unsynced local change and a newer Stripe change is settled by the policy.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{Customer, CustomerId};

/// The prefix of every Idempotency-Key paysync sends to Stripe.
pub const OWN_IDEMPOTENCY_PREFIX: &str = "paysync:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

/// Who wins when both sides changed since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// The later change wins: local `updated_at` against the event's `created`.
    #[default]
    Newest,
    LocalWins,
    StripeWins,
}

/// The synced fields as a Stripe event carries them (paysync's own metadata keys removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFields {
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A Stripe customer event, as the decision needs it.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub kind: EventKind,
    /// `event.created` (1 s resolution).
    pub created: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    pub fields: RemoteFields,
    /// `metadata.paysync_id`, when paysync created or linked the Stripe customer.
    pub paysync_id: Option<CustomerId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Older than the last event applied to this customer.
    Stale,
    /// paysync's own write coming back.
    Echo,
    /// Stripe already equals the local row.
    NoChange,
    /// A delete for a customer already deleted locally.
    AlreadyDeleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record the event as processed; change nothing else.
    Skip(Skip),
    /// Same second as the last applied event: their order is unknown, so fetch the customer
    /// from Stripe and apply what Stripe holds now.
    RefetchAndApply,
    /// Write these fields (a new local version, synced at once: no outbox row).
    Apply(RemoteFields),
    /// Soft-delete locally (synced at once: no outbox row).
    Delete,
    /// Both sides changed and local wins: keep the local row and make sure an outbox row
    /// pushes it to Stripe. The Stripe change is logged as the loser.
    KeepLocal,
    /// A customer created in Stripe that paysync does not know: create it locally, linked.
    Adopt(RemoteFields),
}

/// Decides what `event` does to `local` (the row linked to the event's Stripe customer, or
/// named by its `paysync_id`; `None` when there is neither).
pub fn decide(
    local: Option<&Customer>,
    last_event_at: Option<DateTime<Utc>>,
    event: &IncomingEvent,
    policy: ConflictPolicy,
) -> Decision {
    let own_write = event
        .idempotency_key
        .as_deref()
        .is_some_and(|key| key.starts_with(OWN_IDEMPOTENCY_PREFIX));
    let Some(local) = local else {
        return match event.kind {
            EventKind::Deleted => Decision::Skip(Skip::AlreadyDeleted),
            // A customer created or changed in Stripe that paysync never saw.
            EventKind::Created | EventKind::Updated if own_write => Decision::Skip(Skip::Echo),
            EventKind::Created | EventKind::Updated => Decision::Adopt(event.fields.clone()),
        };
    };
    match last_event_at {
        Some(last) if event.created < last => return Decision::Skip(Skip::Stale),
        Some(last) if event.created == last => return Decision::RefetchAndApply,
        _ => {}
    }
    if own_write {
        return Decision::Skip(Skip::Echo);
    }
    if local.deleted_at.is_some() {
        return Decision::Skip(Skip::AlreadyDeleted);
    }
    if event.kind == EventKind::Deleted {
        return Decision::Delete;
    }
    if same_as_local(&event.fields, local) {
        return Decision::Skip(Skip::NoChange);
    }
    let local_pending = local.stripe_synced_version < local.version;
    if !local_pending {
        return Decision::Apply(event.fields.clone());
    }
    let stripe_wins = match policy {
        ConflictPolicy::StripeWins => true,
        ConflictPolicy::LocalWins => false,
        ConflictPolicy::Newest => event.created > local.updated_at,
    };
    if stripe_wins {
        Decision::Apply(event.fields.clone())
    } else {
        Decision::KeepLocal
    }
}

/// Content equality: also how an echo is recognised when Stripe does not report the request's
/// Idempotency-Key (localstripe never does).
fn same_as_local(remote: &RemoteFields, local: &Customer) -> bool {
    let fields = &local.fields;
    remote.email.as_deref() == Some(fields.email.as_str())
        && remote.name == fields.name
        && remote.phone == fields.phone
        && remote.description == fields.description
        && &remote.metadata == fields.metadata.as_map()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{CustomerFields, Metadata, SyncState};

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap()
    }

    fn local(version: i64, synced: i64, updated: i64) -> Customer {
        Customer {
            id: CustomerId::new(),
            account: "default".into(),
            fields: CustomerFields {
                email: "ada@example.com".into(),
                name: Some("Ada".into()),
                phone: None,
                description: None,
                metadata: Metadata::from_stored(BTreeMap::from([("plan".into(), "pro".into())])),
            },
            version,
            stripe_id: Some("cus_1".into()),
            stripe_synced_version: synced,
            sync_state: if synced >= version {
                SyncState::Synced
            } else {
                SyncState::Pending
            },
            sync_error: None,
            created_at: at(0),
            updated_at: at(updated),
            deleted_at: None,
        }
    }

    fn remote(name: &str) -> RemoteFields {
        RemoteFields {
            email: Some("ada@example.com".into()),
            name: Some(name.into()),
            phone: None,
            description: None,
            metadata: BTreeMap::from([("plan".into(), "pro".into())]),
        }
    }

    fn event(kind: EventKind, created: i64, name: &str) -> IncomingEvent {
        IncomingEvent {
            kind,
            created: at(created),
            idempotency_key: None,
            fields: remote(name),
            paysync_id: None,
        }
    }

    #[test]
    fn a_stripe_change_to_a_synced_customer_is_applied() {
        let decision = decide(
            Some(&local(2, 2, 5)),
            Some(at(5)),
            &event(EventKind::Updated, 10, "Ada L."),
            ConflictPolicy::Newest,
        );
        assert_eq!(decision, Decision::Apply(remote("Ada L.")));
    }

    #[test]
    fn older_events_never_overwrite_newer_ones() {
        let decision = decide(
            Some(&local(2, 2, 5)),
            Some(at(10)),
            &event(EventKind::Updated, 9, "old"),
            ConflictPolicy::Newest,
        );
        assert_eq!(decision, Decision::Skip(Skip::Stale));
    }

    #[test]
    fn a_same_second_tie_is_resolved_by_asking_stripe() {
        let decision = decide(
            Some(&local(2, 2, 5)),
            Some(at(10)),
            &event(EventKind::Updated, 10, "tie"),
            ConflictPolicy::Newest,
        );
        assert_eq!(decision, Decision::RefetchAndApply);
    }

    #[test]
    fn paysync_own_writes_coming_back_change_nothing() {
        let mut own = event(EventKind::Updated, 10, "whatever");
        own.idempotency_key = Some("paysync:update:x:3".into());
        assert_eq!(
            decide(Some(&local(3, 3, 9)), None, &own, ConflictPolicy::Newest),
            Decision::Skip(Skip::Echo)
        );
        // Without a reported key (localstripe), equal content is recognised instead.
        let echo = event(EventKind::Updated, 10, "Ada");
        assert_eq!(
            decide(Some(&local(3, 3, 9)), None, &echo, ConflictPolicy::Newest),
            Decision::Skip(Skip::NoChange)
        );
    }

    #[test]
    fn conflicts_follow_the_policy() {
        // Local changed at second 20 and is not synced yet.
        let pending = local(4, 3, 20);
        let earlier = event(EventKind::Updated, 15, "from Stripe");
        let later = event(EventKind::Updated, 25, "from Stripe");
        assert_eq!(
            decide(
                Some(&pending),
                Some(at(1)),
                &earlier,
                ConflictPolicy::Newest
            ),
            Decision::KeepLocal
        );
        assert_eq!(
            decide(Some(&pending), Some(at(1)), &later, ConflictPolicy::Newest),
            Decision::Apply(remote("from Stripe"))
        );
        assert_eq!(
            decide(
                Some(&pending),
                Some(at(1)),
                &later,
                ConflictPolicy::LocalWins
            ),
            Decision::KeepLocal
        );
        assert_eq!(
            decide(
                Some(&pending),
                Some(at(1)),
                &earlier,
                ConflictPolicy::StripeWins
            ),
            Decision::Apply(remote("from Stripe"))
        );
    }

    #[test]
    fn deletes_and_unknown_customers() {
        assert_eq!(
            decide(
                Some(&local(2, 2, 5)),
                None,
                &event(EventKind::Deleted, 10, "Ada"),
                ConflictPolicy::Newest
            ),
            Decision::Delete
        );
        let mut gone = local(3, 3, 5);
        gone.deleted_at = Some(at(6));
        assert_eq!(
            decide(
                Some(&gone),
                None,
                &event(EventKind::Deleted, 10, "Ada"),
                ConflictPolicy::Newest
            ),
            Decision::Skip(Skip::AlreadyDeleted)
        );
        assert_eq!(
            decide(
                None,
                None,
                &event(EventKind::Created, 10, "New"),
                ConflictPolicy::Newest
            ),
            Decision::Adopt(remote("New"))
        );
        assert_eq!(
            decide(
                None,
                None,
                &event(EventKind::Deleted, 10, "x"),
                ConflictPolicy::Newest
            ),
            Decision::Skip(Skip::AlreadyDeleted)
        );
        let mut own_create = event(EventKind::Created, 10, "Ada");
        own_create.idempotency_key = Some("paysync:create:abc".into());
        assert_eq!(
            decide(None, None, &own_create, ConflictPolicy::Newest),
            Decision::Skip(Skip::Echo)
        );
    }
}
