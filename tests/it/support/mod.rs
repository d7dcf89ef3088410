//! The test harness: the app under test (in process or as the real binary), the local
//! services it talks to, and typed helpers for what tests send and wait for. Suites import
//! from here, never from each other.

pub mod app;
pub mod billing;
pub mod certs;
pub mod cluster;
pub mod customers;
pub mod events;
pub mod fault_proxy;
pub mod kube_api;
pub mod mock_kafka;
pub mod og;
pub mod policies;
pub mod private_stripe;
pub mod reconcile;
pub mod serve_process;
pub mod stripe;
pub mod tls_postgres;
pub mod tls_tansu;
pub mod webhook_relay;
pub mod webhooks;
