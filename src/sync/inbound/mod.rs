//! The inbound handler: applies Stripe customer events to PostgreSQL, each atomically with
//! its `processed_events` record, so a redelivered event is a no-op and an event is never
//! half-applied.
//!
//! Events are applied in batches (one commit for many events: a Kafka poll, an inbox claim).
//! If anything in a batch fails, the batch is rolled back and its events are applied one at
//! a time, each in its own transaction, with bounded retries; what still fails goes to the
//! dead-letter table, so a bad event never stops the worker.

mod adopt;
mod arrival;
mod batch;
pub mod event;
mod failure;
mod find;
mod linked;
mod listed;
mod metrics;
mod outcome;
pub mod rules;
mod write;

pub use failure::Failure;
pub use metrics::InboundMetrics;
pub use outcome::Outcome;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{PgConnection, PgPool};
use tracing::{debug, instrument, warn};

use super::dead_letters::DeadLetters;
use crate::backoff::Backoff;
use crate::crd::{Direction, Mode};
use crate::metrics::{count_for, observe_for};
use crate::policy::PolicyRegistry;
use crate::store;
use crate::store::customers::SyncWait;
use crate::store::dead_letters::{NewDeadLetter, Source};
use crate::store::processed_events::{self, EventRef, Seen};
use crate::stripe::StripeApi;
use crate::stripe::event::StripeEvent;
use rules::Rules;

/// Attempts of one event (alone, after its batch failed) before it is dead-lettered.
pub(crate) const MAX_ATTEMPTS: u32 = 5;
/// Backoff between those attempts.
pub(crate) const RETRY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// A Stripe event handed to the worker by a transport.
#[derive(Debug, Clone)]
pub struct Received {
    pub event: StripeEvent,
    /// A replayed dead letter: decided on Stripe's current state of the customer, not on the
    /// event's (possibly long outdated) content.
    pub refetch: bool,
}

impl Received {
    pub fn from_raw(raw: String, account: &str) -> Result<Self, String> {
        Ok(Self {
            event: StripeEvent::parse(raw)?.for_account(account),
            refetch: false,
        })
    }

    pub(crate) fn event_ref(&self) -> EventRef<'_> {
        EventRef {
            event_id: &self.event.id,
            kind: &self.event.kind,
            account: &self.event.account,
            stripe_customer_id: self.event.customer_id.as_deref(),
        }
    }
}

/// How the event reached the worker, which decides how its dedup record is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From Kafka: the dedup record is written now (or found: a redelivery).
    Kafka,
    /// From the PostgreSQL inbox: its row is already claimed by the caller's transaction.
    Inbox,
    /// As it arrives at the ingress (PostgreSQL transport): the dedup record is written now,
    /// as from Kafka, and nothing waits on Stripe.
    Arrival,
}

/// What a transport hands Stripe events to.
#[async_trait]
pub trait InboundHandler: Send + Sync {
    /// Applies events that arrived outside the database (Kafka): together, or one by one if
    /// that fails. An error only when the database cannot record even a dead letter; the
    /// caller retries then.
    async fn apply_delivered(&self, events: &[Received]) -> store::Result<()>;

    /// Applies events as they arrive (the PostgreSQL transport's ingress gathers concurrent
    /// deliveries): together, in one transaction with their dedup records, never asking Stripe
    /// nor waiting for an outbound sync. `Ok(false)` when they cannot all be applied so (an
    /// order in doubt, a sync in flight, any failure): nothing of them is written, and the
    /// caller queues them for the workers.
    async fn apply_arrived(&self, events: &[Received]) -> store::Result<bool>;

    /// Applies events the caller claimed from the inbox in `tx` (begun finding rows by key
    /// only), and commits, if they are the common case (every one about a customer already
    /// linked, none whose sync is in flight): `Ok(false)` when they are not, and `tx` is rolled
    /// back (the claim released, so the general path takes its locks in their order): the
    /// caller claims them again for [`Self::apply_claimed`].
    async fn apply_claimed_linked(
        &self,
        tx: store::Transaction,
        events: &[Received],
    ) -> store::Result<bool>;

