//! Writing changes made in Stripe: linking, applying, deleting, adopting. Each is synced at
//! once (Stripe already holds it), so none writes an outbox row.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{BindFields as _, Customer, CustomerRow, email_conflict};
use crate::domain::{CustomerFields, CustomerId, Op};
use crate::store::{DbContext, Result, outbox};

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
    .bind_fields(fields)
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
    .bind_fields(fields)
    .bind(stripe_id)
    .bind(event_at)
    .bind(&fields.content_hash()[..])
    .fetch_one(&mut *conn)
    .await
    .map_err(email_conflict("adopting a Stripe customer"))?;
    Customer::try_from(row)
}

/// Writes the fields a conflict settled field by field: a new local version that Stripe does
/// not hold yet (pending), with the outbox row that sends the local-won fields to Stripe.
pub async fn merge_from_stripe(
    conn: &mut PgConnection,
    id: CustomerId,
    fields: &CustomerFields,
    event_at: DateTime<Utc>,
) -> Result<Customer> {
    let row: CustomerRow = sqlx::query_as(concat!(
        "update customers set email = $2, name = $3, phone = $4, description = $5, \
         metadata = $6, version = version + 1, sync_state = 'pending', sync_error = null, \
         updated_at = now(), stripe_event_at = greatest(stripe_event_at, $7) \
         where id = $1 returning ",
        customer_columns!()
    ))
    .bind(id.as_uuid())
    .bind_fields(fields)
    .bind(event_at)
    .fetch_one(&mut *conn)
    .await
    .map_err(email_conflict("merging a Stripe change"))?;
    let customer = Customer::try_from(row)?;
    outbox::insert(conn, id, Op::Update, customer.version).await?;
    Ok(customer)
}

/// A customer deleted in Stripe under `deletion: Orphan`: kept, unlinked, `orphaned`.
pub async fn orphan_from_stripe(
    conn: &mut PgConnection,
    id: CustomerId,
    event_at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "update customers set stripe_id = null, sync_state = 'orphaned', \
         stripe_event_at = greatest(stripe_event_at, $2) where id = $1",
    )
    .bind(id.as_uuid())
    .bind(event_at)
    .execute(conn)
    .await
    .context("orphaning a customer deleted in Stripe")?;
    Ok(())
}
