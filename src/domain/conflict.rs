//! Who wins when a customer changed on both sides since the last sync.

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// The later change wins: local `updated_at` against the Stripe event's `created`.
    #[default]
    Newest,
    LocalWins,
    StripeWins,
}

impl FromStr for ConflictPolicy {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "newest" => Ok(Self::Newest),
            "local-wins" => Ok(Self::LocalWins),
            "stripe-wins" => Ok(Self::StripeWins),
            other => Err(format!(
                "{other:?} is not a conflict policy (newest, local-wins or stripe-wins)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_policies_parse_by_name() {
        assert_eq!("local-wins".parse(), Ok(ConflictPolicy::LocalWins));
        assert!("oldest".parse::<ConflictPolicy>().is_err());
    }
}
