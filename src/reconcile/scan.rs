//! The scan of one account's Stripe customers, split into `created` ranges listed concurrently.
//!
//! One cursor is bound by the round trip (a real list call takes hundreds of milliseconds), so
//! the account is split into segments, as many at a time as the budget allows: after a page of
//! a segment, when more segments may run, the rest of its range is cut into pieces about a
//! two pages wide (by the density the page showed), each next one twice as wide. Stripe lists
//! newest first, so after a page ending at second `m` the segment's unseen customers are
//! exactly those created before `m` and those of second `m` not yet seen: the pieces cover
//! `[gte, m]`, and the newest skips the ids of second `m` already processed (kept in `skip`).
//! Segments never overlap and cover the range, so every customer that exists for the whole
//! scan is processed exactly once; a property test drives this over generated accounts
//! (`scan/tests.rs`).
//!
//! A page is processed (matched, diffed, applied) before its segment's cursor is saved, so a
//! run killed mid-way resumes from saved segments and repeats at most the pages in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::stripe::{self as stripe_api, CustomerPage, StripeCustomer, StripeList};

/// Stripe's largest page.
pub const PAGE_SIZE: usize = 100;

/// Lists one account's customers (the Stripe client, within the reconciler's budget).
#[async_trait]
pub trait Lister: Send + Sync {
    async fn list(&self, page: &CustomerPage) -> stripe_api::Result<StripeList<StripeCustomer>>;
}

/// A range of the account being scanned: customers created in `[gte, lt)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: i32,
    pub gte: i64,
    pub lt: i64,
    /// The last customer processed: the next page starts after it.
    pub cursor: Option<String>,
    /// The second of the `skip` ids (and of the cursor's customer, when there is a cursor).
    pub skip_second: i64,
    /// Ids of `skip_second` processed already that a listing of this range may return again
    /// (the range was split off or restarted below a cursor).
    pub skip: Vec<String>,
    pub done: bool,
}

impl Segment {
    /// The whole account up to `until` (Unix seconds, exclusive).
    pub fn whole(until: i64) -> Self {
        Self::range(0, 0, until)
    }

    fn range(id: i32, gte: i64, lt: i64) -> Self {
        Self {
            id,
            gte,
            lt,
            cursor: None,
            skip_second: 0,
            skip: Vec::new(),
            done: false,
        }
    }

    fn one_second(&self) -> bool {
        self.lt - self.gte <= 1
    }
}

/// Receives each page's customers (the ones not processed before), with when its list call
/// was made (what was applied since is newer than the page) and the segments to save once
/// they are processed: the page's segment as it is now, and any it was split into.
#[async_trait]
pub trait PageSink: Send + Sync {
    async fn process(
        &self,
        customers: Vec<StripeCustomer>,
        listed_at: DateTime<Utc>,
        checkpoint: Vec<Segment>,
    ) -> Result<(), ScanError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("listing Stripe customers: {0}")]
    Stripe(#[from] stripe_api::Error),
    #[error("{0}")]
    Sink(String),
}

/// How many list calls may be in flight: enough to use the budget at the observed latency
/// (`rate × latency`, plus one), never more than `max`.
#[derive(Debug)]
pub struct Pace {
    /// The reconciler's share of the policy's rate, calls per second; `None`: unlimited.
    pub rate: Option<f64>,
    pub max: usize,
    latency_micros: AtomicU64,
}

impl Pace {
    pub fn new(rate: Option<f64>, max: usize) -> Self {
        Self {
            rate,
            max: max.max(1),
            latency_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.latency_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.latency_micros.store(new, Ordering::Relaxed);
    }

    /// List calls to keep in flight.
    pub fn target(&self) -> usize {
        let Some(rate) = self.rate else {
            return self.max;
        };
        let latency = self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let wanted = (rate * latency).ceil() as usize + 1;
        wanted.clamp(1, self.max)
    }
}

/// What a scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub pages: u64,
    pub customers: u64,
}

/// A task's result: a page fetched, or a page processed and checkpointed.
enum Step {
    Fetched(Segment, StripeList<StripeCustomer>, DateTime<Utc>),
    Processed(Vec<Segment>, u64),
}

/// Scans `segments` (the undone ones of a new or resumed run) to the end.
pub struct Scan {
    pub lister: Arc<dyn Lister>,
    pub sink: Arc<dyn PageSink>,
    pub pace: Arc<Pace>,
    /// Whether the server filters by `created` (Stripe does, localstripe does not): without
    /// it, one cursor lists everything.
    pub filtered: bool,
    /// The next free segment id.
    pub next_id: i32,
}

impl Scan {
    pub async fn run(mut self, segments: Vec<Segment>) -> Result<ScanStats, ScanError> {
        let mut ready: VecDeque<Segment> = segments.into_iter().filter(|s| !s.done).collect();
        let mut tasks: JoinSet<Result<Step, ScanError>> = JoinSet::new();
        let (mut fetching, mut processing) = (0usize, 0usize);
        let mut stats = ScanStats::default();
        loop {
            while fetching < self.pace.target()
                && let Some(segment) = ready.pop_front()
            {
                fetching += 1;
                tasks.spawn(fetch(
                    self.lister.clone(),
                    self.pace.clone(),
                    segment,
                    self.filtered,
                ));
            }
            let Some(joined) = tasks.join_next().await else {
                return Ok(stats);
            };
            let step =
                joined.map_err(|e| ScanError::Sink(format!("a scan task failed: {e}")))??;
            match step {
                Step::Fetched(segment, page, listed_at) => {
                    fetching -= 1;
                    stats.pages += 1;
                    let busy = fetching + processing + ready.len();
                    let room = self.pace.target().saturating_sub(busy);
                    processing += 1;
                    let (customers, checkpoint) = self.advance(segment, page, room);
                    let sink = self.sink.clone();
                    let count = customers.len() as u64;
                    tasks.spawn(async move {
                        sink.process(customers, listed_at, checkpoint.clone())
                            .await?;
                        Ok(Step::Processed(checkpoint, count))
                    });
                }
                Step::Processed(checkpoint, count) => {
                    processing -= 1;
                    stats.customers += count;
                    ready.extend(checkpoint.into_iter().filter(|s| !s.done));
                }
            }
        }
    }

