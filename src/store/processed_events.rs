//! Stripe events paysync has seen: the dedup record of every applied event, and with the
//! PostgreSQL transport (or a replay) the inbox of events waiting to be applied.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::dead_letters::storable;
use super::{DbContext, Result};

/// The channel that wakes the inbox workers when events wait in the inbox.
pub const NOTIFY_CHANNEL: &str = "paysync_inbox";

/// An event to record: what the inbox and the dedup check need to know about it.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub event_id: &'a str,
    pub kind: &'a str,
    pub account: &'a str,
    pub stripe_customer_id: Option<&'a str>,
}

/// Queues verified events (their raw JSON) in the inbox, in one statement. Events already
/// known are left as they are, so a redelivery is stored once.
pub async fn enqueue(conn: &mut PgConnection, events: &[(EventRef<'_>, &str)]) -> Result<()> {
    let mut ids = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut accounts = Vec::with_capacity(events.len());
    let mut customers = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for (event, payload) in events {
        ids.push(event.event_id);
        kinds.push(event.kind);
        accounts.push(event.account);
        customers.push(event.stripe_customer_id);
        payloads.push(*payload);
    }
    sqlx::query(
        "insert into processed_events (event_id, type, account, stripe_customer_id, payload) \
         select id, kind, account, customer, payload::json \
         from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
              as queued (id, kind, account, customer, payload) \
         on conflict (event_id) do nothing",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&accounts)
    .bind(&customers)
    .bind(&payloads)
    .execute(conn)
    .await
    .context("queueing Stripe events in the inbox")?;
    Ok(())
}

/// Whether an event still has to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: its dedup record is now written (processed once this transaction commits).
    New,
    /// Waiting in the inbox (PostgreSQL transport, or replayed); now locked by this transaction.
    Queued,
    /// Already applied: a redelivery.
    Processed,
}

/// Whether a deletion of this Stripe customer was seen (received or applied) in `account`: it
/// is gone from Stripe, and an older event of it must not bring it back.
pub async fn deletion_seen(
    conn: &mut PgConnection,
    account: &str,
    stripe_id: &str,
) -> Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from processed_events where type = 'customer.deleted' \
         and stripe_customer_id = $2 and account = $1)",
    )
    .bind(account)
    .bind(stripe_id)
    .fetch_one(conn)
    .await
    .context("looking for a Stripe customer's deletion")
}

/// Writes the dedup record of an event arriving through Kafka, or finds the one that exists.
/// The record is inserted as processed: it commits together with the event's effects, or not
/// at all. A concurrent insert of the same id waits for the other transaction to finish.
pub async fn begin_processing(conn: &mut PgConnection, event: EventRef<'_>) -> Result<Seen> {
    let inserted = sqlx::query(
        "insert into processed_events (event_id, type, account, stripe_customer_id, processed_at) \
         values ($1, $2, $3, $4, now()) on conflict (event_id) do nothing",
    )
    .bind(event.event_id)
    .bind(event.kind)
    .bind(event.account)
    .bind(event.stripe_customer_id)
    .execute(&mut *conn)
    .await
    .context("recording a Stripe event")?
    .rows_affected();
    if inserted == 1 {
        return Ok(Seen::New);
    }
    let processed: Option<bool> = sqlx::query_scalar(
        "select processed_at is not null from processed_events where event_id = $1 for update",
    )
    .bind(event.event_id)
    .fetch_optional(conn)
    .await
    .context("checking a Stripe event")?;
    Ok(match processed {
        Some(false) => Seen::Queued,
        // Gone would mean the janitor removed it between the two statements: long processed.
        Some(true) | None => Seen::Processed,
    })
}

