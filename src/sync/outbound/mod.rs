//! The outbound handler: make Stripe match a customer's current row.
//!
//! Level-based: a message only names a customer; the handler reads the row as it is now and
//! brings Stripe to it. Bursts of changes collapse, redeliveries are no-ops
//! (`stripe_synced_version >= version`), and the order of messages does not matter.
//!
//! A sync is a series of steps. Each step holds the customer's sync lock (a session lock on a
//! session shared with the other syncs, so no transaction and no pooled connection waits on
//! Stripe) for one Stripe call (a create may look the customer up first) and records its
//! result in a short transaction. Between steps (a failed call waiting for its retry, a
//! create that may still be on its way) the lock is free, so the customer's Stripe events are
//! applied meanwhile instead of waiting behind the whole series; the next step reads the
//! row again.
//!
//! A create is fenced (`step`): an attempt is claimed in the row, committed, before its call,
//! with the time until which it may still reach Stripe; no replica creates the customer again
//! before that time has passed or Stripe answered it, and every create after any attempt
//! looks the customer up first. So a lost lock (a dead replica whose request is still on the
//! wire) never makes a second Stripe customer.
//!
//! The customer's account (its policy) is looked up at each step: a policy that does not
//! write to Stripe now (Observe, StripeToLocal, suspended, removed, no usable key) leaves the
//! change pending, and [`crate::policy::apply`] queues it again once the policy writes.

mod step;
mod stripe_write;

pub use stripe_write::{DELETED_AT_KEY, create_key};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tracing::instrument;

use super::dead_letters::DeadLetters;
use crate::backoff::Backoff;
use crate::crd::{Direction, Mode};
use crate::domain::{Customer, CustomerId, WriteWindow};
use crate::metrics::{
    PolicyHistograms, PolicyOutcomes, count_for, latency_histogram, observe_for, policy_histograms,
};
use crate::policy::{Policy, PolicyRegistry};
use crate::store::customers::SyncedWrite;
use crate::store::dead_letters::{NewDeadLetter, Source, storable};
use crate::store::locks::LockPool;
use crate::store::{self, customers};
use crate::stripe as stripe_api;
use step::Step;
use stripe_write::would_do;

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Found the customer paysync had already created (a crash before the commit) and
    /// recorded it instead of creating another.
    Linked,
    Updated,
    Deleted,
    /// Deleted locally; the Stripe customer was marked `paysync_deleted_at` (`SoftDelete`).
    SoftDeleted,
    /// Deleted locally; the Stripe customer stays (`Orphan`).
    Orphaned,
    /// Stripe already matched this version (a redelivery or a collapsed burst).
    UpToDate,
    /// No such local customer.
    Missing,
    /// Could not be applied; recorded in the dead-letter table.
    DeadLettered,
    /// Left pending: no policy of the customer's account (removed).
    NoPolicy,
    /// Left pending: the policy is suspended.
    Suspended,
    /// Left pending: the policy syncs StripeToLocal.
    ReadOnly,
    /// Left pending: the policy observes; what it would have done.
    Observed(&'static str),
    /// Left pending: the policy has no API key, or Stripe rejected it.
    NotReady,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Created => "create",
            Self::Linked => "link",
            Self::Updated => "update",
            Self::Deleted => "delete",
            Self::SoftDeleted => "soft_delete",
            Self::Orphaned => "orphan",
            Self::UpToDate => "noop",
            Self::Missing => "missing",
            Self::DeadLettered => "dead_letter",
            Self::NoPolicy => "no_policy",
            Self::Suspended => "suspended",
            Self::ReadOnly => "read_only",
            Self::Observed(would) => would,
            Self::NotReady => "not_ready",
        }
    }
}

/// What a transport hands outbound work to.
#[async_trait]
pub trait OutboundHandler: Send + Sync {
    /// Brings Stripe to the customer's current version. A change Stripe refuses, or one that
    /// keeps failing, is dead-lettered; only a database failure is an error (the caller
    /// retries the message).
    async fn sync(&self, id: CustomerId) -> store::Result<Outcome>;

    /// Where a message nobody can read is set aside.
    fn dead_letters(&self) -> &DeadLetters;
}

/// How the handler retries a change Stripe did not take, and fences creates.
#[derive(Debug, Clone, Copy)]
pub struct OutboundRetry {
    /// Failed Stripe calls of one sync before the change is dead-lettered.
    pub max_attempts: u32,
    /// The wait after a failed call (never shorter than Stripe's `Retry-After`), spent
    /// without the customer's lock.
    pub backoff: Backoff,
    /// How long after it was sent a create may still reach Stripe when no answer came back
    /// (Stripe's timeout plus a margin for a request held on the way): no new create of the
    /// customer is sent before then.
    pub create_in_flight: Duration,
}

