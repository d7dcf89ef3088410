use super::{Deletion, Kind};
use crate::crd::MirroredObject;

pub const REFUNDS: Kind = Kind {
    table: "refunds",
    selector: MirroredObject::Refunds,
    object: "refund",
    updates: &[
        "refund.created",
        "refund.failed",
        "refund.updated",
        "charge.refund.updated",
    ],
    deletions: &[],
    deletion: Deletion::Remove,
    columns: &[
        "id",
        "object",
        "amount",
        "balance_transaction",
        "charge",
        "created",
        "currency",
        "destination_details",
        "metadata",
        "payment_intent",
        "reason",
        "receipt_number",
        "source_transfer_reversal",
        "status",
        "transfer_reversal",
    ],
};
