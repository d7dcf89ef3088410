//! The outbound handler: make Stripe match a customer's current row.
//!
//! Level-based: a message only names a customer; the handler reads the row as it is now and
//! brings Stripe to it. Bursts of changes collapse, redeliveries are no-ops
//! (`stripe_synced_version >= version`), and the order of messages does not matter. One sync
//! of a customer at a time (its sync lock, on a held connection, so no transaction and no
//! pooled connection waits on Stripe); the result is committed in a short transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tracing::{info, instrument, warn};

use super::dead_letters::DeadLetters;
use super::mapping::{matches_write, write_for};
use crate::backoff::Backoff;
use crate::domain::{Customer, CustomerId, WriteWindow};
use crate::metrics::{Outcomes, count, latency_histogram};
use crate::store::customers::SyncedWrite;
use crate::store::dead_letters::{NewDeadLetter, Source, storable};
use crate::store::locks::LockPool;
use crate::store::{self, customers};
use crate::stripe::{self as stripe_api, CustomerWrite, StripeApi};

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Found the customer paysync had already created (a crash before the commit) and
    /// recorded it instead of creating another.
    Linked,
    Updated,
    Deleted,
    /// Stripe already matched this version (a redelivery or a collapsed burst).
    UpToDate,
    /// No such local customer.
    Missing,
    /// Could not be applied; recorded in the dead-letter table.
    DeadLettered,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Created => "create",
            Self::Linked => "link",
            Self::Updated => "update",
            Self::Deleted => "delete",
            Self::UpToDate => "noop",
            Self::Missing => "missing",
            Self::DeadLettered => "dead_letter",
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

/// How hard the handler itself tries to resolve an ambiguous create before giving up.
#[derive(Debug, Clone, Copy)]
pub struct CreateRetry {
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// `paysync_outbound_*`.
#[derive(Debug)]
pub struct OutboundMetrics {
    lag: Histogram,
    synced: Outcomes,
}

impl OutboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            lag: latency_histogram(),
            synced: Outcomes::default(),
        };
        registry.register(
            "outbound_lag_seconds",
            "From a local change being committed to Stripe having applied it",
            metrics.lag.clone(),
        );
        registry.register(
            "outbound_synced",
            "Outbound messages handled, by what was done to Stripe",
            metrics.synced.clone(),
        );
        metrics
    }
}

pub struct OutboundSync {
    pool: PgPool,
    locks: LockPool,
    stripe: Arc<dyn StripeApi>,
    dead_letters: DeadLetters,
    metrics: Arc<OutboundMetrics>,
    create_retry: CreateRetry,
}

impl OutboundSync {
    pub fn new(
        pool: PgPool,
        locks: LockPool,
        stripe: Arc<dyn StripeApi>,
        dead_letters: DeadLetters,
        metrics: Arc<OutboundMetrics>,
        create_retry: CreateRetry,
    ) -> Self {
        Self {
            pool,
            locks,
            stripe,
            dead_letters,
            metrics,
            create_retry,
        }
    }

    async fn sync_locked(&self, id: CustomerId) -> store::Result<Outcome> {
        let mut conn = store::acquire(&self.pool).await?;
        let customer = customers::find_any(&mut conn, id).await?;
        drop(conn);
        let Some(customer) = customer else {
            return Ok(Outcome::Missing);
        };
        if customer.stripe_synced_version >= customer.version {
            return Ok(Outcome::UpToDate);
        }
        let started = Utc::now();
        match self.apply(&customer).await {
            Ok((outcome, stripe_id)) => {
                self.record_synced(&customer, stripe_id.as_deref(), started)
                    .await?;
                info!(
                    stripe_id,
                    version = customer.version,
                    outcome = outcome.label(),
                    "synced to Stripe"
                );
                Ok(outcome)
            }
            Err(error) => {
                self.record_failure(&customer, &error).await?;
                Ok(Outcome::DeadLettered)
            }
        }
    }

