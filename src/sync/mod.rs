//! Sync logic: the outbound handler, the PostgreSQL-transport worker, dead-letter replay, and
//! the inbound decision core.

pub mod dead_letters;
pub mod inbound;
pub mod outbound;
pub mod outbox_worker;

pub use outbound::{CreateRetry, OutboundSync, Outcome};
