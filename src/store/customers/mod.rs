//! Customer rows. Every write bumps `version` and records an outbox row in the caller's
//! transaction, so no committed change can be missed by the outbound sync. Writes of Stripe
//! changes (`from_stripe`, `batch`), the sync columns (`sync_state`) and the locks
//! (`locking`) have their own modules.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{DbContext, Error, Result, outbox};
use crate::domain::metadata::MergeError;
use crate::domain::{
    ContentHash, Customer, CustomerFields, CustomerId, CustomerPatch, Metadata, NewCustomer, Op,
    SyncState, WriteWindow,
};

/// The name of the index that keeps live emails unique per account.
const LIVE_EMAIL_INDEX: &str = "customers_live_email_key";

/// The columns of [`CustomerRow`], in one place for every query that returns a customer.
macro_rules! customer_columns {
    () => {
        "id, account, email, name, phone, description, metadata, version, stripe_id, \
         stripe_synced_version, sync_state, sync_error, stripe_event_at, \
         stripe_write_started_at, stripe_written_at, stripe_written_version, stripe_synced_hash, \
         created_at, updated_at, deleted_at, stripe_create_attempted_at, \
         stripe_create_in_flight_until"
    };
}

mod adoption;
mod batch;
mod from_stripe;
mod locking;
mod reconcile;
mod sync_state;

pub use adoption::{Adoption, adopt_many, live_emails};
pub use batch::{write_back, write_back_finishing, write_back_recording};
pub use from_stripe::{
    adopt, apply_from_stripe, delete_from_stripe, link_stripe_id, merge_from_stripe,
    note_stripe_event, orphan_from_stripe,
};
pub use locking::{
    SyncWait, lock_for_sync, lock_linked, lock_stripe_customer, lock_stripe_customers,
    try_lock_linked,
};
pub use reconcile::{Listed, match_listed, queue_resync, unseen};
pub use sync_state::{
    SyncedWrite, claim_create_attempt, count_by_state, count_states_of, create_answered,
    mark_orphaned, oldest_pending_age, record_sync_failure, record_synced, requeue_pending,
    reset_sync_state,
};

#[derive(FromRow)]
struct CustomerRow {
    id: Uuid,
    account: String,
    email: String,
    name: Option<String>,
    phone: Option<String>,
    description: Option<String>,
    metadata: Json<BTreeMap<String, String>>,
    version: i64,
    stripe_id: Option<String>,
    stripe_synced_version: i64,
    sync_state: String,
    sync_error: Option<String>,
    stripe_event_at: Option<DateTime<Utc>>,
    stripe_write_started_at: Option<DateTime<Utc>>,
    stripe_written_at: Option<DateTime<Utc>>,
    stripe_written_version: Option<i64>,
    stripe_synced_hash: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    stripe_create_attempted_at: Option<DateTime<Utc>>,
    stripe_create_in_flight_until: Option<DateTime<Utc>>,
}

impl TryFrom<CustomerRow> for Customer {
    type Error = Error;

    fn try_from(row: CustomerRow) -> Result<Self> {
        let sync_state = SyncState::parse(&row.sync_state)
            .map_err(|e| Error::Corrupt(format!("customer {}: {e}", row.id)))?;
        Ok(Customer {
            id: CustomerId::from_uuid(row.id),
            account: row.account,
            fields: CustomerFields {
                email: row.email,
                name: row.name,
                phone: row.phone,
                description: row.description,
                metadata: Metadata::from_stored(row.metadata.0),
            },
            version: row.version,
            stripe_id: row.stripe_id,
            stripe_synced_version: row.stripe_synced_version,
            sync_state,
            sync_error: row.sync_error,
            stripe_event_at: row.stripe_event_at,
            stripe_write: row
                .stripe_write_started_at
                .zip(row.stripe_written_at)
                .map(|(started, finished)| WriteWindow { started, finished }),
            stripe_written_version: row.stripe_written_version,
            // A hash of another length is not one paysync wrote: treat it as unknown.
            stripe_synced_hash: row
                .stripe_synced_hash
                .and_then(|hash| ContentHash::try_from(hash).ok()),
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
            create_attempted_at: row.stripe_create_attempted_at,
            create_in_flight_until: row.stripe_create_in_flight_until,
        })
    }
}

