//! Reconcile runs: one row per run with its counts, the scan's checkpointed segments (so a
//! run killed mid-way resumes), and the local customers the scan has matched.
//!
//! A dry run writes none of this: it marks what it saw in a temporary table of the same name
//! on its own connection ([`shadow_seen`]), which PostgreSQL searches before the real one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{DbContext, Result};
use crate::domain::CustomerId;

/// A run as stored (and listed by `GET /v1/reconcile-runs`).
#[derive(Debug, Clone, FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub policy: String,
    pub mode: String,
    pub trigger: String,
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub scan_from: Option<DateTime<Utc>>,
    pub scanned: i64,
    pub pages: i64,
    pub drift: i64,
    pub drift_by_kind: Json<BTreeMap<String, i64>>,
    pub repaired: i64,
    pub failed: i64,
    pub error: Option<String>,
}

const RUN_COLUMNS: &str = "id, policy, mode, trigger, outcome, started_at, finished_at, \
    scan_from, scanned, pages, drift, drift_by_kind, repaired, failed, error";

/// A run's counts so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RunCounts {
    /// Stripe customers scanned.
    pub scanned: i64,
    /// Stripe list pages read.
    pub pages: i64,
    /// Differences found (one per action of the plan).
    pub drift: i64,
    /// Drift by kind (`stripe_only`, `local_only`, `stripe_changed`, ...).
    pub drift_by_kind: BTreeMap<String, i64>,
    pub repaired: i64,
    pub failed: i64,
}

impl RunRow {
    pub fn counts(&self) -> RunCounts {
        RunCounts {
            scanned: self.scanned,
            pages: self.pages,
            drift: self.drift,
            drift_by_kind: self.drift_by_kind.0.clone(),
            repaired: self.repaired,
            failed: self.failed,
        }
    }
}

/// Starts a run of `policy` (Enforce mode: the only runs that are recorded).
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    policy: &str,
    trigger: &str,
    scan_from: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "insert into reconcile_runs (id, policy, account, mode, trigger, scan_from) \
         values ($1, $2, $2, 'enforce', $3, $4)",
    )
    .bind(id)
    .bind(policy)
    .bind(trigger)
    .bind(scan_from)
    .execute(conn)
    .await
    .context("recording a reconcile run")?;
    Ok(())
}

/// The policy's run that never finished (its process was killed or stopped), to resume.
pub async fn unfinished(conn: &mut PgConnection, policy: &str) -> Result<Option<RunRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from reconcile_runs where policy = $1 and finished_at is null \
         order by started_at desc limit 1"
    )))
    .bind(policy)
    .fetch_optional(conn)
    .await
    .context("finding an unfinished reconcile run")
}

/// The policy's last finished run (of any replica), to schedule the next one after it.
pub async fn last_finished(conn: &mut PgConnection, policy: &str) -> Result<Option<RunRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from reconcile_runs where policy = $1 and finished_at is not null \
         order by finished_at desc limit 1"
    )))
    .bind(policy)
    .fetch_optional(conn)
    .await
    .context("finding the last reconcile run")
}

/// Ends a run: its outcome and final counts; its segments and seen marks are deleted.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    outcome: &str,
    counts: &RunCounts,
    error: Option<&str>,
) -> Result<RunRow> {
    checkpoint(conn, id, &[], counts).await?;
    for table in ["reconcile_segments", "reconcile_seen"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "delete from {table} where run_id = $1"
        )))
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("clearing a finished run's scan state")?;
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update reconcile_runs set outcome = $2, error = $3, finished_at = now() where id = $1 \
         returning {RUN_COLUMNS}"
    )))
    .bind(id)
    .bind(outcome)
    .bind(error)
    .fetch_one(conn)
    .await
    .context("finishing a reconcile run")
}

/// Runs, newest first, of one policy or all.
pub async fn list(
    conn: &mut PgConnection,
    policy: Option<&str>,
    limit: i64,
) -> Result<Vec<RunRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from reconcile_runs where ($1::text is null or policy = $1) \
         order by started_at desc limit $2"
    )))
    .bind(policy)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("listing reconcile runs")
}