    async fn record_synced(
        &self,
        customer: &Customer,
        stripe_id: Option<&str>,
        started: DateTime<Utc>,
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
        customers::record_synced(&mut tx, customer.id, write).await?;
        store::commit(tx).await?;
        let lag = (Utc::now() - customer.updated_at)
            .to_std()
            .unwrap_or_default();
        self.metrics.lag.observe(lag.as_secs_f64());
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

    /// Calls Stripe; returns what was done and the Stripe id to record.
    async fn apply(&self, customer: &Customer) -> stripe_api::Result<(Outcome, Option<String>)> {
        let write = write_for(customer);
        if customer.deleted_at.is_some() {
            return self.delete(customer, &write).await;
        }
        match &customer.stripe_id {
            Some(stripe_id) => {
                let key = format!("paysync:update:{}:{}", customer.id, customer.version);
                self.stripe.update_customer(stripe_id, &write, &key).await?;
                Ok((Outcome::Updated, Some(stripe_id.clone())))
            }
            None => self.create_or_link(customer, &write).await,
        }
    }

    async fn delete(
        &self,
        customer: &Customer,
        write: &CustomerWrite,
    ) -> stripe_api::Result<(Outcome, Option<String>)> {
        let target = match &customer.stripe_id {
            Some(stripe_id) => Some(stripe_id.clone()),
            None => self
                .stripe
                .find_customer(&write.email, customer.id)
                .await?
                .map(|c| c.id),
        };
        if let Some(stripe_id) = &target {
            self.stripe
                .delete_customer(stripe_id, &format!("paysync:delete:{}", customer.id))
                .await?;
        }
        Ok((Outcome::Deleted, target))
    }

    /// Creates the customer in Stripe exactly once: look it up first (a previous attempt may
    /// have created it before a crash or a lost response), and after an ambiguous failure look
    /// again before trying anew. Stripe's Idempotency-Key is sent too, but the lookup must
    /// hold on its own (the emulator ignores keys).
    async fn create_or_link(
        &self,
        customer: &Customer,
        write: &CustomerWrite,
    ) -> stripe_api::Result<(Outcome, Option<String>)> {
        let key = format!("paysync:create:{}", customer.id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(found) = self.stripe.find_customer(&write.email, customer.id).await? {
                if !matches_write(&found, write) {
                    let update_key = format!("paysync:update:{}:{}", customer.id, customer.version);
                    self.stripe
                        .update_customer(&found.id, write, &update_key)
                        .await?;
                }
                return Ok((Outcome::Linked, Some(found.id)));
            }
            match self.stripe.create_customer(write, &key).await {
                Ok(created) => return Ok((Outcome::Created, Some(created.id))),
                Err(stripe_api::Error::Ambiguous {
                    cause, retry_after, ..
                }) if attempt < self.create_retry.max_attempts => {
                    let delay = self.create_retry.backoff.jittered(attempt, retry_after);
                    warn!(attempt, error = %cause, "create outcome unknown; looking it up before retrying");
                    tokio::time::sleep(delay.max(Duration::from_millis(50))).await;
                }
                Err(stripe_api::Error::Ambiguous {
                    operation, cause, ..
                }) => {
                    return Err(stripe_api::Error::Exhausted {
                        operation,
                        attempts: attempt,
                        last: cause,
                    });
                }
                Err(other) => return Err(other),
            }
        }
    }
}

#[async_trait]
impl OutboundHandler for OutboundSync {
    #[instrument(skip_all, fields(customer_id = %id))]
    async fn sync(&self, id: CustomerId) -> store::Result<Outcome> {
        let lock = self.locks.lock_customer(id).await?;
        let outcome = self.sync_locked(id).await;
        lock.release().await?;
        let outcome = outcome?;
        count(&self.metrics.synced, outcome.label());
        Ok(outcome)
    }

    fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }
}
