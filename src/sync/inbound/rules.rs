//! The inbound worker's pure core: what a Stripe customer event does to the local row.
//!
//! Kept free of I/O so every inbound rule can be tested directly: older events never
//! overwrite newer ones (`stripe_event_at`, and paysync's own last write), a listing never
//! overwrites what was applied after its list call, paysync's own writes coming back are
//! recognised and change nothing (the `paysync:` key, or the content paysync last synced), a
//! write of paysync's that landed late (older than one it wrote since) is never taken for a
//! Stripe change but sent again, and a conflict between an unsynced local change and a Stripe
//! change is settled by the policy.

use chrono::{DateTime, TimeDelta, Utc};

use std::collections::BTreeMap;

use super::event::IncomingEvent;
use crate::crd::{Adoption, ConflictRules, Deletion, Resolution, SyncPolicySpec};
use crate::domain::{Customer, CustomerFields, Metadata, SyncState};
use crate::stripe::event::EventKind;

/// What a policy says about Stripe events: who wins a conflict, field by field, what a
/// Stripe deletion does, and whether unknown Stripe customers are adopted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub conflict: ConflictRules,
    pub deletion: Deletion,
    pub adoption: Adoption,
}

impl Rules {
    pub fn of(spec: &SyncPolicySpec) -> Self {
        Self {
            conflict: spec.conflict.clone(),
            deletion: spec.deletion,
            adoption: spec.adoption,
        }
    }
}

/// The prefix of every Idempotency-Key paysync sends to Stripe.
pub const OWN_IDEMPOTENCY_PREFIX: &str = "paysync:";

/// How far paysync's clock may be from Stripe's. Events this close to one of paysync's own
/// writes may be on either side of it, so Stripe is asked for its current state.
pub const CLOCK_SKEW_ALLOWANCE: TimeDelta = TimeDelta::seconds(2);

/// Stripe's `created` is whole seconds: an event happened before `created` + this.
pub const CREATED_RESOLUTION: TimeDelta = TimeDelta::seconds(1);

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
    /// A write of paysync's older than the local version (landed late, or not recorded yet):
    /// the local change still on its way to Stripe replaces it.
    OwnOlderWrite,
    /// The customer is deleted locally (the deletion reaches Stripe through the outbox).
    AlreadyDeleted,
    /// A deletion of a Stripe customer paysync never knew.
    NotLinked,
    /// A Stripe customer without an email cannot be adopted (paysync requires one).
    NoEmail,
    /// A Stripe customer whose deletion paysync has seen already is not adopted (its events
    /// came out of order).
    Gone,
    /// A Stripe customer paysync does not know, not adopted by the policy (`adoption`); it is
    /// drift for the reconciler to report.
    NotAdopted,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Superseded => "superseded",
            Self::Echo => "echo",
            Self::NoChange => "no_change",
            Self::OwnOlderWrite => "own_older_write",
            Self::AlreadyDeleted => "already_deleted",
            Self::NotLinked => "not_linked",
            Self::NoEmail => "no_email",
            Self::Gone => "gone",
            Self::NotAdopted => "not_adopted",
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
    /// Both sides changed and the conflict rules took some fields from each: write these as a
    /// new local version that Stripe does not hold yet (an outbox row sends the local-winning
    /// fields to Stripe).
    Merge(CustomerFields),
    /// Deleted in Stripe under `deletion: Orphan`: the local customer stays, unlinked.
    Orphan,
    /// Stripe holds a write of paysync's older than the local version (a request that landed
    /// late, after a newer one): not a Stripe change. The local row is sent again: as a new
    /// version with the same content when Stripe was thought to hold it (`new_version`), so
    /// it gets an Idempotency-Key of its own; else its failed sync is queued again.
    Resend { new_version: bool },
}

