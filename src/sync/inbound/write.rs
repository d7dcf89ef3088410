//! Deciding one event on its customer's row and writing the decision, in the caller's
//! transaction; a refetch from Stripe settles an order in doubt.

use sqlx::PgConnection;
use tracing::{debug, info, warn};

use super::event::IncomingEvent;
use super::rules::{self, Decision, Skip};
use super::{Context, Failure, InboundSync, Outcome, Received};
use crate::domain::{Customer, CustomerFields, Op};
use crate::store::{customers, outbox, processed_events};
use crate::stripe as stripe_api;

impl InboundSync {
    /// What the event says, checked against the customer domain; for a replay, what Stripe
    /// holds now in its place.
    pub(super) async fn incoming(
        &self,
        received: &Received,
        context: &Context,
    ) -> Result<IncomingEvent, Failure> {
        if received.refetch && context.stripe.is_some() {
            let head = IncomingEvent::head(&received.event).map_err(Failure::Permanent)?;
            return refetch(head, context).await;
        }
        IncomingEvent::from_stripe(&received.event).map_err(Failure::Permanent)
    }

    pub(super) async fn decide_and_write(
        &self,
        conn: &mut PgConnection,
        mut event: IncomingEvent,
        context: &Context,
    ) -> Result<Outcome, Failure> {
        customers::lock_stripe_customer(conn, &event.stripe_id).await?;
        let local = self.find_local(conn, &event, context).await?;
        loop {
            match rules::decide(local.as_ref(), &event, &context.rules) {
                Decision::Refetch if !event.current => {
                    event = refetch(event, context).await?;
                }
                // Stripe's current state is never in doubt; this cannot happen.
                Decision::Refetch => return Ok(Outcome::Skipped(Skip::NoChange)),
                decision => {
                    return self
                        .write(conn, local.as_ref(), &event, decision, context)
                        .await;
                }
            }
        }
    }
}

/// What Stripe holds now for the event's customer, in place of the event.
pub(super) async fn refetch(
    event: IncomingEvent,
    context: &Context,
) -> Result<IncomingEvent, Failure> {
    let Some(stripe) = &context.stripe else {
        debug!(event_id = %event.id, "order in doubt but no Stripe API key to ask; applying the event");
        let mut trusted = event;
        trusted.current = true;
        return Ok(trusted);
    };
    if context.on_arrival {
        return Err(Failure::Transient(
            "the event's order is in doubt: Stripe is asked by a worker".to_owned(),
        ));
    }
    match stripe.retrieve_customer(&event.stripe_id).await {
        Ok(current) => event
            .refetched(current.as_ref())
            .map_err(Failure::Permanent),
        Err(e) if e.is_transient() => Err(Failure::Transient(e.to_string())),
        Err(e @ stripe_api::Error::Rejected { .. })
        | Err(e @ stripe_api::Error::Unreadable { .. }) => Err(Failure::Permanent(e.to_string())),
        Err(e) => Err(Failure::Transient(e.to_string())),
    }
}

impl InboundSync {
    async fn write(
        &self,
        conn: &mut PgConnection,
        local: Option<&Customer>,
        event: &IncomingEvent,
        decision: Decision,
        context: &Context,
    ) -> Result<Outcome, Failure> {
        let created = event.created;
        match (decision, local) {
            (Decision::Skip(skip), local) => self.skip(conn, local, event, skip).await,
            (Decision::Merge(fields), Some(local)) => {
                log_conflict(local, event, &Decision::Merge(fields.clone()));
                customers::merge_from_stripe(conn, local.id, &fields, created).await?;
                Ok(Outcome::Merged)
            }
            (Decision::Orphan, Some(local)) => {
                customers::orphan_from_stripe(conn, local.id, created).await?;
                info!(customer_id = %local.id, stripe_id = %event.stripe_id, "deleted in Stripe; kept here, unlinked (deletion: Orphan)");
                Ok(Outcome::Orphaned)
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
                keep_local(conn, local, event, requeue).await
            }
            (Decision::Resend { new_version }, Some(local)) => {
                resend(conn, local, event, new_version).await
            }
            (Decision::Adopt(fields), None) => adopt(conn, event, &fields, context).await,
            (decision, _) => Err(Failure::Permanent(format!(
                "internal: decision {decision:?} does not fit the local customer"
            ))),
        }
    }
}

