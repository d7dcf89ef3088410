//! A Stripe customer as the reconciler listed it, applied like a live event: the same lookup
//! (linked, `paysync_id`, email), decision (`rules`, with no change time: `Newest` keeps the
//! local change) and writes. It is not an event, so it leaves no dedup record.

use chrono::{DateTime, Utc};

use super::event::IncomingEvent;
use super::{Failure, InboundSync, Outcome};
use crate::store;
use crate::stripe::StripeCustomer;

impl InboundSync {
    /// Applies what Stripe holds for `stripe_id` in `account` (`None`: the customer is gone)
    /// as listed by a call made at `listed_at` (never over anything applied since); the policy's mode and direction may stand instead (the outcome
    /// says so).
    pub async fn apply_listed(
        &self,
        account: &str,
        stripe_id: &str,
        customer: Option<&StripeCustomer>,
        listed_at: DateTime<Utc>,
    ) -> Result<Outcome, Failure> {
        let context = match self.context(account) {
            Ok(context) => context,
            Err(instead) => return Ok(instead),
        };
        let incoming =
            IncomingEvent::listed(stripe_id, customer, listed_at).map_err(Failure::Permanent)?;
        let mut tx = store::begin(&self.pool).await?;
        let outcome = self.decide_and_write(&mut tx, incoming, &context).await?;
        store::commit(tx).await?;
        Ok(outcome)
    }
}
