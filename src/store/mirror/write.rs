//! The mirror's writes, one statement per table and batch.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection};

use crate::domain::MirrorSchema;
use crate::store::{DbContext, Result};

/// A table of the mirror and the columns a write fills from the object.
#[derive(Debug, Clone, Copy)]
pub struct TableWrite<'a> {
    pub schema: &'a MirrorSchema,
    pub table: &'static str,
    pub columns: &'static [&'static str],
}

/// One object to store, from one event. At most one per id in a statement.
#[derive(Debug, Clone)]
pub struct RowWrite {
    /// The fields the columns are read from, by name (PostgreSQL converts each to its
    /// column's type; a value it cannot convert fails the statement).
    pub fields: Value,
    /// The complete object as received, when `fields` is not it (a subscription item's row
    /// reads `price` as an id; a deletion writes a few columns).
    pub raw: Option<Value>,
    /// The event's time: the row takes the object only if it holds an older one.
    pub at: DateTime<Utc>,
    pub event_id: String,
    pub account: String,
    /// Nested lists the event carried only in part (`has_more`), by field name.
    pub truncated: Vec<String>,
}

/// Inserts or updates rows, each only over an older one (an equal time from another event,
/// a same-second tie, is taken: the later arrival) and never over a newer tombstone; returns
/// the ids written.
pub async fn upsert(
    conn: &mut PgConnection,
    table: TableWrite<'_>,
    rows: &[RowWrite],
) -> Result<HashSet<String>> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let mut fields = Vec::with_capacity(rows.len());
    let mut raws = Vec::with_capacity(rows.len());
    let mut ats = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    let mut accounts = Vec::with_capacity(rows.len());
    let mut truncated = Vec::with_capacity(rows.len());
    for row in rows {
        fields.push(&row.fields);
        raws.push(row.raw.as_ref());
        ats.push(row.at);
        events.push(row.event_id.as_str());
        accounts.push(row.account.as_str());
        truncated.push(row.truncated.join(","));
    }
    let written: Vec<String> = sqlx::query_scalar(AssertSqlSafe(upsert_sql(table)))
        .bind(fields)
        .bind(raws)
        .bind(ats)
        .bind(events)
        .bind(accounts)
        .bind(truncated)
        .bind(table.table)
        .fetch_all(conn)
        .await
        .context("writing mirrored Stripe objects")?;
    Ok(written.into_iter().collect())
}

fn upsert_sql(table: TableWrite<'_>) -> String {
    let TableWrite {
        schema,
        table: name,
        columns,
    } = table;
    let quoted: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    let from_record: Vec<String> = columns.iter().map(|c| format!("r.\"{c}\"")).collect();
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| **c != "id")
        .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
        .collect();
    format!(
        "insert into {schema}.\"{name}\" as t ({cols}, last_synced_at, _raw_data, _account, \
             _event_id, _truncated_lists) \
         select {from_record}, u.at, coalesce(u.raw, u.fields), u.account, u.event_id, \
                string_to_array(u.truncated, ',') \
         from unnest($1::jsonb[], $2::jsonb[], $3::timestamptz[], $4::text[], $5::text[], \
                     $6::text[]) as u (fields, raw, at, event_id, account, truncated) \
         cross join lateral jsonb_populate_record(null::{schema}.\"{name}\", u.fields) as r \
         where not exists (select 1 from {schema}._paysync_tombstones d \
                           where d.kind = $7 and d.id = r.id and d.deleted_at >= u.at) \
         on conflict (id) do update set {updates}, last_synced_at = excluded.last_synced_at, \
             _raw_data = excluded._raw_data, _account = excluded._account, \
             _event_id = excluded._event_id, _truncated_lists = excluded._truncated_lists \
         where t.last_synced_at is null or t.last_synced_at < excluded.last_synced_at \
            or (t.last_synced_at = excluded.last_synced_at \
                and t._event_id is distinct from excluded._event_id) \
         returning t.id",
        cols = quoted.join(", "),
        from_record = from_record.join(", "),
        updates = updates.join(", "),
    )
}

/// An object deleted in Stripe, at its deletion event's time.
#[derive(Debug, Clone)]
pub struct Removal {
    pub id: String,
    pub at: DateTime<Utc>,
}

/// Removes rows (unless they hold an object newer than the deletion) and leaves tombstones;
/// returns the ids removed.
pub async fn remove(
    conn: &mut PgConnection,
    schema: &MirrorSchema,
    table: &'static str,
    removals: &[Removal],
) -> Result<HashSet<String>> {
    if removals.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = removals.iter().map(|r| r.id.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = removals.iter().map(|r| r.at).collect();
    let removed: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "with gone as (select * from unnest($1::text[], $2::timestamptz[]) as g (id, at)), \
              marked as (insert into {schema}._paysync_tombstones (kind, id, deleted_at) \
                         select $3, id, at from gone \
                         on conflict (kind, id) do update \
                         set deleted_at = greatest(_paysync_tombstones.deleted_at, \
                                                   excluded.deleted_at)) \
         delete from {schema}.\"{table}\" as t using gone \
         where t.id = gone.id and (t.last_synced_at is null or t.last_synced_at <= gone.at) \
         returning t.id"
    )))
    .bind(&ids)
    .bind(&ats)
    .bind(table)
    .fetch_all(conn)
    .await
    .context("removing mirrored Stripe objects")?;
    Ok(removed.into_iter().collect())
}

/// Marks `deleted` the items of each subscription that its (complete) item list no longer
/// holds, unless an item was written by an event newer than the subscription's.
pub async fn flag_gone_items(
    conn: &mut PgConnection,
    schema: &MirrorSchema,
    subscriptions: &[(String, Vec<String>, DateTime<Utc>)],
) -> Result<()> {
    if subscriptions.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = subscriptions.iter().map(|s| s.0.as_str()).collect();
    let kept: Vec<String> = subscriptions.iter().map(|s| s.1.join(",")).collect();
    let ats: Vec<DateTime<Utc>> = subscriptions.iter().map(|s| s.2).collect();
    sqlx::query(AssertSqlSafe(format!(
        "update {schema}.subscription_items as i set deleted = true \
         from unnest($1::text[], $2::text[], $3::timestamptz[]) as s (id, kept, at) \
         where i.subscription = s.id and not i.deleted \
           and not (i.id = any (string_to_array(s.kept, ','))) \
           and (i.last_synced_at is null or i.last_synced_at <= s.at)"
    )))
    .bind(&ids)
    .bind(&kept)
    .bind(&ats)
    .execute(conn)
    .await
    .context("marking subscription items gone")?;
    Ok(())
}