    /// Applies events the caller claimed from the inbox in `tx`, and commits.
    async fn apply_claimed(&self, tx: store::Transaction, events: &[Received])
    -> store::Result<()>;

    /// Where a message nobody can read is set aside.
    fn dead_letters(&self) -> &DeadLetters;
}

pub struct InboundSync {
    pool: PgPool,
    dead_letters: DeadLetters,
    /// Each event is applied by the rules of its account's policy, looked up when it is.
    registry: Arc<PolicyRegistry>,
    metrics: Arc<InboundMetrics>,
}

/// What the event's policy says, looked up when the event is applied.
pub(super) struct Context {
    pub account: String,
    pub rules: Rules,
    /// Asked for a customer's current state when an event's order is in doubt; without it
    /// the event itself is applied.
    pub stripe: Option<Arc<dyn StripeApi>>,
    /// Applying as the event arrives: neither ask Stripe nor wait for a sync that does; such
    /// an event fails here and is queued for a worker instead.
    pub on_arrival: bool,
}

impl Context {
    /// Whether taking a customer's sync lock may wait for an outbound sync in flight.
    pub fn sync_wait(&self) -> SyncWait {
        sync_wait(self.on_arrival)
    }
}

/// Applying on arrival never waits for an outbound sync; every other path does.
fn sync_wait(on_arrival: bool) -> SyncWait {
    if on_arrival {
        SyncWait::Fail
    } else {
        SyncWait::Wait
    }
}

impl InboundSync {
    pub fn new(
        pool: PgPool,
        registry: Arc<PolicyRegistry>,
        dead_letters: DeadLetters,
        metrics: Arc<InboundMetrics>,
    ) -> Self {
        Self {
            pool,
            dead_letters,
            registry,
            metrics,
        }
    }

    /// The rules of `account`'s policy, or the outcome that stands instead of applying.
    pub(super) fn context(&self, account: &str) -> Result<Context, Outcome> {
        let Some(policy) = self.registry.get(account) else {
            return Err(Outcome::NoPolicy);
        };
        if policy.spec.suspend {
            return Err(Outcome::Suspended);
        }
        if policy.spec.direction == Direction::LocalToStripe {
            return Err(Outcome::Drift);
        }
        if policy.spec.mode == Mode::Observe {
            return Err(Outcome::Observed);
        }
        Ok(Context {
            account: account.to_owned(),
            rules: Rules::of(&policy.spec),
            stripe: policy.stripe(),
            on_arrival: false,
        })
    }

    /// Applies `events` in `tx` and commits; if that fails, one by one.
    async fn apply_in_batch(
        &self,
        mut tx: store::Transaction,
        events: &[Received],
        delivery: Delivery,
    ) -> store::Result<()> {
        match self.apply_batch(&mut tx, events, delivery).await {
            Ok(outcomes) => {
                store::commit(tx).await?;
                self.record(events.iter().zip(outcomes));
                return Ok(());
            }
            Err(failure) => {
                debug!(error = %failure, "batch failed; applying its events one by one")
            }
        }
        drop(tx);
        for received in events {
            self.apply_alone(received, delivery).await?;
        }
        Ok(())
    }

