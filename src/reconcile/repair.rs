//! Carrying out a customer's plan through the workers' own handlers: the inbound apply for
//! local changes (the same lookup, rules and writes as a live event), the outbound handler for
//! Stripe (the same idempotency keys, create-once lookup, dead letters and `sync` fields).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Handlers;
use super::diff::{Action, ActionKind};
use crate::domain::Customer;
use crate::policy::Policy;
use crate::store::customers::SyncWait;
use crate::store::{self, customers};
use crate::stripe::{RateLimit, StripeCustomer};
use crate::sync::Outcome;

pub(super) struct Repairer {
    pub handlers: Handlers,
    pub pool: sqlx::PgPool,
    pub policy: Arc<Policy>,
    /// The reconciler's share of the policy's rate: every Stripe call it causes takes a token.
    pub budget: RateLimit,
}

impl Repairer {
    /// Makes both sides agree as `actions` say; an error says why a step failed (the next run
    /// finds what is left).
    pub async fn repair(
        &self,
        local: Option<&Customer>,
        stripe_id: Option<&str>,
        stripe: Option<&StripeCustomer>,
        actions: &[Action],
        listed_at: DateTime<Utc>,
    ) -> Result<(), String> {
        let changes_local = actions.iter().any(|a| {
            matches!(
                a.kind,
                ActionKind::Adopt
                    | ActionKind::UpdateLocal
                    | ActionKind::DeleteLocal
                    | ActionKind::Unlink
                    | ActionKind::Link
            )
        });
        if changes_local && let Some(stripe_id) = stripe_id {
            self.change_local(local, stripe_id, stripe, actions, listed_at)
                .await?;
        }
        if let Some(write) = actions.iter().find(|a| a.kind.writes_stripe()) {
            let local = local.ok_or("internal: a Stripe write without a local customer")?;
            self.change_stripe(local, write).await?;
        }
        Ok(())
    }

    /// Through the inbound apply, which links (by `paysync_id` or email), adopts, updates or
    /// deletes exactly as for a live event; a policy that never applies Stripe changes
    /// (LocalToStripe) only links.
    async fn change_local(
        &self,
        local: Option<&Customer>,
        stripe_id: &str,
        stripe: Option<&StripeCustomer>,
        actions: &[Action],
        listed_at: DateTime<Utc>,
    ) -> Result<(), String> {
        if !self.policy.applies_stripe_changes() {
            let links = actions.iter().any(|a| a.kind == ActionKind::Link);
            return match local {
                Some(local) if links => self.link(local, stripe_id).await,
                _ => Ok(()),
            };
        }
        self.handlers
            .inbound
            .apply_listed(&self.policy.name, stripe_id, stripe, listed_at)
            .await
            .map(drop)
            .map_err(|failure| failure.to_string())
    }

    /// Records the link of a leaked create, after any sync of the customer in flight.
    async fn link(&self, local: &Customer, stripe_id: &str) -> Result<(), String> {
        let linked = async {
            let mut tx = store::begin(&self.pool).await?;
            customers::lock_for_sync(&mut tx, local.id, SyncWait::Wait).await?;
            customers::link_stripe_id(&mut tx, local.id, stripe_id).await?;
            store::commit(tx).await
        };
        linked.await.map_err(|e| e.to_string())
    }

    /// Queues the customer's current row for Stripe (a new version when Stripe is thought to
    /// hold it already) and syncs it now through the outbound handler.
    async fn change_stripe(&self, local: &Customer, write: &Action) -> Result<(), String> {
        let recreate = write.kind == ActionKind::CreateInStripe && local.stripe_id.is_some();
        let queued = async {
            let mut tx = store::begin(&self.pool).await?;
            customers::queue_resync(&mut tx, local.id, recreate).await?;
            store::commit(tx).await
        };
        queued.await.map_err(|e| e.to_string())?;
        // A create may look the customer up first: two calls.
        let calls = if write.kind == ActionKind::CreateInStripe {
            2
        } else {
            1
        };
        for _ in 0..calls {
            self.budget.acquire().await;
        }
        match self.handlers.outbound.sync(local.id).await {
            Ok(Outcome::DeadLettered) => {
                Err("Stripe refused the change: it is in /v1/dead-letters".to_owned())
            }
            Ok(
                waits @ (Outcome::NoPolicy
                | Outcome::Suspended
                | Outcome::ReadOnly
                | Outcome::Observed(_)
                | Outcome::NotReady),
            ) => Err(format!("the change waits: {waits:?}")),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
