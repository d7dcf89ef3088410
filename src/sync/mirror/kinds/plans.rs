use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const PLANS: Kind = Kind {
    table: "plans",
    selector: MirroredObject::Plans,
    object: "plan",
    updates: &["plan.created", "plan.updated"],
    deletions: &["plan.deleted"],
    deletion: Deletion::Remove,
    columns: &[
        "id",
        "object",
        "active",
        "amount",
        "created",
        "product",
        "currency",
        "interval",
        "livemode",
        "metadata",
        "nickname",
        "tiers_mode",
        "usage_type",
        "billing_scheme",
        "interval_count",
        "aggregate_usage",
        "transform_usage",
        "trial_period_days",
    ],
};
