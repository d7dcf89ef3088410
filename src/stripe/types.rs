//! paysync's own, tolerant views of Stripe objects: only the fields it uses, defaults for the
//! rest, so both real Stripe and localstripe (which omits and varies fields) parse.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StripeCustomer {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Set on deleted customers (real Stripe; localstripe answers 404 instead).
    #[serde(default)]
    pub deleted: bool,
    /// When the customer was created (Unix seconds): the key the reconciler's scan splits
    /// the account by.
    #[serde(default)]
    pub created: i64,
}

/// One page of an account's customers: `created` in `[created_gte, created_lt)` when set,
/// after the customer `starting_after`, in Stripe's order (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerPage {
    pub created_gte: Option<i64>,
    pub created_lt: Option<i64>,
    pub starting_after: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StripeList<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

/// `{"error": {"type", "code"?, "message"?, "param"?}}`.
#[derive(Debug, Default, Deserialize)]
pub struct StripeErrorBody {
    #[serde(default)]
    pub error: StripeErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
pub struct StripeErrorDetail {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// What paysync writes to a Stripe customer: the synced fields and its own metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerWrite {
    pub email: String,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    /// Complete metadata, including `paysync_id` and `paysync_version`.
    pub metadata: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_localstripe_customers_with_missing_fields() {
        let customer: StripeCustomer = serde_json::from_str(
            r#"{"id": "cus_1", "object": "customer", "email": "a@example.com", "metadata": {"paysync_id": "x"}, "invoice_settings": {}}"#,
        )
        .unwrap();
        assert_eq!(customer.id, "cus_1");
        assert_eq!(customer.name, None);
        assert!(!customer.deleted);
        assert_eq!(customer.metadata["paysync_id"], "x");
    }

    #[test]
    fn parses_errors_with_only_a_message() {
        let body: StripeErrorBody = serde_json::from_str(
            r#"{"error": {"type": "invalid_request_error", "message": "Bad request"}}"#,
        )
        .unwrap();
        assert_eq!(body.error.message.as_deref(), Some("Bad request"));
        assert_eq!(body.error.code, None);
    }
}
