use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const TAX_IDS: Kind = Kind {
    table: "tax_ids",
    selector: MirroredObject::TaxIds,
    object: "tax_id",
    updates: &["customer.tax_id.created", "customer.tax_id.updated"],
    deletions: &["customer.tax_id.deleted"],
    deletion: Deletion::Remove,
    columns: &[
        "id", "country", "customer", "type", "value", "object", "created", "livemode", "owner",
    ],
};
