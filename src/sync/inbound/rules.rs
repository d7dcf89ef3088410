//! The inbound worker's pure core: what a Stripe customer event does to the local row.
//!
//! Kept free of I/O so every inbound rule can be tested directly: older events never
//! overwrite newer ones (`stripe_event_at`, and paysync's own last write), paysync's own writes
//! coming back are recognised and change nothing (the `paysync:` key, or the content paysync
//! last synced), and a conflict between an unsynced local change and a Stripe change is
//! settled by the policy.

use chrono::{DateTime, TimeDelta, Utc};

use super::event::IncomingEvent;
use crate::domain::{ConflictPolicy, Customer, CustomerFields, SyncState};
use crate::stripe::event::EventKind;

/// The prefix of every Idempotency-Key paysync sends to Stripe.
pub const OWN_IDEMPOTENCY_PREFIX: &str = "paysync:";

/// How far paysync's clock may be from Stripe's. Events this close to one of paysync's own
/// writes may be on either side of it, so Stripe is asked for its current state.
pub const CLOCK_SKEW_ALLOWANCE: TimeDelta = TimeDelta::seconds(2);

/// Stripe's `created` is whole seconds: an event happened before `created` + this.
const CREATED_RESOLUTION: TimeDelta = TimeDelta::seconds(1);

/// How a local customer found for an event relates to the event's Stripe customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Linked to it already.
    Linked,
    /// Not linked to any Stripe customer yet: link it to this one.
    LinkNow,
    /// Linked to another Stripe customer; linking would lose that one.
    Taken { other: String },
}

