//! Stripe's customers as Stripe holds them (`<schema>.customers`), apart from paysync's two-way
//! customers: every Stripe customer of the account, adopted or not.

use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const CUSTOMERS: Kind = Kind {
    table: "customers",
    selector: MirroredObject::Customers,
    object: "customer",
    updates: &["customer.created", "customer.updated"],
    deletions: &["customer.deleted"],
    deletion: Deletion::Flag,
    columns: &[
        "id",
        "object",
        "address",
        "description",
        "email",
        "metadata",
        "name",
        "phone",
        "shipping",
        "balance",
        "created",
        "currency",
        "default_source",
        "delinquent",
        "discount",
        "invoice_prefix",
        "invoice_settings",
        "livemode",
        "next_invoice_sequence",
        "preferred_locales",
        "tax_exempt",
    ],
};
