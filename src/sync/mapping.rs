//! The one mapping between a local customer and a Stripe customer, both ways: what paysync
//! writes to Stripe for a customer, and what a Stripe customer (from an event, a fetch or a
//! list) means locally, checked against the customer domain. Comparisons go through
//! [`CustomerFields::content_hash`] of the local shape, so "Stripe holds what paysync synced"
//! is one question wherever it is asked (inbound echoes, the reconciler's diff).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::{
    ContentHash, Customer, CustomerFields, Description, Email, Metadata, Name, Phone,
    RESERVED_PREFIX, ValidationError,
};
use crate::stripe::{CustomerWrite, StripeCustomer};

/// paysync's own metadata keys on every Stripe customer it writes.
pub const PAYSYNC_ID_KEY: &str = "paysync_id";
pub const PAYSYNC_VERSION_KEY: &str = "paysync_version";

/// What Stripe should hold for this customer: its fields and paysync's own metadata keys.
pub fn write_for(customer: &Customer) -> CustomerWrite {
    let mut metadata: BTreeMap<String, String> = customer.fields.metadata.as_map().clone();
    metadata.insert(PAYSYNC_ID_KEY.to_owned(), customer.id.to_string());
    metadata.insert(PAYSYNC_VERSION_KEY.to_owned(), customer.version.to_string());
    CustomerWrite {
        email: customer.fields.email.clone(),
        name: customer.fields.name.clone(),
        phone: customer.fields.phone.clone(),
        description: customer.fields.description.clone(),
        metadata,
    }
}

pub fn matches_write(found: &StripeCustomer, write: &CustomerWrite) -> bool {
    found.email.as_deref() == Some(write.email.as_str())
        && found.name == write.name
        && found.phone == write.phone
        && found.description == write.description
        && found.metadata == write.metadata
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

/// The content hash of what a Stripe customer holds, in the local shape (`local_email` fills a
/// missing email, as an apply would).
pub fn stripe_content_hash(
    customer: &StripeCustomer,
    local_email: &str,
) -> Result<ContentHash, String> {
    Ok(RemoteFields::from_customer(customer)?
        .to_local(local_email)
        .content_hash())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
    fn what_paysync_writes_maps_back_to_the_same_content() {
        let mut customer = Customer::fixture(3, 0, chrono::Utc::now());
        customer.stripe_id = None;
        customer.fields.description = Some("line one\nline two".into());
        let write = write_for(&customer);
        assert_eq!(write.metadata[PAYSYNC_ID_KEY], customer.id.to_string());
        assert_eq!(write.metadata[PAYSYNC_VERSION_KEY], "3");
        let in_stripe = StripeCustomer {
            id: "cus_1".into(),
            email: Some(write.email.clone()),
            name: write.name.clone(),
            phone: Some(String::new()),
            description: write.description.clone(),
            metadata: write.metadata.clone(),
            deleted: false,
            created: 0,
        };
        assert!(matches_write(&in_stripe, &write) || in_stripe.phone.is_some());
        assert_eq!(
            stripe_content_hash(&in_stripe, "unused@example.com").unwrap(),
            customer.fields.content_hash()
        );
    }
}
