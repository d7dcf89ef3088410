//! The handlers every worker and the reconciler hand work to, with their metric groups.

use std::sync::Arc;

use sqlx::PgPool;

use super::StripeCalls;
use crate::domain::MirrorSchema;
use crate::metrics::Registry;
use crate::policy::PolicyRegistry;
use crate::reconcile::Handlers;
use crate::store::locks::LockPool;
use crate::sync::dead_letters::DeadLetters;
use crate::sync::inbound::InboundMetrics;
use crate::sync::mirror::{MirrorMetrics, MirrorSync};
use crate::sync::outbound::OutboundMetrics;
use crate::sync::{InboundPipeline, InboundSync, OutboundRetry, OutboundSync};

/// The outbound handler, paysync's two-way customers' inbound handler, the billing mirror,
/// and the pipeline every transport hands Stripe events to.
pub(super) fn handlers(
    calls: StripeCalls,
    (pool, locks): (&PgPool, &LockPool),
    policies: &Arc<PolicyRegistry>,
    (dead_letters, mirror_schema): (&DeadLetters, &MirrorSchema),
    registry: &mut Registry,
) -> Handlers {
    let retry = OutboundRetry {
        max_attempts: calls.max_attempts,
        backoff: calls.backoff,
        create_in_flight: calls.timeout + calls.create_fence,
    };
    let outbound = Arc::new(OutboundSync::new(
        pool.clone(),
        locks.clone(),
        policies.clone(),
        dead_letters.clone(),
        Arc::new(OutboundMetrics::register(registry)),
        retry,
    ));
    let inbound = Arc::new(InboundSync::new(
        pool.clone(),
        policies.clone(),
        dead_letters.clone(),
        Arc::new(InboundMetrics::register(registry)),
    ));
    let mirror = Arc::new(MirrorSync::new(
        pool.clone(),
        mirror_schema.clone(),
        policies.clone(),
        dead_letters.clone(),
        Arc::new(MirrorMetrics::register(registry)),
    ));
    let pipeline = Arc::new(InboundPipeline::new(pool.clone(), inbound.clone(), mirror));
    Handlers {
        outbound,
        inbound,
        pipeline,
    }
}