/// Runs a query that returns at most one customer.
async fn optional_customer(
    query: sqlx::query::QueryAs<'_, sqlx::Postgres, CustomerRow, sqlx::postgres::PgArguments>,
    conn: &mut PgConnection,
    context: &'static str,
) -> Result<Option<Customer>> {
    query
        .fetch_optional(conn)
        .await
        .context(context)?
        .map(Customer::try_from)
        .transpose()
}

type CustomerQuery<'q> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, CustomerRow, sqlx::postgres::PgArguments>;

/// Binds a customer's synced fields as the next five parameters (email, name, phone,
/// description, metadata), in that order, wherever a query writes them.
trait BindFields<'q> {
    fn bind_fields(self, fields: &'q CustomerFields) -> Self;
}

impl<'q> BindFields<'q> for CustomerQuery<'q> {
    fn bind_fields(self, fields: &'q CustomerFields) -> Self {
        self.bind(&fields.email)
            .bind(&fields.name)
            .bind(&fields.phone)
            .bind(&fields.description)
            .bind(Json(fields.metadata.as_map()))
    }
}

/// A customer's metadata as JSON text, for the array arguments of the batch statements (which
/// cast it to `jsonb`); `whose` names the customer in the error.
fn metadata_text(fields: &CustomerFields, whose: impl std::fmt::Display) -> Result<String> {
    serde_json::to_string(fields.metadata.as_map())
        .map_err(|e| Error::Corrupt(format!("{whose} metadata: {e}")))
}

/// Maps the live-email unique violation to [`Error::EmailTaken`].
fn email_conflict(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| match &source {
        sqlx::Error::Database(db) if db.constraint() == Some(LIVE_EMAIL_INDEX) => Error::EmailTaken,
        _ => Error::Database { context, source },
    }
}

/// Creates a customer at version 1 with its `create` outbox row.
pub async fn insert(conn: &mut PgConnection, account: &str, new: NewCustomer) -> Result<Customer> {
    let fields = new.into_fields();
    let row: CustomerRow = sqlx::query_as(concat!(
        "insert into customers (id, account, email, name, phone, description, metadata) \
         values ($1, $2, $3, $4, $5, $6, $7) returning ",
        customer_columns!()
    ))
    .bind(CustomerId::new().as_uuid())
    .bind(account)
    .bind_fields(&fields)
    .fetch_one(&mut *conn)
    .await
    .map_err(email_conflict("inserting customer"))?;
    let customer = Customer::try_from(row)?;
    outbox::insert(conn, customer.id, Op::Create, customer.version).await?;
    Ok(customer)
}

/// A live (not deleted) customer.
pub async fn find_live(conn: &mut PgConnection, id: CustomerId) -> Result<Option<Customer>> {
    find(conn, id, true).await
}

/// Any customer, deleted or not (the outbound worker must see deletions).
pub async fn find_any(conn: &mut PgConnection, id: CustomerId) -> Result<Option<Customer>> {
    find(conn, id, false).await
}

async fn find(
    conn: &mut PgConnection,
    id: CustomerId,
    live_only: bool,
) -> Result<Option<Customer>> {
    let query = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers where id = $1 and (not $2 or deleted_at is null)"
    ))
    .bind(id.as_uuid())
    .bind(live_only);
    optional_customer(query, conn, "loading customer").await
}

/// Locks a live customer for the rest of the transaction and checks the caller's expected
/// version, so concurrent writers with the same `If-Match` cannot both succeed.
async fn lock_live(
    conn: &mut PgConnection,
    id: CustomerId,
    expected_version: Option<i64>,
) -> Result<Customer> {
    let row: Option<CustomerRow> = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers where id = $1 and deleted_at is null for update"
    ))
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await
    .context("locking customer")?;
    let current = Customer::try_from(row.ok_or(Error::CustomerNotFound(id))?)?;
    match expected_version {
        Some(expected) if expected != current.version => Err(Error::VersionMismatch {
            id,
            expected,
            current: current.version,
        }),
        _ => Ok(current),
    }
}

