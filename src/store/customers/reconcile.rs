//! The reconciler's reads and its one write of customers: a page of Stripe customers matched
//! to local rows in one query, the rows a scan did not see, and a customer queued to be sent
//! to Stripe again.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{CustomerRow, DbContext, Result};
use crate::domain::{Customer, CustomerId, Op};
use crate::store::outbox;

/// What identifies a listed Stripe customer for matching.
#[derive(Debug, Clone)]
pub struct Listed<'a> {
    pub stripe_id: &'a str,
    /// `metadata.paysync_id`, when it is a customer id.
    pub paysync_id: Option<CustomerId>,
    pub email: Option<&'a str>,
}

#[derive(FromRow)]
struct MatchRow {
    position: i64,
    #[sqlx(flatten)]
    customer: CustomerRow,
}

/// For each listed Stripe customer, the local customer of `account` it matches: the one linked
/// to it, else the one its `paysync_id` names, else (when `by_email`) a live one with its
/// email; each match is marked seen by run `run_id` in the same statement. The linked ones
/// (nearly all, in an account in sync) are found by one index lookup each; only the rest are
/// looked for the other ways. Returned as (index in `listed`, customer).
pub async fn match_listed(
    conn: &mut PgConnection,
    account: &str,
    listed: &[Listed<'_>],
    by_email: bool,
    run_id: Uuid,
) -> Result<Vec<(usize, Customer)>> {
    let all: Vec<usize> = (0..listed.len()).collect();
    let mut found = match_by(conn, account, listed, &all, MatchBy::Linked, run_id).await?;
    let rest: Vec<usize> = all
        .into_iter()
        .filter(|n| !found.iter().any(|(position, _)| position == n))
        .collect();
    if !rest.is_empty() {
        let how = MatchBy::NamedOrEmail { by_email };
        found.extend(match_by(conn, account, listed, &rest, how, run_id).await?);
    }
    Ok(found)
}

#[derive(Clone, Copy)]
enum MatchBy {
    Linked,
    NamedOrEmail { by_email: bool },
}

impl MatchBy {
    /// The local customers a listed one (`l`) may match this way, best first (`how`).
    fn candidates(self) -> &'static str {
        match self {
            Self::Linked => concat!(
                "select 1 as how, ",
                customer_columns!(),
                " from customers where account = $1 and stripe_id = l.stripe_id"
            ),
            Self::NamedOrEmail { .. } => concat!(
                "select 2 as how, ",
                customer_columns!(),
                " from customers where account = $1 and id = l.paysync_id \
                 union all select 3, ",
                customer_columns!(),
                " from customers where $5 and account = $1 and lower(email) = lower(l.email) \
                 and deleted_at is null"
            ),
        }
    }
}

/// Matches the listed customers at `positions` one way, marking matches seen.
async fn match_by(
    conn: &mut PgConnection,
    account: &str,
    listed: &[Listed<'_>],
    positions: &[usize],
    how: MatchBy,
    run_id: Uuid,
) -> Result<Vec<(usize, Customer)>> {
    let picked = || positions.iter().filter_map(|n| listed.get(*n));
    let numbers: Vec<i64> = positions.iter().map(|n| *n as i64).collect();
    let stripe_ids: Vec<&str> = picked().map(|l| l.stripe_id).collect();
    let paysync_ids: Vec<Option<Uuid>> = picked()
        .map(|l| l.paysync_id.map(|id| id.as_uuid()))
        .collect();
    let emails: Vec<Option<&str>> = picked().map(|l| l.email).collect();
    let candidates = how.candidates();
    let by_email = matches!(how, MatchBy::NamedOrEmail { by_email: true });
    let rows: Vec<MatchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "with matched as (select l.n as position, m.* \
         from unnest($2::text[], $3::uuid[], $4::text[], $7::bigint[]) \
           as l (stripe_id, paysync_id, email, n) \
         cross join lateral (select * from ({candidates}) c order by how limit 1) m), \
         seen as (insert into reconcile_seen (run_id, customer_id) \
           select $6, id from matched on conflict do nothing) \
         select * from matched"
    )))
    .bind(account)
    .bind(&stripe_ids)
    .bind(&paysync_ids)
    .bind(&emails)
    .bind(by_email)
    .bind(run_id)
    .bind(&numbers)
    .fetch_all(conn)
    .await
    .context("matching Stripe customers to local rows")?;
    rows.into_iter()
        .map(|row| {
            let position = usize::try_from(row.position).unwrap_or(usize::MAX);
            Ok((position, Customer::try_from(row.customer)?))
        })
        .collect()
}

/// Live customers of `account` created before `before` that the run's scan did not match
/// (orphans aside), after `after` in id order: gone from Stripe, or never there. A deleted
/// customer the scan did not see needs nothing: its Stripe customer is gone too.
pub async fn unseen(
    conn: &mut PgConnection,
    account: &str,
    run_id: Uuid,
    before: DateTime<Utc>,
    after: Option<CustomerId>,
    limit: i64,
) -> Result<Vec<Customer>> {
    let rows: Vec<CustomerRow> = sqlx::query_as(concat!(
        "select ",
        customer_columns!(),
        " from customers c where account = $1 and created_at < $3 \
          and deleted_at is null and sync_state <> 'orphaned' \
          and ($4::uuid is null or id > $4) \
          and not exists (select 1 from reconcile_seen s where s.run_id = $2 \
                          and s.customer_id = c.id) \
          order by id limit $5"
    ))
    .bind(account)
    .bind(run_id)
    .bind(before)
    .bind(after.map(|id| id.as_uuid()))
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("listing customers the scan did not see")?;
    rows.into_iter().map(Customer::try_from).collect()
}

/// Makes a customer's current row due to be sent to Stripe again when Stripe is thought to
/// hold it (a new version with its outbox row), so the outbound handler brings Stripe to it;
/// `unlink` first forgets a Stripe customer that no longer exists, so a new one is created.
/// A change still waiting to be sent needs nothing.
pub async fn queue_resync(conn: &mut PgConnection, id: CustomerId, unlink: bool) -> Result<()> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "update customers set version = version + 1, sync_state = 'pending', sync_error = null, \
         stripe_id = case when $2 then null else stripe_id end \
         where id = $1 and (stripe_synced_version >= version or $2) \
         returning version, deleted_at is not null",
    )
    .bind(id.as_uuid())
    .bind(unlink)
    .fetch_optional(&mut *conn)
    .await
    .context("queueing a customer for Stripe")?;
    if let Some((version, deleted)) = row {
        let op = if deleted { Op::Delete } else { Op::Update };
        outbox::insert(conn, id, op, version).await?;
    }
    Ok(())
}
