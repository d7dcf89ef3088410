//! The inbound handler: applies Stripe customer events to PostgreSQL, each atomically with
//! its `processed_events` record, so a redelivered event is a no-op (invariant 6) and an
//! event is never half-applied.
//!
//! Events are applied in batches (one commit for many events: a Kafka poll, an inbox claim).
//! If anything in a batch fails, the batch is rolled back and its events are applied one at
//! a time, each in its own transaction, with bounded retries; what still fails goes to the
//! dead-letter table, so a bad event never stops the worker (invariant 7).

mod batch;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng as _;
use sqlx::{PgConnection, PgPool};
use tracing::{debug, info, instrument, warn};

use super::dead_letters::DeadLetters;
use super::inbound::{self, ConflictPolicy, Decision, IncomingEvent, Link, Skip};
use crate::domain::{Customer, Op};
use crate::metrics::Metrics;
use crate::store::dead_letters::{NewDeadLetter, Source};
use crate::store::processed_events::{self, EventRef, Seen};
use crate::store::{self, DEFAULT_ACCOUNT, customers, outbox};
use crate::stripe::event::StripeEvent;
use crate::stripe::retry::Backoff;
use crate::stripe::{self as stripe_api, StripeApi};
use crate::telemetry::error_chain;

/// Attempts of one event (alone, after its batch failed) before it is dead-lettered.
const MAX_ATTEMPTS: u32 = 5;
/// Backoff between those attempts.
const RETRY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// A verified Stripe event waiting to be applied, with its JSON as received (kept for the
/// dead-letter table).
#[derive(Debug, Clone)]
pub struct Received {
    pub event: StripeEvent,
    pub raw: String,
    /// A replayed dead letter: decided on Stripe's current state of the customer, not on the
    /// event's (possibly long outdated) content.
    pub refetch: bool,
}

impl Received {
    pub fn from_raw(raw: String) -> Result<Self, String> {
        Ok(Self {
            event: StripeEvent::parse(raw.as_bytes())?,
            raw,
            refetch: false,
        })
    }

    pub(crate) fn event_ref(&self) -> EventRef<'_> {
        EventRef {
            event_id: &self.event.id,
            kind: &self.event.kind,
            account: DEFAULT_ACCOUNT,
            stripe_customer_id: self.event.customer_id(),
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
}

/// What handling one event did; the label is stored in `processed_events.outcome` and counted
/// in `paysync_inbound_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Adopted,
    Deleted,
    KeptLocal,
    Skipped(Skip),
    /// Already applied before (a redelivery).
    Duplicate,
    DeadLettered,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Adopted => "adopted",
            Self::Deleted => "deleted",
            Self::KeptLocal => "kept_local",
            Self::Skipped(skip) => skip.label(),
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Why an event could not be applied.
#[derive(Debug)]
pub enum Failure {
    /// Will fail again whatever is retried (bad event, data conflict): dead-letter it.
    Permanent(String),
    /// May pass later (database, Stripe unreachable).
    Transient(String),
}

impl From<store::Error> for Failure {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::EmailTaken => Self::Permanent(
                "the Stripe customer's email is used by another live local customer".to_owned(),
            ),
            // The database refuses the data itself: another attempt fails the same way.
            other if other.is_data_error() => Self::Permanent(error_chain(&other)),
            other => Self::Transient(error_chain(&other)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Permanent(reason) | Self::Transient(reason) => f.write_str(reason),
        }
    }
}

pub struct InboundSync {
    pool: PgPool,
    dead_letters: DeadLetters,
    /// Asked for a customer's current state when an event's order is in doubt; without it
    /// the event itself is applied.
    stripe: Option<Arc<dyn StripeApi>>,
    metrics: Arc<Metrics>,
    policy: ConflictPolicy,
}

impl InboundSync {
    pub fn new(
        pool: PgPool,
        stripe: Option<Arc<dyn StripeApi>>,
        metrics: Arc<Metrics>,
        policy: ConflictPolicy,
    ) -> Self {
        Self {
            dead_letters: DeadLetters::new(pool.clone(), metrics.clone()),
            pool,
            stripe,
            metrics,
            policy,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Applies events that arrived through Kafka: in one transaction, or one by one if the
    /// batch fails. Returns an error only when the database cannot record even a dead
    /// letter; the caller retries then.
    pub async fn apply_all(&self, events: &[Received]) -> store::Result<()> {
        let mut tx = store::begin(&self.pool).await?;
        match self.apply_batch(&mut tx, events, Delivery::Kafka).await {
            Ok(outcomes) => {
                store::commit(tx).await?;
                self.record(events.iter().zip(outcomes));
                return Ok(());
            }
            Err(failure) => {
                debug!(error = %failure, "batch failed; applying its events one by one");
            }
        }
        drop(tx);
        for received in events {
            self.apply_alone(received, Delivery::Kafka).await?;
        }
        Ok(())
    }

    /// Counts committed outcomes.
    pub fn record<'a>(&self, handled: impl Iterator<Item = (&'a Received, Outcome)>) {
        let now = Utc::now().timestamp();
        for (received, outcome) in handled {
            Metrics::count(&self.metrics.inbound_events, outcome.label());
            if outcome != Outcome::Duplicate {
                let lag = (now - received.event.created).max(0);
                self.metrics.inbound_lag.observe(lag as f64);
            }
        }
    }

