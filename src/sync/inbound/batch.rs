//! Applying a batch of events in a handful of statements, whatever its size: the events of
//! customers already linked are decided in memory, one after another on the row the previous
//! ones left (the same pure rules as one event at a time), and written back together. New
//! Stripe customers nothing else in the batch concerns are adopted together first
//! (`adopt`); other events that link or adopt a customer take the one-at-a-time path inside
//! the same transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tracing::debug;

use super::event::IncomingEvent;
use super::rules::{self, Decision, Skip};
use super::write::{log_conflict, refetch};
use super::{Context, Delivery, Failure, InboundSync, Outcome, Received};
use crate::domain::{Customer, CustomerId, Op};
use crate::store::customers::SyncWait;
use crate::store::processed_events::{self, Seen};
use crate::store::{self, customers, outbox};

/// A linked customer while its batch is decided.
pub(super) struct Linked {
    customer: Customer,
    /// Some column changed: write the row back.
    touched: bool,
    /// Its fields, version or deletion changed (not only the last event's time).
    changed: bool,
}

impl Linked {
    pub(super) fn new(customer: Customer) -> Self {
        Self {
            customer,
            touched: false,
            changed: false,
        }
    }
}

impl InboundSync {
    /// Applies `events` in `conn` in order, each with its dedup record; the first failure
    /// stops it (the caller rolls back and applies the events one by one).
    pub(super) async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Received],
        delivery: Delivery,
    ) -> Result<Vec<Outcome>, Failure> {
        store::find_by_key_only(conn).await?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let pending = self
            .first_deliveries(conn, events, delivery, &mut outcomes)
            .await?;
        let stripe_ids: Vec<&str> = pending
            .iter()
            .map(|(_, e, _)| e.stripe_id.as_str())
            .collect();
        customers::lock_stripe_customers(conn, &stripe_ids).await?;
        let wait = super::sync_wait(delivery == Delivery::Arrival);
        let mut linked = lock_linked(conn, &stripe_ids, wait).await?;
        let adopted = self.adopt_new(conn, &pending, &mut linked).await?;
        let now = Utc::now();
        let mut requeued: Vec<(CustomerId, i64)> = Vec::new();
        for (index, event, context) in pending {
            if let Some(outcome) = adopted.get(&index) {
                outcomes[index] = Some(*outcome);
                continue;
            }
            let outcome = match linked.get_mut(&event.stripe_id) {
                Some(state) => {
                    self.decide_linked(state, event, &context, now, &mut requeued)
                        .await?
                }
                None => self.decide_and_write(conn, event, &context).await?,
            };
            outcomes[index] = Some(outcome);
        }
        write_linked(conn, &linked, requeued).await?;
        let finished: Vec<(&str, &str)> = events
            .iter()
            .zip(&outcomes)
            .filter_map(|(received, outcome)| match outcome {
                Some(Outcome::Duplicate) | None => None,
                Some(outcome) => Some((received.event.id.as_str(), outcome.label())),
            })
            .collect();
        processed_events::finish_many(conn, &finished).await?;
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Outcome::Duplicate))
            .collect())
    }

    /// The events of the batch seen for the first time, with their index and their policy's
    /// rules; duplicates (already processed, or twice in the batch), and events their policy
    /// does not apply, get their outcome in `outcomes` at once.
    async fn first_deliveries(
        &self,
        conn: &mut PgConnection,
        events: &[Received],
        delivery: Delivery,
        outcomes: &mut [Option<Outcome>],
    ) -> Result<Vec<(usize, IncomingEvent, Context)>, Failure> {
        let seen = match delivery {
            Delivery::Kafka | Delivery::Arrival => {
                let references: Vec<_> = events.iter().map(Received::event_ref).collect();
                processed_events::begin_processing_many(conn, &references).await?
            }
            // The caller claimed every one of them from the inbox.
            Delivery::Inbox => HashMap::new(),
        };
        let mut first_time = HashSet::new();
        let mut pending = Vec::with_capacity(events.len());
        for (index, received) in events.iter().enumerate() {
            let id = received.event.id.as_str();
            if seen.get(id) == Some(&Seen::Processed) || !first_time.insert(id) {
                outcomes[index] = Some(Outcome::Duplicate);
                continue;
            }
            match self.context(&received.event.account) {
                Ok(mut context) => {
                    context.on_arrival = delivery == Delivery::Arrival;
                    let event = self.incoming(received, &context).await?;
                    pending.push((index, event, context));
                }
                Err(instead) => outcomes[index] = Some(instead),
            }
        }
        Ok(pending)
    }

    /// Decides one event of a linked customer and applies it to the row in memory.
    pub(super) async fn decide_linked(
        &self,
        state: &mut Linked,
        mut event: IncomingEvent,
        context: &Context,
        now: DateTime<Utc>,
        requeued: &mut Vec<(CustomerId, i64)>,
    ) -> Result<Outcome, Failure> {
        let decision = loop {
            match rules::decide(Some(&state.customer), &event, &context.rules) {
                Decision::Refetch if !event.current => event = refetch(event, context).await?,
                // Stripe's current state is never in doubt; this cannot happen.
                Decision::Refetch => break Decision::Skip(Skip::NoChange),
                decision => break decision,
            }
        };
        let outcome = linked_outcome(&decision)?;
        log_conflict(&state.customer, &event, &decision);
        debug!(event_id = %event.id, customer_id = %state.customer.id, outcome = outcome.label(), "Stripe event decided");
        let before = state.customer.clone();
        state.customer = rules::after(before.clone(), &decision, event.created, now);
        state.touched |= state.customer != before;
        state.changed |= matches!(
            decision,
            Decision::Apply(_)
                | Decision::Delete
                | Decision::Merge(_)
                | Decision::Resend { new_version: true }
        );
        // A local win, the local-won fields of a merge, or a local version Stripe lost to a
        // late write of paysync's must still reach Stripe.
        if matches!(
            decision,
            Decision::KeepLocal { requeue: true } | Decision::Merge(_) | Decision::Resend { .. }
        ) {
            requeued.push((state.customer.id, state.customer.version));
        }
        Ok(outcome)
    }
}

