//! The JSON envelope of every paysync Kafka message: `{schema, id, kind, customer_id | event,
//! occurred_at}`, versioned so a consumer refuses (dead-letters) what it does not understand.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The envelope version consumers understand.
pub const SCHEMA_VERSION: u32 = 1;
/// The `kind` of inbound messages: a verified Stripe event.
pub const INBOUND_KIND: &str = "stripe.event";

/// An inbound message as the consumer reads it: the event stays raw JSON until the worker
/// needs it.
#[derive(Debug, Deserialize)]
pub struct InboundMessage<'a> {
    pub schema: u32,
    pub kind: &'a str,
    /// The policy the event came for (absent in messages from before policies: `default`).
    #[serde(borrow, default)]
    account: Option<&'a str>,
    #[serde(borrow, default)]
    event: Option<&'a serde_json::value::RawValue>,
}

impl<'a> InboundMessage<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, String> {
        let message: Self = serde_json::from_slice(payload)
            .map_err(|e| format!("not a paysync inbound envelope: {e}"))?;
        if message.schema != SCHEMA_VERSION {
            return Err(format!(
                "envelope schema {} is not supported (expected {SCHEMA_VERSION})",
                message.schema
            ));
        }
        if message.kind != INBOUND_KIND {
            return Err(format!(
                "an inbound message must be a {INBOUND_KIND}, not {}",
                message.kind
            ));
        }
        if message.event.is_none() {
            return Err("the envelope carries no event".to_owned());
        }
        Ok(message)
    }

    /// The policy the event came for.
    pub fn account(&self) -> &'a str {
        self.account.unwrap_or(crate::domain::DEFAULT_ACCOUNT)
    }

    /// The event's JSON, as it was received.
    pub fn event(&self) -> &'a str {
        self.event.map_or("null", |raw| raw.get())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: u32,
    /// Unique per message (the outbox row id for outbound messages).
    pub id: Uuid,
    /// `customer.create`, `customer.update`, `customer.delete` (outbound).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<Uuid>,
    /// The customer version the change produced (outbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
    pub occurred_at: DateTime<Utc>,
}

impl Envelope {
    pub fn outbound(
        id: Uuid,
        op: &str,
        customer_id: Uuid,
        version: i64,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            id,
            kind: format!("customer.{op}"),
            customer_id: Some(customer_id),
            version: Some(version),
            event: None,
            occurred_at,
        }
    }

    /// The message of a verified Stripe event for the inbound topic. `raw_event` must be
    /// valid JSON (a verified delivery is); it is embedded byte for byte, not re-encoded.
    pub fn inbound(raw_event: &[u8], account: &str, occurred_at: DateTime<Utc>) -> Vec<u8> {
        // A policy name is a DNS label (letters, digits, `-`): nothing to escape in JSON.
        let head = format!(
            r#"{{"schema":{SCHEMA_VERSION},"id":"{}","kind":"{INBOUND_KIND}","account":"{}","occurred_at":"{}","event":"#,
            Uuid::now_v7(),
            account.escape_default(),
            occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let mut message = Vec::with_capacity(head.len() + raw_event.len() + 1);
        message.extend_from_slice(head.as_bytes());
        message.extend_from_slice(raw_event);
        message.push(b'}');
        message
    }

    /// Parses a message payload; a newer schema or a malformed body is an error the consumer
    /// dead-letters instead of guessing.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let envelope: Self =
            serde_json::from_slice(payload).map_err(|e| format!("not a paysync envelope: {e}"))?;
        if envelope.schema != SCHEMA_VERSION {
            return Err(format!(
                "envelope schema {} is not supported (expected {SCHEMA_VERSION})",
                envelope.schema
            ));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_envelopes_round_trip() {
        let envelope = Envelope::outbound(Uuid::now_v7(), "update", Uuid::now_v7(), 4, Utc::now());
        let bytes = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(Envelope::parse(&bytes).unwrap(), envelope);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r#""kind":"customer.update""#) && !text.contains("event"),
            "{text}"
        );
    }

    #[test]
    fn inbound_envelopes_carry_the_event_byte_for_byte() {
        let raw = br#"{"id": "evt_1", "type": "customer.updated", "name": "\u00e9 \"q\""}"#;
        let bytes = Envelope::inbound(raw, "eu", Utc::now());
        let message = InboundMessage::parse(&bytes).unwrap();
        assert_eq!(message.event().as_bytes(), raw);
        assert_eq!(message.account(), "eu");
        let read = Envelope::parse(&bytes).unwrap();
        assert_eq!(read.kind, INBOUND_KIND);
        assert_eq!(read.event.unwrap()["id"], "evt_1");
        let outbound = Envelope::outbound(Uuid::now_v7(), "update", Uuid::now_v7(), 1, Utc::now());
        let outbound = serde_json::to_vec(&outbound).unwrap();
        assert!(InboundMessage::parse(&outbound).is_err());
    }

    #[test]
    fn rejects_garbage_and_unknown_schemas() {
        assert!(Envelope::parse(b"not json").is_err());
        let future = br#"{"schema": 2, "id": "0190a5a4-0000-7000-8000-000000000000", "kind": "x", "occurred_at": "2026-01-01T00:00:00Z"}"#;
        assert!(Envelope::parse(future).unwrap_err().contains("schema 2"));
    }
}
