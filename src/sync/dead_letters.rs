//! Replaying dead letters once their cause is fixed (API and `paysync dead-letters replay`):
//! an outbound letter queues its customer for another sync; an inbound letter puts its Stripe
//! event back into the inbox, where the inbox worker applies it again (with either transport).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Received;
use crate::domain::{CustomerId, Op};
use crate::store::dead_letters::DeadLetter;
use crate::store::processed_events::{self, EventRef};
use crate::store::{self, DEFAULT_ACCOUNT, customers, dead_letters, outbox};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead letter {0} not found")]
    NotFound(Uuid),
    #[error("dead letter {0} was already replayed")]
    AlreadyReplayed(Uuid),
    #[error("dead letter {id} has a key that is not a customer id: {key}")]
    BadKey { id: Uuid, key: String },
    #[error("dead letter {id} cannot be replayed: {reason}")]
    NotReplayable { id: Uuid, reason: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Replays a dead letter and marks it replayed, in one transaction. An outbound sync is
/// level-based, so it applies the customer's current state; an inbound event is checked again
/// against the customer as it is now (an event older than what is known stays skipped).
pub async fn replay(pool: &PgPool, id: Uuid) -> Result<(), ReplayError> {
    let mut tx = store::begin(pool).await?;
    let letter = dead_letters::lock(&mut tx, id)
        .await?
        .ok_or(ReplayError::NotFound(id))?;
    if letter.replayed_at.is_some() {
        return Err(ReplayError::AlreadyReplayed(id));
    }
    if letter.source == "inbound" {
        requeue_event(&mut tx, &letter).await?;
    } else {
        queue_customer(&mut tx, &letter).await?;
    }
    dead_letters::mark_replayed(&mut tx, id).await?;
    store::commit(tx).await?;
    Ok(())
}

async fn queue_customer(tx: &mut PgConnection, letter: &DeadLetter) -> Result<(), ReplayError> {
    let id = letter.id;
    let customer_id: CustomerId = letter.key.parse().map_err(|_| ReplayError::BadKey {
        id,
        key: letter.key.clone(),
    })?;
    if let Some(customer) = customers::reset_sync_state(tx, customer_id).await? {
        let op = if customer.deleted_at.is_some() {
            Op::Delete
        } else {
            Op::Update
        };
        outbox::insert(tx, customer_id, op, customer.version).await?;
    }
    Ok(())
}

/// An inbound letter's payload is the Stripe event as received.
async fn requeue_event(tx: &mut PgConnection, letter: &DeadLetter) -> Result<(), ReplayError> {
    let received = Received::from_raw(letter.payload.to_string()).map_err(|reason| {
        ReplayError::NotReplayable {
            id: letter.id,
            reason,
        }
    })?;
    let event = &received.event;
    let reference = EventRef {
        event_id: &event.id,
        kind: &event.kind,
        account: DEFAULT_ACCOUNT,
        stripe_customer_id: event.customer_id(),
    };
    processed_events::requeue(tx, reference, &received.raw).await?;
    Ok(())
}