    /// Counts committed outcomes.
    fn record<'a>(&self, handled: impl Iterator<Item = (&'a Received, Outcome)>) {
        let now = Utc::now().timestamp();
        for (received, outcome) in handled {
            let policy = received.event.account.as_str();
            count_for(&self.metrics.events, policy, outcome.label());
            if outcome != Outcome::Duplicate {
                let lag = (now - received.event.created).max(0);
                observe_for(&self.metrics.lag, policy, lag as f64);
            }
        }
    }

    /// Applies one event in its own transaction, retrying transient failures with backoff;
    /// dead-letters it when it cannot be applied.
    #[instrument(skip_all, fields(event_id = %received.event.id))]
    async fn apply_alone(&self, received: &Received, delivery: Delivery) -> store::Result<()> {
        let mut attempt = 0;
        let failure = loop {
            attempt += 1;
            let mut tx = store::begin(&self.pool).await?;
            if !claim(&mut tx, received, delivery).await? {
                return Ok(());
            }
            match self.apply_in(&mut tx, received, delivery).await {
                Ok(outcome) => {
                    store::commit(tx).await?;
                    self.record(std::iter::once((received, outcome)));
                    return Ok(());
                }
                Err(failure @ Failure::Permanent(_)) => break failure,
                Err(failure @ Failure::Transient(_)) if attempt >= MAX_ATTEMPTS => break failure,
                Err(failure) => {
                    drop(tx);
                    warn!(attempt, error = %failure, "applying a Stripe event failed; retrying");
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
        let letter = NewDeadLetter {
            source: Source::Inbound,
            account: &received.event.account,
            key: &received.event.id,
            payload: received.event.raw.as_bytes(),
            error,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        };
        let event = received.event_ref();
        if self
            .dead_letters
            .set_aside_event(event, delivery, letter)
            .await?
        {
            self.record(std::iter::once((received, Outcome::DeadLettered)));
        }
        Ok(())
    }

    /// Applies one event inside the caller's transaction, together with its dedup record.
    async fn apply_in(
        &self,
        conn: &mut PgConnection,
        received: &Received,
        delivery: Delivery,
    ) -> Result<Outcome, Failure> {
        if delivery != Delivery::Inbox
            && processed_events::begin_processing(conn, received.event_ref()).await?
                == Seen::Processed
        {
            return Ok(Outcome::Duplicate);
        }
        let outcome = match self.context(&received.event.account) {
            Ok(context) => {
                let incoming = self.incoming(received, &context).await?;
                self.decide_and_write(conn, incoming, &context).await?
            }
            Err(instead) => instead,
        };
        processed_events::finish(conn, &received.event.id, outcome.label()).await?;
        Ok(outcome)
    }
}

/// Takes the event for this attempt: an inbox row must still be waiting (another worker may
/// have handled it); a Kafka delivery is checked against its dedup record later.
async fn claim(
    tx: &mut PgConnection,
    received: &Received,
    delivery: Delivery,
) -> store::Result<bool> {
    Ok(match delivery {
        Delivery::Kafka | Delivery::Arrival => true,
        Delivery::Inbox => processed_events::claim_one(tx, &received.event.id)
            .await?
            .is_some(),
    })
}

#[async_trait]
impl InboundHandler for InboundSync {
    async fn apply_delivered(&self, events: &[Received]) -> store::Result<()> {
        match self.apply_linked(events, Delivery::Kafka).await {
            Ok(Some(outcomes)) => {
                self.record(events.iter().zip(outcomes));
                return Ok(());
            }
            Ok(None) => {}
            Err(failure) => debug!(error = %failure, "batch failed; applying it the general way"),
        }
        let tx = store::begin(&self.pool).await?;
        self.apply_in_batch(tx, events, Delivery::Kafka).await
    }

    async fn apply_arrived(&self, events: &[Received]) -> store::Result<bool> {
        self.apply_on_arrival(events).await
    }

    async fn apply_claimed_linked(
        &self,
        mut tx: store::Transaction,
        events: &[Received],
    ) -> store::Result<bool> {
        match self.apply_linked_in(&mut tx, events, Delivery::Inbox).await {
            Ok(Some(outcomes)) => {
                store::commit(tx).await?;
                self.record(events.iter().zip(outcomes));
                return Ok(true);
            }
            Ok(None) => {}
            Err(failure) => debug!(error = %failure, "batch failed; applying it the general way"),
        }
        // The claim is free before the caller claims the events again.
        store::rollback(tx).await?;
        Ok(false)
    }

    async fn apply_claimed(
        &self,
        tx: store::Transaction,
        events: &[Received],
    ) -> store::Result<()> {
        self.apply_in_batch(tx, events, Delivery::Inbox).await
    }

    fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }
}
