//! paysync keeps customers in PostgreSQL and in Stripe in two-way sync.
//! The architecture is described in the README and `docs/`.

pub mod app;
pub mod bus;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod store;
pub mod stripe;
pub mod sync;
pub mod telemetry;
