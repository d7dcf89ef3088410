//! Replaying dead letters once their cause is fixed (API and `paysync dead-letters replay`).

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{CustomerId, Op};
use crate::store::{self, customers, dead_letters, outbox};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead letter {0} not found")]
    NotFound(Uuid),
    #[error("dead letter {0} was already replayed")]
    AlreadyReplayed(Uuid),
    #[error("dead letter {id} has a key that is not a customer id: {key}")]
    BadKey { id: Uuid, key: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Queues the dead letter's customer for another sync and marks the letter replayed, in one
/// transaction. The sync is level-based, so it applies the customer's current state.
pub async fn replay(pool: &PgPool, id: Uuid) -> Result<(), ReplayError> {
    let mut tx = store::begin(pool).await?;
    let letter = dead_letters::lock(&mut tx, id)
        .await?
        .ok_or(ReplayError::NotFound(id))?;
    if letter.replayed_at.is_some() {
        return Err(ReplayError::AlreadyReplayed(id));
    }
    let customer_id: CustomerId = letter.key.parse().map_err(|_| ReplayError::BadKey {
        id,
        key: letter.key.clone(),
    })?;
    if let Some(customer) = customers::reset_sync_state(&mut tx, customer_id).await? {
        let op = if customer.deleted_at.is_some() {
            Op::Delete
        } else {
            Op::Update
        };
        outbox::insert(&mut tx, customer_id, op, customer.version).await?;
    }
    dead_letters::mark_replayed(&mut tx, id).await?;
    store::commit(tx).await?;
    Ok(())
}
