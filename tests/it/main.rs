//! Integration tests: the real HTTP server against real PostgreSQL, a fresh database per test
//! (`#[sqlx::test]` creates it from `DATABASE_URL` and applies the migrations).

// Test code fails by panicking; the production lints do not apply here.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod arrival;
mod auth;
mod binary;
mod chaos;
mod chart;
mod chart_values;
mod contract;
mod controller;
mod customers;
mod faults;
mod http_limits;
mod inbound;
mod kafka;
mod layout;
mod mirror;
mod og_compat;
mod ops;
mod outbound;
mod poison;
mod policies;
mod policy_rules;
mod reconcile;
// Shared with the benchmark program, which uses parts the tests do not.
#[allow(dead_code)]
mod support;
mod sync_locks;
mod tls;
mod webhooks;