/// One segment of a run's scan: customers created in `[created_gte, created_lt)`.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct SegmentRow {
    pub segment: i32,
    pub created_gte: i64,
    pub created_lt: i64,
    pub cursor: Option<String>,
    pub skip_second: i64,
    pub skip: Vec<String>,
    pub done: bool,
}

/// Saves segments (new ones, or progress of existing ones) and the run's counts, in one
/// statement (a page's checkpoint: one round trip; PostgreSQL always runs a data-modifying
/// `with`). Skipped ids hold no comma (Stripe ids).
pub async fn checkpoint(
    conn: &mut PgConnection,
    run_id: Uuid,
    segments: &[SegmentRow],
    counts: &RunCounts,
) -> Result<()> {
    let column = |f: fn(&SegmentRow) -> i64| segments.iter().map(f).collect::<Vec<i64>>();
    let ids: Vec<i32> = segments.iter().map(|s| s.segment).collect();
    let cursors: Vec<Option<&str>> = segments.iter().map(|s| s.cursor.as_deref()).collect();
    let skips: Vec<String> = segments.iter().map(|s| s.skip.join(",")).collect();
    let done: Vec<bool> = segments.iter().map(|s| s.done).collect();
    sqlx::query(
        "with saved as ( \
           insert into reconcile_segments (run_id, segment, created_gte, created_lt, cursor, \
             skip_second, skip, done) \
           select $1, s.segment, s.gte, s.lt, s.cursor, s.skip_second, \
             string_to_array(s.skip, ','), s.done \
           from unnest($2::int[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], \
             $7::text[], $8::bool[]) as s (segment, gte, lt, cursor, skip_second, skip, done) \
           on conflict (run_id, segment) do update set created_gte = excluded.created_gte, \
             created_lt = excluded.created_lt, cursor = excluded.cursor, \
             skip_second = excluded.skip_second, skip = excluded.skip, done = excluded.done \
           returning 1) \
         update reconcile_runs set scanned = $9, pages = $10, drift = $11, \
           drift_by_kind = $12, repaired = $13, failed = $14 \
         where id = $1",
    )
    .bind(run_id)
    .bind(&ids)
    .bind(column(|s| s.created_gte))
    .bind(column(|s| s.created_lt))
    .bind(&cursors)
    .bind(column(|s| s.skip_second))
    .bind(&skips)
    .bind(&done)
    .bind(counts.scanned)
    .bind(counts.pages)
    .bind(counts.drift)
    .bind(Json(&counts.drift_by_kind))
    .bind(counts.repaired)
    .bind(counts.failed)
    .execute(conn)
    .await
    .context("saving a reconcile checkpoint")?;
    Ok(())
}

/// Every segment of a run (a resumed run continues the ones not done).
pub async fn load_segments(conn: &mut PgConnection, run_id: Uuid) -> Result<Vec<SegmentRow>> {
    sqlx::query_as(
        "select segment, created_gte, created_lt, cursor, skip_second, skip, done \
         from reconcile_segments \
         where run_id = $1 order by segment",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await
    .context("loading reconcile segments")
}

/// Records that the scan matched these local customers.
pub async fn mark_seen(conn: &mut PgConnection, run_id: Uuid, ids: &[CustomerId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    sqlx::query(
        "insert into reconcile_seen (run_id, customer_id) select $1, unnest($2::uuid[]) \
         on conflict do nothing",
    )
    .bind(run_id)
    .bind(&ids)
    .execute(conn)
    .await
    .context("marking customers seen by the scan")?;
    Ok(())
}

/// Makes this connection's `reconcile_seen` a temporary table, so a dry run marks what it
/// saw without writing to the database.
pub async fn shadow_seen(conn: &mut PgConnection) -> Result<()> {
    sqlx::query(
        "create temporary table if not exists reconcile_seen (run_id uuid not null, \
         customer_id uuid not null, primary key (run_id, customer_id))",
    )
    .execute(conn)
    .await
    .context("creating a dry run's table of seen customers")?;
    Ok(())
}