/// Decides what `event` does to `local`: the customer linked to the event's Stripe customer,
/// or just linked to it (found by `paysync_id` or email); `None` when there is none.
pub fn decide(local: Option<&Customer>, event: &IncomingEvent, rules: &Rules) -> Decision {
    let own_write = event
        .idempotency_key
        .as_deref()
        .is_some_and(|key| key.starts_with(OWN_IDEMPOTENCY_PREFIX));
    let Some(local) = local else {
        return match (event.kind, &event.fields.email) {
            (EventKind::Deleted, _) => Decision::Skip(Skip::NotLinked),
            _ if own_write => Decision::Skip(Skip::Echo),
            _ if rules.adoption != Adoption::All => Decision::Skip(Skip::NotAdopted),
            (_, None) => Decision::Skip(Skip::NoEmail),
            (_, Some(email)) => Decision::Adopt(event.fields.to_local(email)),
        };
    };
    if local.deleted_at.is_some() {
        return Decision::Skip(Skip::AlreadyDeleted);
    }
    // Deletion is final in Stripe: whatever the order, the customer is gone.
    if event.kind == EventKind::Deleted {
        return match rules.deletion {
            Deletion::Orphan => Decision::Orphan,
            Deletion::Propagate | Deletion::SoftDelete => Decision::Delete,
        };
    }
    if let Some(own_older) = own_older_write(local, event) {
        return doubt(local, event).unwrap_or(own_older);
    }
    if own_write {
        return Decision::Skip(Skip::Echo);
    }
    decide_change(local, event, &rules.conflict)
}

/// What to do when Stripe holds a write of paysync's that is not its latest: older than the
/// version paysync last recorded writing (it landed after that one: Stripe went back), or,
/// while a local change is still to be sent, a write of an older version not recorded (a
/// create or update whose answer was lost, which landed late: the local customer moved on
/// meanwhile). Either way never a Stripe change, and never applied: that would roll an
/// acknowledged local write back.
fn own_older_write(local: &Customer, event: &IncomingEvent) -> Option<Decision> {
    let held = event.paysync_version?;
    let written = local.stripe_written_version;
    let unsynced = local.stripe_synced_version < local.version;
    let stale = written.is_some_and(|written| held < written);
    let unrecorded =
        unsynced && held < local.version && written.is_none_or(|written| held > written);
    if !stale && !unrecorded {
        return None;
    }
    Some(match (unsynced, local.sync_state) {
        // The sync on its way overwrites it.
        (true, SyncState::Pending) => Decision::Skip(Skip::OwnOlderWrite),
        (true, _) => Decision::Resend { new_version: false },
        (false, _) => Decision::Resend { new_version: true },
    })
}

/// Whether the event may be older than what is known of the customer (see
/// [`ordering_doubt`], [`snapshot_doubt`]); Stripe's current state never is.
fn doubt(local: &Customer, event: &IncomingEvent) -> Option<Decision> {
    if event.current {
        return None;
    }
    match event.listed {
        Some(listed_at) => snapshot_doubt(local, event.created, listed_at),
        None => ordering_doubt(local, event.created),
    }
}

/// A customer changed in Stripe (not paysync's own write) that is linked and live.
fn decide_change(local: &Customer, event: &IncomingEvent, conflict: &ConflictRules) -> Decision {
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
    if let Some(doubt) = doubt(local, event) {
        return doubt;
    }
    // Only Stripe changed: Stripe wins.
    if local.stripe_synced_version >= local.version {
        return Decision::Apply(wanted);
    }
    let stripe_newer = event.listed.is_none() && event.created > local.updated_at;
    let merged = resolve_conflict(&local.fields, &wanted, conflict, stripe_newer);
    if merged == wanted {
        Decision::Apply(wanted)
    } else if merged == local.fields {
        Decision::KeepLocal {
            requeue: local.sync_state != SyncState::Pending,
        }
    } else {
        Decision::Merge(merged)
    }
}

/// Both sides changed: each field that differs goes to the side its rule names.
pub fn resolve_conflict(
    local: &CustomerFields,
    stripe: &CustomerFields,
    rules: &ConflictRules,
    stripe_newer: bool,
) -> CustomerFields {
    let stripe_wins = |field: &str| match rules.for_field(field) {
        Resolution::StripeWins => true,
        Resolution::LocalWins => false,
        Resolution::Newest => stripe_newer,
    };
    let pick = |field: &str, l: &Option<String>, s: &Option<String>| {
        if l != s && stripe_wins(field) {
            s.clone()
        } else {
            l.clone()
        }
    };
    let email = if local.email != stripe.email && stripe_wins("email") {
        stripe.email.clone()
    } else {
        local.email.clone()
    };
    CustomerFields {
        email,
        name: pick("name", &local.name, &stripe.name),
        phone: pick("phone", &local.phone, &stripe.phone),
        description: pick("description", &local.description, &stripe.description),
        metadata: merge_metadata(&local.metadata, &stripe.metadata, &stripe_wins),
    }
}