    /// The page's customers to process and the segments after it: the segment continued,
    /// done, or split when `room` more segments may run.
    fn advance(
        &mut self,
        mut segment: Segment,
        page: StripeList<StripeCustomer>,
        room: usize,
    ) -> (Vec<StripeCustomer>, Vec<Segment>) {
        let (Some(first), Some(last)) = (page.data.first(), page.data.last()) else {
            segment.done = true;
            return (Vec::new(), vec![segment]);
        };
        let (newest, m, last_id) = (first.created, last.created, last.id.clone());
        if self.filtered && newest < m {
            warn!("Stripe listed customers oldest first; the scan continues with one cursor");
            self.filtered = false;
        }
        let mut skip = if segment.skip_second == m {
            std::mem::take(&mut segment.skip)
        } else {
            Vec::new()
        };
        let customers: Vec<StripeCustomer> = page
            .data
            .into_iter()
            .filter(|c| !segment.skip.contains(&c.id) && !skip.contains(&c.id))
            .collect();
        skip.extend(
            customers
                .iter()
                .filter(|c| c.created == m)
                .map(|c| c.id.clone()),
        );
        if !page.has_more {
            segment.done = true;
            return (customers, vec![segment]);
        }
        let width = page_width(customers.len(), newest - m + 1);
        // Worth splitting: room for two more segments, and (in a bounded range) at least two
        // pages left by the density this page showed.
        let pages_left = (m - segment.gte) / width;
        if self.filtered && room >= 2 && !segment.one_second() && pages_left >= 2 {
            // The newest piece two pages wide: a one-page piece ends after a single call.
            let checkpoint = self.split(segment, skip, m, width.saturating_mul(2), room);
            return (customers, checkpoint);
        }
        segment.cursor = Some(last_id);
        segment.skip_second = m;
        segment.skip = skip;
        (customers, vec![segment])
    }

    /// The segment done, replaced by up to `room` pieces of what is left: `[gte, m]`, the
    /// newest piece taking second `m` too (skipping what was processed of it).
    fn split(
        &mut self,
        segment: Segment,
        skip: Vec<String>,
        m: i64,
        width: i64,
        room: usize,
    ) -> Vec<Segment> {
        let gte = segment.gte;
        let mut checkpoint = vec![Segment {
            done: true,
            ..segment
        }];
        let mut pieces = self.pieces(gte, m + 1, width, room);
        if let Some(newest) = pieces.first_mut() {
            newest.skip = skip;
            newest.skip_second = m;
        }
        checkpoint.append(&mut pieces);
        checkpoint
    }

    fn new_segment(&mut self, gte: i64, lt: i64) -> Segment {
        self.next_id += 1;
        Segment::range(self.next_id, gte, lt)
    }

    /// `[gte, lt)` cut from the top into up to `count` pieces: the first `width` seconds
    /// wide (about a page), each next one twice as wide, the last whatever remains below.
    /// Growing pieces keep each segment busy for several pages near the top, where the
    /// customers are known to be, and still reach the oldest ones, however sparse.
    fn pieces(&mut self, gte: i64, lt: i64, width: i64, count: usize) -> Vec<Segment> {
        let mut pieces = Vec::new();
        let (mut top, mut width) = (lt, width);
        while top > gte {
            let bottom = if pieces.len() + 1 >= count {
                gte
            } else {
                top.saturating_sub(width).max(gte)
            };
            pieces.push(self.new_segment(bottom, top));
            top = bottom;
            width = width.saturating_mul(2);
        }
        pieces
    }
}

/// Seconds that hold about one page, from a page of `count` customers over `seconds`.
fn page_width(count: usize, seconds: i64) -> i64 {
    let count = count.max(1) as i64;
    ((PAGE_SIZE as i64 * seconds.max(1)) / count).max(1)
}

/// Lists the segment's next page. A cursor Stripe no longer knows (its customer was deleted
/// meanwhile) restarts the segment below the cursor's second, skipping what was processed.
async fn fetch(
    lister: Arc<dyn Lister>,
    pace: Arc<Pace>,
    mut segment: Segment,
    filtered: bool,
) -> Result<Step, ScanError> {
    loop {
        let request = CustomerPage {
            created_gte: filtered.then_some(segment.gte),
            created_lt: filtered.then_some(segment.lt),
            starting_after: segment.cursor.clone(),
        };
        let started = Instant::now();
        let listed_at = Utc::now();
        match lister.list(&request).await {
            Ok(page) => {
                pace.observe(started.elapsed());
                return Ok(Step::Fetched(segment, page, listed_at));
            }
            Err(stripe_api::Error::Rejected {
                status: 400 | 404, ..
            }) if filtered && segment.cursor.is_some() => {
                info!(
                    segment = segment.id,
                    "the scan's cursor is gone from Stripe; listing its second again"
                );
                segment.lt = segment.skip_second + 1;
                segment.cursor = None;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;
