//! The locks inbound and outbound take on customers; the order is in `store::locks`.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Customer, CustomerRow};
use crate::domain::CustomerId;
use crate::store::{DbContext, Error, Result, locks};

/// Whether taking a customer's sync lock waits for an outbound sync in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncWait {
    /// Wait for it: what it wrote to Stripe is known afterwards.
    Wait,
    /// Fail with [`Error::SyncInFlight`] instead: applying an event as it arrives must never
    /// wait on Stripe (the event is queued for a worker, which waits).
    Fail,
}

/// Takes the customer's sync lock (see [`locks`]) until the transaction ends: waits for an
/// outbound sync in flight, so what it wrote to Stripe is known, or fails (`SyncWait::Fail`).
pub async fn lock_for_sync(conn: &mut PgConnection, id: CustomerId, wait: SyncWait) -> Result<()> {
    take_sync_locks(conn, &[locks::customer_key(id)], wait).await
}

/// Takes the sync locks of `keys` (sorted: two batches cannot deadlock) until the transaction
/// ends.
async fn take_sync_locks(conn: &mut PgConnection, keys: &[i64], wait: SyncWait) -> Result<()> {
    let statement = match wait {
        SyncWait::Wait => "select count(pg_advisory_xact_lock(key)) from unnest($1::int8[]) as key",
        SyncWait::Fail => {
            "select count(*) filter (where not pg_try_advisory_xact_lock(key)) \
             from unnest($1::int8[]) as key"
        }
    };
    let busy: i64 = sqlx::query_scalar(statement)
        .bind(keys)
        .fetch_one(conn)
        .await
        .context("taking the customers' sync locks")?;
    if wait == SyncWait::Fail && busy > 0 {
        return Err(Error::SyncInFlight);
    }
    Ok(())
}

/// The customers linked to these Stripe customers, locked as [`lock_for_sync`] and
/// [`lock_any`] lock one (in one order, so two batches cannot deadlock); their current rows.
pub async fn lock_linked(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
    wait: SyncWait,
) -> Result<Vec<Customer>> {
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
    take_sync_locks(conn, &keys, wait).await?;
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

/// A customer row read with its sync lock tried in the same statement.
#[derive(sqlx::FromRow)]
struct TriedRow {
    #[sqlx(flatten)]
    row: CustomerRow,
    /// The sync lock was free, and is now this transaction's.
    free: bool,
}

/// [`lock_linked`] for applying on arrival, in one statement: the linked customers' rows are
/// locked and their sync locks tried (never waited for, so the order of the two does not
/// matter); [`Error::SyncInFlight`] if one is held. The key is the migration's
/// `paysync_customer_key`, the same as [`locks::customer_key`].
pub async fn try_lock_linked(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
) -> Result<Vec<Customer>> {
    let rows: Vec<TriedRow> = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        ", pg_try_advisory_xact_lock(paysync_customer_key(id)) as free \
         from customers where stripe_id = any($1) order by id for update"
    ))
    .bind(stripe_ids)
    .fetch_all(conn)
    .await
    .context("locking customers")?;
    if rows.iter().any(|tried| !tried.free) {
        return Err(Error::SyncInFlight);
    }
    rows.into_iter()
        .map(|tried| Customer::try_from(tried.row))
        .collect()
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
