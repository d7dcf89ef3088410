//! paysync keeps customers in PostgreSQL and in Stripe in two-way sync. The layers, from the
//! bottom: `domain` (no I/O) ← `store`, `stripe` ← `sync` (handlers that know no transport) ←
//! `transport` (PostgreSQL or Kafka) ← `http`, `app`; `backoff`, `metrics` and `telemetry`
//! are leaves anyone may use. `docs/ARCHITECTURE.md` has the picture and the invariants.

pub mod app;
pub mod backoff;
pub mod config;
pub mod controller;
pub mod crd;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod reconcile;
pub mod store;
pub mod stripe;
pub mod sync;
pub mod telemetry;
pub mod transport;
