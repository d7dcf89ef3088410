//! Sync logic: the outbound handler, the PostgreSQL-transport worker and dead-letter replay.

pub mod dead_letters;
pub mod outbound;
pub mod outbox_worker;

pub use outbound::{CreateRetry, OutboundSync, Outcome};
