//! A Stripe event as paysync carries it from the ingress (or the Events API) through the queue
//! to the inbound worker: its JSON byte for byte, and the few fields routing needs, read
//! without building a tree of the whole event. Tolerant of what real Stripe and localstripe
//! each send (localstripe has no `pending_webhooks`, no `request`, an old `api_version`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::domain::{DEFAULT_ACCOUNT, StripeCustomerId};

/// The customer events paysync applies; other types are acknowledged and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

impl EventKind {
    pub const ALL: [Self; 3] = [Self::Created, Self::Updated, Self::Deleted];

    pub fn parse(event_type: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == event_type)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "customer.created",
            Self::Updated => "customer.updated",
            Self::Deleted => "customer.deleted",
        }
    }
}

/// Stripe event ids are short; anything longer is not one.
const MAX_EVENT_ID_CHARS: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeEvent {
    /// `evt_…`: letters, digits, `_` or `-` only (so it can be stored and logged as is).
    pub id: String,
    /// The event type, e.g. `customer.updated`.
    pub kind: String,
    /// Unix seconds; Stripe's ordering information (1 s resolution).
    pub created: i64,
    /// The Stripe customer the event is about (the Kafka key), when it is a well-formed id.
    pub customer_id: Option<String>,
    /// The id of the object the event carries (any kind), when it has one: the Kafka key of
    /// an event about something else than a customer, so one object's events stay in order.
    pub object_id: Option<String>,
    /// The event's JSON exactly as received.
    pub raw: String,
    /// The policy (Stripe account) the event came for: its webhook route, or the account
    /// catch-up read; not part of the JSON.
    pub account: String,
}

/// The content of an event, read when the worker applies it.
#[derive(Debug, Clone)]
pub struct EventBody {
    /// `data.object`.
    pub object: Value,
    /// The Idempotency-Key of the API request behind the event, when Stripe reports it:
    /// paysync recognises its own writes by the `paysync:` prefix.
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    created: i64,
    #[serde(borrow)]
    data: DataHead<'a>,
}

#[derive(Deserialize)]
struct DataHead<'a> {
    #[serde(borrow)]
    object: ObjectHead<'a>,
}

/// The object's `id` and `object` as they are, whatever their JSON type: an object whose id is
/// not a string is still an event, which the worker dead-letters with the reason.
#[derive(Deserialize)]
struct ObjectHead<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
}

