//! Payment methods; a detached one is kept with `customer` empty, as its event carries it.

use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const PAYMENT_METHODS: Kind = Kind {
    table: "payment_methods",
    selector: MirroredObject::PaymentMethods,
    object: "payment_method",
    updates: &[
        "payment_method.attached",
        "payment_method.automatically_updated",
        "payment_method.detached",
        "payment_method.updated",
    ],
    deletions: &[],
    deletion: Deletion::Remove,
    columns: &[
        "id",
        "object",
        "created",
        "customer",
        "type",
        "billing_details",
        "metadata",
        "card",
    ],
};
