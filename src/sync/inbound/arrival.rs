//! Applying events as they arrive (the PostgreSQL transport's ingress gathers concurrent
//! deliveries): the common case in three round trips and the commit
//! ([`InboundSync::apply_linked`]), else
//! the general path, both without waiting on Stripe; what neither can apply is queued.

use tracing::debug;

use super::{Delivery, Failure, InboundSync, Outcome, Received};
use crate::store;

impl InboundSync {
    /// Applies events as they arrive, together, or tells the caller to queue them (see
    /// [`super::InboundHandler::apply_arrived`]).
    pub(super) async fn apply_on_arrival(&self, events: &[Received]) -> store::Result<bool> {
        let applied = match self.apply_linked(events, Delivery::Arrival).await {
            Ok(Some(outcomes)) => Ok(outcomes),
            Ok(None) => self.apply_batch_on_arrival(events).await,
            Err(failure) => Err(failure),
        };
        match applied {
            Ok(outcomes) => {
                self.record(events.iter().zip(outcomes));
                Ok(true)
            }
            // A commit that failed is a failure too: queueing stores only what is not recorded.
            Err(failure) => {
                debug!(error = %failure, events = events.len(), "not applied on arrival; queued for the workers");
                Ok(false)
            }
        }
    }

    /// The general path: redeliveries, adoptions and links (see [`InboundSync::apply_batch`]).
    async fn apply_batch_on_arrival(&self, events: &[Received]) -> Result<Vec<Outcome>, Failure> {
        let mut tx = store::begin(&self.pool).await?;
        let outcomes = self.apply_batch(&mut tx, events, Delivery::Arrival).await?;
        store::commit(tx).await?;
        Ok(outcomes)
    }
}
