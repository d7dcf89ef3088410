//! Coupons: the engine paysync reads like has their table but applies none of their events;
//! paysync fills it.

use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const COUPONS: Kind = Kind {
    table: "coupons",
    selector: MirroredObject::Coupons,
    object: "coupon",
    updates: &["coupon.created", "coupon.updated"],
    deletions: &["coupon.deleted"],
    deletion: Deletion::Remove,
    columns: &[
        "id",
        "object",
        "name",
        "valid",
        "created",
        "updated",
        "currency",
        "duration",
        "livemode",
        "metadata",
        "redeem_by",
        "amount_off",
        "percent_off",
        "times_redeemed",
        "max_redemptions",
        "duration_in_months",
        "percent_off_precise",
    ],
};
