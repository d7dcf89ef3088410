//! `/v1/customers`: create, read, list, update and delete customers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery, etag, idempotency_key, if_match_version};
use super::{ApiError, AppState, ErrorBody};
use crate::domain::{Customer, CustomerId, CustomerPatch, MAX_EMAIL_CHARS, NewCustomer, SyncState};
use crate::store::{self, customers, idempotency};

/// Page size when `limit` is not given.
const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page a client may ask for.
const MAX_PAGE_SIZE: u32 = 100;

mod accounts;
mod bodies;

pub use bodies::{
    CreateCustomerRequest, CustomerBody, CustomerPage, ListQuery, UpdateCustomerRequest,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_customer, list_customers))
        .routes(routes!(get_customer, update_customer, delete_customer))
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
        (status = 409, description = "Email already used by a live customer of the account, the Idempotency-Key was used for another request, or the account's policy syncs StripeToLocal (`policy_read_only`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "Invalid or unknown field, or no policy of that account", body = ErrorBody),
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
    let requested_account = request.account.clone();
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
    let account = accounts::for_new_customer(&state.policies, requested_account.as_deref())?;
    let customer = customers::insert(&mut tx, &account, new).await?;
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
    let limit = page_size(query.limit)?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let email = email_filter(query.email.as_deref())?;
    // No stored email holds a NUL (PostgreSQL text cannot): nothing can match.
    if email.is_some_and(|email| email.contains('\0')) {
        return Ok(Json(CustomerPage {
            data: Vec::new(),
            next_cursor: None,
        }));
    }
    let filter = customers::ListFilter {
        account: accounts::filter(query.account.as_deref())?,
        after,
        email,
        sync_state: query.sync_state.map(SyncState::from),
    };
    let mut conn = store::acquire(&state.pool).await?;
    // One extra row tells whether another page exists.
    let mut customers = customers::list_live(&mut conn, filter, i64::from(limit) + 1).await?;
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

fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    Ok(limit)
}

fn email_filter(email: Option<&str>) -> Result<Option<&str>, ApiError> {
    match email {
        Some(email) if email.is_empty() || email.chars().count() > MAX_EMAIL_CHARS => {
            Err(ApiError::bad_request(
                "invalid_email_filter",
                format!("email must be 1 to {MAX_EMAIL_CHARS} characters when given"),
            ))
        }
        other => Ok(other),
    }
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
        (status = 409, description = "Email already used by a live customer of the account, the merged metadata would exceed 48 keys, or the account's policy syncs StripeToLocal (`policy_read_only`)", body = ErrorBody),
        (status = 412, description = "If-Match names an older version", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "Invalid or unknown field, or another account than the customer's", body = ErrorBody),
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
    let requested_account = request.account.clone();
    let patch = CustomerPatch::try_from(request)?;
    let mut tx = store::begin(&state.pool).await?;
    let account = account_of(&mut tx, id).await?;
    accounts::unchanged(&account, requested_account.as_ref().map(Option::as_deref))?;
    accounts::writable(&state.policies, &account)?;
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
        (status = 409, description = "The account's policy syncs StripeToLocal (`policy_read_only`)", body = ErrorBody),
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
    let account = account_of(&mut tx, id).await?;
    accounts::writable(&state.policies, &account)?;
    customers::soft_delete(&mut tx, id, expected_version).await?;
    store::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The account of a live customer (404 when there is none).
async fn account_of(conn: &mut sqlx::PgConnection, id: CustomerId) -> Result<String, ApiError> {
    let customer = customers::find_live(conn, id)
        .await?
        .ok_or(store::Error::CustomerNotFound(id))?;
    Ok(customer.account)
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
}
