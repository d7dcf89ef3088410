//! How work reaches the sync handlers: over PostgreSQL alone (`pg`: outbox rows and the inbox
//! of Stripe events, claimed with `FOR UPDATE SKIP LOCKED`, woken by NOTIFY) or over Kafka
//! (`kafka`: the relay publishes the outbox, consumers hand messages on). Both hand the same
//! work to the same handlers ([`crate::sync::OutboundHandler`],
//! [`crate::sync::InboundHandler`]), so every invariant holds on either; the loop that
//! claims and hands on is [`worker::run`], once for all.

pub mod kafka;
pub mod pg;
pub mod queue;
pub mod worker;

pub use queue::InboundQueue;