    /// Applies one event in its own transaction, retrying transient failures with backoff;
    /// dead-letters it when it cannot be applied.
    #[instrument(skip_all, fields(event_id = %received.event.id))]
    pub async fn apply_alone(&self, received: &Received, delivery: Delivery) -> store::Result<()> {
        let mut attempt = 0;
        let failure = loop {
            attempt += 1;
            let mut tx = store::begin(&self.pool).await?;
            let claimed = match delivery {
                Delivery::Kafka => true,
                Delivery::Inbox => processed_events::claim_one(&mut tx, &received.event.id)
                    .await?
                    .is_some(),
            };
            if !claimed {
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
                    let delay = RETRY_BACKOFF.delay(attempt, None, rand::rng().random::<f64>());
                    warn!(attempt, error = %failure, "applying a Stripe event failed; retrying");
                    tokio::time::sleep(delay).await;
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
            key: &received.event.id,
            payload: received.raw.as_bytes(),
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
        if delivery == Delivery::Kafka
            && processed_events::begin_processing(conn, received.event_ref()).await?
                == Seen::Processed
        {
            return Ok(Outcome::Duplicate);
        }
        let incoming = self.incoming(received).await?;
        let outcome = self.decide_and_write(conn, incoming).await?;
        processed_events::finish(conn, &received.event.id, outcome.label()).await?;
        Ok(outcome)
    }

    /// What the event says, checked against the customer domain; for a replay, what Stripe
    /// holds now in its place.
    async fn incoming(&self, received: &Received) -> Result<IncomingEvent, Failure> {
        if received.refetch && self.stripe.is_some() {
            let head = IncomingEvent::head(&received.event).map_err(Failure::Permanent)?;
            return self.refetch(head).await;
        }
        IncomingEvent::from_stripe(&received.event).map_err(Failure::Permanent)
    }

    async fn decide_and_write(
        &self,
        conn: &mut PgConnection,
        mut event: IncomingEvent,
    ) -> Result<Outcome, Failure> {
        customers::lock_stripe_customer(conn, &event.stripe_id).await?;
        let local = self.find_local(conn, &event).await?;
        loop {
            match inbound::decide(local.as_ref(), &event, self.policy) {
                Decision::Refetch if !event.current => {
                    event = self.refetch(event).await?;
                }
                // Stripe's current state is never in doubt; this cannot happen.
                Decision::Refetch => return Ok(Outcome::Skipped(Skip::NoChange)),
                decision => return self.write(conn, local.as_ref(), &event, decision).await,
            }
        }
    }

    /// What Stripe holds now for the event's customer, in place of the event.
    async fn refetch(&self, event: IncomingEvent) -> Result<IncomingEvent, Failure> {
        let Some(stripe) = &self.stripe else {
            debug!(event_id = %event.id, "order in doubt but no Stripe API key to ask; applying the event");
            let mut trusted = event;
            trusted.current = true;
            return Ok(trusted);
        };
        match stripe.retrieve_customer(&event.stripe_id).await {
            Ok(current) => event
                .refetched(current.as_ref())
                .map_err(Failure::Permanent),
            Err(e) if e.is_transient() => Err(Failure::Transient(e.to_string())),
            Err(e @ stripe_api::Error::Rejected { .. })
            | Err(e @ stripe_api::Error::Unreadable { .. }) => {
                Err(Failure::Permanent(e.to_string()))
            }
            Err(e) => Err(Failure::Transient(e.to_string())),
        }
    }

    /// The local customer of the event's Stripe customer, locked for this transaction: the
    /// one linked to it, else the one its `metadata.paysync_id` names, else a live one with
    /// its email (both then linked to it).
    async fn find_local(
        &self,
        conn: &mut PgConnection,
        event: &IncomingEvent,
    ) -> Result<Option<Customer>, Failure> {
        if let Some(linked) = customers::find_by_stripe_id(conn, &event.stripe_id).await? {
            return Ok(lock(conn, &linked).await?);
        }
        let deleting = event.kind == inbound::EventKind::Deleted;
        if let Some(id) = event.paysync_id
            && let Some(named) = customers::find_any(conn, id).await?
            && let Some(named) = lock(conn, &named).await?
        {
            match inbound::link(&named, &event.stripe_id) {
                Link::Linked => return Ok(Some(named)),
                Link::LinkNow => return self.link(conn, named, event, "paysync_id").await,
                // Deleting a duplicate (someone cleaned it up) concerns no local customer.
                Link::Taken { .. } if deleting => return Ok(None),
                Link::Taken { other } => {
                    return Err(Failure::Permanent(format!(
                        "Stripe customer {} names local customer {id} in metadata.paysync_id, \
                         but that customer is linked to {other}: a duplicate in Stripe",
                        event.stripe_id
                    )));
                }
            }
        }
        if deleting {
            return Ok(None);
        }
        let Some(email) = &event.fields.email else {
            return Ok(None);
        };
        let Some(same_email) = customers::find_live_by_email(conn, DEFAULT_ACCOUNT, email).await?
        else {
            return Ok(None);
        };
        let Some(same_email) = lock(conn, &same_email).await? else {
            return Ok(None);
        };
        match inbound::link(&same_email, &event.stripe_id) {
            Link::Linked => Ok(Some(same_email)),
            Link::LinkNow => self.link(conn, same_email, event, "email").await,
            Link::Taken { other } => Err(Failure::Permanent(format!(
                "Stripe customer {} has the email of local customer {}, which is linked to \
                 {other}; paysync will not link one local customer to two Stripe customers",
                event.stripe_id, same_email.id
            ))),
        }
    }

    async fn link(
        &self,
        conn: &mut PgConnection,
        mut customer: Customer,
        event: &IncomingEvent,
        how: &'static str,
    ) -> Result<Option<Customer>, Failure> {
        customers::link_stripe_id(conn, customer.id, &event.stripe_id).await?;
        info!(customer_id = %customer.id, stripe_id = %event.stripe_id, by = how, "linked to a Stripe customer");
        customer.stripe_id = Some(event.stripe_id.clone());
        Ok(Some(customer))
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        local: Option<&Customer>,
        event: &IncomingEvent,
        decision: Decision,
    ) -> Result<Outcome, Failure> {
        let created = event.created;
        match (decision, local) {
            (Decision::Skip(skip @ (Skip::Echo | Skip::NoChange)), Some(local)) => {
                customers::note_stripe_event(conn, local.id, created).await?;
                Ok(Outcome::Skipped(skip))
            }
            (Decision::Skip(Skip::NoEmail), None) => Err(Failure::Permanent(format!(
                "Stripe customer {} has no email, and paysync needs one to create a local \
                 customer: add an email in Stripe (the change then syncs), or replay this \
                 dead letter once it has one",
                event.stripe_id
            ))),
            (Decision::Skip(skip), _) => {
                debug!(event_id = %event.id, outcome = skip.label(), "Stripe event skipped");
                Ok(Outcome::Skipped(skip))
            }
            (Decision::Apply(fields), Some(local)) => {
                log_conflict(local, event, &Decision::Apply(fields.clone()));
                let applied =
                    customers::apply_from_stripe(conn, local.id, &fields, created).await?;
                debug!(customer_id = %local.id, version = applied.version, "Stripe change applied");
                Ok(Outcome::Applied)
            }
            (Decision::Delete, Some(local)) => {
                customers::delete_from_stripe(conn, local.id, created).await?;
                Ok(Outcome::Deleted)
            }
            (Decision::KeepLocal { requeue }, Some(local)) => {
                log_conflict(local, event, &Decision::KeepLocal { requeue });
                customers::note_stripe_event(conn, local.id, created).await?;
                if requeue {
                    outbox::insert(conn, local.id, Op::Update, local.version).await?;
                }
                Ok(Outcome::KeptLocal)
            }
            (Decision::Adopt(fields), None) => {
                let adopted =
                    customers::adopt(conn, DEFAULT_ACCOUNT, &event.stripe_id, &fields, created)
                        .await?;
                info!(customer_id = %adopted.id, stripe_id = %event.stripe_id, "adopted a customer created in Stripe");
                Ok(Outcome::Adopted)
            }
            (decision, _) => Err(Failure::Permanent(format!(
                "internal: decision {decision:?} does not fit the local customer"
            ))),
        }
    }
}

/// Logs the loser of a conflict (both sides changed since the last sync).
fn log_conflict(local: &Customer, event: &IncomingEvent, decision: &Decision) {
    match decision {
        Decision::Apply(_) if local.stripe_synced_version < local.version => {
            warn!(customer_id = %local.id, stripe_id = %event.stripe_id, event_id = %event.id,
                local_version = local.version,
                "conflict: a newer Stripe change replaces a local change not yet synced");
        }
        Decision::KeepLocal { .. } => {
            warn!(customer_id = %local.id, stripe_id = %event.stripe_id, event_id = %event.id,
                "conflict: a local change wins over a Stripe change; Stripe will be corrected");
        }
        _ => {}
    }
}

/// Takes the customer's sync lock (so an outbound sync in flight finishes first: its write
/// to Stripe is then known) and its row lock; returns the current row.
async fn lock(conn: &mut PgConnection, customer: &Customer) -> store::Result<Option<Customer>> {
    customers::lock_for_sync(conn, customer.id).await?;
    customers::lock_any(conn, customer.id).await
}
