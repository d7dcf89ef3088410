//! The controller's leader election settings (a Lease in the watched namespace).

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// The controller's leader election (a Lease in the watched namespace).
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// How long other replicas wait, from the last renewal they saw, before taking the Lease.
    #[arg(long, env = "PAYSYNC_LEADER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal (less than the lease
    /// duration, so it stops before another may take over).
    #[arg(long, env = "PAYSYNC_LEADER_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_renew_deadline: Duration,
    /// How often the leader renews and the others try.
    #[arg(long, env = "PAYSYNC_LEADER_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_retry_period: Duration,
}

impl LeaderArgs {
    /// A leader must stop before its Lease can be taken, and renew more than once a deadline.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.leader_retry_period >= self.leader_renew_deadline
            || self.leader_renew_deadline >= self.leader_lease_duration
        {
            return Err(
                "PAYSYNC_LEADER_RETRY_PERIOD < PAYSYNC_LEADER_RENEW_DEADLINE < \
                 PAYSYNC_LEADER_LEASE_DURATION must hold (a leader must stop before its Lease \
                 can be taken)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}
