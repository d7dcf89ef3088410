//! Finding the local customer of a Stripe event: the one linked to it, else the one its
//! `metadata.paysync_id` names (a create whose answer was lost), else a live one with its
//! email; never one already linked to another Stripe customer.

use sqlx::PgConnection;
use tracing::info;

use super::event::IncomingEvent;
use super::rules::{self, Link};
use super::{Context, Failure, InboundSync};
use crate::crd::Adoption;
use crate::domain::Customer;
use crate::store::{self, customers};
use crate::stripe::event::EventKind;

impl InboundSync {
    /// The local customer of the event's Stripe customer, locked for this transaction: the
    /// one linked to it, else the one its `metadata.paysync_id` names, else a live one with
    /// its email (both then linked to it).
    pub(super) async fn find_local(
        &self,
        conn: &mut PgConnection,
        event: &IncomingEvent,
        context: &Context,
    ) -> Result<Option<Customer>, Failure> {
        if let Some(linked) = customers::find_by_stripe_id(conn, &event.stripe_id).await? {
            return Ok(lock(conn, &linked, context).await?);
        }
        let deleting = event.kind == EventKind::Deleted;
        if let Some(id) = event.paysync_id
            && let Some(named) = customers::find_any(conn, id).await?
            && let Some(named) = lock(conn, &named, context).await?
        {
            match rules::link(&named, &event.stripe_id) {
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
        // Linking by email is adoption; `adoption: None` leaves unknown customers alone.
        if deleting || context.rules.adoption == Adoption::None {
            return Ok(None);
        }
        self.find_by_email(conn, event, context).await
    }

    /// A live customer of the account with the event's email, linked to it now.
    async fn find_by_email(
        &self,
        conn: &mut PgConnection,
        event: &IncomingEvent,
        context: &Context,
    ) -> Result<Option<Customer>, Failure> {
        let Some(email) = &event.fields.email else {
            return Ok(None);
        };
        let Some(same_email) = customers::find_live_by_email(conn, &context.account, email).await?
        else {
            return Ok(None);
        };
        let Some(same_email) = lock(conn, &same_email, context).await? else {
            return Ok(None);
        };
        match rules::link(&same_email, &event.stripe_id) {
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
}

/// Takes the customer's sync lock (so an outbound sync in flight finishes first: its write
/// to Stripe is then known; on arrival it fails instead) and its row lock; returns the current
/// row.
async fn lock(
    conn: &mut PgConnection,
    customer: &Customer,
    context: &Context,
) -> store::Result<Option<Customer>> {
    customers::lock_for_sync(conn, customer.id, context.sync_wait()).await?;
    customers::lock_any(conn, customer.id).await
}
