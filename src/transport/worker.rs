//! The one worker loop of the PostgreSQL-driven workers (outbox worker, inbox workers, outbox
//! relay): do a step; after a step that found work, at once again; otherwise wait for a
//! NOTIFY on the channel or the poll interval; stop when shut down, after the step in hand.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::Wakeup;

/// How a PostgreSQL-driven worker takes its work.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Rows claimed and handled per batch.
    pub batch_size: i64,
    /// Work done at once: customers synced at once (outbox), or workers (inbox).
    pub concurrency: usize,
    /// Fallback poll when no notification arrives (a missed NOTIFY, a restart).
    pub poll_interval: Duration,
}

/// Where a worker waits for work.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    /// The NOTIFY channel that signals new work.
    pub channel: &'static str,
    /// Fallback poll when no notification arrives (a missed NOTIFY, a restart).
    pub poll_interval: Duration,
}

/// Runs `step` until `shutdown`. A step returns how much work it found; an error is logged
/// with `name` and waited out like an idle step (the work is claimed again later).
pub async fn run<E, F, Fut>(
    name: &str,
    pool: &PgPool,
    waiting: Waiting,
    shutdown: CancellationToken,
    mut step: F,
) where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, E>>,
{
    let mut wakeup = Wakeup::new(pool, waiting.channel, waiting.poll_interval).await;
    while !shutdown.is_cancelled() {
        match step().await {
            Ok(found) if found > 0 => continue,
            Ok(_) => {}
            Err(e) => warn!(worker = name, error = %e, "a worker step failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wakeup.wait() => {}
        }
    }
    debug!(worker = name, "stopped");
}
