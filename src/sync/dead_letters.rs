//! Dead letters: the one way a message that cannot be handled is set aside, and its replay
//! once the cause is fixed (API and `paysync dead-letters replay`).
//!
//! Invariant 7: a bad message never stops a queue. Recording cannot fail on the message's
//! content (the store keeps it as bytes); should the database still refuse it, the message is
//! set aside anyway (marked processed, counted, logged at error) so the queue moves on. Only a
//! database that cannot be reached at all makes the caller wait and retry.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sqlx::{PgConnection, PgPool};
use tracing::{error, warn};
use uuid::Uuid;

use super::inbound::{Delivery, Received};
use crate::domain::{CustomerId, Op};
use crate::store::dead_letters::{DeadLetter, NewDeadLetter, Source};
use crate::store::processed_events::{self, EventRef, Seen};
use crate::store::{self, customers, dead_letters, outbox};
use crate::telemetry::error_chain;

/// `paysync_dead_letters_total{source}` and `paysync_set_aside_total{source}`.
#[derive(Debug)]
pub struct DeadLetterMetrics {
    recorded: Family<DeadLetterLabels, Counter>,
    set_aside: Family<DeadLetterLabels, Counter>,
}

/// Labels of a dead letter: which side (`outbound`, `inbound`) and which policy (account).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub source: String,
    pub policy: String,
}

impl DeadLetterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            recorded: Family::default(),
            set_aside: Family::default(),
        };
        registry.register(
            "dead_letters",
            "Messages moved to the dead-letter table, by source and policy",
            metrics.recorded.clone(),
        );
        registry.register(
            "set_aside",
            "Messages set aside without a dead letter because the database refused even that, \
             by source and policy (an error is logged for each; should stay 0)",
            metrics.set_aside.clone(),
        );
        metrics
    }

    fn count(family: &Family<DeadLetterLabels, Counter>, letter: &NewDeadLetter<'_>) {
        family
            .get_or_create(&DeadLetterLabels {
                source: letter.source.as_str().to_owned(),
                policy: letter.account.to_owned(),
            })
            .inc();
    }
}

/// Records dead letters and counts them.
#[derive(Clone)]
pub struct DeadLetters {
    pool: PgPool,
    metrics: Arc<DeadLetterMetrics>,
}

impl DeadLetters {
    pub fn new(pool: PgPool, metrics: Arc<DeadLetterMetrics>) -> Self {
        Self { pool, metrics }
    }

    /// Records a dead letter in the caller's transaction (the outbound handler commits it with
    /// the customer's `failed` state).
    pub async fn record_in(
        &self,
        conn: &mut PgConnection,
        letter: NewDeadLetter<'_>,
    ) -> store::Result<()> {
        dead_letters::record(conn, letter).await?;
        warn!(source = %letter.source, key = letter.key, error = letter.error, "dead-lettered");
        DeadLetterMetrics::count(&self.metrics.recorded, &letter);
        Ok(())
    }

