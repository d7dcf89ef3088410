//! The janitor: removes what paysync keeps only for a while, hourly.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store;

/// How long a POST's `Idempotency-Key` is remembered (as Stripe does).
const IDEMPOTENCY_KEY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a processed Stripe event's id is remembered: past Stripe's retries (3 days) and
/// the Events API's retention (30 days), so neither can make it apply twice.
const PROCESSED_EVENT_RETENTION: Duration = Duration::from_secs(31 * 24 * 60 * 60);
/// How often expired idempotency keys and processed events are removed.
const JANITOR_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Runs until `shutdown`.
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(JANITOR_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store::idempotency::delete_expired(&pool, IDEMPOTENCY_KEY_RETENTION).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "expired idempotency keys removed"),
            Err(e) => warn!(error = %e, "removing expired idempotency keys failed; will retry"),
        }
        let processed =
            store::processed_events::delete_processed_before(&pool, PROCESSED_EVENT_RETENTION);
        match processed.await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "old processed Stripe events forgotten"),
            Err(e) => warn!(error = %e, "removing old processed events failed; will retry"),
        }
    }
}
