//! `/v1/customers`: create, read, list, update and delete customers.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery, etag, idempotency_key, if_match_version};
use super::{ApiError, AppState, ErrorBody, schemas};
use crate::domain::{
    Customer, CustomerId, CustomerPatch, Description, Email, MAX_EMAIL_CHARS, MAX_USER_KEYS,
    Metadata, Name, NewCustomer, Phone, SyncState,
};
use crate::store::{self, DEFAULT_ACCOUNT, customers, idempotency};

/// Page size when `limit` is not given.
const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page a client may ask for.
const MAX_PAGE_SIZE: u32 = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_customer, list_customers))
        .routes(routes!(get_customer, update_customer, delete_customer))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomerRequest {
    #[schema(schema_with = schemas::email)]
    pub email: String,
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
}

impl From<SyncStateBody> for SyncState {
    fn from(state: SyncStateBody) -> Self {
        match state {
            SyncStateBody::Pending => Self::Pending,
            SyncStateBody::Synced => Self::Synced,
            SyncStateBody::Failed => Self::Failed,
        }
    }
}

impl From<SyncState> for SyncStateBody {
    fn from(state: SyncState) -> Self {
        match state {
            SyncState::Pending => Self::Pending,
            SyncState::Synced => Self::Synced,
            SyncState::Failed => Self::Failed,
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
    /// or `failed` (see `sync.error` and the dead letters).
    pub sync_state: Option<SyncStateBody>,
}

/// A customer serialized once, so an idempotent replay sends exactly the same bytes.
struct RenderedCustomer {
    json: String,
    id: Uuid,
    version: i64,
}

impl RenderedCustomer {
    fn new(customer: Customer) -> Result<Self, ApiError> {
        let body = CustomerBody::from(customer);
        Ok(Self {
            json: serde_json::to_string(&body).map_err(ApiError::internal)?,
            id: body.id,
            version: body.version,
        })
    }

    /// A response saved for an idempotency key.
    fn from_saved(json: String) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Identity {
            id: Uuid,
            version: i64,
        }
        let identity: Identity = serde_json::from_str(&json).map_err(ApiError::internal)?;
        Ok(Self {
            json,
            id: identity.id,
            version: identity.version,
        })
    }

    /// The response, with the ETag (and, for 201, the Location) of the customer.
    fn into_response(self, status: StatusCode) -> Response {
        let mut response =
            (status, [(CONTENT_TYPE, "application/json")], self.json).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&etag(self.version)) {
            headers.insert(ETAG, value);
        }
        if status == StatusCode::CREATED
            && let Ok(value) = HeaderValue::from_str(&format!("/v1/customers/{}", self.id))
        {
            headers.insert(LOCATION, value);
        }
        response
    }
}

fn parse_id(raw: &str) -> Result<CustomerId, ApiError> {
    raw.parse()
        .map_err(|e: crate::domain::ValidationError| ApiError::bad_request("invalid_id", e.message))
}

/// What makes two POSTs "the same request" for idempotency.
fn fingerprint(request: &CreateCustomerRequest) -> Result<Vec<u8>, ApiError> {
    let canonical = serde_json::to_vec(request).map_err(ApiError::internal)?;
    Ok(Sha256::digest(&canonical).to_vec())
}

/// Create a customer. It is queued for Stripe in the same transaction.
#[utoipa::path(
    post,
    path = "/customers",
    tag = "customers",
    request_body = CreateCustomerRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = r"^[\x21-\x7e]{1,255}$",
         description = "Makes retries safe: a repeated request with the same key returns the first response (kept for at least 24 h); the same key with another body is refused (409). 1 to 255 visible ASCII characters.")
    ),
    responses(
        (status = 201, description = "Created", body = CustomerBody,
         headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Malformed JSON or header", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "Email already used by a live customer, or the Idempotency-Key was used for another request", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "Invalid or unknown field", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_customer(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateCustomerRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let fingerprint = fingerprint(&request)?;
    let new = NewCustomer::try_from(request)?;

    let mut tx = store::begin(&state.pool).await?;
    if let Some(key) = &key {
        match idempotency::claim(&mut tx, key, &fingerprint).await? {
            idempotency::Claim::New => {}
            idempotency::Claim::Replay { status, body } => {
                let status = StatusCode::from_u16(status).map_err(ApiError::internal)?;
                let mut response = RenderedCustomer::from_saved(body)?.into_response(status);
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(response);
            }
            // The key's stored request conflicts with this one (a state of the server, as an
            // email already taken is): 409, so a client can tell it from invalid input.
            idempotency::Claim::Mismatch => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used for a different request",
                ));
            }
        }
    }
    let customer = customers::insert(&mut tx, DEFAULT_ACCOUNT, new).await?;
    let rendered = RenderedCustomer::new(customer)?;
    if let Some(key) = &key {
        idempotency::record(&mut tx, key, StatusCode::CREATED.as_u16(), &rendered.json).await?;
    }
    store::commit(tx).await?;
    Ok(rendered.into_response(StatusCode::CREATED))
}

