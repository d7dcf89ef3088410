//! One step of a sync, under the customer's sync lock: read the row, make at most one Stripe
//! write (a create may look the customer up first), record what happened, and say whether
//! (and when) another step is needed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use super::stripe_write::{StripeWriter, Written};
use super::{OutboundSync, Outcome};
use crate::domain::{Customer, CustomerId};
use crate::policy::Policy;
use crate::store::{self, customers};
use crate::stripe::{self as stripe_api, Fate, StripeApi};

/// When a sync whose create another holder claimed first looks again: that claim fences it
/// now, so the next step waits for it to land or be answered.
const CLAIM_LOST_WAIT: Duration = Duration::from_millis(100);

/// What a step leaves to do.
#[derive(Debug)]
pub(super) enum Step {
    /// The sync is over.
    Done { outcome: Outcome, account: String },
    /// Take another step after this long, the customer's lock released meanwhile.
    After(Duration),
}

impl OutboundSync {
    /// One step of the sync of `id`; `failures` counts the failed Stripe calls of the sync so
    /// far.
    pub(super) async fn step(&self, id: CustomerId, failures: &mut u32) -> store::Result<Step> {
        let mut conn = store::acquire(&self.pool).await?;
        let customer = customers::find_any(&mut conn, id).await?;
        drop(conn);
        let Some(customer) = customer else {
            return Ok(Step::Done {
                outcome: Outcome::Missing,
                account: String::new(),
            });
        };
        let done = |outcome| Step::Done {
            outcome,
            account: customer.account.clone(),
        };
        if customer.stripe_synced_version >= customer.version {
            return Ok(done(Outcome::UpToDate));
        }
        let policy = match self.writing_policy(&customer) {
            Ok(policy) => policy,
            Err(waits) => return Ok(done(waits)),
        };
        let Some(stripe) = policy.stripe() else {
            return Ok(done(Outcome::NotReady));
        };
        // A lookup cannot see a create still on the wire: wait until it can no longer land.
        if let Some(wait) = customer.create_fenced_for(Utc::now()) {
            debug!(
                wait_ms = wait.as_millis() as u64,
                "an earlier create may still reach Stripe; looking it up once it cannot"
            );
            return Ok(Step::After(wait));
        }
        let writer = StripeWriter {
            stripe: stripe.as_ref(),
            deletion: policy.spec.deletion,
        };
        let started = Utc::now();
        let Some(written) = self.write(&writer, &customer).await? else {
            return Ok(Step::After(CLAIM_LOST_WAIT));
        };
        let settled = Settled {
            policy: &policy,
            stripe: stripe.as_ref(),
            started,
        };
        self.settle(&customer, written, settled, failures).await
    }

    /// The step's Stripe write; `None` when another holder claimed the create first.
    async fn write(
        &self,
        writer: &StripeWriter<'_>,
        customer: &Customer,
    ) -> store::Result<Option<Written>> {
        Ok(Some(match &customer.stripe_id {
            _ if customer.deleted_at.is_some() => writer.delete(customer).await,
            Some(stripe_id) => writer.update(customer, stripe_id).await,
            None => return self.create(writer, customer).await,
        }))
    }

    /// Creates the customer in Stripe, or links the one an earlier attempt made: any earlier
    /// attempt (this sync's or another's, answered or not) is looked up first. The attempt
    /// is claimed in the row, committed, before the call. `None` when another holder claimed
    /// one first.
    async fn create(
        &self,
        writer: &StripeWriter<'_>,
        customer: &Customer,
    ) -> store::Result<Option<Written>> {
        if customer.create_attempted_at.is_some() {
            match writer.find(customer).await {
                Ok(Some(found)) => return Ok(Some(writer.link(customer, found).await)),
                Ok(None) => {}
                Err(error) => return Ok(Some(Err(error))),
            }
        }
        let mut conn = store::acquire(&self.pool).await?;
        let claimed = customers::claim_create_attempt(
            &mut conn,
            customer.id,
            customer.create_attempted_at,
            self.retry.create_in_flight,
        )
        .await?;
        drop(conn);
        let Some(attempted_at) = claimed else {
            debug!("another holder claimed the create first");
            return Ok(None);
        };
        let written = writer.create(customer).await;
        if let Err(error) = &written
            && answered(error)
        {
            let mut conn = store::acquire(&self.pool).await?;
            customers::create_answered(&mut conn, customer.id, attempted_at).await?;
        }
        Ok(Some(written))
    }

    /// Records what the step's Stripe calls did: synced, a retry after a backoff, or, for a
    /// rejection or a series out of attempts, a dead letter.
    async fn settle(
        &self,
        customer: &Customer,
        written: Written,
        settled: Settled<'_>,
        failures: &mut u32,
    ) -> store::Result<Step> {
        let done = |outcome| Step::Done {
            outcome,
            account: customer.account.clone(),
        };
        match written {
            Ok((outcome, stripe_id)) => {
                self.record_synced(customer, stripe_id.as_deref(), settled.started, outcome)
                    .await?;
                info!(
                    stripe_id,
                    version = customer.version,
                    outcome = outcome.label(),
                    "synced to Stripe"
                );
                Ok(done(outcome))
            }
            Err(error) if error.is_key_rejected() => {
                settled.policy.key_rejected(&error.to_string());
                Ok(done(Outcome::NotReady))
            }
            Err(failed @ stripe_api::Error::Failed { .. }) => {
                *failures += 1;
                self.retry_or_give_up(customer, failed, settled.stripe, *failures)
                    .await
            }
            Err(error) => {
                self.record_failure(customer, &error).await?;
                Ok(done(Outcome::DeadLettered))
            }
        }
    }
}

impl OutboundSync {
    /// After the `failures`-th failed call of a sync: another step after a backoff (never
    /// sooner than Stripe's `Retry-After`), or, out of attempts, a dead letter.
    async fn retry_or_give_up(
        &self,
        customer: &Customer,
        failed: stripe_api::Error,
        stripe: &dyn StripeApi,
        failures: u32,
    ) -> store::Result<Step> {
        let stripe_api::Error::Failed {
            operation,
            cause,
            reason,
            retry_after,
            ..
        } = failed
        else {
            self.record_failure(customer, &failed).await?;
            return Ok(Step::Done {
                outcome: Outcome::DeadLettered,
                account: customer.account.clone(),
            });
        };
        if failures >= self.retry.max_attempts {
            let exhausted = stripe_api::Error::Exhausted {
                operation,
                attempts: failures,
                last: cause,
            };
            self.record_failure(customer, &exhausted).await?;
            return Ok(Step::Done {
                outcome: Outcome::DeadLettered,
                account: customer.account.clone(),
            });
        }
        stripe.count_retry(operation, reason);
        let wait = self.retry.backoff.jittered(failures, retry_after);
        warn!(operation, attempt = failures, delay_ms = wait.as_millis() as u64,
            error = %cause, "Stripe call failed; retrying");
        Ok(Step::After(wait))
    }
}

/// What a step's result is recorded with.
struct Settled<'a> {
    policy: &'a Policy,
    stripe: &'a dyn StripeApi,
    started: DateTime<Utc>,
}

/// Whether Stripe answered the request (it is not on its way any more).
fn answered(error: &stripe_api::Error) -> bool {
    match error {
        stripe_api::Error::Failed { fate, .. } => *fate != Fate::MayStillLand,
        stripe_api::Error::Rejected { .. } | stripe_api::Error::Unreadable { .. } => true,
        stripe_api::Error::Exhausted { .. } => false,
    }
}