/// Metadata key by key: a key that differs takes the side `metadata.<key>` says.
fn merge_metadata(
    local: &Metadata,
    stripe: &Metadata,
    stripe_wins: &dyn Fn(&str) -> bool,
) -> Metadata {
    let (local, stripe) = (local.as_map(), stripe.as_map());
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for key in local.keys().chain(stripe.keys()) {
        let (l, s) = (local.get(key), stripe.get(key));
        let value = if l != s && stripe_wins(&format!("metadata.{key}")) {
            s
        } else {
            l
        };
        if let Some(value) = value {
            merged.insert(key.clone(), value.clone());
        }
    }
    Metadata::from_stored(merged)
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
    // A new local version: synced at once when Stripe holds it, else pending.
    let new_version = |customer: &mut Customer, synced: bool| {
        customer.version += 1;
        customer.sync_error = None;
        customer.updated_at = now;
        if synced {
            customer.stripe_synced_version = customer.version;
            customer.sync_state = SyncState::Synced;
        } else {
            customer.sync_state = SyncState::Pending;
        }
    };
    match decision {
        Decision::Apply(fields) => {
            new_version(&mut customer, true);
            customer.stripe_synced_hash = Some(fields.content_hash());
            customer.fields = fields.clone();
        }
        Decision::Delete => {
            new_version(&mut customer, true);
            customer.deleted_at = Some(now);
        }
        Decision::Merge(fields) => {
            new_version(&mut customer, false);
            customer.fields = fields.clone();
        }
        Decision::Resend { new_version: true } => new_version(&mut customer, false),
        Decision::Orphan => {
            customer.stripe_id = None;
            customer.sync_state = SyncState::Orphaned;
        }
        Decision::Skip(Skip::Echo | Skip::NoChange | Skip::OwnOlderWrite)
        | Decision::KeepLocal { .. }
        | Decision::Resend { new_version: false } => {}
        Decision::Skip(_) | Decision::Refetch | Decision::Adopt(_) => return customer,
    }
    customer.stripe_event_at = seen(customer.stripe_event_at);
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

/// Whether a listing made at `listed_at` (surely including the events created up to
/// `included`) may be older than what was applied to the customer since: an event of a later
/// second, or a write of paysync's not surely finished before the list call. Then Stripe is
/// asked for the customer's current state instead: a snapshot never beats a newer event.
fn snapshot_doubt(
    local: &Customer,
    included: DateTime<Utc>,
    listed_at: DateTime<Utc>,
) -> Option<Decision> {
    let newer_event = local.stripe_event_at.is_some_and(|last| last > included);
    let newer_write = local
        .stripe_write
        .is_some_and(|write| write.finished + CLOCK_SKEW_ALLOWANCE >= listed_at);
    (newer_event || newer_write).then_some(Decision::Refetch)
}

#[cfg(test)]
mod tests {
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
            paysync_version: None,
            current: false,
            listed: None,
        }
    }

    fn newest(local: &Customer, event: &IncomingEvent) -> Decision {
        decide(Some(local), event, &Rules::default())
    }

    fn with_default(resolution: Resolution) -> Rules {
        Rules {
            conflict: ConflictRules {
                default: resolution,
                fields: BTreeMap::new(),
            },
            ..Rules::default()
        }
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
                created: 0,
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
                &with_default(Resolution::LocalWins)
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
        let with =
            |policy, event: &IncomingEvent| decide(Some(&pending), event, &with_default(policy));
        let kept = Decision::KeepLocal { requeue: false };
        assert_eq!(with(Resolution::Newest, &earlier), kept);
        assert_eq!(
            with(Resolution::Newest, &later),
            Decision::Apply(fields("from Stripe"))
        );
        assert_eq!(with(Resolution::LocalWins, &later), kept);
        assert_eq!(
            with(Resolution::StripeWins, &earlier),
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
        let unknown = |event: &IncomingEvent| decide(None, event, &Rules::default());
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

    fn written(mut customer: Customer, version: i64) -> Customer {
        customer.stripe_written_version = Some(version);
        customer
    }

    fn holding(mut event: IncomingEvent, version: i64) -> IncomingEvent {
        event.paysync_version = Some(version);
        event
    }

    #[test]
    fn a_late_write_of_paysync_is_sent_again_not_applied() {
        // paysync wrote version 12 last; Stripe now holds its stalled write of version 9.
        let synced = written(seen_event_at(local(12, 12, 5), 5), 12);
        let late = holding(event(EventKind::Updated, 20, "v9 content"), 9);
        assert_eq!(
            newest(&synced, &late),
            Decision::Resend { new_version: true }
        );
        // Even with its own Idempotency-Key (real Stripe reports it), and even when the
        // content happens to equal the local row (its paysync_version is still wrong).
        let mut keyed = late.clone();
        keyed.idempotency_key = Some("paysync:update:x:9".into());
        assert_eq!(
            newest(&synced, &keyed),
            Decision::Resend { new_version: true }
        );
        let same = holding(event(EventKind::Updated, 20, "Ada"), 9);
        assert_eq!(
            newest(&synced, &same),
            Decision::Resend { new_version: true }
        );
        // The sent-again version is new, pending, with the same content.
        let after = after(
            synced.clone(),
            &Decision::Resend { new_version: true },
            at(20),
            at(21),
        );
        assert_eq!(
            (after.version, after.sync_state, &after.fields),
            (13, SyncState::Pending, &synced.fields)
        );
        // A local change still on its way replaces it anyway; a failed one is queued again.
        let pending = written(local(13, 12, 5), 12);
        assert_eq!(newest(&pending, &late), Decision::Skip(Skip::OwnOlderWrite));
        let mut failed = pending;
        failed.sync_state = SyncState::Failed;
        assert_eq!(
            newest(&failed, &late),
            Decision::Resend { new_version: false }
        );
    }

    #[test]
    fn a_late_write_is_ordered_like_any_event_first() {
        let mut synced = written(seen_event_at(local(12, 12, 5), 30), 12);
        synced.stripe_write = Some(WriteWindow {
            started: at(40),
            finished: at(41),
        });
        // Older than an event applied since: stale. Close to paysync's last write: Stripe is
        // asked which landed last.
        assert_eq!(
            newest(&synced, &holding(event(EventKind::Updated, 20, "x"), 9)),
            Decision::Skip(Skip::Stale)
        );
        assert_eq!(
            newest(&synced, &holding(event(EventKind::Updated, 41, "x"), 9)),
            Decision::Refetch
        );
    }

    #[test]
    fn an_unrecorded_write_of_an_older_version_never_beats_a_local_change() {
        // paysync recorded writing 8; its write of 9 landed unrecorded; the user wrote 10.
        let pending = written(local(10, 8, 5), 8);
        let own = holding(event(EventKind::Updated, 50, "v9 content"), 9);
        assert_eq!(newest(&pending, &own), Decision::Skip(Skip::OwnOlderWrite));
        // The version paysync last recorded is a Stripe change when it differs (an edit in
        // the Dashboard on top of paysync's last write).
        let edit = holding(event(EventKind::Updated, 50, "Dashboard edit"), 8);
        assert_eq!(
            newest(&written(seen_event_at(local(8, 8, 5), 5), 8), &edit),
            Decision::Apply(fields("Dashboard edit"))
        );
        // Nothing recorded written yet (a create whose answer was lost landed late, the user
        // changed the customer meanwhile): paysync's own older write too.
        assert_eq!(
            newest(
                &local(2, 0, 5),
                &holding(event(EventKind::Created, 20, "v1"), 1)
            ),
            Decision::Skip(Skip::OwnOlderWrite)
        );
        // Synced, last write unknown (rows from before it was recorded): the usual rules.
        assert_eq!(
            newest(
                &seen_event_at(local(12, 12, 5), 5),
                &holding(event(EventKind::Updated, 20, "y"), 9)
            ),
            Decision::Apply(fields("y"))
        );
    }

    fn listed(name: &str, listed_at: DateTime<Utc>) -> IncomingEvent {
        let mut listing = event(EventKind::Updated, 0, name);
        listing.created = super::super::event::surely_included(listed_at);
        listing.listed = Some(listed_at);
        listing
    }

    #[test]
    fn a_listing_never_beats_an_event_applied_after_its_list_call() {
        let list_call = at(100) + TimeDelta::milliseconds(700);
        // An event of the list call's second (or later) was applied since: Stripe is asked.
        let customer = seen_event_at(local(3, 3, 5), 100);
        assert_eq!(
            newest(&customer, &listed("Listed", list_call)),
            Decision::Refetch
        );
        // Events well before the list call are in the listing: it applies.
        let customer = seen_event_at(local(3, 3, 5), 90);
        assert_eq!(
            newest(&customer, &listed("Listed", list_call)),
            Decision::Apply(fields("Listed"))
        );
        // paysync's own write around the list call: asked too.
        let mut written_since = seen_event_at(local(3, 3, 5), 90);
        written_since.stripe_write = Some(WriteWindow {
            started: at(99),
            finished: at(100),
        });
        assert_eq!(
            newest(&written_since, &listed("Listed", list_call)),
            Decision::Refetch
        );
    }

    #[test]
    fn an_event_of_a_listings_second_is_never_dropped_as_older_than_it() {
        // A listing made at 100.7 s is applied; an event created at second 100 may have
        // happened after the list call, so it is not stale.
        let list_call = at(100) + TimeDelta::milliseconds(700);
        let customer = seen_event_at(local(3, 3, 5), 50);
        let listing = listed("Listed", list_call);
        let decision = newest(&customer, &listing);
        assert_eq!(decision, Decision::Apply(fields("Listed")));
        let customer = after(customer, &decision, listing.created, at(101));
        let same_second = event(EventKind::Updated, 100, "Same second");
        assert_eq!(
            newest(&customer, &same_second),
            Decision::Apply(fields("Same second"))
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

    #[test]
    fn a_conflict_is_settled_field_by_field() {
        // Local changed the email (not synced yet); Stripe changed the name, later.
        let mut pending = seen_event_at(local(4, 3, 20), 1);
        pending.fields.email = "local@example.com".into();
        let mut stripe = event(EventKind::Updated, 25, "Stripe name");
        stripe.fields.email = Some("stripe@example.com".into());
        let rules = Rules {
            conflict: ConflictRules {
                default: Resolution::StripeWins,
                fields: BTreeMap::from([("email".to_owned(), Resolution::LocalWins)]),
            },
            ..Rules::default()
        };
        let Decision::Merge(merged) = decide(Some(&pending), &stripe, &rules) else {
            panic!("expected a merge");
        };
        assert_eq!(merged.email, "local@example.com");
        assert_eq!(merged.name.as_deref(), Some("Stripe name"));
        // The merge is a new local version that Stripe does not hold yet.
        let after = after(
            pending.clone(),
            &Decision::Merge(merged.clone()),
            at(25),
            at(30),
        );
        assert_eq!(after.version, 5);
        assert_eq!(after.stripe_synced_version, 3);
        assert_eq!(after.sync_state, SyncState::Pending);
        assert_eq!(after.fields, merged);
    }

    #[test]
    fn metadata_keys_follow_their_own_rules() {
        let local_side = Metadata::from_stored(BTreeMap::from([
            ("plan".to_owned(), "local-plan".to_owned()),
            ("seats".to_owned(), "3".to_owned()),
        ]));
        let stripe_side = Metadata::from_stored(BTreeMap::from([
            ("plan".to_owned(), "stripe-plan".to_owned()),
            ("seats".to_owned(), "5".to_owned()),
            ("region".to_owned(), "eu".to_owned()),
        ]));
        let base = fields("Ada");
        let (mut l, mut s) = (base.clone(), base);
        l.metadata = local_side;
        s.metadata = stripe_side;
        let rules = ConflictRules {
            default: Resolution::LocalWins,
            fields: BTreeMap::from([("metadata.plan".to_owned(), Resolution::StripeWins)]),
        };
        let merged = resolve_conflict(&l, &s, &rules, false);
        assert_eq!(
            merged.metadata.as_map(),
            &BTreeMap::from([
                ("plan".to_owned(), "stripe-plan".to_owned()),
                ("seats".to_owned(), "3".to_owned()),
            ])
        );
        // Newest with Stripe newer takes every differing key from Stripe.
        let newest = ConflictRules::default();
        assert_eq!(resolve_conflict(&l, &s, &newest, true).metadata, s.metadata);
    }

    #[test]
    fn adoption_and_deletion_follow_the_policy() {
        let created = event(EventKind::Created, 10, "New");
        for adoption in [Adoption::None, Adoption::MatchEmail] {
            let rules = Rules {
                adoption,
                ..Rules::default()
            };
            assert_eq!(
                decide(None, &created, &rules),
                Decision::Skip(Skip::NotAdopted)
            );
        }
        let deleted = event(EventKind::Deleted, 10, "Ada");
        let linked = local(2, 2, 5);
        let orphan = Rules {
            deletion: Deletion::Orphan,
            ..Rules::default()
        };
        assert_eq!(decide(Some(&linked), &deleted, &orphan), Decision::Orphan);
        let orphaned = after(linked.clone(), &Decision::Orphan, at(10), at(11));
        assert_eq!(orphaned.stripe_id, None);
        assert_eq!(orphaned.sync_state, SyncState::Orphaned);
        assert_eq!(orphaned.deleted_at, None);
        for deletion in [Deletion::Propagate, Deletion::SoftDelete] {
            let rules = Rules {
                deletion,
                ..Rules::default()
            };
            assert_eq!(decide(Some(&linked), &deleted, &rules), Decision::Delete);
        }
    }
}
