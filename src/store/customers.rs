//! Customer rows. Every write bumps `version` and records an outbox row in the caller's
//! transaction, so no committed change can be missed by the outbound sync.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{DbContext, Error, Result, locks, outbox};
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
         stripe_write_started_at, stripe_written_at, stripe_synced_hash, created_at, updated_at, \
         deleted_at"
    };
}

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
    stripe_synced_hash: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
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
            // A hash of another length is not one paysync wrote: treat it as unknown.
            stripe_synced_hash: row
                .stripe_synced_hash
                .and_then(|hash| ContentHash::try_from(hash).ok()),
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
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
    .bind(&fields.email)
    .bind(&fields.name)
    .bind(&fields.phone)
    .bind(&fields.description)
    .bind(Json(fields.metadata.as_map()))
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
    .bind(&fields.email)
    .bind(&fields.name)
    .bind(&fields.phone)
    .bind(&fields.description)
    .bind(Json(fields.metadata.as_map()))
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
    /// Only customers created after this one (the cursor).
    pub after: Option<CustomerId>,
    /// Only this email, ignoring case.
    pub email: Option<&'a str>,
    pub sync_state: Option<SyncState>,
}

/// One page of live customers of `account` in id (= creation) order.
pub async fn list_live(
    conn: &mut PgConnection,
    account: &str,
    filter: ListFilter<'_>,
    limit: i64,
) -> Result<Vec<Customer>> {
    let rows: Vec<CustomerRow> = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers where account = $1 and deleted_at is null \
          and ($2::uuid is null or id > $2) \
          and ($3::text is null or lower(email) = lower($3)) \
          and ($4::text is null or sync_state = $4) \
          order by id limit $5"
    ))
    .bind(account)
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

/// Records which Stripe customer a local one is (found by `paysync_id` or email).
pub async fn link_stripe_id(
    conn: &mut PgConnection,
    id: CustomerId,
    stripe_id: &str,
) -> Result<()> {
    sqlx::query("update customers set stripe_id = $2 where id = $1")
        .bind(id.as_uuid())
        .bind(stripe_id)
        .execute(conn)
        .await
        .context("linking customer to its Stripe customer")?;
    Ok(())
}

/// Writes a change made in Stripe: a new version that Stripe already matches, so it is
/// `synced` at once and no outbox row is written (nothing to push back).
pub async fn apply_from_stripe(
    conn: &mut PgConnection,
    id: CustomerId,
    fields: &CustomerFields,
    event_at: DateTime<Utc>,
) -> Result<Customer> {
    let row: CustomerRow = sqlx::query_as(concat!(
        "update customers set email = $2, name = $3, phone = $4, description = $5, \
         metadata = $6, version = version + 1, stripe_synced_version = version + 1, \
         sync_state = 'synced', sync_error = null, updated_at = now(), \
         stripe_event_at = greatest(stripe_event_at, $7), stripe_synced_hash = $8 \
         where id = $1 returning ",
        customer_columns!()
    ))
    .bind(id.as_uuid())
    .bind(&fields.email)
    .bind(&fields.name)
    .bind(&fields.phone)
    .bind(&fields.description)
    .bind(Json(fields.metadata.as_map()))
    .bind(event_at)
    .bind(&fields.content_hash()[..])
    .fetch_one(&mut *conn)
    .await
    .map_err(email_conflict("applying a Stripe change"))?;
    Customer::try_from(row)
}

/// Soft-deletes a customer deleted in Stripe; synced at once (Stripe already has it gone).
pub async fn delete_from_stripe(
    conn: &mut PgConnection,
    id: CustomerId,
    event_at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "update customers set deleted_at = now(), version = version + 1, \
         stripe_synced_version = version + 1, sync_state = 'synced', sync_error = null, \
         updated_at = now(), stripe_event_at = greatest(stripe_event_at, $2) where id = $1",
    )
    .bind(id.as_uuid())
    .bind(event_at)
    .execute(conn)
    .await
    .context("deleting a customer deleted in Stripe")?;
    Ok(())
}

/// Records that a Stripe event of `event_at` was taken into account without a change, so
/// older events are recognised as stale.
pub async fn note_stripe_event(
    conn: &mut PgConnection,
    id: CustomerId,
    event_at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "update customers set stripe_event_at = greatest(stripe_event_at, $2) where id = $1",
    )
    .bind(id.as_uuid())
    .bind(event_at)
    .execute(conn)
    .await
    .context("recording the last Stripe event")?;
    Ok(())
}

