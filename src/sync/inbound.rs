//! The inbound worker's pure core: what a Stripe customer event does to the local row.
//!
//! Kept free of I/O so every rule of DESIGN.md §3 that concerns inbound events can be tested
//! directly: older events never overwrite newer ones (invariant 5), paysync's own writes
//! coming back are recognised and change nothing (invariant 4), and a conflict between an
//! unsynced local change and a newer Stripe change is settled by the policy.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::domain::{
    Customer, CustomerFields, CustomerId, Description, Email, Metadata, Name, Phone,
    RESERVED_PREFIX, StripeCustomerId, SyncState, ValidationError,
};
use crate::stripe::StripeCustomer;
use crate::stripe::event::StripeEvent;

/// The prefix of every Idempotency-Key paysync sends to Stripe.
pub const OWN_IDEMPOTENCY_PREFIX: &str = "paysync:";

/// How far paysync's clock may be from Stripe's. Events this close to one of paysync's own
/// writes may be on either side of it, so Stripe is asked for its current state.
pub const CLOCK_SKEW_ALLOWANCE: TimeDelta = TimeDelta::seconds(2);

/// Stripe's `created` is whole seconds: an event happened before `created` + this.
const CREATED_RESOLUTION: TimeDelta = TimeDelta::seconds(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

impl EventKind {
    pub fn parse(event_type: &str) -> Option<Self> {
        match event_type {
            "customer.created" => Some(Self::Created),
            "customer.updated" => Some(Self::Updated),
            "customer.deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
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

impl FromStr for ConflictPolicy {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "newest" => Ok(Self::Newest),
            "local-wins" => Ok(Self::LocalWins),
            "stripe-wins" => Ok(Self::StripeWins),
            other => Err(format!(
                "{other:?} is not a conflict policy (newest, local-wins or stripe-wins)"
            )),
        }
    }
}

/// The synced fields as Stripe holds them (paysync's own metadata keys removed; Stripe's
/// empty strings are unset values, as they are locally), valid by the customer domain's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteFields {
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl RemoteFields {
    /// From a Stripe customer object as an event carries it, checked against the same domain
    /// rules as a REST write (so inbound can never store what the API would refuse). An error
    /// names every field that breaks a rule; the event is then dead-lettered, nothing of it
    /// applied.
    pub fn from_object(object: &Value) -> Result<Self, String> {
        let text = |field: &str| object.get(field).and_then(Value::as_str).map(str::to_owned);
        let metadata = object
            .get("metadata")
            .and_then(Value::as_object)
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Self::parse(UncheckedFields {
            email: text("email"),
            name: text("name"),
            phone: text("phone"),
            description: text("description"),
            metadata,
        })
    }

    /// From a customer retrieved from Stripe, checked as [`Self::from_object`] does.
    pub fn from_customer(customer: &StripeCustomer) -> Result<Self, String> {
        Self::parse(UncheckedFields {
            email: customer.email.clone(),
            name: customer.name.clone(),
            phone: customer.phone.clone(),
            description: customer.description.clone(),
            metadata: customer.metadata.clone(),
        })
    }

    /// Stripe's empty strings are unset values, as they are locally; values are trimmed as
    /// the REST API trims them, so both sides compare equal after a round trip.
    fn parse(unchecked: UncheckedFields) -> Result<Self, String> {
        let mut errors: Vec<ValidationError> = Vec::new();
        let mut check = |result: Result<Option<String>, ValidationError>| {
            result.unwrap_or_else(|e| {
                errors.push(e);
                None
            })
        };
        let email = check(match unchecked.email.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(raw) => Email::parse(raw).map(|e| Some(e.into_inner())),
        });
        let optional = |raw: &Option<String>| raw.clone().unwrap_or_default();
        let name = check(Name::parse(&optional(&unchecked.name)).map(|n| n.map(Name::into_inner)));
        let phone =
            check(Phone::parse(&optional(&unchecked.phone)).map(|p| p.map(Phone::into_inner)));
        let description = check(
            Description::parse(&optional(&unchecked.description))
                .map(|d| d.map(Description::into_inner)),
        );
        let metadata = match Metadata::parse(user_metadata(unchecked.metadata)) {
            Ok(metadata) => metadata.into_inner(),
            Err(e) => {
                errors.push(e);
                BTreeMap::new()
            }
        };
        if !errors.is_empty() {
            let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(format!(
                "the Stripe customer breaks paysync's customer rules: {}",
                reasons.join("; ")
            ));
        }
        Ok(Self {
            email,
            name,
            phone,
            description,
            metadata,
        })
    }

    /// The local fields these become. Stripe allows customers without an email, paysync does
    /// not: the local email is kept then.
    pub fn to_local(&self, local_email: &str) -> CustomerFields {
        CustomerFields {
            email: self.email.clone().unwrap_or_else(|| local_email.to_owned()),
            name: self.name.clone(),
            phone: self.phone.clone(),
            description: self.description.clone(),
            metadata: Metadata::from_stored(self.metadata.clone()),
        }
    }
}

/// The synced fields of a Stripe customer before the domain rules are applied.
struct UncheckedFields {
    email: Option<String>,
    name: Option<String>,
    phone: Option<String>,
    description: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// Metadata without paysync's own keys, and without blank values (Stripe's way of removing
/// a key; localstripe keeps them blank).
fn user_metadata(metadata: BTreeMap<String, String>) -> BTreeMap<String, String> {
    metadata
        .into_iter()
        .filter(|(key, value)| !key.starts_with(RESERVED_PREFIX) && !value.is_empty())
        .collect()
}

/// A Stripe customer event, as the decision needs it.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub id: String,
    pub kind: EventKind,
    /// `event.created` (1 s resolution).
    pub created: DateTime<Utc>,
    pub stripe_id: String,
    pub idempotency_key: Option<String>,
    pub fields: RemoteFields,
    /// `metadata.paysync_id`, when paysync created or linked the Stripe customer.
    pub paysync_id: Option<CustomerId>,
    /// Fetched from Stripe just now rather than carried by the event: Stripe's current state,
    /// so no ordering doubt applies.
    pub current: bool,
}

impl IncomingEvent {
    /// Reads a customer event; an error names what is missing or breaks a domain rule (the
    /// event is dead-lettered).
    pub fn from_stripe(event: &StripeEvent) -> Result<Self, String> {
        let mut incoming = Self::head(event)?;
        incoming.fields = RemoteFields::from_object(&event.data.object)?;
        Ok(incoming)
    }

    /// What identifies the event and its customer, without its content (a replay decides on
    /// what Stripe holds now instead).
    pub fn head(event: &StripeEvent) -> Result<Self, String> {
        let kind = EventKind::parse(&event.kind)
            .ok_or_else(|| format!("{} is not a customer event paysync applies", event.kind))?;
        let object = &event.data.object;
        let raw_id = object
            .get("id")
            .and_then(Value::as_str)
            .ok_or("data.object has no customer id")?;
        let stripe_id = StripeCustomerId::parse(raw_id)
            .map_err(|e| format!("data.object.id: {}", e.message))?
            .as_str()
            .to_owned();
        let created = DateTime::from_timestamp(event.created, 0)
            .ok_or_else(|| format!("created {} is not a valid time", event.created))?;
        let paysync_id = object
            .pointer("/metadata/paysync_id")
            .and_then(Value::as_str)
            .and_then(|id| id.parse().ok());
        Ok(Self {
            id: event.id.clone(),
            kind,
            created,
            stripe_id,
            idempotency_key: event.idempotency_key().map(str::to_owned),
            fields: RemoteFields::default(),
            paysync_id,
            current: false,
        })
    }

    /// Stripe's current state of the event's customer (`None`: deleted), in its place; an
    /// error when that state breaks a domain rule.
    pub fn refetched(&self, current: Option<&StripeCustomer>) -> Result<Self, String> {
        let mut refetched = self.clone();
        refetched.current = true;
        refetched.idempotency_key = None;
        match current {
            Some(customer) => {
                refetched.kind = EventKind::Updated;
                refetched.fields = RemoteFields::from_customer(customer)?;
            }
            None => refetched.kind = EventKind::Deleted,
        }
        Ok(refetched)
    }
}

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
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::WriteWindow;

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
            stripe_event_at: None,
            stripe_write: None,
            stripe_synced_hash: None,
            created_at: at(0),
            updated_at: at(updated),
            deleted_at: None,
        }
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

    #[test]
    fn reads_localstripe_and_stripe_events() {
        let raw = br#"{"id": "evt_9", "type": "customer.updated", "created": 1700000010,
            "data": {"object": {"id": "cus_9", "object": "customer", "email": "a@example.com",
              "name": "", "phone": null, "description": "VIP",
              "metadata": {"paysync_id": "0190a5a4-0000-7000-8000-000000000000",
                           "paysync_version": "3", "plan": "pro", "removed": ""}}}}"#;
        let event = IncomingEvent::from_stripe(&StripeEvent::parse(raw).unwrap()).unwrap();
        assert_eq!(event.kind, EventKind::Updated);
        assert_eq!(event.stripe_id, "cus_9");
        assert_eq!(event.created, at(10));
        assert_eq!(
            event.paysync_id.unwrap().to_string(),
            "0190a5a4-0000-7000-8000-000000000000"
        );
        assert_eq!(event.fields.name, None);
        assert_eq!(event.fields.description.as_deref(), Some("VIP"));
        assert_eq!(
            event.fields.metadata,
            BTreeMap::from([("plan".into(), "pro".into())])
        );
        let not_a_customer = br#"{"id": "evt_8", "type": "customer.updated", "created": 1,
            "data": {"object": {"id": "in_1", "object": "invoice"}}}"#;
        assert!(IncomingEvent::from_stripe(&StripeEvent::parse(not_a_customer).unwrap()).is_err());
    }

    #[test]
    fn stripe_content_follows_the_same_domain_rules_as_the_rest_api() {
        let object = |fields: Value| {
            let mut customer = json!({"id": "cus_1", "object": "customer"});
            customer
                .as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            RemoteFields::from_object(&customer)
        };
        for (bad, field) in [
            (json!({"email": "not-an-email"}), "email"),
            (
                json!({"email": "a@example.com", "name": "n".repeat(5000)}),
                "name",
            ),
            (
                json!({"email": "a@example.com", "name": "Ada\u{0}"}),
                "name",
            ),
            (
                json!({"email": "a@example.com", "metadata": {"k": "a\u{0}b"}}),
                "metadata.k",
            ),
            (
                json!({"email": "a@example.com", "phone": "1".repeat(21)}),
                "phone",
            ),
        ] {
            let err = object(bad.clone()).unwrap_err();
            assert!(err.contains(field), "{bad}: {err}");
        }
        // Every broken field is named, not only the first.
        let err = object(json!({"email": "x", "name": "\u{0}"})).unwrap_err();
        assert!(err.contains("email") && err.contains("name"), "{err}");
        // Values are trimmed as the REST API trims them; blanks are unset.
        let fields =
            object(json!({"email": " a@example.com ", "name": " Ada ", "phone": ""})).unwrap();
        assert_eq!(fields.email.as_deref(), Some("a@example.com"));
        assert_eq!(fields.name.as_deref(), Some("Ada"));
        assert_eq!(fields.phone, None);
        assert_eq!(object(json!({})).unwrap().email, None);
    }

    #[test]
    fn an_event_about_something_that_is_not_a_customer_id_is_refused() {
        let raw = br#"{"id": "evt_1", "type": "customer.updated", "created": 1,
            "data": {"object": {"id": "cus_\u0000", "object": "customer"}}}"#;
        let err = IncomingEvent::from_stripe(&StripeEvent::parse(raw).unwrap()).unwrap_err();
        assert!(err.contains("data.object.id"), "{err}");
    }

    #[test]
    fn conflict_policies_parse_by_name() {
        assert_eq!("local-wins".parse(), Ok(ConflictPolicy::LocalWins));
        assert!("oldest".parse::<ConflictPolicy>().is_err());
    }
}
