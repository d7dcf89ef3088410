//! The PostgreSQL transport: the outbound worker claims outbox rows, the inbox workers claim
//! Stripe events the ingress stored, and the inbox writer stores them (group commit).

pub mod inbox;
pub mod inbox_writer;
pub mod outbox;

pub use super::worker::WorkerSettings;
pub use inbox::InboxSettings;
pub use inbox_writer::{InboxWriter, InboxWriterMetrics};
