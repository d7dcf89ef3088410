//! The JSON envelope of every paysync Kafka message (DESIGN.md §6).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The envelope version consumers understand.
pub const SCHEMA_VERSION: u32 = 1;
/// The `kind` of inbound messages: a verified Stripe event.
pub const INBOUND_KIND: &str = "stripe.event";

/// The inbound form of [`Envelope`], serialized without copying the event.
#[derive(Debug, Serialize)]
pub struct InboundEnvelope<'a> {
    pub schema: u32,
    pub id: Uuid,
    pub kind: &'static str,
    pub event: &'a serde_json::Value,
    pub occurred_at: DateTime<Utc>,
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

    /// A verified Stripe event for the inbound topic (borrowing it: serialized, it reads back
    /// as an [`Envelope`]).
    pub fn inbound(event: &serde_json::Value, occurred_at: DateTime<Utc>) -> InboundEnvelope<'_> {
        InboundEnvelope {
            schema: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            kind: INBOUND_KIND,
            event,
            occurred_at,
        }
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
    fn inbound_envelopes_read_back_with_their_event() {
        let event = serde_json::json!({"id": "evt_1", "type": "customer.updated"});
        let bytes = serde_json::to_vec(&Envelope::inbound(&event, Utc::now())).unwrap();
        let read = Envelope::parse(&bytes).unwrap();
        assert_eq!(read.kind, INBOUND_KIND);
        assert_eq!(read.event, Some(event));
        assert_eq!(read.customer_id, None);
    }

    #[test]
    fn rejects_garbage_and_unknown_schemas() {
        assert!(Envelope::parse(b"not json").is_err());
        let future = br#"{"schema": 2, "id": "0190a5a4-0000-7000-8000-000000000000", "kind": "x", "occurred_at": "2026-01-01T00:00:00Z"}"#;
        assert!(Envelope::parse(future).unwrap_err().contains("schema 2"));
    }
}
