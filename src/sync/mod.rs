//! Sync logic: the outbound handler and its PostgreSQL-transport worker, the inbound handler
//! (with its pure decision core) and its inbox worker, catch-up, and dead-letter replay.

pub mod catch_up;
pub mod dead_letters;
pub mod inbound;
pub mod inbound_queue;
pub mod inbound_sync;
pub mod inbox_worker;
pub mod outbound;
pub mod outbox_worker;
pub mod queue_health;

pub use inbound_queue::InboundQueue;
pub use inbound_sync::{InboundSync, Received};
pub use outbound::{CreateRetry, OutboundSync, Outcome};
