//! The common case of a batch, every event about a customer already linked, in three round
//! trips and the commit: begin, read and lock the linked rows (their sync locks tried in
//! the same statement, never waited for), then write them back and record the events with
//! their outcomes in one statement (dedup records inserted, on arrival and from Kafka; the
//! claimed inbox rows marked processed, by the inbox workers, whose claim takes a round trip
//! more). Anything else takes the general path ([`InboundSync::apply_batch`]) instead: a
//! redelivery (its dedup record exists), an event that may adopt or link a customer (that
//! needs the per-Stripe-customer locks first, see ARCHITECTURE "Locks"), a sync lock held by
//! an outbound sync.

use std::collections::HashSet;

use chrono::Utc;
use sqlx::PgConnection;

use super::batch::{by_stripe_id, requeue, touched};
use super::event::IncomingEvent;
use super::{Context, Delivery, Failure, InboundSync, Outcome, Received};
use crate::domain::{Customer, CustomerId};
use crate::store::processed_events::EventRef;
use crate::store::{self, customers};

impl InboundSync {
    /// Applies `events` if they are the common case, in a transaction of its own, and
    /// commits: `None` (nothing written) when they are not. On arrival or from Kafka.
    pub(super) async fn apply_linked(
        &self,
        events: &[Received],
        delivery: Delivery,
    ) -> Result<Option<Vec<Outcome>>, Failure> {
        let mut tx = store::begin_by_key_only(&self.pool).await?;
        match self.apply_linked_in(&mut tx, events, delivery).await {
            Ok(Some(outcomes)) => {
                store::commit(tx).await?;
                Ok(Some(outcomes))
            }
            // Its locks are free before the general path takes them again.
            not_applied => {
                store::rollback(tx).await?;
                not_applied
            }
        }
    }

    /// Applies `events` in `conn`, a transaction finding rows by key only, if they are the
    /// common case: `None` when they are not, and the caller must roll back. From the inbox
    /// (`Delivery::Inbox`), the caller has claimed every one of them in `conn`.
    pub(super) async fn apply_linked_in(
        &self,
        conn: &mut PgConnection,
        events: &[Received],
        delivery: Delivery,
    ) -> Result<Option<Vec<Outcome>>, Failure> {
        let mut distinct = HashSet::with_capacity(events.len());
        if events
            .iter()
            .any(|r| r.refetch || !distinct.insert(r.event.id.as_str()))
        {
            return Ok(None);
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let pending = self.read_events(events, delivery, &mut outcomes).await?;
        let stripe_ids: Vec<&str> = pending
            .iter()
            .map(|(_, e, _)| e.stripe_id.as_str())
            .collect();
        let mut linked = by_stripe_id(customers::try_lock_linked(conn, &stripe_ids).await?);
        // Known before anything is decided: no refetch, no conflict logged, for a batch that
        // then goes the general way.
        if !stripe_ids.iter().all(|id| linked.contains_key(*id)) {
            return Ok(None);
        }
        let now = Utc::now();
        let mut requeued: Vec<(CustomerId, i64)> = Vec::new();
        for (index, event, context) in pending {
            let Some(state) = linked.get_mut(&event.stripe_id) else {
                return Ok(None);
            };
            let outcome = self
                .decide_linked(state, event, &context, now, &mut requeued)
                .await?;
            outcomes[index] = Some(outcome);
        }
        requeue(conn, requeued).await?;
        let records = dedup_records(events, &outcomes);
        let written = touched(&linked);
        let recorded = record(conn, &written, &records, delivery).await?;
        if recorded < records.len() as u64 {
            return Ok(None);
        }
        Ok(Some(outcomes.into_iter().flatten().collect()))
    }

    /// The events to decide, with their index and their policy's rules; those their policy
    /// does not apply get their outcome in `outcomes` at once.
    async fn read_events(
        &self,
        events: &[Received],
        delivery: Delivery,
        outcomes: &mut [Option<Outcome>],
    ) -> Result<Vec<(usize, IncomingEvent, Context)>, Failure> {
        let mut pending = Vec::with_capacity(events.len());
        for (index, received) in events.iter().enumerate() {
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
}

/// The dedup records of decided events, with their outcomes.
fn dedup_records<'a>(
    events: &'a [Received],
    outcomes: &[Option<Outcome>],
) -> Vec<(EventRef<'a>, &'static str)> {
    events
        .iter()
        .zip(outcomes)
        .filter_map(|(received, outcome)| Some((received.event_ref(), outcome.as_ref()?.label())))
        .collect()
}

/// Writes the batch's rows back with its events' records: inserted (a record that exists
/// already is not counted: a redelivery), or, from the inbox, the claimed rows marked
/// processed. Returns how many records were written.
async fn record(
    conn: &mut PgConnection,
    written: &[(&Customer, bool)],
    records: &[(EventRef<'_>, &str)],
    delivery: Delivery,
) -> Result<u64, Failure> {
    Ok(match delivery {
        Delivery::Inbox => customers::write_back_finishing(conn, written, records).await?,
        Delivery::Arrival | Delivery::Kafka => {
            customers::write_back_recording(conn, written, records).await?
        }
    })
}
