//! Why an event could not be applied, and whether trying again may help.

use crate::store;
use crate::telemetry::error_chain;

/// Why an event could not be applied.
#[derive(Debug)]
pub enum Failure {
    /// Will fail again whatever is retried (bad event, data conflict): dead-letter it.
    Permanent(String),
    /// May pass later (database, Stripe unreachable).
    Transient(String),
}

impl From<store::Error> for Failure {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::EmailTaken => Self::Permanent(
                "the Stripe customer's email is used by another live local customer".to_owned(),
            ),
            // The database refuses the data itself: another attempt fails the same way.
            other if other.is_data_error() => Self::Permanent(error_chain(&other)),
            other => Self::Transient(error_chain(&other)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Permanent(reason) | Self::Transient(reason) => f.write_str(reason),
        }
    }
}
