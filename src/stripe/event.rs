//! paysync's own, tolerant view of a Stripe event: what real Stripe sends and what
//! localstripe sends (no `pending_webhooks`, no `request`, an old `api_version`), both parse.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use crate::domain::StripeCustomerId;

/// The customer events paysync applies; other types are acknowledged and ignored.
pub const HANDLED_TYPES: [&str; 3] = ["customer.created", "customer.updated", "customer.deleted"];

#[derive(Debug, Clone, Deserialize)]
pub struct StripeEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds; Stripe's ordering information (1 s resolution).
    pub created: i64,
    pub data: EventData,
    /// What caused the event, when Stripe says (missing in localstripe; a bare string in old
    /// API versions).
    #[serde(default)]
    pub request: Option<serde_json::Value>,
    /// The connected account, for Connect events.
    #[serde(default)]
    pub account: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

/// A verified delivery as the queue keeps it: the body exactly as Stripe sent it, and the few
/// fields routing needs. Reading only those (no JSON tree of the whole event) keeps the
/// ingress cheap; the inbound worker reads the rest later.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    pub id: String,
    pub kind: String,
    /// Unix seconds.
    pub created: i64,
    /// The Stripe customer the event is about (the Kafka key), for customer events.
    pub customer_id: Option<String>,
    /// The event's JSON, byte for byte.
    pub raw: Bytes,
}

#[derive(Deserialize)]
struct EventHead<'a> {
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

#[derive(Deserialize)]
struct ObjectHead<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    object: Option<Cow<'a, str>>,
}

/// Stripe event ids are short; anything longer is not one.
const MAX_EVENT_ID_CHARS: usize = 255;

/// An event id is the dedup key paysync stores: `evt_` and letters, digits, `_` or `-` (so
/// it can always be stored and logged as it is).
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

impl VerifiedEvent {
    /// Reads a delivery's body; an error says why it is not a Stripe event.
    pub fn parse(raw: Bytes) -> Result<Self, String> {
        let head: EventHead<'_> =
            serde_json::from_slice(&raw).map_err(|e| format!("not a Stripe event: {e}"))?;
        check_event_id(&head.id)?;
        let object = head.data.object;
        // An id that is not a customer id routes by the event id; the inbound worker then
        // dead-letters the event with the reason.
        let customer_id = match object.object.as_deref() {
            Some("customer") => object
                .id
                .filter(|id| StripeCustomerId::parse(id).is_ok())
                .map(Cow::into_owned),
            _ => None,
        };
        Ok(Self {
            id: head.id.into_owned(),
            kind: head.kind.into_owned(),
            created: head.created,
            customer_id,
            raw,
        })
    }

    pub fn is_handled(&self) -> bool {
        HANDLED_TYPES.contains(&self.kind.as_str())
    }
}

impl StripeEvent {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: Self =
            serde_json::from_slice(body).map_err(|e| format!("not a Stripe event: {e}"))?;
        check_event_id(&event.id)?;
        Ok(event)
    }

    pub fn is_handled(&self) -> bool {
        HANDLED_TYPES.contains(&self.kind.as_str())
    }

    /// The Stripe customer the event is about (the Kafka key), for customer events.
    /// Only a well-formed id is returned: it is stored and used as a Kafka key.
    pub fn customer_id(&self) -> Option<&str> {
        let object = &self.data.object;
        let id = match object.get("object").and_then(|o| o.as_str()) {
            Some("customer") => object.get("id").and_then(|id| id.as_str()),
            _ => object.get("customer").and_then(|id| id.as_str()),
        };
        id.filter(|id| StripeCustomerId::parse(id).is_ok())
    }

    /// The Idempotency-Key of the API request behind the event, if Stripe reports it: paysync
    /// recognises its own writes by the `paysync:` prefix.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.request.as_ref()?.get("idempotency_key")?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_localstripe_events_without_request_or_pending_webhooks() {
        let event = StripeEvent::parse(
            br#"{"id": "evt_1", "object": "event", "type": "customer.updated", "created": 1700000000,
                 "api_version": "2017-08-15", "livemode": false,
                 "data": {"object": {"id": "cus_1", "object": "customer", "email": "a@example.com"}}}"#,
        )
        .unwrap();
        assert!(event.is_handled());
        assert_eq!(event.customer_id(), Some("cus_1"));
        assert_eq!(event.idempotency_key(), None);
    }

    #[test]
    fn reads_the_request_idempotency_key_of_real_stripe_events() {
        let event = StripeEvent::parse(
            br#"{"id": "evt_2", "type": "customer.created", "created": 1, "pending_webhooks": 1,
                 "request": {"id": "req_1", "idempotency_key": "paysync:create:abc"},
                 "data": {"object": {"id": "cus_2", "object": "customer"}}}"#,
        )
        .unwrap();
        assert_eq!(event.idempotency_key(), Some("paysync:create:abc"));
        let old_style = StripeEvent::parse(
            br#"{"id": "evt_3", "type": "invoice.paid", "created": 1, "request": "req_9",
                 "data": {"object": {"id": "in_1", "object": "invoice", "customer": "cus_3"}}}"#,
        )
        .unwrap();
        assert!(!old_style.is_handled());
        assert_eq!(old_style.customer_id(), Some("cus_3"));
        assert_eq!(old_style.idempotency_key(), None);
    }

    #[test]
    fn verified_events_read_what_routing_needs() {
        let raw = Bytes::from_static(
            br#"{"id": "evt_1", "type": "customer.updated", "created": 1700000000,
                 "data": {"object": {"id": "cus_\u0031", "object": "customer",
                                     "address": {"city": "London"}, "preferred_locales": ["en"]}}}"#,
        );
        let event = VerifiedEvent::parse(raw.clone()).unwrap();
        assert_eq!(event.id, "evt_1");
        assert!(event.is_handled());
        assert_eq!(event.created, 1_700_000_000);
        assert_eq!(event.customer_id.as_deref(), Some("cus_1"));
        assert_eq!(event.raw, raw);
        let invoice = VerifiedEvent::parse(Bytes::from_static(
            br#"{"id": "evt_2", "type": "invoice.paid", "created": 1,
                 "data": {"object": {"id": "in_1", "object": "invoice", "customer": "cus_3"}}}"#,
        ))
        .unwrap();
        assert!(!invoice.is_handled());
        assert_eq!(invoice.customer_id, None);
        let odd_customer = VerifiedEvent::parse(Bytes::from_static(
            br#"{"id": "evt_3", "type": "customer.updated", "created": 1,
                 "data": {"object": {"id": "cus_\u0000", "object": "customer"}}}"#,
        ))
        .unwrap();
        assert_eq!(odd_customer.customer_id, None);
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"id": "cus_1", "type": "x", "created": 1, "data": {"object": {}}}"#,
            br#"{"id": "evt_\u0000", "type": "x", "created": 1, "data": {"object": {}}}"#,
            br#"{"id": "evt_a b", "type": "x", "created": 1, "data": {"object": {}}}"#,
        ] {
            assert!(VerifiedEvent::parse(Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        assert!(StripeEvent::parse(b"{}").is_err());
        assert!(StripeEvent::parse(b"not json").is_err());
        assert!(
            StripeEvent::parse(
                br#"{"id": "cus_1", "type": "x", "created": 1, "data": {"object": {}}}"#
            )
            .is_err()
        );
    }
}
