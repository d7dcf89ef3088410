//! The Stripe calls that bring one account's customer to the local row: update, create (once:
//! looked up first whenever an earlier attempt was made), and the deletion the policy asks
//! for. Each call is a single attempt; the handler retries, without the customer's lock.

use chrono::{SecondsFormat, Utc};

use super::Outcome;
use crate::crd::Deletion;
use crate::domain::Customer;
use crate::stripe::{self as stripe_api, StripeApi, StripeCustomer};
use crate::sync::mapping::{matches_write, write_for};

/// The metadata key a `SoftDelete` policy sets on the Stripe customer of a locally deleted
/// customer (RFC 3339, UTC), instead of deleting it.
pub const DELETED_AT_KEY: &str = "paysync_deleted_at";

/// What a step's Stripe calls left: what was done and the Stripe id to record.
pub(super) type Written = stripe_api::Result<(Outcome, Option<String>)>;

/// One account's client and the rules its writes follow.
pub(super) struct StripeWriter<'a> {
    pub stripe: &'a dyn StripeApi,
    pub deletion: Deletion,
}

/// The Idempotency-Key of a customer's create at `version`. Stripe replays the first answer
/// to a repeat of a key, and refuses a key repeated with other parameters: the parameters of
/// a create are those of one version (fields, `paysync_id`, `paysync_version`), so every
/// attempt at one version, from any replica, shares its key and Stripe merges them, while a
/// newer version never reuses a key with other parameters.
pub fn create_key(customer: &Customer) -> String {
    format!("paysync:create:{}:{}", customer.id, customer.version)
}

impl StripeWriter<'_> {
    /// Brings the Stripe customer `stripe_id` of a live customer to the local row.
    pub async fn update(&self, customer: &Customer, stripe_id: &str) -> Written {
        let key = format!("paysync:update:{}:{}", customer.id, customer.version);
        self.stripe
            .update_customer(stripe_id, &write_for(customer), &key)
            .await?;
        Ok((Outcome::Updated, Some(stripe_id.to_owned())))
    }

    /// The Stripe customer an earlier create attempt made, if one landed.
    pub async fn find(&self, customer: &Customer) -> stripe_api::Result<Option<StripeCustomer>> {
        self.stripe
            .find_customer(&customer.fields.email, customer.id)
            .await
    }

    /// Links the Stripe customer an earlier attempt made, brought to the current version.
    pub async fn link(&self, customer: &Customer, found: StripeCustomer) -> Written {
        let write = write_for(customer);
        if !matches_write(&found, &write) {
            let key = format!("paysync:update:{}:{}", customer.id, customer.version);
            self.stripe.update_customer(&found.id, &write, &key).await?;
        }
        Ok((Outcome::Linked, Some(found.id)))
    }

    /// Creates the customer in Stripe: one call. The caller has claimed the attempt, and
    /// looked the customer up first if any attempt was made before.
    pub async fn create(&self, customer: &Customer) -> Written {
        let created = self
            .stripe
            .create_customer(&write_for(customer), &create_key(customer))
            .await?;
        Ok((Outcome::Created, Some(created.id)))
    }

    /// A local delete, as the policy's `deletion` says: delete in Stripe (`Propagate`), mark
    /// the Stripe customer (`SoftDelete`), or leave it be (`Orphan`).
    pub async fn delete(&self, customer: &Customer) -> Written {
        if self.deletion == Deletion::Orphan {
            return Ok((Outcome::Orphaned, customer.stripe_id.clone()));
        }
        let target = match &customer.stripe_id {
            Some(stripe_id) => Some(stripe_id.clone()),
            // Never attempted: nothing in Stripe is this customer's.
            None if customer.create_attempted_at.is_none() => None,
            // The handler waited until no attempt could still land.
            None => self.find(customer).await?.map(|c| c.id),
        };
        let Some(stripe_id) = target else {
            return Ok((Outcome::Deleted, None));
        };
        if self.deletion == Deletion::SoftDelete {
            let at = customer
                .deleted_at
                .unwrap_or_else(Utc::now)
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            let mut write = write_for(customer);
            write.metadata.insert(DELETED_AT_KEY.to_owned(), at);
            let key = format!("paysync:soft-delete:{}:{}", customer.id, customer.version);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_key_is_one_per_customer_and_version() {
        let now = Utc::now();
        let v1 = Customer::fixture(1, 0, now);
        let mut v2 = v1.clone();
        v2.version = 2;
        assert_eq!(create_key(&v1), create_key(&v1.clone()));
        assert_ne!(create_key(&v1), create_key(&v2));
        assert!(create_key(&v2).starts_with("paysync:create:"));
    }
}