/// `paysync_outbound_*`.
#[derive(Debug)]
pub struct OutboundMetrics {
    lag: PolicyHistograms,
    synced: PolicyOutcomes,
}

impl OutboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            lag: policy_histograms(latency_histogram),
            synced: PolicyOutcomes::default(),
        };
        registry.register(
            "outbound_lag_seconds",
            "From a local change being committed to Stripe having applied it, by policy",
            metrics.lag.clone(),
        );
        registry.register(
            "outbound_synced",
            "Outbound messages handled, by policy and what was done to Stripe (or why the change \
             waits: no_policy, suspended, read_only, not_ready, observed_*)",
            metrics.synced.clone(),
        );
        metrics
    }
}

pub struct OutboundSync {
    pool: PgPool,
    locks: LockPool,
    policies: Arc<PolicyRegistry>,
    dead_letters: DeadLetters,
    metrics: Arc<OutboundMetrics>,
    retry: OutboundRetry,
}

impl OutboundSync {
    pub fn new(
        pool: PgPool,
        locks: LockPool,
        policies: Arc<PolicyRegistry>,
        dead_letters: DeadLetters,
        metrics: Arc<OutboundMetrics>,
        retry: OutboundRetry,
    ) -> Self {
        Self {
            pool,
            locks,
            policies,
            dead_letters,
            metrics,
            retry,
        }
    }

    /// The customer's policy when it writes to Stripe now; else the outcome that leaves the
    /// change pending.
    fn writing_policy(&self, customer: &Customer) -> Result<Arc<Policy>, Outcome> {
        let Some(policy) = self.policies.get(&customer.account) else {
            return Err(Outcome::NoPolicy);
        };
        if policy.spec.suspend {
            return Err(Outcome::Suspended);
        }
        if policy.spec.direction == Direction::StripeToLocal {
            return Err(Outcome::ReadOnly);
        }
        if policy.spec.mode == Mode::Observe {
            return Err(Outcome::Observed(would_do(customer, policy.spec.deletion)));
        }
        Ok(policy)
    }

    async fn record_synced(
        &self,
        customer: &Customer,
        stripe_id: Option<&str>,
        started: DateTime<Utc>,
        outcome: Outcome,
    ) -> store::Result<()> {
        let write = SyncedWrite {
            version: customer.version,
            stripe_id,
            window: WriteWindow {
                started,
                finished: Utc::now(),
            },
            content: customer.fields.content_hash(),
        };
        let mut tx = store::begin(&self.pool).await?;
        let linked = customers::record_synced(&mut tx, customer.id, write).await?;
        if let (Some(ours), Some(linked)) = (stripe_id, linked.as_deref())
            && ours != linked
        {
            tracing::error!(
                stripe_id = ours,
                linked,
                "Stripe holds a second customer for this one; the reconciler reports it"
            );
        }
        if outcome == Outcome::Orphaned {
            customers::mark_orphaned(&mut tx, customer.id).await?;
        }
        store::commit(tx).await?;
        let lag = (Utc::now() - customer.updated_at)
            .to_std()
            .unwrap_or_default();
        observe_for(&self.metrics.lag, &customer.account, lag.as_secs_f64());
        Ok(())
    }

    /// Dead-letters the change and shows the customer `failed`, together.
    async fn record_failure(
        &self,
        customer: &Customer,
        error: &stripe_api::Error,
    ) -> store::Result<()> {
        let attempts = match error {
            stripe_api::Error::Exhausted { attempts, .. } => {
                i32::try_from(*attempts).unwrap_or(i32::MAX)
            }
            _ => 1,
        };
        let message = error.to_string();
        let key = customer.id.to_string();
        let payload = serde_json::json!({"customer_id": customer.id, "version": customer.version})
            .to_string();
        let letter = NewDeadLetter {
            source: Source::Outbound,
            account: &customer.account,
            key: &key,
            payload: payload.as_bytes(),
            error: &message,
            attempts,
        };
        let mut tx = store::begin(&self.pool).await?;
        self.dead_letters.record_in(&mut tx, letter).await?;
        customers::record_sync_failure(&mut tx, customer.id, &storable(&message)).await?;
        store::commit(tx).await
    }
}

#[async_trait]
impl OutboundHandler for OutboundSync {
    #[instrument(skip_all, fields(customer_id = %id))]
    async fn sync(&self, id: CustomerId) -> store::Result<Outcome> {
        let mut failures = 0;
        loop {
            let lock = self.locks.lock_customer(id).await?;
            let step = self.step(id, &mut failures).await;
            lock.release().await?;
            match step? {
                Step::Done { outcome, account } => {
                    count_for(&self.metrics.synced, &account, outcome.label());
                    return Ok(outcome);
                }
                // Without the lock: the customer's Stripe events are applied meanwhile, and
                // the next step reads the row again.
                Step::After(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }
}