/// Applies a partial update. A patch that changes nothing writes nothing (no new version, no
/// outbox row), so clients can retry PATCHes freely.
pub async fn update(
    conn: &mut PgConnection,
    id: CustomerId,
    expected_version: Option<i64>,
    patch: &CustomerPatch,
) -> Result<Customer> {
    let current = lock_live(conn, id, expected_version).await?;
    let fields = patch.apply_to(&current.fields).map_err(|e| match e {
        MergeError::Invalid(invalid) => Error::Invalid(invalid),
        full @ MergeError::TooManyKeys { .. } => Error::MetadataFull(full.to_string()),
    })?;
    if fields == current.fields {
        return Ok(current);
    }
    let row: CustomerRow = sqlx::query_as(concat!(
        "update customers set email = $2, name = $3, phone = $4, description = $5, \
         metadata = $6, version = version + 1, updated_at = now(), sync_state = 'pending' \
         where id = $1 returning ",
        customer_columns!()
    ))
    .bind(id.as_uuid())
    .bind_fields(&fields)
    .fetch_one(&mut *conn)
    .await
    .map_err(email_conflict("updating customer"))?;
    let customer = Customer::try_from(row)?;
    outbox::insert(conn, id, Op::Update, customer.version).await?;
    Ok(customer)
}

/// Marks a customer deleted. The row stays so the deletion can reach Stripe; its email is
/// free for a new customer at once.
pub async fn soft_delete(
    conn: &mut PgConnection,
    id: CustomerId,
    expected_version: Option<i64>,
) -> Result<Customer> {
    lock_live(conn, id, expected_version).await?;
    let row: CustomerRow = sqlx::query_as(concat!(
        "update customers set deleted_at = now(), version = version + 1, updated_at = now(), \
         sync_state = 'pending' where id = $1 returning ",
        customer_columns!()
    ))
    .bind(id.as_uuid())
    .fetch_one(&mut *conn)
    .await
    .context("deleting customer")?;
    let customer = Customer::try_from(row)?;
    outbox::insert(conn, id, Op::Delete, customer.version).await?;
    Ok(customer)
}

/// Which live customers a page lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// Only customers of this account (policy); all accounts when `None`.
    pub account: Option<&'a str>,
    /// Only customers created after this one (the cursor).
    pub after: Option<CustomerId>,
    /// Only this email, ignoring case.
    pub email: Option<&'a str>,
    pub sync_state: Option<SyncState>,
}

/// One page of live customers in id (= creation) order.
pub async fn list_live(
    conn: &mut PgConnection,
    filter: ListFilter<'_>,
    limit: i64,
) -> Result<Vec<Customer>> {
    let rows: Vec<CustomerRow> = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers where ($1::text is null or account = $1) and deleted_at is null \
          and ($2::uuid is null or id > $2) \
          and ($3::text is null or lower(email) = lower($3)) \
          and ($4::text is null or sync_state = $4) \
          order by id limit $5"
    ))
    .bind(filter.account)
    .bind(filter.after.map(|id| id.as_uuid()))
    .bind(filter.email)
    .bind(filter.sync_state.map(SyncState::as_str))
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("listing customers")?;
    rows.into_iter().map(Customer::try_from).collect()
}

/// The customer linked to a Stripe customer, deleted or not.
pub async fn find_by_stripe_id(
    conn: &mut PgConnection,
    stripe_id: &str,
) -> Result<Option<Customer>> {
    let query = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers where stripe_id = $1"
    ))
    .bind(stripe_id);
    optional_customer(query, conn, "finding customer by Stripe id").await
}

/// The live customer of `account` with this email, ignoring case.
pub async fn find_live_by_email(
    conn: &mut PgConnection,
    account: &str,
    email: &str,
) -> Result<Option<Customer>> {
    let query = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers where account = $1 and lower(email) = lower($2) and deleted_at is null"
    ))
    .bind(account)
    .bind(email);
    optional_customer(query, conn, "finding customer by email").await
}

/// Locks a customer, deleted or not, for the rest of the transaction and returns its
/// current row.
pub async fn lock_any(conn: &mut PgConnection, id: CustomerId) -> Result<Option<Customer>> {
    let query = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers where id = $1 for update"
    ))
    .bind(id.as_uuid());
    optional_customer(query, conn, "locking customer").await
}
