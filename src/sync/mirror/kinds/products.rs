use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const PRODUCTS: Kind = Kind {
    table: "products",
    selector: MirroredObject::Products,
    object: "product",
    updates: &["product.created", "product.updated"],
    deletions: &["product.deleted"],
    deletion: Deletion::Remove,
    columns: &[
        "id",
        "object",
        "active",
        "default_price",
        "description",
        "metadata",
        "name",
        "created",
        "images",
        "marketing_features",
        "livemode",
        "package_dimensions",
        "shippable",
        "statement_descriptor",
        "unit_label",
        "updated",
        "url",
    ],
};