/// Get a live customer.
#[utoipa::path(
    get,
    path = "/customers/{id}",
    tag = "customers",
    params(("id" = Uuid, Path, description = "Customer id")),
    responses(
        (status = 200, description = "The customer", body = CustomerBody, headers(("ETag" = String))),
        (status = 400, description = "Not a customer id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such customer, or deleted", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let mut conn = store::acquire(&state.pool).await?;
    let customer = customers::find_live(&mut conn, id)
        .await?
        .ok_or(store::Error::CustomerNotFound(id))?;
    Ok(RenderedCustomer::new(customer)?.into_response(StatusCode::OK))
}

/// List live customers, oldest first, with cursor pagination.
#[utoipa::path(
    get,
    path = "/customers",
    tag = "customers",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = CustomerPage),
        (status = 400, description = "Bad limit, cursor or parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_customers(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<CustomerPage>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    if query
        .email
        .as_deref()
        .is_some_and(|email| email.is_empty() || email.chars().count() > MAX_EMAIL_CHARS)
    {
        return Err(ApiError::bad_request(
            "invalid_email_filter",
            format!("email must be 1 to {MAX_EMAIL_CHARS} characters when given"),
        ));
    }
    // No stored email holds a NUL (PostgreSQL text cannot): nothing can match.
    if query
        .email
        .as_deref()
        .is_some_and(|email| email.contains('\0'))
    {
        return Ok(Json(CustomerPage {
            data: Vec::new(),
            next_cursor: None,
        }));
    }
    let filter = customers::ListFilter {
        after,
        email: query.email.as_deref(),
        sync_state: query.sync_state.map(SyncState::from),
    };
    let mut conn = store::acquire(&state.pool).await?;
    // One extra row tells whether another page exists.
    let mut customers =
        customers::list_live(&mut conn, DEFAULT_ACCOUNT, filter, i64::from(limit) + 1).await?;
    let more = customers.len() > limit as usize;
    customers.truncate(limit as usize);
    let next_cursor = more
        .then(|| customers.last().map(|c| encode_cursor(c.id)))
        .flatten();
    Ok(Json(CustomerPage {
        data: customers.into_iter().map(CustomerBody::from).collect(),
        next_cursor,
    }))
}

/// Cursors are opaque to clients: today the last id of the page, base64url-encoded.
fn encode_cursor(last: CustomerId) -> String {
    URL_SAFE_NO_PAD.encode(last.as_uuid().as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<CustomerId, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(CustomerId::from_uuid)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this API returned")
        })
}

/// Update a customer (JSON Merge Patch). Send `If-Match` with the version you read to avoid
/// overwriting someone else's change.
#[utoipa::path(
    patch,
    path = "/customers/{id}",
    tag = "customers",
    request_body = UpdateCustomerRequest,
    params(
        ("id" = Uuid, Path, description = "Customer id"),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})$"#,
         description = "ETag (version) the change is based on: `\"3\"`, also `W/\"3\"` or `3`; `*` matches any version")
    ),
    responses(
        (status = 200, description = "The updated customer", body = CustomerBody, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON, id or header", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such customer, or deleted", body = ErrorBody),
        (status = 409, description = "Email already used by a live customer, or the merged metadata would exceed 48 keys", body = ErrorBody),
        (status = 412, description = "If-Match names an older version", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "Invalid or unknown field", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn update_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<UpdateCustomerRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let expected_version = if_match_version(&headers)?;
    let patch = CustomerPatch::try_from(request)?;
    let mut tx = store::begin(&state.pool).await?;
    let customer = customers::update(&mut tx, id, expected_version, &patch).await?;
    store::commit(tx).await?;
    Ok(RenderedCustomer::new(customer)?.into_response(StatusCode::OK))
}

/// Delete a customer. The deletion is synced to Stripe; the email can be reused at once.
#[utoipa::path(
    delete,
    path = "/customers/{id}",
    tag = "customers",
    params(
        ("id" = Uuid, Path, description = "Customer id"),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})$"#,
         description = "ETag (version) the deletion is based on: `\"3\"`, also `W/\"3\"` or `3`; `*` matches any version")
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a customer id, or bad header", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such customer, or already deleted", body = ErrorBody),
        (status = 412, description = "If-Match names an older version", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn delete_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let expected_version = if_match_version(&headers)?;
    let mut tx = store::begin(&state.pool).await?;
    customers::soft_delete(&mut tx, id, expected_version).await?;
    store::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = CustomerId::new();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        for bad in ["", "not base64!", "AAAA"] {
            assert!(decode_cursor(bad).is_err(), "{bad:?}");
        }
    }

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
