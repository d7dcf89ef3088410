//! The Stripe objects paysync mirrors, one module each: the table, the columns it fills from
//! the object (the columns supabase/stripe-sync-engine fills, so its readers read paysync's
//! rows unchanged), the events that carry the object and what a deletion does.
//!
//! Adding a kind is a module here (listed in [`ALL`]) and its migration in
//! `migrations_mirror/`.

mod charges;
mod coupons;
mod customers;
mod invoices;
mod payment_intents;
mod payment_methods;
mod plans;
mod prices;
mod products;
mod refunds;
mod subscriptions;
mod tax_ids;

pub use subscriptions::SUBSCRIPTION_ITEMS;

use crate::crd::MirroredObject;

/// One kind of mirrored object.
#[derive(Debug)]
pub struct Kind {
    /// Its table in the mirror schema, and its name in `spec.objects`, metrics and logs.
    pub table: &'static str,
    pub selector: MirroredObject,
    /// Stripe's `object` value of the kind.
    pub object: &'static str,
    /// The events whose `data.object` is the object as it now is.
    pub updates: &'static [&'static str],
    /// The events that say it is deleted, and what that does to its row.
    pub deletions: &'static [&'static str],
    pub deletion: Deletion,
    /// The columns filled from the object's fields of the same name.
    pub columns: &'static [&'static str],
}

/// What a deletion event does to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The row is removed; a tombstone keeps an older event from bringing it back.
    Remove,
    /// The row stays with `deleted = true` (customers).
    Flag,
}

/// Every mirrored kind (subscription items come with their subscription).
pub const ALL: [&Kind; 12] = [
    &customers::CUSTOMERS,
    &products::PRODUCTS,
    &prices::PRICES,
    &plans::PLANS,
    &coupons::COUPONS,
    &subscriptions::SUBSCRIPTIONS,
    &invoices::INVOICES,
    &charges::CHARGES,
    &payment_intents::PAYMENT_INTENTS,
    &payment_methods::PAYMENT_METHODS,
    &refunds::REFUNDS,
    &tax_ids::TAX_IDS,
];

/// What an event of a mirrored kind asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Update,
    Delete,
}

/// The kind an event type is about and what it asks, if paysync mirrors it.
pub fn for_event(event_type: &str) -> Option<(&'static Kind, EventAction)> {
    ALL.into_iter().find_map(|kind| {
        if kind.updates.contains(&event_type) {
            Some((kind, EventAction::Update))
        } else if kind.deletions.contains(&event_type) {
            Some((kind, EventAction::Delete))
        } else {
            None
        }
    })
}

/// Every event type the mirror applies, for catch-up (the Events API filters by exact type).
pub fn event_types(kind: &Kind) -> impl Iterator<Item = &'static str> {
    kind.updates.iter().chain(kind.deletions).copied()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_event_type_belongs_to_one_kind_and_every_selector_to_one_table() {
        let mut seen = HashSet::new();
        for kind in ALL {
            for event_type in event_types(kind) {
                assert!(seen.insert(event_type), "{event_type} is listed twice");
                assert_eq!(for_event(event_type).unwrap().0.table, kind.table);
            }
            assert!(kind.columns.contains(&"id"), "{}", kind.table);
        }
        assert_eq!(MirroredObject::ALL.len(), ALL.len());
        assert!(for_event("customer.source.created").is_none());
    }
}
