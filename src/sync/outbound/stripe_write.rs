//! The Stripe calls that bring one account's customer to the local row: update, create
//! exactly once, and the deletion the policy asks for.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use tracing::warn;

use super::{CreateRetry, Outcome};
use crate::crd::Deletion;
use crate::domain::Customer;
use crate::stripe::{self as stripe_api, CustomerWrite, StripeApi};
use crate::sync::mapping::{matches_write, write_for};

/// The metadata key a `SoftDelete` policy sets on the Stripe customer of a locally deleted
/// customer (RFC 3339, UTC), instead of deleting it.
pub const DELETED_AT_KEY: &str = "paysync_deleted_at";

/// One account's client and the rules its writes follow.
pub(super) struct StripeWriter<'a> {
    pub stripe: &'a dyn StripeApi,
    pub deletion: Deletion,
    pub create_retry: CreateRetry,
}

impl StripeWriter<'_> {
    /// Calls Stripe; returns what was done and the Stripe id to record.
    pub async fn apply(
        &self,
        customer: &Customer,
    ) -> stripe_api::Result<(Outcome, Option<String>)> {
        let write = write_for(customer);
        if customer.deleted_at.is_some() {
            return self.delete(customer, write).await;
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

    /// A local delete, as the policy's `deletion` says: delete in Stripe (`Propagate`), mark
    /// the Stripe customer (`SoftDelete`), or leave it be (`Orphan`).
    async fn delete(
        &self,
        customer: &Customer,
        mut write: CustomerWrite,
    ) -> stripe_api::Result<(Outcome, Option<String>)> {
        if self.deletion == Deletion::Orphan {
            return Ok((Outcome::Orphaned, customer.stripe_id.clone()));
        }
        let target = match &customer.stripe_id {
            Some(stripe_id) => Some(stripe_id.clone()),
            // Never attempted: nothing in Stripe is this customer's.
            None if customer.create_attempted_at.is_none() => None,
            None => self
                .stripe
                .find_customer(&write.email, customer.id)
                .await?
                .map(|c| c.id),
        };
        let Some(stripe_id) = target else {
            return Ok((Outcome::Deleted, None));
        };
        if self.deletion == Deletion::SoftDelete {
            let at = customer
                .deleted_at
                .unwrap_or_else(Utc::now)
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            write.metadata.insert(DELETED_AT_KEY.to_owned(), at);
            let key = format!("paysync:soft-delete:{}", customer.id);
            self.stripe
                .update_customer(&stripe_id, &write, &key)
                .await?;
            return Ok((Outcome::SoftDeleted, Some(stripe_id)));
        }
        self.stripe
            .delete_customer(&stripe_id, &format!("paysync:delete:{}", customer.id))
            .await?;
        Ok((Outcome::Deleted, Some(stripe_id)))
    }

    /// Creates the customer in Stripe exactly once, in one call when nothing was attempted
    /// before (the attempt is recorded before the call). Where an earlier attempt's outcome is
    /// unknown (a crash, a lost answer: `create_attempted_at` set), and after an ambiguous
    /// failure, it looks the customer up before trying anew. Stripe's Idempotency-Key is sent
    /// too, but the lookup must hold on its own (the emulator ignores keys).
    async fn create_or_link(
        &self,
        customer: &Customer,
        write: &CustomerWrite,
    ) -> stripe_api::Result<(Outcome, Option<String>)> {
        let key = format!("paysync:create:{}", customer.id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome_unknown = attempt > 1 || customer.create_attempted_at.is_some();
            let found = if outcome_unknown {
                self.stripe.find_customer(&write.email, customer.id).await?
            } else {
                None
            };
            if let Some(found) = found {
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

/// What a sync would do, for a policy in Observe mode (counted, not done).
pub(super) fn would_do(customer: &Customer, deletion: Deletion) -> &'static str {
    match (customer.deleted_at.is_some(), deletion, &customer.stripe_id) {
        (true, Deletion::Orphan, _) => "observed_orphan",
        (true, Deletion::SoftDelete, _) => "observed_soft_delete",
        (true, Deletion::Propagate, _) => "observed_delete",
        (false, _, Some(_)) => "observed_update",
        (false, _, None) => "observed_create",
    }
}
