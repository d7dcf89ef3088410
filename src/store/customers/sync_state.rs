//! The sync columns: what paysync wrote to Stripe, a failure, a reset for replay, and how
//! long the oldest change has waited.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::optional_customer;
use crate::domain::{ContentHash, Customer, CustomerId, Op, WriteWindow};
use crate::store::{DbContext, Result, outbox};

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
/// is). The state becomes `synced` unless a newer local change arrived meanwhile. Nothing
/// moves back: a write recorded late (its holder lost its lock while Stripe answered) keeps
/// the newer versions, write window and content hash already recorded, and never replaces
/// the Stripe customer already linked. Returns the Stripe customer now linked.
pub async fn record_synced(
    conn: &mut PgConnection,
    id: CustomerId,
    write: SyncedWrite<'_>,
) -> Result<Option<String>> {
    sqlx::query_scalar(
        "update customers set stripe_id = coalesce(stripe_id, $3), \
         stripe_synced_version = greatest(stripe_synced_version, $2), \
         sync_state = case when greatest(stripe_synced_version, $2) >= version \
                           then 'synced' else 'pending' end, \
         sync_error = null, \
         stripe_write_started_at = case when $2 >= coalesce(stripe_written_version, 0) \
                                        then $4 else stripe_write_started_at end, \
         stripe_written_at = case when $2 >= coalesce(stripe_written_version, 0) \
                                  then $5 else stripe_written_at end, \
         stripe_synced_hash = case when $2 >= stripe_synced_version \
                                   then $6 else stripe_synced_hash end, \
         stripe_written_version = greatest(stripe_written_version, $2), \
         stripe_create_in_flight_until = null \
         where id = $1 returning stripe_id",
    )
    .bind(id.as_uuid())
    .bind(write.version)
    .bind(write.stripe_id)
    .bind(write.window.started)
    .bind(write.window.finished)
    .bind(&write.content[..])
    .fetch_optional(conn)
    .await
    .context("recording sync result")
    .map(Option::flatten)
}

/// A local delete under `deletion: Orphan`: Stripe's customer stays, linked, and the row
/// says so (`sync.state = orphaned`).
pub async fn mark_orphaned(conn: &mut PgConnection, id: CustomerId) -> Result<()> {
    sqlx::query("update customers set sync_state = 'orphaned' where id = $1")
        .bind(id.as_uuid())
        .execute(conn)
        .await
        .context("marking a customer orphaned")?;
    Ok(())
}

/// Claims a create attempt, committed before the call: `seen` is the last attempt the caller
/// read, and no attempt may be on its way (answered, or past its `in_flight` window, by the
/// database's clock). Returns the attempt's time; `None` when another holder claimed one
/// first (a sync whose lock was lost: its attempt now fences this one) or the customer got
/// linked meanwhile. Every later sync looks the customer up before creating it.
pub async fn claim_create_attempt(
    conn: &mut PgConnection,
    id: CustomerId,
    seen: Option<DateTime<Utc>>,
    in_flight: std::time::Duration,
) -> Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "update customers set stripe_create_attempted_at = now(), \
         stripe_create_in_flight_until = now() + make_interval(secs => $3) \
         where id = $1 and stripe_id is null \
           and stripe_create_attempted_at is not distinct from $2 \
           and (stripe_create_in_flight_until is null or stripe_create_in_flight_until <= now()) \
         returning stripe_create_attempted_at",
    )
    .bind(id.as_uuid())
    .bind(seen)
    .bind(in_flight.as_secs_f64())
    .fetch_optional(conn)
    .await
    .context("claiming a create attempt")
}

/// Stripe answered the create attempt of `attempted_at` (it is not on its way any more).
pub async fn create_answered(
    conn: &mut PgConnection,
    id: CustomerId,
    attempted_at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "update customers set stripe_create_in_flight_until = null \
         where id = $1 and stripe_create_attempted_at = $2",
    )
    .bind(id.as_uuid())
    .bind(attempted_at)
    .execute(conn)
    .await
    .context("recording a create attempt's answer")?;
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
        "select coalesce(extract(epoch from now() - min(pending_since)), 0)::float8 \
         from customers where pending_since is not null",
    )
    .fetch_one(conn)
    .await
    .context("measuring the oldest unsynced change")
}

/// Queues every customer of `account` with a change not yet in Stripe and no message still
/// waiting to be taken (a policy that now writes to Stripe sends what waited); returns how
/// many. A message a worker holds right now does not count: it may have been judged under the
/// policy as it was and be about to finish as "waits", so the customer is queued again (a
/// second message for a synced customer is a no-op).
pub async fn requeue_pending(conn: &mut PgConnection, account: &str) -> Result<u64> {
    let pending: Vec<(uuid::Uuid, i64, bool)> = sqlx::query_as(
        "select c.id, c.version, c.deleted_at is not null from customers c \
         where c.account = $1 and c.unsynced and c.sync_state = 'pending' \
           and not exists (select 1 from outbox o \
                           where o.customer_id = c.id and o.published_at is null \
                           for update skip locked) \
         order by c.id",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await
    .context("finding a policy's pending customers")?;
    for (id, version, deleted) in &pending {
        let op = if *deleted { Op::Delete } else { Op::Update };
        outbox::insert(conn, CustomerId::from_uuid(*id), op, *version).await?;
    }
    Ok(pending.len() as u64)
}

/// Live customers of one account by sync state: `(state, count)` (one index range, not the
/// whole table: the controller asks per policy).
pub async fn count_states_of(conn: &mut PgConnection, account: &str) -> Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "select sync_state, count(*) from customers where deleted_at is null and account = $1 \
         group by sync_state",
    )
    .bind(account)
    .fetch_all(conn)
    .await
    .context("counting a policy's customers by sync state")
}

/// Live customers by account and sync state: `(account, state, count)`.
pub async fn count_by_state(conn: &mut PgConnection) -> Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "select account, sync_state, count(*) from customers where deleted_at is null \
         group by account, sync_state",
    )
    .fetch_all(conn)
    .await
    .context("counting customers by sync state")
}