    /// Sets aside a Stripe event that cannot be applied: its dead letter and its
    /// `processed_events` record (outcome `dead_lettered`) commit together, so neither a
    /// worker nor catch-up queues it again. Returns `false` when the event was not this
    /// worker's to set aside (another one handled it meanwhile).
    pub async fn set_aside_event(
        &self,
        event: EventRef<'_>,
        delivery: Delivery,
        letter: NewDeadLetter<'_>,
    ) -> store::Result<bool> {
        match self.record_event(event, delivery, letter).await {
            Ok(mine) => Ok(mine),
            Err(e) if e.is_data_error() => {
                self.refused(letter, &e);
                match self.mark_set_aside(event).await {
                    // Not even the mark could be stored: the queue still moves on (a Kafka
                    // message stays in its topic for the retention; the error is logged).
                    Err(e) if e.is_data_error() => {
                        error!(key = %dead_letters::storable(letter.key), error = %error_chain(&e),
                            "the event could not be marked set aside either; moving on");
                        Ok(true)
                    }
                    Err(e) => Err(e),
                    Ok(()) => Ok(true),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn mark_set_aside(&self, event: EventRef<'_>) -> store::Result<()> {
        let mut tx = store::begin(&self.pool).await?;
        processed_events::set_aside(&mut tx, event).await?;
        store::commit(tx).await
    }

    async fn record_event(
        &self,
        event: EventRef<'_>,
        delivery: Delivery,
        letter: NewDeadLetter<'_>,
    ) -> store::Result<bool> {
        let mut tx = store::begin(&self.pool).await?;
        let mine = match delivery {
            Delivery::Kafka | Delivery::Arrival => {
                processed_events::begin_processing(&mut tx, event).await? != Seen::Processed
            }
            Delivery::Inbox => processed_events::claim_one(&mut tx, event.event_id)
                .await?
                .is_some(),
        };
        if !mine {
            return Ok(false);
        }
        dead_letters::record(&mut tx, letter).await?;
        processed_events::finish(&mut tx, event.event_id, DEAD_LETTERED).await?;
        store::commit(tx).await?;
        warn!(source = %letter.source, key = letter.key, error = letter.error, "dead-lettered");
        DeadLetterMetrics::count(&self.metrics.recorded, &letter);
        Ok(true)
    }

    /// Sets aside a message no handler can read (not an event, not an envelope). The message
    /// stays where it is (Kafka keeps it for its retention); only its dead letter is written.
    pub async fn set_aside_unreadable(&self, letter: NewDeadLetter<'_>) -> store::Result<()> {
        let recorded = async {
            let mut conn = store::acquire(&self.pool).await?;
            self.record_in(&mut conn, letter).await
        };
        match recorded.await {
            Err(e) if e.is_data_error() => {
                self.refused(letter, &e);
                Ok(())
            }
            other => other,
        }
    }

    /// The database refused even the dead letter: the message is set aside without one.
    fn refused(&self, letter: NewDeadLetter<'_>, e: &store::Error) {
        error!(source = %letter.source, key = %dead_letters::storable(letter.key),
            error = %error_chain(e), message_error = letter.error,
            "the dead letter could not be stored; the message is set aside without one");
        DeadLetterMetrics::count(&self.metrics.set_aside, &letter);
    }
}

/// The `processed_events.outcome` of a dead-lettered event.
pub const DEAD_LETTERED: &str = "dead_lettered";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead letter {0} not found")]
    NotFound(Uuid),
    #[error("dead letter {0} was already replayed")]
    AlreadyReplayed(Uuid),
    #[error("dead letter {id} was closed: {reason}")]
    Closed { id: Uuid, reason: String },
    #[error("dead letter {id} has a key that is not a customer id: {key}")]
    BadKey { id: Uuid, key: String },
    #[error("dead letter {id} cannot be replayed: {reason}")]
    NotReplayable { id: Uuid, reason: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Replays a dead letter and marks it replayed, in one transaction. An outbound sync is
/// level-based, so it applies the customer's current state; an inbound event is decided on
/// Stripe's current state of its customer (the letter may be old and its cause fixed since).
pub async fn replay(pool: &PgPool, id: Uuid) -> Result<(), ReplayError> {
    let mut tx = store::begin(pool).await?;
    let letter = dead_letters::lock(&mut tx, id)
        .await?
        .ok_or(ReplayError::NotFound(id))?;
    if letter.replayed_at.is_some() {
        return Err(ReplayError::AlreadyReplayed(id));
    }
    if letter.closed_at.is_some() {
        let reason = letter.closed_reason.unwrap_or_default();
        return Err(ReplayError::Closed { id, reason });
    }
    match letter.source {
        Source::Inbound => requeue_event(&mut tx, &letter).await?,
        Source::Outbound => queue_customer(&mut tx, &letter).await?,
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
    let not_replayable = |reason: String| ReplayError::NotReplayable {
        id: letter.id,
        reason,
    };
    let raw = String::from_utf8(letter.payload.clone())
        .map_err(|_| not_replayable("the message is not UTF-8 text".to_owned()))?;
    let received = Received::from_raw(raw, &letter.account).map_err(not_replayable)?;
    processed_events::requeue(tx, received.event_ref(), &received.event.raw).await?;
    Ok(())
}
