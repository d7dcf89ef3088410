//! The mirror's part of each way a transport delivers events: a batch in one transaction
//! (from Kafka, on arrival, or claimed from the inbox), and the fallback one event at a time
//! with bounded retries, then a dead letter, so one bad event never holds up the others.

use tracing::{debug, instrument, warn};

use super::{MirrorSync, kind_of};
use crate::store;
use crate::store::dead_letters::{NewDeadLetter, Source};
use crate::store::processed_events;
use crate::sync::inbound::{Delivery, Failure, MAX_ATTEMPTS, Outcome, RETRY_BACKOFF, Received};

impl MirrorSync {
    /// Events from Kafka: together, else one by one. An error only when the database cannot
    /// record even a dead letter.
    pub async fn apply_delivered(
        &self,
        own: &[Received],
        customers: &[Received],
    ) -> store::Result<()> {
        if own.is_empty() && customers.is_empty() {
            return Ok(());
        }
        let mut tx = store::begin(&self.pool).await?;
        match self
            .apply_in(&mut tx, own, customers, Delivery::Kafka)
            .await
        {
            Ok(outcomes) => {
                store::commit(tx).await?;
                self.record(own, &outcomes);
                return Ok(());
            }
            Err(failure) => {
                debug!(error = %failure, "mirror batch failed; applying its events one by one")
            }
        }
        drop(tx);
        self.apply_each(own, customers, Delivery::Kafka).await
    }

    /// Events as they arrive: together in one transaction, or `Ok(false)` with nothing written.
    pub async fn apply_arrived(
        &self,
        own: &[Received],
        customers: &[Received],
    ) -> store::Result<bool> {
        if own.is_empty() && customers.is_empty() {
            return Ok(true);
        }
        let mut tx = store::begin(&self.pool).await?;
        match self
            .apply_in(&mut tx, own, customers, Delivery::Arrival)
            .await
        {
            Ok(outcomes) => {
                if store::commit(tx).await.is_err() {
                    return Ok(false);
                }
                self.record(own, &outcomes);
                Ok(true)
            }
            Err(failure) => {
                debug!(error = %failure, "mirror events not applied on arrival; queued for the workers");
                Ok(false)
            }
        }
    }

    /// Events claimed from the inbox in `tx`: applied in it (the caller commits and then calls
    /// [`Self::record`]).
    pub async fn apply_claimed(
        &self,
        tx: &mut store::Transaction,
        own: &[Received],
        customers: &[Received],
    ) -> Result<Vec<Outcome>, Failure> {
        self.apply_in(tx, own, customers, Delivery::Inbox).await
    }

    /// After a batch failed: each event alone, then each customer event's mirror row alone.
    pub async fn apply_each(
        &self,
        own: &[Received],
        customers: &[Received],
        delivery: Delivery,
    ) -> store::Result<()> {
        for received in own {
            self.apply_alone(received, delivery).await?;
        }
        for received in customers {
            self.write_customer_alone(received).await?;
        }
        Ok(())
    }

    /// Counts committed outcomes.
    pub fn record(&self, own: &[Received], outcomes: &[Outcome]) {
        for (received, outcome) in own.iter().zip(outcomes) {
            if let Some((kind, _)) = kind_of(received) {
                self.count(received, kind, *outcome);
            }
        }
    }

    #[instrument(skip_all, fields(event_id = %received.event.id))]
    async fn apply_alone(&self, received: &Received, delivery: Delivery) -> store::Result<()> {
        let mut attempt = 0;
        let failure = loop {
            attempt += 1;
            let mut tx = store::begin(&self.pool).await?;
            if delivery == Delivery::Inbox
                && processed_events::claim_one(&mut tx, &received.event.id)
                    .await?
                    .is_none()
            {
                return Ok(());
            }
            let one = std::slice::from_ref(received);
            match self.apply_in(&mut tx, one, &[], delivery).await {
                Ok(outcomes) => {
                    store::commit(tx).await?;
                    self.record(one, &outcomes);
                    return Ok(());
                }
                Err(failure @ Failure::Permanent(_)) => break failure,
                Err(failure @ Failure::Transient(_)) if attempt >= MAX_ATTEMPTS => break failure,
                Err(failure) => {
                    drop(tx);
                    warn!(attempt, error = %failure, "mirroring a Stripe event failed; retrying");
                    tokio::time::sleep(RETRY_BACKOFF.jittered(attempt, None)).await;
                }
            }
        };
        self.dead_letter(received, delivery, &failure.to_string(), attempt)
            .await
    }

    async fn dead_letter(
        &self,
        received: &Received,
        delivery: Delivery,
        error: &str,
        attempts: u32,
    ) -> store::Result<()> {
        warn!(event_id = %received.event.id, event_type = %received.event.kind, error,
              "a Stripe event cannot be mirrored; dead-lettered");
        let letter = NewDeadLetter {
            source: Source::Inbound,
            account: &received.event.account,
            key: &received.event.id,
            payload: received.event.raw.as_bytes(),
            error,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        };
        if self
            .dead_letters
            .set_aside_event(received.event_ref(), delivery, letter)
            .await?
        {
            self.record(std::slice::from_ref(received), &[Outcome::DeadLettered]);
        }
        Ok(())
    }

    /// A customer event's mirror row alone, retried while the database fails; a row the
    /// database refuses is counted `failed` (paysync's customers still apply the event).
    async fn write_customer_alone(&self, received: &Received) -> store::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = store::begin(&self.pool).await?;
            let one = std::slice::from_ref(received);
            let failure = match self.apply_in(&mut tx, &[], one, Delivery::Kafka).await {
                Ok(_) => match store::commit(tx).await {
                    Ok(()) => return Ok(()),
                    Err(e) => Failure::from(e),
                },
                Err(failure) => failure,
            };
            if matches!(failure, Failure::Permanent(_)) || attempt >= MAX_ATTEMPTS {
                self.unstorable_customer(received, &failure);
                return Ok(());
            }
            tokio::time::sleep(RETRY_BACKOFF.jittered(attempt, None)).await;
        }
    }
}