/// [`begin_processing`] for a batch: which of these events are new, queued or processed.
pub async fn begin_processing_many(
    conn: &mut PgConnection,
    events: &[EventRef<'_>],
) -> Result<HashMap<String, Seen>> {
    let ids: Vec<&str> = events.iter().map(|e| e.event_id).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let accounts: Vec<&str> = events.iter().map(|e| e.account).collect();
    let customers: Vec<Option<&str>> = events.iter().map(|e| e.stripe_customer_id).collect();
    let inserted: Vec<String> = sqlx::query_scalar(
        "insert into processed_events (event_id, type, account, stripe_customer_id, processed_at) \
         select id, kind, account, customer, now() \
         from unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
              as batch (id, kind, account, customer) \
         on conflict (event_id) do nothing returning event_id",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&accounts)
    .bind(&customers)
    .fetch_all(&mut *conn)
    .await
    .context("recording Stripe events")?;
    let mut seen: HashMap<String, Seen> = inserted.into_iter().map(|id| (id, Seen::New)).collect();
    let known: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    if !known.is_empty() {
        let states: Vec<(String, bool)> = sqlx::query_as(
            "select event_id, processed_at is not null from processed_events \
             where event_id = any($1) order by event_id for update",
        )
        .bind(&known)
        .fetch_all(conn)
        .await
        .context("checking Stripe events")?;
        for (id, processed) in states {
            let state = if processed {
                Seen::Processed
            } else {
                Seen::Queued
            };
            seen.insert(id, state);
        }
    }
    Ok(seen)
}

/// The update of [`finish_many`], its event ids and outcomes bound as the parameters named
/// (a macro, so the inbox workers' common batch can run it after its write-back in one
/// statement: `store::customers::write_back_finishing`).
macro_rules! finish_many_sql {
    ($ids:literal, $outcomes:literal) => {
        concat!(
            "update processed_events p set processed_at = coalesce(p.processed_at, now()), \
             outcome = u.outcome, payload = null from unnest(",
            $ids,
            "::text[], ",
            $outcomes,
            "::text[]) as u(id, outcome) where p.event_id = u.id"
        )
    };
}
pub(crate) use finish_many_sql;

/// [`finish`] for a batch: `(event id, outcome)` pairs.
pub async fn finish_many(conn: &mut PgConnection, outcomes: &[(&str, &str)]) -> Result<()> {
    let ids: Vec<&str> = outcomes.iter().map(|(id, _)| *id).collect();
    let labels: Vec<&str> = outcomes.iter().map(|(_, outcome)| *outcome).collect();
    sqlx::query(finish_many_sql!("$1", "$2"))
        .bind(&ids)
        .bind(&labels)
        .execute(conn)
        .await
        .context("marking Stripe events processed")?;
    Ok(())
}

/// Marks an event applied with its outcome (`applied`, `duplicate`, `stale`, …); the inbox
/// payload is no longer needed.
pub async fn finish(conn: &mut PgConnection, event_id: &str, outcome: &str) -> Result<()> {
    sqlx::query(
        "update processed_events set processed_at = coalesce(processed_at, now()), \
         outcome = $2, payload = null where event_id = $1",
    )
    .bind(event_id)
    .bind(outcome)
    .execute(conn)
    .await
    .context("marking a Stripe event processed")?;
    Ok(())
}

/// An event waiting in the inbox, with its JSON.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxRow {
    pub event_id: String,
    /// The policy the event came for.
    pub account: String,
    pub payload: Option<String>,
    /// A replayed dead letter: decide on Stripe's current state of the customer.
    pub refetch: bool,
}

/// Claims up to `limit` waiting events, oldest first, for the rest of the transaction; rows
/// another worker holds are skipped, so any number of workers and replicas can drain it.
pub async fn claim_queued(conn: &mut PgConnection, limit: i64) -> Result<Vec<InboxRow>> {
    sqlx::query_as(
        "select event_id, account, payload::text as payload, refetch from processed_events \
         where processed_at is null \
         order by received_at limit $1 for update skip locked",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("claiming inbox events")
}

/// Claims those of these events still waiting that no other worker holds; returns their ids.
pub async fn claim_listed(conn: &mut PgConnection, event_ids: &[&str]) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "select event_id from processed_events \
         where event_id = any($1) and processed_at is null \
         order by received_at for update skip locked",
    )
    .bind(event_ids)
    .fetch_all(conn)
    .await
    .context("claiming inbox events again")
}

