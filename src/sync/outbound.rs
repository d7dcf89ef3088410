//! The outbound worker's handler: make Stripe match a customer's current row.
//!
//! Level-based: a message only names a customer; the handler reads the row as it is now and
//! brings Stripe to it. Bursts of changes collapse, redeliveries are no-ops
//! (`stripe_synced_version >= version`), and the order of messages does not matter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng as _;
use serde_json::json;
use sqlx::PgPool;
use tracing::{info, instrument, warn};

use crate::domain::{Customer, CustomerId, WriteWindow};
use crate::metrics::Metrics;
use crate::store::customers::SyncedWrite;
use crate::store::dead_letters::{NewDeadLetter, Source, storable};
use crate::store::{self, customers};
use crate::stripe::retry::Backoff;
use crate::stripe::{self as stripe_api, CustomerWrite, StripeApi, StripeCustomer};
use crate::sync::dead_letters::DeadLetters;

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

/// How hard the handler itself tries to resolve an ambiguous create before giving up.
#[derive(Debug, Clone, Copy)]
pub struct CreateRetry {
    pub max_attempts: u32,
    pub backoff: Backoff,
}

pub struct OutboundSync {
    pool: PgPool,
    dead_letters: DeadLetters,
    stripe: Arc<dyn StripeApi>,
    metrics: Arc<Metrics>,
    create_retry: CreateRetry,
}

impl OutboundSync {
    pub fn new(
        pool: PgPool,
        stripe: Arc<dyn StripeApi>,
        metrics: Arc<Metrics>,
        create_retry: CreateRetry,
    ) -> Self {
        Self {
            dead_letters: DeadLetters::new(pool.clone(), metrics.clone()),
            pool,
            stripe,
            metrics,
            create_retry,
        }
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Brings Stripe to the customer's current version. A change Stripe refuses, or one that
    /// keeps failing, goes to the dead-letter table and the customer shows `failed`; only a
    /// database failure is returned as an error (the message is then retried).
    #[instrument(skip_all, fields(customer_id = %id))]
    pub async fn sync(&self, id: CustomerId) -> store::Result<Outcome> {
        let mut tx = store::begin(&self.pool).await?;
        customers::lock_for_sync(&mut tx, id).await?;
        let Some(customer) = customers::find_any(&mut tx, id).await? else {
            return Ok(self.finish(Outcome::Missing));
        };
        if customer.stripe_synced_version >= customer.version {
            return Ok(self.finish(Outcome::UpToDate));
        }
        let started = Utc::now();
        let outcome = match self.apply(&customer).await {
            Ok((outcome, stripe_id)) => {
                let write = SyncedWrite {
                    version: customer.version,
                    stripe_id: stripe_id.as_deref(),
                    window: WriteWindow {
                        started,
                        finished: Utc::now(),
                    },
                    content: customer.fields.content_hash(),
                };
                customers::record_synced(&mut tx, id, write).await?;
                let lag = (Utc::now() - customer.updated_at)
                    .to_std()
                    .unwrap_or_default();
                self.metrics.outbound_lag.observe(lag.as_secs_f64());
                info!(
                    stripe_id = stripe_id.as_deref(),
                    version = customer.version,
                    outcome = outcome.label(),
                    "synced to Stripe"
                );
                outcome
            }
            Err(error) => {
                let payload = json!({"customer_id": id, "version": customer.version});
                let attempts = match &error {
                    stripe_api::Error::Exhausted { attempts, .. } => {
                        i32::try_from(*attempts).unwrap_or(i32::MAX)
                    }
                    _ => 1,
                };
                let message = error.to_string();
                let key = id.to_string();
                let payload = payload.to_string();
                let letter = NewDeadLetter {
                    source: Source::Outbound,
                    key: &key,
                    payload: payload.as_bytes(),
                    error: &message,
                    attempts,
                };
                self.dead_letters.record_in(&mut tx, letter).await?;
                customers::record_sync_failure(&mut tx, id, &storable(&message)).await?;
                Outcome::DeadLettered
            }
        };
        store::commit(tx).await?;
        Ok(self.finish(outcome))
    }

    fn finish(&self, outcome: Outcome) -> Outcome {
        Metrics::count(&self.metrics.outbound_synced, outcome.label());
        outcome
    }

    /// Calls Stripe; returns what was done and the Stripe id to record.
    async fn apply(&self, customer: &Customer) -> stripe_api::Result<(Outcome, Option<String>)> {
        let write = write_for(customer);
        if customer.deleted_at.is_some() {
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
            return Ok((Outcome::Deleted, target));
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
                    operation,
                    cause,
                    retry_after,
                }) => {
                    if attempt >= self.create_retry.max_attempts {
                        return Err(stripe_api::Error::Exhausted {
                            operation,
                            attempts: attempt,
                            last: cause,
                        });
                    }
                    let delay = self.create_retry.backoff.delay(
                        attempt,
                        retry_after,
                        rand::rng().random::<f64>(),
                    );
                    warn!(attempt, error = %cause, "create outcome unknown; looking it up before retrying");
                    tokio::time::sleep(delay.max(Duration::from_millis(50))).await;
                }
                Err(other) => return Err(other),
            }
        }
    }
}

/// What Stripe should hold for this customer: its fields and paysync's own metadata keys.
pub fn write_for(customer: &Customer) -> CustomerWrite {
    let mut metadata: BTreeMap<String, String> = customer.fields.metadata.as_map().clone();
    metadata.insert("paysync_id".to_owned(), customer.id.to_string());
    metadata.insert("paysync_version".to_owned(), customer.version.to_string());
    CustomerWrite {
        email: customer.fields.email.clone(),
        name: customer.fields.name.clone(),
        phone: customer.fields.phone.clone(),
        description: customer.fields.description.clone(),
        metadata,
    }
}

fn matches_write(found: &StripeCustomer, write: &CustomerWrite) -> bool {
    found.email.as_deref() == Some(write.email.as_str())
        && found.name == write.name
        && found.phone == write.phone
        && found.description == write.description
        && found.metadata == write.metadata
}
