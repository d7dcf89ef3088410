//! The request and response bodies of `/v1/customers`, and how they map to the domain.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::super::{ApiError, schemas};
use crate::domain::{
    Customer, CustomerPatch, Description, Email, MAX_USER_KEYS, Metadata, Name, NewCustomer, Phone,
    SyncState,
};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomerRequest {
    #[schema(schema_with = schemas::email)]
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schemas::account, required = false)]
    pub account: Option<String>,
    #[serde(default)]
    #[schema(schema_with = schemas::name, required = false)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(schema_with = schemas::phone, required = false)]
    pub phone: Option<String>,
    #[serde(default)]
    #[schema(schema_with = schemas::description, required = false)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(schema_with = schemas::metadata, required = false)]
    pub metadata: BTreeMap<String, String>,
}

impl TryFrom<CreateCustomerRequest> for NewCustomer {
    type Error = ApiError;

    fn try_from(request: CreateCustomerRequest) -> Result<Self, ApiError> {
        let optional = |value: Option<String>| value.unwrap_or_default();
        Ok(NewCustomer {
            email: Email::parse(&request.email)?,
            name: Name::parse(&optional(request.name))?,
            phone: Phone::parse(&optional(request.phone))?,
            description: Description::parse(&optional(request.description))?,
            metadata: Metadata::parse(request.metadata)?,
        })
    }
}

/// A JSON Merge Patch (RFC 7396) of a customer: absent fields are kept, `null` clears a field,
/// and metadata keys are merged (a `null` value removes that key).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomerRequest {
    /// Only the customer's own account is accepted: a customer cannot move accounts.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schemas::account, required = false)]
    pub account: Option<Option<String>>,
    /// The email cannot be removed: `null` is refused.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schemas::email, required = false)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schemas::name, required = false)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schemas::phone, required = false)]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schemas::description, required = false)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schemas::metadata_patch, required = false)]
    pub metadata: Option<Option<BTreeMap<String, Option<String>>>>,
}

/// Tells a field sent as `null` (`Some(None)`) from an absent one (`None`, via `default`).
fn present<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl TryFrom<UpdateCustomerRequest> for CustomerPatch {
    type Error = ApiError;

    fn try_from(request: UpdateCustomerRequest) -> Result<Self, ApiError> {
        let email = match request.email {
            None => None,
            Some(None) => {
                return Err(ApiError::unprocessable(
                    "validation_failed",
                    "email: cannot be removed",
                ));
            }
            Some(Some(raw)) => Some(Email::parse(&raw)?),
        };
        if let Some(Some(patch)) = &request.metadata
            && patch.len() > MAX_USER_KEYS
        {
            return Err(ApiError::unprocessable(
                "validation_failed",
                format!("metadata: at most {MAX_USER_KEYS} keys per patch"),
            ));
        }
        Ok(CustomerPatch {
            email,
            name: clearable(request.name, Name::parse)?,
            phone: clearable(request.phone, Phone::parse)?,
            description: clearable(request.description, Description::parse)?,
            metadata: request.metadata,
        })
    }
}

fn clearable<T>(
    field: Option<Option<String>>,
    parse: impl Fn(&str) -> Result<Option<T>, crate::domain::ValidationError>,
) -> Result<Option<Option<T>>, ApiError> {
    match field {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(raw)) => Ok(Some(parse(&raw)?)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncStateBody {
    Pending,
    Synced,
    Failed,
    /// Deleted in Stripe while its policy keeps the local row (`deletion: orphan`).
    Orphaned,
}

impl From<SyncStateBody> for SyncState {
    fn from(state: SyncStateBody) -> Self {
        match state {
            SyncStateBody::Pending => Self::Pending,
            SyncStateBody::Synced => Self::Synced,
            SyncStateBody::Failed => Self::Failed,
            SyncStateBody::Orphaned => Self::Orphaned,
        }
    }
}

impl From<SyncState> for SyncStateBody {
    fn from(state: SyncState) -> Self {
        match state {
            SyncState::Pending => Self::Pending,
            SyncState::Synced => Self::Synced,
            SyncState::Failed => Self::Failed,
            SyncState::Orphaned => Self::Orphaned,
        }
    }
}

/// Where the customer stands with Stripe.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SyncBody {
    pub state: SyncStateBody,
    /// The linked Stripe customer, once created there.
    #[schema(example = "cus_NffrFeUfNV2Hib")]
    pub stripe_id: Option<String>,
    /// The highest version Stripe is known to match.
    pub synced_version: i64,
    /// Why the last sync failed, when `state` is `failed`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CustomerBody {
    pub id: Uuid,
    /// The SyncPolicy (Stripe account) the customer syncs with.
    pub account: String,
    pub email: String,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Increases with every change; send it back in `If-Match` to update safely.
    pub version: i64,
    pub sync: SyncBody,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Customer> for CustomerBody {
    fn from(customer: Customer) -> Self {
        Self {
            id: customer.id.as_uuid(),
            account: customer.account,
            email: customer.fields.email,
            name: customer.fields.name,
            phone: customer.fields.phone,
            description: customer.fields.description,
            metadata: customer.fields.metadata.into_inner(),
            version: customer.version,
            sync: SyncBody {
                state: customer.sync_state.into(),
                stripe_id: customer.stripe_id,
                synced_version: customer.stripe_synced_version,
                error: customer.sync_error,
            },
            created_at: customer.created_at,
            updated_at: customer.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerPage {
    pub data: Vec<CustomerBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]{21}[AQgw]$")]
    pub cursor: Option<String>,
    /// Only the customer with this email (case-insensitive).
    #[param(min_length = 1, max_length = 512)]
    pub email: Option<String>,
    /// Only customers in this sync state: `pending` (a change not yet in Stripe), `synced`,
    /// `failed` (see `sync.error` and the dead letters) or `orphaned` (unlinked by a deletion
    /// under `deletion: Orphan`).
    pub sync_state: Option<SyncStateBody>,
    /// Only customers of this account (SyncPolicy); every account when absent.
    #[param(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length = 63)]
    pub account: Option<String>,
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn merge_patch_tells_null_from_absent() {
        let request: UpdateCustomerRequest =
            serde_json::from_str(r#"{"name": null, "metadata": {"plan": null, "seats": "3"}}"#)
                .unwrap();
        assert_eq!(request.name, Some(None));
        assert_eq!(request.phone, None);
        let patch = CustomerPatch::try_from(request).unwrap();
        assert_eq!(patch.name, Some(None));
        assert_eq!(
            patch.metadata,
            Some(Some(BTreeMap::from([
                ("plan".to_owned(), None),
                ("seats".to_owned(), Some("3".to_owned()))
            ])))
        );
    }

    #[test]
    fn email_cannot_be_cleared() {
        let request: UpdateCustomerRequest = serde_json::from_str(r#"{"email": null}"#).unwrap();
        let err = CustomerPatch::try_from(request).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
