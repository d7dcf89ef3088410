//! A Stripe customer event as the inbound rules need it: what it is about, when, and what the
//! customer holds according to it (or, for a refetch, according to Stripe now).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::rules::{CLOCK_SKEW_ALLOWANCE, CREATED_RESOLUTION};
use crate::domain::{CustomerId, StripeCustomerId};
use crate::stripe::StripeCustomer;
use crate::stripe::event::{EventBody, EventKind, StripeEvent};
use crate::sync::mapping::{PAYSYNC_ID_KEY, PAYSYNC_VERSION_KEY, RemoteFields};

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
    /// `metadata.paysync_version`: the version of paysync's last write the Stripe customer
    /// holds.
    pub paysync_version: Option<i64>,
    /// Fetched from Stripe just now rather than carried by the event: Stripe's current state,
    /// so no ordering doubt applies.
    pub current: bool,
    /// Stripe's state as the reconciler listed it, with when the list call was made (by
    /// paysync's clock): when it changed is unknown, so a conflict settled `Newest` keeps the
    /// local change, and it is doubted (asked of Stripe again) when anything newer than the
    /// list call was applied to the customer since. `created` is then the newest event time
    /// the listing surely includes.
    pub listed: Option<DateTime<Utc>>,
}

impl IncomingEvent {
    /// Reads a customer event; an error names what is missing or breaks a domain rule (the
    /// event is dead-lettered).
    pub fn from_stripe(event: &StripeEvent) -> Result<Self, String> {
        let body = event.body()?;
        let mut incoming = Self::identify(event, &body)?;
        incoming.fields = RemoteFields::from_object(&body.object)?;
        incoming.idempotency_key = body.idempotency_key;
        Ok(incoming)
    }

    /// What identifies the event and its customer, without its content (a replay decides on
    /// what Stripe holds now instead).
    pub fn head(event: &StripeEvent) -> Result<Self, String> {
        Self::identify(event, &event.body()?)
    }

    fn identify(event: &StripeEvent, body: &EventBody) -> Result<Self, String> {
        let kind = event
            .customer_kind()
            .ok_or_else(|| format!("{} is not a customer event paysync applies", event.kind))?;
        let raw_id = body
            .object
            .get("id")
            .and_then(Value::as_str)
            .ok_or("data.object has no customer id")?;
        let stripe_id = StripeCustomerId::parse(raw_id)
            .map_err(|e| format!("data.object.id: {}", e.message))?
            .as_str()
            .to_owned();
        let created = DateTime::from_timestamp(event.created, 0)
            .ok_or_else(|| format!("created {} is not a valid time", event.created))?;
        let paysync_key = |key: &str| {
            body.object
                .get("metadata")
                .and_then(|metadata| metadata.get(key))
                .and_then(Value::as_str)
        };
        Ok(Self {
            id: event.id.clone(),
            kind,
            created,
            stripe_id,
            idempotency_key: None,
            fields: RemoteFields::default(),
            paysync_id: paysync_key(PAYSYNC_ID_KEY).and_then(|id| id.parse().ok()),
            paysync_version: paysync_key(PAYSYNC_VERSION_KEY).and_then(|v| v.parse().ok()),
            current: false,
            listed: None,
        })
    }

    /// A Stripe customer as the reconciler listed it with a call made at `listed_at`
    /// (`None`: gone), in place of an event, with no time of change.
    pub fn listed(
        stripe_id: &str,
        customer: Option<&StripeCustomer>,
        listed_at: DateTime<Utc>,
    ) -> Result<Self, String> {
        let (kind, fields) = match customer {
            Some(customer) => (EventKind::Updated, RemoteFields::from_customer(customer)?),
            None => (EventKind::Deleted, RemoteFields::default()),
        };
        Ok(Self {
            id: format!("reconcile:{stripe_id}"),
            kind,
            created: surely_included(listed_at),
            stripe_id: stripe_id.to_owned(),
            idempotency_key: None,
            fields,
            paysync_id: customer.and_then(paysync_id_of),
            paysync_version: customer.and_then(paysync_version_of),
            current: false,
            listed: Some(listed_at),
        })
    }

    /// Stripe's current state of the event's customer (`None`: deleted), in its place; an
    /// error when that state breaks a domain rule.
    pub fn refetched(&self, current: Option<&StripeCustomer>) -> Result<Self, String> {
        let mut refetched = self.clone();
        refetched.current = true;
        refetched.idempotency_key = None;
        refetched.paysync_version = current.and_then(paysync_version_of);
        // A listing fetched again: its time is now.
        if refetched.listed.is_some() {
            let now = Utc::now();
            refetched.listed = Some(now);
            refetched.created = surely_included(now);
        }
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

/// The newest `created` (whole seconds, by Stripe's clock) of an event that surely happened
/// before a call Stripe answered, made at `at` by paysync's clock: a second before, less the
/// clock skew allowed. Events of later seconds may or may not be in what the call saw.
pub fn surely_included(at: DateTime<Utc>) -> DateTime<Utc> {
    let before = at - CREATED_RESOLUTION - CLOCK_SKEW_ALLOWANCE;
    DateTime::from_timestamp(before.timestamp(), 0).unwrap_or(before)
}

fn paysync_id_of(customer: &StripeCustomer) -> Option<CustomerId> {
    customer.metadata.get(PAYSYNC_ID_KEY)?.parse().ok()
}

fn paysync_version_of(customer: &StripeCustomer) -> Option<i64> {
    customer.metadata.get(PAYSYNC_VERSION_KEY)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(raw: &str) -> StripeEvent {
        StripeEvent::parse(raw.to_owned()).unwrap()
    }

    #[test]
    fn an_event_about_something_that_is_not_a_customer_id_is_refused() {
        let raw = r#"{"id": "evt_1", "type": "customer.updated", "created": 1,
            "data": {"object": {"id": "cus_\u0000", "object": "customer"}}}"#;
        let err = IncomingEvent::from_stripe(&parse(raw)).unwrap_err();
        assert!(err.contains("data.object.id"), "{err}");
    }

    #[test]
    fn reads_localstripe_and_stripe_events() {
        let raw = r#"{"id": "evt_9", "type": "customer.updated", "created": 1700000010,
            "data": {"object": {"id": "cus_9", "object": "customer", "email": "a@example.com",
              "name": "", "phone": null, "description": "VIP",
              "metadata": {"paysync_id": "0190a5a4-0000-7000-8000-000000000000",
                           "paysync_version": "3", "plan": "pro", "removed": ""}}}}"#;
        let event = IncomingEvent::from_stripe(&parse(raw)).unwrap();
        assert_eq!(event.kind, EventKind::Updated);
        assert_eq!(event.stripe_id, "cus_9");
        assert_eq!(event.created.timestamp(), 1_700_000_010);
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
        let not_a_customer = r#"{"id": "evt_8", "type": "customer.updated", "created": 1,
            "data": {"object": {"id": "in_1", "object": "invoice"}}}"#;
        assert!(IncomingEvent::from_stripe(&parse(not_a_customer)).is_err());
    }
}