/// A Stripe customer paysync did not know, created locally, linked; unless its deletion was
/// seen already (Stripe delivered the events out of order).
async fn adopt(
    conn: &mut PgConnection,
    event: &IncomingEvent,
    fields: &CustomerFields,
    context: &Context,
) -> Result<Outcome, Failure> {
    if processed_events::deletion_seen(conn, &context.account, &event.stripe_id).await? {
        debug!(event_id = %event.id, stripe_id = %event.stripe_id,
            "not adopted: its deletion in Stripe was seen already");
        return Ok(Outcome::Skipped(Skip::Gone));
    }
    let adopted = customers::adopt(
        conn,
        &context.account,
        &event.stripe_id,
        fields,
        event.created,
    )
    .await?;
    info!(customer_id = %adopted.id, stripe_id = %event.stripe_id, "adopted a customer created in Stripe");
    Ok(Outcome::Adopted)
}

/// The local side won: the event's time is recorded, and the local version is sent again when
/// Stripe may not hold it.
async fn keep_local(
    conn: &mut PgConnection,
    local: &Customer,
    event: &IncomingEvent,
    requeue: bool,
) -> Result<Outcome, Failure> {
    log_conflict(local, event, &Decision::KeepLocal { requeue });
    customers::note_stripe_event(conn, local.id, event.created).await?;
    if requeue {
        outbox::insert(conn, local.id, Op::Update, local.version).await?;
    }
    Ok(Outcome::KeptLocal)
}

/// Stripe holds a write of paysync's that landed late: the local row is sent again (as a new
/// version of the same content when Stripe was thought to hold it).
async fn resend(
    conn: &mut PgConnection,
    local: &Customer,
    event: &IncomingEvent,
    new_version: bool,
) -> Result<Outcome, Failure> {
    warn!(customer_id = %local.id, stripe_id = %event.stripe_id, event_id = %event.id,
        held = event.paysync_version, written = local.stripe_written_version,
        version = local.version,
        "Stripe holds an older write of paysync's that landed late; sending the local version again");
    if new_version {
        customers::merge_from_stripe(conn, local.id, &local.fields, event.created).await?;
    } else {
        customers::note_stripe_event(conn, local.id, event.created).await?;
        outbox::insert(conn, local.id, Op::Update, local.version).await?;
    }
    Ok(Outcome::Resent)
}

impl InboundSync {
    /// An event that changes no field: its time is recorded (older events are then stale),
    /// and a Stripe customer paysync cannot adopt is a dead letter.
    async fn skip(
        &self,
        conn: &mut PgConnection,
        local: Option<&Customer>,
        event: &IncomingEvent,
        skip: Skip,
    ) -> Result<Outcome, Failure> {
        match (skip, local) {
            (Skip::Echo | Skip::NoChange, Some(local)) => {
                customers::note_stripe_event(conn, local.id, event.created).await?;
            }
            (Skip::NoEmail, None) => {
                return Err(Failure::Permanent(format!(
                    "Stripe customer {} has no email, and paysync needs one to create a local \
                     customer: add an email in Stripe (the change then syncs), or replay this \
                     dead letter once it has one",
                    event.stripe_id
                )));
            }
            _ => debug!(event_id = %event.id, outcome = skip.label(), "Stripe event skipped"),
        }
        Ok(Outcome::Skipped(skip))
    }
}

/// Logs the loser of a conflict (both sides changed since the last sync).
pub(super) fn log_conflict(local: &Customer, event: &IncomingEvent, decision: &Decision) {
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
        Decision::Merge(_) => {
            warn!(customer_id = %local.id, stripe_id = %event.stripe_id, event_id = %event.id,
                "conflict settled field by field; Stripe gets the fields local won");
        }
        _ => {}
    }
}