pub fn link(local: &Customer, stripe_id: &str) -> Link {
    match &local.stripe_id {
        Some(linked) if linked == stripe_id => Link::Linked,
        Some(other) => Link::Taken {
            other: other.clone(),
        },
        None => Link::LinkNow,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Older than the last event applied to this customer.
    Stale,
    /// Made before paysync's last write to Stripe, which replaced it.
    Superseded,
    /// paysync's own write coming back.
    Echo,
    /// Stripe already equals the local row.
    NoChange,
    /// The customer is deleted locally (the deletion reaches Stripe through the outbox).
    AlreadyDeleted,
    /// A deletion of a Stripe customer paysync never knew.
    NotLinked,
    /// A Stripe customer without an email cannot be adopted (paysync requires one).
    NoEmail,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Superseded => "superseded",
            Self::Echo => "echo",
            Self::NoChange => "no_change",
            Self::AlreadyDeleted => "already_deleted",
            Self::NotLinked => "not_linked",
            Self::NoEmail => "no_email",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record the event as processed (and seen, so older ones are stale); change nothing else.
    Skip(Skip),
    /// Whether the event is older or newer than what is known cannot be told from it (same
    /// second as the last applied event, or close to paysync's own write): fetch the customer
    /// from Stripe and decide on what Stripe holds now.
    Refetch,
    /// Write these fields: a new local version, synced at once (no outbox row).
    Apply(CustomerFields),
    /// Soft-delete locally, synced at once (no outbox row).
    Delete,
    /// Both sides changed and local wins: keep the local row; its sync overwrites the Stripe
    /// change (logged as lost). `requeue` when no sync is on its way (the last one failed):
    /// an outbox row then pushes the correction.
    KeepLocal { requeue: bool },
    /// A customer created in Stripe that paysync does not know: create it locally, linked.
    Adopt(CustomerFields),
}

/// Decides what `event` does to `local`: the customer linked to the event's Stripe customer,
/// or just linked to it (found by `paysync_id` or email); `None` when there is none.
pub fn decide(local: Option<&Customer>, event: &IncomingEvent, policy: ConflictPolicy) -> Decision {
    let own_write = event
        .idempotency_key
        .as_deref()
        .is_some_and(|key| key.starts_with(OWN_IDEMPOTENCY_PREFIX));
    let Some(local) = local else {
        return match (event.kind, &event.fields.email) {
            (EventKind::Deleted, _) => Decision::Skip(Skip::NotLinked),
            _ if own_write => Decision::Skip(Skip::Echo),
            (_, None) => Decision::Skip(Skip::NoEmail),
            (_, Some(email)) => Decision::Adopt(event.fields.to_local(email)),
        };
    };
    if local.deleted_at.is_some() {
        return Decision::Skip(Skip::AlreadyDeleted);
    }
    // Deletion is final in Stripe: whatever the order, the customer is gone.
    if event.kind == EventKind::Deleted {
        return Decision::Delete;
    }
    if own_write {
        return Decision::Skip(Skip::Echo);
    }
    decide_change(local, event, policy)
}

/// A customer changed in Stripe (not paysync's own write) that is linked and live.
fn decide_change(local: &Customer, event: &IncomingEvent, policy: ConflictPolicy) -> Decision {
    let wanted = event.fields.to_local(&local.fields.email);
    // Equal content changes nothing whichever order the events came in.
    if wanted == local.fields {
        return Decision::Skip(Skip::NoChange);
    }
    // Stripe holds just what paysync last synced: nothing changed there. This is how an echo
    // is recognised where Stripe does not report the request's key (localstripe), and it keeps
    // a local change made since from being mistaken for a conflict.
    if local.stripe_synced_hash == Some(wanted.content_hash()) {
        return Decision::Skip(Skip::Echo);
    }
    if !event.current
        && let Some(doubt) = ordering_doubt(local, event.created)
    {
        return doubt;
    }
    let local_pending = local.stripe_synced_version < local.version;
    let stripe_wins = !local_pending
        || match policy {
            ConflictPolicy::StripeWins => true,
            ConflictPolicy::LocalWins => false,
            ConflictPolicy::Newest => event.created > local.updated_at,
        };
    if stripe_wins {
        Decision::Apply(wanted)
    } else {
        Decision::KeepLocal {
            requeue: local.sync_state != SyncState::Pending,
        }
    }
}

/// The local row after `decision`, as the database will hold it once written, so a batch can
/// decide several events of one customer in turn. `now` stands for the commit time.
pub fn after(
    mut customer: Customer,
    decision: &Decision,
    event_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Customer {
    let seen = |at: Option<DateTime<Utc>>| Some(at.map_or(event_at, |at| at.max(event_at)));
    match decision {
        Decision::Apply(fields) => {
            customer.version += 1;
            customer.stripe_synced_version = customer.version;
            customer.sync_state = SyncState::Synced;
            customer.sync_error = None;
            customer.stripe_synced_hash = Some(fields.content_hash());
            customer.fields = fields.clone();
            customer.updated_at = now;
            customer.stripe_event_at = seen(customer.stripe_event_at);
        }
        Decision::Delete => {
            customer.version += 1;
            customer.stripe_synced_version = customer.version;
            customer.sync_state = SyncState::Synced;
            customer.sync_error = None;
            customer.deleted_at = Some(now);
            customer.updated_at = now;
            customer.stripe_event_at = seen(customer.stripe_event_at);
        }
        Decision::Skip(Skip::Echo | Skip::NoChange) | Decision::KeepLocal { .. } => {
            customer.stripe_event_at = seen(customer.stripe_event_at);
        }
        Decision::Skip(_) | Decision::Refetch | Decision::Adopt(_) => {}
    }
    customer
}

/// Whether an event that differs from the local row may be older than what is known.
fn ordering_doubt(local: &Customer, created: DateTime<Utc>) -> Option<Decision> {
    match local.stripe_event_at {
        Some(last) if created < last => return Some(Decision::Skip(Skip::Stale)),
        Some(last) if created == last => return Some(Decision::Refetch),
        _ => {}
    }
    let write = local.stripe_write?;
    // The change happened before `created + 1 s` by Stripe's clock.
    if created + CREATED_RESOLUTION + CLOCK_SKEW_ALLOWANCE <= write.started {
        return Some(Decision::Skip(Skip::Superseded));
    }
    if created <= write.finished + CLOCK_SKEW_ALLOWANCE {
        return Some(Decision::Refetch);
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::domain::WriteWindow;
    use crate::stripe::StripeCustomer;
    use crate::sync::mapping::RemoteFields;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap()
    }

    fn local(version: i64, synced: i64, updated: i64) -> Customer {
        let mut customer = Customer::fixture(version, synced, at(updated));
        customer.created_at = at(0);
        customer
    }

    fn seen_event_at(mut customer: Customer, second: i64) -> Customer {
        customer.stripe_event_at = Some(at(second));
        customer
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

    fn fields(name: &str) -> CustomerFields {
        remote(name).to_local("unused@example.com")
    }

    fn event(kind: EventKind, created: i64, name: &str) -> IncomingEvent {
        IncomingEvent {
            id: "evt_1".into(),
            kind,
            created: at(created),
            stripe_id: "cus_1".into(),
            idempotency_key: None,
            fields: remote(name),
            paysync_id: None,
            current: false,
        }
    }

    fn newest(local: &Customer, event: &IncomingEvent) -> Decision {
        decide(Some(local), event, ConflictPolicy::Newest)
    }

    #[test]
    fn a_stripe_change_to_a_synced_customer_is_applied() {
        let decision = newest(
            &seen_event_at(local(2, 2, 5), 5),
            &event(EventKind::Updated, 10, "Ada L."),
        );
        assert_eq!(decision, Decision::Apply(fields("Ada L.")));
    }

    #[test]
    fn older_events_never_overwrite_newer_ones() {
        let decision = newest(
            &seen_event_at(local(2, 2, 5), 10),
            &event(EventKind::Updated, 9, "old"),
        );
        assert_eq!(decision, Decision::Skip(Skip::Stale));
    }

    #[test]
    fn a_same_second_tie_is_resolved_by_asking_stripe() {
        let tied = event(EventKind::Updated, 10, "tie");
        let customer = seen_event_at(local(2, 2, 5), 10);
        assert_eq!(newest(&customer, &tied), Decision::Refetch);
        // What Stripe holds now is applied without another doubt.
        let current = tied
            .refetched(Some(&StripeCustomer {
                id: "cus_1".into(),
                email: Some("ada@example.com".into()),
                name: Some("Current".into()),
                phone: Some(String::new()),
                description: None,
                metadata: BTreeMap::from([
                    ("plan".into(), "pro".into()),
                    ("paysync_id".into(), "x".into()),
                    ("gone".into(), String::new()),
                ]),
                deleted: false,
            }))
            .unwrap();
        assert_eq!(
            newest(&customer, &current),
            Decision::Apply(fields("Current"))
        );
        assert_eq!(
            newest(&customer, &tied.refetched(None).unwrap()),
            Decision::Delete
        );
    }

    #[test]
    fn equal_content_is_never_a_change_even_in_doubt() {
        let customer = seen_event_at(local(3, 3, 9), 10);
        for created in [9, 10, 11] {
            assert_eq!(
                newest(&customer, &event(EventKind::Updated, created, "Ada")),
                Decision::Skip(Skip::NoChange),
                "{created}"
            );
        }
    }

    #[test]
    fn paysync_own_writes_coming_back_change_nothing() {
        let mut own = event(EventKind::Updated, 10, "whatever");
        own.idempotency_key = Some("paysync:update:x:3".into());
        assert_eq!(newest(&local(3, 3, 9), &own), Decision::Skip(Skip::Echo));
    }

    #[test]
    fn events_from_before_paysync_last_write_are_superseded_and_near_ones_refetched() {
        let mut customer = seen_event_at(local(5, 5, 90), 10);
        customer.stripe_write = Some(WriteWindow {
            started: at(100),
            finished: at(101),
        });
        let decide_at = |second| newest(&customer, &event(EventKind::Updated, second, "other"));
        // Happened before second 97 + 1 by Stripe's clock: well before the write was sent.
        assert_eq!(decide_at(97), Decision::Skip(Skip::Superseded));
        // Within a clock skew of the write: could be either side of it.
        for second in [98, 100, 101, 103] {
            assert_eq!(decide_at(second), Decision::Refetch, "{second}");
        }
        assert_eq!(decide_at(104), Decision::Apply(fields("other")));
    }

    #[test]
    fn stripe_holding_what_paysync_synced_is_no_change_there() {
        // Local moved on to version 4 (pending); Stripe still holds what paysync wrote for 3,
        // even though that change is newer than the local one by the clock.
        let mut pending = local(4, 3, 20);
        pending.stripe_synced_hash = Some(fields("Written for v3").content_hash());
        let echo = event(EventKind::Updated, 30, "Written for v3");
        assert_eq!(newest(&pending, &echo), Decision::Skip(Skip::Echo));
        let dashboard_edit = event(EventKind::Updated, 30, "Edited in the Dashboard");
        assert_eq!(
            newest(&pending, &dashboard_edit),
            Decision::Apply(fields("Edited in the Dashboard"))
        );
    }

    #[test]
    fn a_failed_local_sync_is_requeued_when_local_wins() {
        let mut failed = local(4, 3, 20);
        failed.sync_state = SyncState::Failed;
        assert_eq!(
            decide(
                Some(&failed),
                &event(EventKind::Updated, 25, "x"),
                ConflictPolicy::LocalWins
            ),
            Decision::KeepLocal { requeue: true }
        );
    }

    #[test]
    fn conflicts_follow_the_policy() {
        // Local changed at second 20 and is not synced yet.
        let pending = seen_event_at(local(4, 3, 20), 1);
        let earlier = event(EventKind::Updated, 15, "from Stripe");
        let later = event(EventKind::Updated, 25, "from Stripe");
        let with = |policy, event: &IncomingEvent| decide(Some(&pending), event, policy);
        let kept = Decision::KeepLocal { requeue: false };
        assert_eq!(with(ConflictPolicy::Newest, &earlier), kept);
        assert_eq!(
            with(ConflictPolicy::Newest, &later),
            Decision::Apply(fields("from Stripe"))
        );
        assert_eq!(with(ConflictPolicy::LocalWins, &later), kept);
        assert_eq!(
            with(ConflictPolicy::StripeWins, &earlier),
            Decision::Apply(fields("from Stripe"))
        );
    }

    #[test]
    fn deletes_and_unknown_customers() {
        // A deletion applies whatever its time: deleted Stripe customers stay deleted.
        assert_eq!(
            newest(
                &seen_event_at(local(2, 2, 5), 50),
                &event(EventKind::Deleted, 10, "Ada")
            ),
            Decision::Delete
        );
        let mut gone = local(3, 3, 5);
        gone.deleted_at = Some(at(6));
        assert_eq!(
            newest(&gone, &event(EventKind::Updated, 10, "Ada L.")),
            Decision::Skip(Skip::AlreadyDeleted)
        );
        let unknown = |event: &IncomingEvent| decide(None, event, ConflictPolicy::Newest);
        assert_eq!(
            unknown(&event(EventKind::Created, 10, "New")),
            Decision::Adopt(remote("New").to_local("ada@example.com"))
        );
        assert_eq!(
            unknown(&event(EventKind::Deleted, 10, "x")),
            Decision::Skip(Skip::NotLinked)
        );
        let mut no_email = event(EventKind::Created, 10, "x");
        no_email.fields.email = None;
        assert_eq!(unknown(&no_email), Decision::Skip(Skip::NoEmail));
        let mut own_create = event(EventKind::Created, 10, "Ada");
        own_create.idempotency_key = Some("paysync:create:abc".into());
        assert_eq!(unknown(&own_create), Decision::Skip(Skip::Echo));
    }

    #[test]
    fn a_stripe_customer_without_email_keeps_the_local_one() {
        let mut no_email = event(EventKind::Updated, 10, "Renamed");
        no_email.fields.email = None;
        let Decision::Apply(applied) = newest(&local(2, 2, 5), &no_email) else {
            panic!("expected an apply");
        };
        assert_eq!(applied.email, "ada@example.com");
        assert_eq!(applied.name.as_deref(), Some("Renamed"));
    }

    #[test]
    fn a_batch_decides_each_event_on_the_row_the_previous_ones_left() {
        let customer = seen_event_at(local(2, 2, 5), 5);
        let now = at(100);
        let first = event(EventKind::Updated, 10, "First");
        let decision = newest(&customer, &first);
        let customer = after(customer, &decision, first.created, now);
        assert_eq!(customer.version, 3);
        assert_eq!(customer.stripe_synced_version, 3);
        assert_eq!(customer.fields.name.as_deref(), Some("First"));
        assert_eq!(customer.stripe_event_at, Some(at(10)));
        assert_eq!(
            customer.stripe_synced_hash,
            Some(fields("First").content_hash())
        );
        // The same content again is no change; an older event is stale against the first.
        assert_eq!(newest(&customer, &first), Decision::Skip(Skip::NoChange));
        let older = event(EventKind::Updated, 9, "Older");
        assert_eq!(newest(&customer, &older), Decision::Skip(Skip::Stale));
        let deleted = after(customer, &Decision::Delete, at(11), now);
        assert_eq!(deleted.deleted_at, Some(now));
        assert_eq!(deleted.version, 4);
        assert_eq!(
            newest(&deleted, &event(EventKind::Updated, 12, "Late")),
            Decision::Skip(Skip::AlreadyDeleted)
        );
    }

    #[test]
    fn linking_never_steals_a_linked_customer() {
        let customer = local(1, 0, 1);
        assert_eq!(link(&customer, "cus_1"), Link::Linked);
        assert_eq!(
            link(&customer, "cus_2"),
            Link::Taken {
                other: "cus_1".into()
            }
        );
        let mut unlinked = customer;
        unlinked.stripe_id = None;
        assert_eq!(link(&unlinked, "cus_2"), Link::LinkNow);
    }
}