/// A raw JSON value if it is a string.
fn text(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

#[derive(Deserialize)]
struct Body {
    data: BodyData,
    /// What caused the event (a bare string in old API versions).
    #[serde(default)]
    request: Option<Value>,
}

#[derive(Deserialize)]
struct BodyData {
    object: Value,
}

impl StripeEvent {
    /// Reads an event's JSON; an error says why it is not a Stripe event.
    pub fn parse(raw: String) -> Result<Self, String> {
        let head: Head<'_> =
            serde_json::from_str(&raw).map_err(|e| format!("not a Stripe event: {e}"))?;
        check_event_id(&head.id)?;
        let object = head.data.object;
        let id = text(object.id).filter(|id| id.len() <= MAX_EVENT_ID_CHARS);
        // An id that is not a customer id routes by the event id; the inbound worker then
        // dead-letters the event with the reason.
        let customer_id = match text(object.object).as_deref() {
            Some("customer") => id.clone().filter(|id| StripeCustomerId::parse(id).is_ok()),
            _ => None,
        };
        let object_id = id;
        Ok(Self {
            id: head.id.into_owned(),
            kind: head.kind.into_owned(),
            created: head.created,
            customer_id,
            object_id,
            raw,
            account: DEFAULT_ACCOUNT.to_owned(),
        })
    }

    /// The same event, for the policy `account`.
    pub fn for_account(mut self, account: &str) -> Self {
        account.clone_into(&mut self.account);
        self
    }

    /// [`Self::parse`] of bytes as they came over HTTP.
    pub fn parse_bytes(raw: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(raw).map_err(|e| format!("not a Stripe event: {e}"))?;
        Self::parse(text.to_owned())
    }

    /// The customer event this is, if paysync applies its type.
    pub fn customer_kind(&self) -> Option<EventKind> {
        EventKind::parse(&self.kind)
    }

    /// Reads the event's content.
    pub fn body(&self) -> Result<EventBody, String> {
        let body: Body =
            serde_json::from_str(&self.raw).map_err(|e| format!("not a Stripe event: {e}"))?;
        let idempotency_key = body
            .request
            .as_ref()
            .and_then(|request| request.get("idempotency_key"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(EventBody {
            object: body.data.object,
            idempotency_key,
        })
    }
}

/// An event id is the dedup key paysync stores.
fn check_event_id(id: &str) -> Result<(), String> {
    let suffix = id.strip_prefix("evt_").unwrap_or_default();
    let well_formed = !suffix.is_empty()
        && id.len() <= MAX_EVENT_ID_CHARS
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if well_formed {
        Ok(())
    } else {
        Err(format!("{id:?} is not a Stripe event id (evt_…)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<StripeEvent, String> {
        StripeEvent::parse(raw.to_owned())
    }

    #[test]
    fn reads_what_routing_needs_and_keeps_the_json() {
        let raw = r#"{"id": "evt_1", "type": "customer.updated", "created": 1700000000,
                 "data": {"object": {"id": "cus_\u0031", "object": "customer",
                                     "address": {"city": "London"}, "preferred_locales": ["en"]}}}"#;
        let event = parse(raw).unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.customer_kind(), Some(EventKind::Updated));
        assert_eq!(event.created, 1_700_000_000);
        assert_eq!(event.customer_id.as_deref(), Some("cus_1"));
        assert_eq!(event.raw, raw);
        let invoice = parse(
            r#"{"id": "evt_2", "type": "invoice.paid", "created": 1,
                 "data": {"object": {"id": "in_1", "object": "invoice", "customer": "cus_3"}}}"#,
        )
        .unwrap();
        assert_eq!(invoice.customer_kind(), None);
        assert_eq!(invoice.object_id.as_deref(), Some("in_1"));
        assert_eq!(invoice.customer_id, None);
        let odd_customer = parse(
            r#"{"id": "evt_3", "type": "customer.updated", "created": 1,
                 "data": {"object": {"id": "cus_\u0000", "object": "customer"}}}"#,
        )
        .unwrap();
        assert_eq!(odd_customer.customer_id, None);
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        for bad in [
            "{}",
            "not json",
            r#"{"id": "cus_1", "type": "x", "created": 1, "data": {"object": {}}}"#,
            r#"{"id": "evt_\u0000", "type": "x", "created": 1, "data": {"object": {}}}"#,
            r#"{"id": "evt_a b", "type": "x", "created": 1, "data": {"object": {}}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(StripeEvent::parse_bytes(b"\xff").is_err());
    }

    #[test]
    fn reads_localstripe_and_stripe_bodies() {
        let localstripe = parse(
            r#"{"id": "evt_1", "object": "event", "type": "customer.updated", "created": 1,
                 "api_version": "2017-08-15", "livemode": false,
                 "data": {"object": {"id": "cus_1", "object": "customer"}}}"#,
        )
        .unwrap();
        let body = localstripe.body().unwrap();
        assert_eq!(body.object["id"], "cus_1");
        assert_eq!(body.idempotency_key, None);
        let stripe = parse(
            r#"{"id": "evt_2", "type": "customer.created", "created": 1, "pending_webhooks": 1,
                 "request": {"id": "req_1", "idempotency_key": "paysync:create:abc"},
                 "data": {"object": {"id": "cus_2", "object": "customer"}}}"#,
        )
        .unwrap();
        assert_eq!(
            stripe.body().unwrap().idempotency_key.as_deref(),
            Some("paysync:create:abc")
        );
        let old_style = parse(
            r#"{"id": "evt_3", "type": "customer.updated", "created": 1, "request": "req_9",
                 "data": {"object": {"id": "cus_3", "object": "customer"}}}"#,
        )
        .unwrap();
        assert_eq!(old_style.body().unwrap().idempotency_key, None);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("invoice.paid"), None);
    }
}
