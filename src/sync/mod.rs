//! The sync handlers, which know no transport: the outbound handler (make Stripe match a
//! local customer), the inbound handler (apply a Stripe event, with its pure rules), catch-up,
//! dead letters, queue health, and the one mapping between local and Stripe customers. A
//! transport (`crate::transport`) hands work to them through [`OutboundHandler`] and
//! [`InboundHandler`], and takes Stripe events from catch-up through [`EventQueue`].

pub mod catch_up;
pub mod dead_letters;
pub mod inbound;
pub mod mapping;
pub mod mirror;
pub mod outbound;
pub mod pipeline;
pub mod queue;
pub mod queue_health;

pub use inbound::{Delivery, InboundHandler, InboundSync, Received};
pub use outbound::{OutboundHandler, OutboundRetry, OutboundSync, Outcome};
pub use pipeline::InboundPipeline;
pub use queue::{EventQueue, QueueError};

/// Whether paysync applies events of this type: paysync's customers or the billing mirror.
pub fn handles(event: &crate::stripe::event::StripeEvent) -> bool {
    event.customer_kind().is_some() || mirror::kinds::for_event(&event.kind).is_some()
}
