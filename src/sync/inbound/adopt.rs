//! The new Stripe customers of a batch adopted together, in two statements, before the rest
//! of the batch is decided: the first burst of a backfill, or of a launch, is all
//! `customer.created` events, and adopting them one at a time held the batch's locks for
//! four round trips per event.
//!
//! Only an event whose outcome cannot depend on anything else in the batch is taken: the
//! first event of a Stripe customer no local customer is linked to, naming no local customer
//! (`metadata.paysync_id`), that the rules would adopt, whose email no other Stripe customer
//! of the batch has and no live customer holds. Everything else is decided one at a time
//! after, as before, and sees the adopted customers as linked (as one at a time it would
//! have).

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use tracing::info;

use super::batch::Linked;
use super::event::IncomingEvent;
use super::rules::{self, Decision, Skip};
use super::{Context, Failure, InboundSync, Outcome};
use crate::domain::CustomerFields;
use crate::store::customers::{self, Adoption};

/// An event of the batch that adopts a new customer, by its index in the batch.
struct Candidate<'a> {
    index: usize,
    event: &'a IncomingEvent,
    account: &'a str,
    fields: CustomerFields,
}

impl InboundSync {
    /// Adopts the batch's new Stripe customers that nothing else in it concerns, and adds them
    /// to `linked` (so their later events in the batch are decided on them); returns the
    /// outcomes of those events by index. The caller decides the others one at a time.
    pub(super) async fn adopt_new(
        &self,
        conn: &mut PgConnection,
        pending: &[(usize, IncomingEvent, Context)],
        linked: &mut HashMap<String, Linked>,
    ) -> Result<HashMap<usize, Outcome>, Failure> {
        let mut candidates = candidates(pending, linked);
        if candidates.is_empty() {
            return Ok(HashMap::new());
        }
        let emails: Vec<(&str, &str)> = candidates
            .iter()
            .map(|c| (c.account, c.fields.email.as_str()))
            .collect();
        let held: HashSet<(String, String)> = customers::live_emails(conn, &emails)
            .await?
            .into_iter()
            .collect();
        // Those link to the customer holding the email instead, one at a time.
        candidates.retain(|c| !held.contains(&(c.account.to_owned(), c.fields.email.clone())));
        let adoptions: Vec<Adoption<'_>> = candidates
            .iter()
            .map(|c| Adoption {
                account: c.account,
                stripe_id: &c.event.stripe_id,
                fields: &c.fields,
                event_at: c.event.created,
            })
            .collect();
        if adoptions.is_empty() {
            return Ok(HashMap::new());
        }
        adopt_all(conn, &adoptions, linked).await?;
        // Not adopted: its deletion was seen already.
        Ok(candidates
            .iter()
            .map(|c| {
                let outcome = if linked.contains_key(&c.event.stripe_id) {
                    Outcome::Adopted
                } else {
                    Outcome::Skipped(Skip::Gone)
                };
                (c.index, outcome)
            })
            .collect())
    }
}

/// Inserts the adoptions, and adds the customers created to `linked`.
async fn adopt_all(
    conn: &mut PgConnection,
    adoptions: &[Adoption<'_>],
    linked: &mut HashMap<String, Linked>,
) -> Result<(), Failure> {
    for adopted in customers::adopt_many(conn, adoptions).await? {
        let Some(stripe_id) = adopted.stripe_id.clone() else {
            continue;
        };
        info!(customer_id = %adopted.id, stripe_id = %stripe_id, "adopted a customer created in Stripe");
        linked.insert(stripe_id, Linked::new(adopted));
    }
    Ok(())
}

/// The events that adopt a new customer and on which nothing else in the batch depends (see
/// the module's doc); whether a live customer holds the email is asked after.
fn candidates<'a>(
    pending: &'a [(usize, IncomingEvent, Context)],
    linked: &HashMap<String, Linked>,
) -> Vec<Candidate<'a>> {
    let unlinked = || {
        pending
            .iter()
            .filter(|(_, event, _)| !linked.contains_key(&event.stripe_id))
    };
    // The Stripe customers each email (in lower case) is seen with, in the events that may
    // adopt or link: two of them make the order matter.
    let mut seen_with: HashMap<(&str, String), HashSet<&str>> = HashMap::new();
    for (_, event, context) in unlinked() {
        if let Some(email) = &event.fields.email {
            seen_with
                .entry((context.account.as_str(), email.to_lowercase()))
                .or_default()
                .insert(event.stripe_id.as_str());
        }
    }
    let mut first_seen = HashSet::new();
    unlinked()
        .filter_map(|(index, event, context)| {
            let first = first_seen.insert(event.stripe_id.as_str());
            if !first || event.paysync_id.is_some() {
                return None;
            }
            let Decision::Adopt(fields) = rules::decide(None, event, &context.rules) else {
                return None;
            };
            let key = (context.account.as_str(), fields.email.to_lowercase());
            (seen_with.get(&key).map(HashSet::len) == Some(1)).then_some(Candidate {
                index: *index,
                event,
                account: &context.account,
                fields,
            })
        })
        .collect()
}
