use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ValidationError;

/// The local id of a customer. New ids are UUIDv7, so ordering by id is ordering by creation
/// time, which keeps cursor pagination stable and index-friendly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerId(Uuid);

impl CustomerId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for CustomerId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for CustomerId {
    type Err = ValidationError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(raw).map(Self).map_err(|_| {
            ValidationError::new("id", format!("{raw:?} is not a customer id (a UUID)"))
        })
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Stripe ids are short; anything longer than this is not one.
const MAX_STRIPE_ID_CHARS: usize = 255;

/// A Stripe customer id, `cus_` followed by letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StripeCustomerId(String);

impl StripeCustomerId {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let suffix = raw.strip_prefix("cus_").unwrap_or_default();
        let well_formed = !suffix.is_empty()
            && raw.len() <= MAX_STRIPE_ID_CHARS
            && suffix.chars().all(|c| c.is_ascii_alphanumeric());
        if well_formed {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "stripe_id",
                format!("{raw:?} is not a Stripe customer id (cus_…)"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StripeCustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_customer_ids_sort_by_creation() {
        let first = CustomerId::new();
        let second = CustomerId::new();
        assert!(first < second);
    }

    #[test]
    fn customer_id_round_trips_through_text() {
        let id = CustomerId::new();
        assert_eq!(id.to_string().parse::<CustomerId>().unwrap(), id);
        let err = "not-a-uuid".parse::<CustomerId>().unwrap_err();
        assert!(err.message.contains("not-a-uuid"));
    }

    #[test]
    fn stripe_customer_id_requires_prefix_and_alphanumerics() {
        assert_eq!(
            StripeCustomerId::parse("cus_NffrFeUfNV2Hib")
                .unwrap()
                .as_str(),
            "cus_NffrFeUfNV2Hib"
        );
        for bad in ["", "cus_", "NffrFeUfNV2Hib", "cus_a b", "ch_123", "cus_é"] {
            assert!(StripeCustomerId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(StripeCustomerId::parse(&format!("cus_{}", "a".repeat(300))).is_err());
    }
}