/// Claims one waiting event, if no other worker holds it.
pub async fn claim_one(conn: &mut PgConnection, event_id: &str) -> Result<Option<InboxRow>> {
    sqlx::query_as(
        "select event_id, account, payload::text as payload, refetch from processed_events \
         where event_id = $1 and processed_at is null for update skip locked",
    )
    .bind(event_id)
    .fetch_optional(conn)
    .await
    .context("claiming an inbox event")
}

/// Puts an event back into the inbox (a dead letter's replay), to be decided on Stripe's
/// current state of its customer.
pub async fn requeue(conn: &mut PgConnection, event: EventRef<'_>, payload: &str) -> Result<()> {
    sqlx::query(
        "insert into processed_events \
             (event_id, type, account, stripe_customer_id, payload, refetch) \
         values ($1, $2, $3, $4, $5::json, true) on conflict (event_id) do update \
         set payload = excluded.payload, processed_at = null, outcome = null, refetch = true",
    )
    .bind(event.event_id)
    .bind(event.kind)
    .bind(event.account)
    .bind(event.stripe_customer_id)
    .bind(payload)
    .execute(&mut *conn)
    .await
    .context("requeueing a Stripe event")?;
    sqlx::query("select pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(conn)
        .await
        .context("waking the inbox worker")?;
    Ok(())
}

/// The outcome of an event that could be neither applied nor recorded as a dead letter: it is
/// marked processed anyway (its payload kept, for an operator), so no worker claims it again
/// and catch-up does not queue it again. Every value is made storable first: this must not
/// fail on content.
pub async fn set_aside(conn: &mut PgConnection, event: EventRef<'_>) -> Result<()> {
    sqlx::query(
        "insert into processed_events \
             (event_id, type, account, stripe_customer_id, processed_at, outcome) \
         values ($1, $2, $3, $4, now(), $5) on conflict (event_id) do update \
         set processed_at = now(), outcome = excluded.outcome",
    )
    .bind(storable(event.event_id).as_ref())
    .bind(storable(event.kind).as_ref())
    .bind(storable(event.account).as_ref())
    .bind(event.stripe_customer_id.map(storable).as_deref())
    .bind(SET_ASIDE)
    .execute(conn)
    .await
    .context("setting a Stripe event aside")?;
    Ok(())
}

/// The outcome of an event [`set_aside`].
pub const SET_ASIDE: &str = "set_aside";

/// Which of these event ids are already known (applied or queued).
pub async fn known(conn: &mut PgConnection, event_ids: &[String]) -> Result<HashSet<String>> {
    let known: Vec<String> =
        sqlx::query_scalar("select event_id from processed_events where event_id = any($1)")
            .bind(event_ids)
            .fetch_all(conn)
            .await
            .context("looking up known Stripe events")?;
    Ok(known.into_iter().collect())
}

/// Events waiting in the inbox, and how long the oldest has waited (seconds).
pub async fn backlog(conn: &mut PgConnection) -> Result<(i64, f64)> {
    sqlx::query_as(
        "select count(*), coalesce(extract(epoch from now() - min(received_at)), 0)::float8 \
         from processed_events where processed_at is null",
    )
    .fetch_one(conn)
    .await
    .context("measuring the inbox backlog")
}

/// Rows the janitor deletes per statement: short transactions, however large the backlog.
const JANITOR_CHUNK: i64 = 10_000;

/// Forgets processed events received more than `retention` ago, a chunk per transaction;
/// returns how many.
pub async fn delete_processed_before(pool: &PgPool, retention: Duration) -> Result<u64> {
    let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "delete from processed_events where event_id in ( \
                 select event_id from processed_events where processed_at is not null \
                 and received_at < now() - make_interval(secs => $1) limit $2)",
        )
        .bind(seconds as f64)
        .bind(JANITOR_CHUNK)
        .execute(pool)
        .await
        .context("deleting old processed events")?
        .rows_affected();
        total += deleted;
        if deleted < JANITOR_CHUNK as u64 {
            return Ok(total);
        }
    }
}
