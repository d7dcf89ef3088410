use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const PRICES: Kind = Kind {
    table: "prices",
    selector: MirroredObject::Prices,
    object: "price",
    updates: &["price.created", "price.updated"],
    deletions: &["price.deleted"],
    deletion: Deletion::Remove,
    columns: &[
        "id",
        "object",
        "active",
        "currency",
        "metadata",
        "nickname",
        "recurring",
        "type",
        "unit_amount",
        "billing_scheme",
        "created",
        "livemode",
        "lookup_key",
        "tiers_mode",
        "transform_quantity",
        "unit_amount_decimal",
        "product",
    ],
};