/// Creates the local customer of a Stripe customer paysync did not know, linked and synced.
pub async fn adopt(
    conn: &mut PgConnection,
    account: &str,
    stripe_id: &str,
    fields: &CustomerFields,
    event_at: DateTime<Utc>,
) -> Result<Customer> {
    let row: CustomerRow = sqlx::query_as(concat!(
        "insert into customers (id, account, email, name, phone, description, metadata, \
         stripe_id, stripe_synced_version, sync_state, stripe_event_at, stripe_synced_hash) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, 1, 'synced', $9, $10) returning ",
        customer_columns!()
    ))
    .bind(CustomerId::new().as_uuid())
    .bind(account)
    .bind(&fields.email)
    .bind(&fields.name)
    .bind(&fields.phone)
    .bind(&fields.description)
    .bind(Json(fields.metadata.as_map()))
    .bind(stripe_id)
    .bind(event_at)
    .bind(&fields.content_hash()[..])
    .fetch_one(&mut *conn)
    .await
    .map_err(email_conflict("adopting a Stripe customer"))?;
    Customer::try_from(row)
}

/// Takes the customer's sync lock (see [`locks`]) until the transaction ends: waits for an
/// outbound sync in flight, so what it wrote to Stripe is known.
pub async fn lock_for_sync(conn: &mut PgConnection, id: CustomerId) -> Result<()> {
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(locks::customer_key(id))
        .execute(conn)
        .await
        .context("taking the customer's sync lock")?;
    Ok(())
}