/// What a decision about a linked customer comes to.
fn linked_outcome(decision: &Decision) -> Result<Outcome, Failure> {
    Ok(match decision {
        Decision::Apply(_) => Outcome::Applied,
        Decision::Delete => Outcome::Deleted,
        Decision::KeepLocal { .. } => Outcome::KeptLocal,
        Decision::Merge(_) => Outcome::Merged,
        Decision::Orphan => Outcome::Orphaned,
        Decision::Resend { .. } => Outcome::Resent,
        Decision::Skip(skip) => Outcome::Skipped(*skip),
        Decision::Refetch | Decision::Adopt(_) => {
            return Err(Failure::Permanent(format!(
                "internal: decision {decision:?} for a linked customer"
            )));
        }
    })
}

/// The customers linked to these Stripe customers, locked, by Stripe id.
async fn lock_linked(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
    wait: SyncWait,
) -> Result<HashMap<String, Linked>, Failure> {
    Ok(by_stripe_id(
        customers::lock_linked(conn, stripe_ids, wait).await?,
    ))
}

/// Linked customers by their Stripe id, as a batch decides them.
pub(super) fn by_stripe_id(rows: Vec<Customer>) -> HashMap<String, Linked> {
    rows.into_iter()
        .filter_map(|customer| {
            let stripe_id = customer.stripe_id.clone()?;
            Some((stripe_id, Linked::new(customer)))
        })
        .collect()
}

/// Writes back the rows the batch touched, and the corrections local wins must push.
pub(super) async fn write_linked(
    conn: &mut PgConnection,
    linked: &HashMap<String, Linked>,
    requeued: Vec<(CustomerId, i64)>,
) -> Result<(), Failure> {
    customers::write_back(conn, &touched(linked)).await?;
    requeue(conn, requeued).await
}

/// The rows the batch touched, and whether their content changed.
pub(super) fn touched(linked: &HashMap<String, Linked>) -> Vec<(&Customer, bool)> {
    linked
        .values()
        .filter(|state| state.touched)
        .map(|state| (&state.customer, state.changed))
        .collect()
}

/// Queues the corrections local wins must push to Stripe.
pub(super) async fn requeue(
    conn: &mut PgConnection,
    requeued: Vec<(CustomerId, i64)>,
) -> Result<(), Failure> {
    for (id, version) in requeued {
        outbox::insert(conn, id, Op::Update, version).await?;
    }
    Ok(())
}
