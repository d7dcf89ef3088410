//! The billing mirror: Stripe's products, prices, subscriptions, invoices, payments and the
//! rest, one-way into the mirror schema's tables (see [`kinds`]). An object is applied when it
//! is newer than what its row holds; nothing here ever writes to Stripe, so the mirror follows
//! neither the policy's `direction` nor its `adoption`: `suspend`, `mode: Observe` and
//! `objects` decide alone.

mod apply;
pub mod change;
mod deliver;
pub mod kinds;
mod metrics;

pub use metrics::MirrorMetrics;

use std::sync::Arc;

use sqlx::PgPool;

use super::dead_letters::DeadLetters;
use super::inbound::{Outcome, Received};
use crate::crd::{Mode, mirrors};
use crate::policy::PolicyRegistry;
use crate::store::mirror::MirrorSchema;
use kinds::{EventAction, Kind};

/// The mirror's handler; a transport reaches it through the inbound pipeline.
pub struct MirrorSync {
    pool: PgPool,
    schema: MirrorSchema,
    registry: Arc<PolicyRegistry>,
    dead_letters: DeadLetters,
    metrics: Arc<MirrorMetrics>,
}

/// Whether an event is the mirror's: a kind it mirrors, a customer event (the mirror's
/// `customers` beside paysync's two-way customers), or neither.
pub fn kind_of(received: &Received) -> Option<(&'static Kind, EventAction)> {
    kinds::for_event(&received.event.kind)
}

impl MirrorSync {
    pub fn new(
        pool: PgPool,
        schema: MirrorSchema,
        registry: Arc<PolicyRegistry>,
        dead_letters: DeadLetters,
        metrics: Arc<MirrorMetrics>,
    ) -> Self {
        Self {
            pool,
            schema,
            registry,
            dead_letters,
            metrics,
        }
    }

    /// Whether `account`'s policy mirrors `kind` now, or the outcome that stands instead.
    fn gate(&self, account: &str, kind: &Kind) -> Result<(), Outcome> {
        let Some(policy) = self.registry.get(account) else {
            return Err(Outcome::NoPolicy);
        };
        if policy.spec.suspend {
            Err(Outcome::Suspended)
        } else if policy.spec.mode == Mode::Observe {
            Err(Outcome::Observed)
        } else if !mirrors(policy.spec.objects.as_deref(), kind.selector) {
            Err(Outcome::NotMirrored)
        } else {
            Ok(())
        }
    }

    fn count(&self, received: &Received, kind: &Kind, outcome: Outcome) {
        self.metrics
            .count(&received.event.account, kind.table, outcome.label());
    }
}