/// The customers linked to these Stripe customers, locked as [`lock_for_sync`] and
/// [`lock_any`] lock one (in one order, so two batches cannot deadlock); their current rows.
pub async fn lock_linked(conn: &mut PgConnection, stripe_ids: &[&str]) -> Result<Vec<Customer>> {
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from customers where stripe_id = any($1)")
        .bind(stripe_ids)
        .fetch_all(&mut *conn)
        .await
        .context("finding customers by Stripe id")?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<i64> = ids
        .iter()
        .map(|id| locks::customer_key(CustomerId::from_uuid(*id)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("select count(pg_advisory_xact_lock(key)) from unnest($1::int8[]) as key")
        .bind(&keys)
        .execute(&mut *conn)
        .await
        .context("taking the customers' sync locks")?;
    sqlx::query_as::<_, CustomerRow>(concat!(
        "select ",
        customer_columns!(),
        " from customers where id = any($1) order by id for update"
    ))
    .bind(&ids)
    .fetch_all(conn)
    .await
    .context("locking customers")?
    .into_iter()
    .map(Customer::try_from)
    .collect()
}

/// Writes the state a batch of Stripe events left customers in (see
/// `sync::inbound::after`), in one statement. `updated_at` is set to now where `changed`.
pub async fn write_back(conn: &mut PgConnection, customers: &[(&Customer, bool)]) -> Result<()> {
    if customers.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut emails = Vec::new();
    let mut names = Vec::new();
    let mut phones = Vec::new();
    let mut descriptions = Vec::new();
    let mut metadata = Vec::new();
    let mut versions = Vec::new();
    let mut synced = Vec::new();
    let mut states = Vec::new();
    let mut event_ats = Vec::new();
    let mut hashes = Vec::new();
    let mut changed = Vec::new();
    let mut deleted = Vec::new();
    for (customer, fields_changed) in customers {
        let fields = &customer.fields;
        ids.push(customer.id.as_uuid());
        emails.push(fields.email.as_str());
        names.push(fields.name.as_deref());
        phones.push(fields.phone.as_deref());
        descriptions.push(fields.description.as_deref());
        metadata.push(serde_json::to_string(fields.metadata.as_map()).unwrap_or_default());
        versions.push(customer.version);
        synced.push(customer.stripe_synced_version);
        states.push(customer.sync_state.as_str());
        event_ats.push(customer.stripe_event_at);
        hashes.push(customer.stripe_synced_hash.map(|hash| hash.to_vec()));
        changed.push(*fields_changed);
        deleted.push(customer.deleted_at.is_some());
    }
    sqlx::query(
        "update customers c set email = u.email, name = u.name, phone = u.phone, \
         description = u.description, metadata = u.metadata::jsonb, version = u.version, \
         stripe_synced_version = u.synced, sync_state = u.state, \
         sync_error = case when u.changed then null else c.sync_error end, \
         stripe_event_at = u.event_at, stripe_synced_hash = u.hash, \
         updated_at = case when u.changed then now() else c.updated_at end, \
         deleted_at = case when u.deleted then coalesce(c.deleted_at, now()) else null end \
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::int8[], $8::int8[], $9::text[], $10::timestamptz[], $11::bytea[], \
                     $12::bool[], $13::bool[]) \
              as u(id, email, name, phone, description, metadata, version, synced, state, \
                   event_at, hash, changed, deleted) \
         where c.id = u.id",
    )
    .bind(&ids)
    .bind(&emails)
    .bind(&names)
    .bind(&phones)
    .bind(&descriptions)
    .bind(&metadata)
    .bind(&versions)
    .bind(&synced)
    .bind(&states)
    .bind(&event_ats)
    .bind(&hashes)
    .bind(&changed)
    .bind(&deleted)
    .execute(conn)
    .await
    .map_err(email_conflict("writing Stripe changes"))?;
    Ok(())
}

/// Namespace of the per-Stripe-customer advisory locks (the two-key form, apart from the
/// one-key customer locks of [`lock_for_sync`]).
const STRIPE_CUSTOMER_LOCK_NAMESPACE: i32 = 0x7079_7363; // "pysc"

/// Serializes the handling of events about one Stripe customer until the transaction ends,
/// so two workers cannot both adopt or link it.
pub async fn lock_stripe_customer(conn: &mut PgConnection, stripe_id: &str) -> Result<()> {
    lock_stripe_customers(conn, &[stripe_id]).await
}

/// [`lock_stripe_customer`] for many, in one order (so two batches cannot deadlock).
pub async fn lock_stripe_customers(conn: &mut PgConnection, stripe_ids: &[&str]) -> Result<()> {
    let mut sorted = stripe_ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sqlx::query(
        "select count(pg_advisory_xact_lock($1, hashtext(stripe_id))) \
         from unnest($2::text[]) as stripe_id",
    )
    .bind(STRIPE_CUSTOMER_LOCK_NAMESPACE)
    .bind(&sorted)
    .execute(conn)
    .await
    .context("taking the Stripe customers' locks")?;
    Ok(())
}

/// What paysync wrote to Stripe for one customer: which version, as which Stripe customer,
/// when, and the hash of the content written.
#[derive(Debug, Clone, Copy)]
pub struct SyncedWrite<'a> {
    pub version: i64,
    pub stripe_id: Option<&'a str>,
    pub window: WriteWindow,
    pub content: ContentHash,
}

/// Records that Stripe now matches `write.version` (and, once known, which Stripe customer it
/// is). The state becomes `synced` unless a newer local change arrived meanwhile.
pub async fn record_synced(
    conn: &mut PgConnection,
    id: CustomerId,
    write: SyncedWrite<'_>,
) -> Result<()> {
    sqlx::query(
        "update customers set stripe_id = coalesce($3, stripe_id), \
         stripe_synced_version = greatest(stripe_synced_version, $2), \
         sync_state = case when greatest(stripe_synced_version, $2) >= version \
                           then 'synced' else 'pending' end, \
         sync_error = null, \
         stripe_write_started_at = $4, stripe_written_at = $5, stripe_synced_hash = $6 \
         where id = $1",
    )
    .bind(id.as_uuid())
    .bind(write.version)
    .bind(write.stripe_id)
    .bind(write.window.started)
    .bind(write.window.finished)
    .bind(&write.content[..])
    .execute(conn)
    .await
    .context("recording sync result")?;
    Ok(())
}

/// Records a failed sync so the API shows it (`sync.state = failed`, `sync.error`).
pub async fn record_sync_failure(
    conn: &mut PgConnection,
    id: CustomerId,
    error: &str,
) -> Result<()> {
    sqlx::query("update customers set sync_state = 'failed', sync_error = $2 where id = $1")
        .bind(id.as_uuid())
        .bind(error)
        .execute(conn)
        .await
        .context("recording sync failure")?;
    Ok(())
}

/// Marks a customer's sync as pending again (dead-letter replay).
pub async fn reset_sync_state(conn: &mut PgConnection, id: CustomerId) -> Result<Option<Customer>> {
    let query = sqlx::query_as(concat!(
        "update customers set sync_error = null, sync_state = case \
         when stripe_synced_version >= version then 'synced' else 'pending' end \
         where id = $1 returning ",
        customer_columns!()
    ))
    .bind(id.as_uuid());
    optional_customer(query, conn, "resetting sync state").await
}

/// How long the oldest local change still waiting for Stripe has waited, in seconds (0 when
/// none waits). Failed customers are not waiting: they are in the dead-letter table.
pub async fn oldest_pending_age(conn: &mut PgConnection) -> Result<f64> {
    sqlx::query_scalar(
        "select coalesce(extract(epoch from now() - min(updated_at)), 0)::float8 \
         from customers where stripe_synced_version < version and sync_state = 'pending'",
    )
    .fetch_one(conn)
    .await
    .context("measuring the oldest unsynced change")
}
