//! What became of one Stripe event.

use super::rules::Skip;
use crate::sync::dead_letters::DEAD_LETTERED;

/// What handling one event did; the label is stored in `processed_events.outcome` and counted
/// in `paysync_inbound_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Adopted,
    Deleted,
    KeptLocal,
    /// A conflict settled field by field: some fields from each side.
    Merged,
    /// Deleted in Stripe; kept locally, unlinked (`deletion: Orphan`).
    Orphaned,
    /// Stripe held a write of paysync's that landed late: the local version is sent again.
    Resent,
    Skipped(Skip),
    /// Already applied before (a redelivery).
    Duplicate,
    DeadLettered,
    /// No policy of that name (removed): nothing applied; the reconciler reports it.
    NoPolicy,
    /// The policy is suspended: nothing applied.
    Suspended,
    /// The policy syncs LocalToStripe: recorded and counted as drift, never applied.
    Drift,
    /// The policy is in Observe mode: counted, not applied.
    Observed,
    /// An event of a kind the policy's `objects` leaves out, or that describes nothing to
    /// store (an upcoming invoice): counted, not applied.
    NotMirrored,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Adopted => "adopted",
            Self::Deleted => "deleted",
            Self::KeptLocal => "kept_local",
            Self::Merged => "merged",
            Self::Orphaned => "orphaned",
            Self::Resent => "resent",
            Self::Skipped(skip) => skip.label(),
            Self::Duplicate => "duplicate",
            Self::DeadLettered => DEAD_LETTERED,
            Self::NoPolicy => "no_policy",
            Self::Suspended => "suspended",
            Self::Drift => "drift",
            Self::Observed => "observed",
            Self::NotMirrored => "not_mirrored",
        }
    }
}
