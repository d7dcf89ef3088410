//! The Stripe objects a policy mirrors into PostgreSQL (`spec.objects`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A kind of Stripe object paysync mirrors, named as its table. `customers` is the mirror of
/// Stripe's customers (`<schema>.customers`), apart from paysync's two-way customers, which
/// sync whatever this list says.
#[derive(
    JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum MirroredObject {
    Customers,
    Products,
    Prices,
    Plans,
    Coupons,
    /// Subscriptions and their items (`subscription_items`).
    Subscriptions,
    Invoices,
    Charges,
    PaymentIntents,
    PaymentMethods,
    Refunds,
    TaxIds,
}

impl MirroredObject {
    pub const ALL: [Self; 12] = [
        Self::Customers,
        Self::Products,
        Self::Prices,
        Self::Plans,
        Self::Coupons,
        Self::Subscriptions,
        Self::Invoices,
        Self::Charges,
        Self::PaymentIntents,
        Self::PaymentMethods,
        Self::Refunds,
        Self::TaxIds,
    ];
}

/// Whether a policy mirrors `kind`: every kind when `objects` is not set.
pub fn mirrors(objects: Option<&[MirroredObject]>, kind: MirroredObject) -> bool {
    objects.is_none_or(|chosen| chosen.contains(&kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_table_names_and_unset_means_all() {
        assert_eq!(
            serde_json::to_value(MirroredObject::PaymentIntents).unwrap(),
            "payment_intents"
        );
        assert!(mirrors(None, MirroredObject::TaxIds));
        assert!(!mirrors(
            Some(&[MirroredObject::Invoices]),
            MirroredObject::TaxIds
        ));
        assert!(mirrors(
            Some(&[MirroredObject::Invoices]),
            MirroredObject::Invoices
        ));
    }
}
