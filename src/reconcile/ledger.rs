//! Where a run keeps its state: recorded in `reconcile_runs` (an Enforce run, resumable), or
//! nowhere but a temporary table on its own connection (a dry run, an Observe run), so those
//! write nothing to the database.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::Mutex;
use tracing::info;
use uuid::Uuid;

use super::scan::Segment;
use crate::domain::{Customer, CustomerId};
use crate::store::reconcile_runs::{self, RunCounts, RunRow, SegmentRow};
use crate::store::{self, customers};

pub(super) enum Ledger {
    Recorded {
        pool: PgPool,
        run_id: Uuid,
    },
    Unrecorded {
        conn: Mutex<PoolConnection<Postgres>>,
        run_id: Uuid,
    },
}

/// Where a run starts: fresh, or where a killed run of the policy stopped.
pub(super) struct Start {
    pub scan_from: DateTime<Utc>,
    pub segments: Vec<Segment>,
    pub counts: RunCounts,
    pub started_at: DateTime<Utc>,
}

impl Ledger {
    /// A recorded run of `policy`: the unfinished one if there is one (resumed), else a new one.
    pub async fn recorded(
        pool: &PgPool,
        policy: &str,
        trigger: &str,
    ) -> store::Result<(Self, Start)> {
        let mut conn = store::acquire(pool).await?;
        if let Some(run) = reconcile_runs::unfinished(&mut conn, policy).await? {
            let segments = reconcile_runs::load_segments(&mut conn, run.id).await?;
            info!(policy, run_id = %run.id, scanned = run.scanned, "resuming a reconcile run that did not finish");
            let start = resumed(&run, segments);
            return Ok((
                Self::Recorded {
                    pool: pool.clone(),
                    run_id: run.id,
                },
                start,
            ));
        }
        let (run_id, now) = (Uuid::now_v7(), Utc::now());
        reconcile_runs::insert(&mut conn, run_id, policy, trigger, now).await?;
        let start = Start {
            scan_from: now,
            segments: vec![Segment::whole(now.timestamp() + 1)],
            counts: RunCounts::default(),
            started_at: now,
        };
        Ok((
            Self::Recorded {
                pool: pool.clone(),
                run_id,
            },
            start,
        ))
    }

    /// A run that writes nothing.
    pub async fn unrecorded(pool: &PgPool) -> store::Result<(Self, Start)> {
        let mut conn = store::acquire(pool).await?;
        reconcile_runs::shadow_seen(&mut conn).await?;
        let now = Utc::now();
        let start = Start {
            scan_from: now,
            segments: vec![Segment::whole(now.timestamp() + 1)],
            counts: RunCounts::default(),
            started_at: now,
        };
        let run_id = Uuid::now_v7();
        Ok((
            Self::Unrecorded {
                conn: Mutex::new(conn),
                run_id,
            },
            start,
        ))
    }

    pub fn id(&self) -> Uuid {
        match self {
            Self::Recorded { run_id, .. } | Self::Unrecorded { run_id, .. } => *run_id,
        }
    }

    /// The local customers a page of Stripe customers matches, marked seen by this run.
    pub async fn match_page(
        &self,
        account: &str,
        listed: &[customers::Listed<'_>],
        by_email: bool,
    ) -> store::Result<Vec<(usize, Customer)>> {
        let run_id = self.id();
        match self {
            Self::Recorded { pool, .. } => {
                let mut conn = store::acquire(pool).await?;
                customers::match_listed(&mut conn, account, listed, by_email, run_id).await
            }
            Self::Unrecorded { conn, .. } => {
                let mut conn = conn.lock().await;
                customers::match_listed(&mut conn, account, listed, by_email, run_id).await
            }
        }
    }

    pub async fn mark_seen(&self, ids: &[CustomerId]) -> store::Result<()> {
        match self {
            Self::Recorded { pool, run_id } => {
                let mut conn = store::acquire(pool).await?;
                reconcile_runs::mark_seen(&mut conn, *run_id, ids).await
            }
            Self::Unrecorded { conn, run_id } => {
                let mut conn = conn.lock().await;
                reconcile_runs::mark_seen(&mut conn, *run_id, ids).await
            }
        }
    }

    /// Saves the segments after a processed page, with the counts so far (nothing when
    /// unrecorded).
    pub async fn checkpoint(&self, segments: &[Segment], counts: &RunCounts) -> store::Result<()> {
        let Self::Recorded { pool, run_id } = self else {
            return Ok(());
        };
        let rows: Vec<SegmentRow> = segments.iter().map(row).collect();
        let mut conn = store::acquire(pool).await?;
        reconcile_runs::checkpoint(&mut conn, *run_id, &rows, counts).await
    }

    /// The next local customers the scan did not see.
    pub async fn unseen(
        &self,
        account: &str,
        scan_from: DateTime<Utc>,
        after: Option<CustomerId>,
        limit: i64,
    ) -> store::Result<Vec<Customer>> {
        let run_id = self.id();
        match self {
            Self::Recorded { pool, .. } => {
                let mut conn = store::acquire(pool).await?;
                customers::unseen(&mut conn, account, run_id, scan_from, after, limit).await
            }
            Self::Unrecorded { conn, .. } => {
                let mut conn = conn.lock().await;
                customers::unseen(&mut conn, account, run_id, scan_from, after, limit).await
            }
        }
    }

    /// Ends the run: its row when recorded.
    pub async fn finish(
        &self,
        outcome: &str,
        counts: &RunCounts,
        error: Option<&str>,
    ) -> store::Result<Option<RunRow>> {
        let Self::Recorded { pool, run_id } = self else {
            return Ok(None);
        };
        let mut conn = store::acquire(pool).await?;
        let row = reconcile_runs::finish(&mut conn, *run_id, outcome, counts, error).await?;
        Ok(Some(row))
    }
}

fn resumed(run: &RunRow, segments: Vec<SegmentRow>) -> Start {
    let scan_from = run.scan_from.unwrap_or(run.started_at);
    let segments = if segments.is_empty() {
        vec![Segment::whole(scan_from.timestamp() + 1)]
    } else {
        segments.into_iter().map(segment).collect()
    };
    Start {
        scan_from,
        segments,
        counts: RunCounts {
            scanned: run.scanned,
            pages: run.pages,
            drift: run.drift,
            drift_by_kind: run.drift_by_kind.0.clone(),
            repaired: run.repaired,
            failed: run.failed,
        },
        started_at: run.started_at,
    }
}

fn row(s: &Segment) -> SegmentRow {
    SegmentRow {
        segment: s.id,
        created_gte: s.gte,
        created_lt: s.lt,
        cursor: s.cursor.clone(),
        skip_second: s.skip_second,
        skip: s.skip.clone(),
        done: s.done,
    }
}

fn segment(row: SegmentRow) -> Segment {
    Segment {
        id: row.segment,
        gte: row.created_gte,
        lt: row.created_lt,
        cursor: row.cursor,
        skip_second: row.skip_second,
        skip: row.skip,
        done: row.done,
    }
}
