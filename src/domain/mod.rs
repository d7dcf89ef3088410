//! The customer domain: validated newtypes and the rules every write must satisfy.
//!
//! Depends on nothing else in the crate, so its rules can be tested without services and
//! reused by every path that writes a customer (REST API, inbound sync, reconciler).

mod conflict;
mod customer;
mod email;
mod ids;
pub mod metadata;
mod schema_name;
mod text;

pub use conflict::ConflictPolicy;
pub use customer::{
    ContentHash, Customer, CustomerFields, CustomerPatch, NewCustomer, Op, SyncState, WriteWindow,
};
pub use email::{EMAIL_PATTERN, Email, MAX_EMAIL_CHARS};
pub use ids::{CustomerId, StripeCustomerId};
pub use metadata::{MAX_USER_KEYS, Metadata, MetadataPatch, RESERVED_PREFIX};
pub use schema_name::MirrorSchema;
pub use text::{Description, MULTI_LINE_PATTERN, Name, Phone, SINGLE_LINE_PATTERN};

/// The account (SyncPolicy) of the `STRIPE_*` settings, and of customers created without one.
pub const DEFAULT_ACCOUNT: &str = "default";

/// A value that breaks a domain rule; `field` names the input the caller must fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
