//! paysync's own, tolerant view of a Stripe event: what real Stripe sends and what
//! localstripe sends (no `pending_webhooks`, no `request`, an old `api_version`), both parse.

use serde::Deserialize;

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

impl StripeEvent {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: Self =
            serde_json::from_slice(body).map_err(|e| format!("not a Stripe event: {e}"))?;
        if !event.id.starts_with("evt_") {
            return Err(format!("{:?} is not a Stripe event id", event.id));
        }
        Ok(event)
    }

    /// Reads an event queued as JSON (inbox row, Kafka envelope, dead letter).
    pub fn from_value(value: &serde_json::Value) -> Result<Self, String> {
        let event = Self::deserialize(value).map_err(|e| format!("not a Stripe event: {e}"))?;
        if !event.id.starts_with("evt_") {
            return Err(format!("{:?} is not a Stripe event id", event.id));
        }
        Ok(event)
    }

    pub fn is_handled(&self) -> bool {
        HANDLED_TYPES.contains(&self.kind.as_str())
    }

    /// The Stripe customer the event is about (the Kafka key), for customer events.
    pub fn customer_id(&self) -> Option<&str> {
        let object = &self.data.object;
        match object.get("object").and_then(|o| o.as_str()) {
            Some("customer") => object.get("id").and_then(|id| id.as_str()),
            _ => object.get("customer").and_then(|id| id.as_str()),
        }
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
