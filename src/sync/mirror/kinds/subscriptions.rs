//! Subscriptions, and their items in a table of their own. A deleted subscription is kept with
//! `status = canceled`, as Stripe keeps it; an item no longer in its subscription's (complete)
//! item list is kept with `deleted = true`.

use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const SUBSCRIPTIONS: Kind = Kind {
    table: "subscriptions",
    selector: MirroredObject::Subscriptions,
    object: "subscription",
    updates: &[
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "customer.subscription.trial_will_end",
    ],
    deletions: &[],
    deletion: Deletion::Remove,
    columns: &[
        "id",
        "object",
        "cancel_at_period_end",
        "current_period_end",
        "current_period_start",
        "default_payment_method",
        "items",
        "metadata",
        "pending_setup_intent",
        "pending_update",
        "status",
        "application_fee_percent",
        "billing_cycle_anchor",
        "billing_thresholds",
        "cancel_at",
        "canceled_at",
        "collection_method",
        "created",
        "days_until_due",
        "default_source",
        "default_tax_rates",
        "discount",
        "ended_at",
        "livemode",
        "next_pending_invoice_item_invoice",
        "pause_collection",
        "pending_invoice_item_interval",
        "start_date",
        "transfer_data",
        "trial_end",
        "trial_start",
        "schedule",
        "customer",
        "latest_invoice",
        "plan",
        "billing_mode",
    ],
};

/// The items of subscriptions, written from their subscription's events (`price` is the
/// price's id).
pub const SUBSCRIPTION_ITEMS: Kind = Kind {
    table: "subscription_items",
    selector: MirroredObject::Subscriptions,
    object: "subscription_item",
    updates: &[],
    deletions: &[],
    deletion: Deletion::Flag,
    columns: &[
        "id",
        "object",
        "billing_thresholds",
        "created",
        "deleted",
        "metadata",
        "quantity",
        "price",
        "subscription",
        "tax_rates",
        "current_period_end",
        "current_period_start",
    ],
};
