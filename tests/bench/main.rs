//! The benchmarks, as a program that prints its own tables (docs/BENCHMARKS.md): run by
//! `scripts/bench`, or `cargo test --test bench -- [outbound|outbound-live] [ingest] [apply]
//! [sync|sync-postgres|sync-kafka] [billing] [reconcile]`. Not part of
//! `cargo test` (the target is `test = false`); built with the tests' profile, so it reuses
//! their build. Each benchmark runs in a fresh database against the local services.

// Test code fails by panicking; the production lints do not apply here.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod billing;
mod end_to_end;
mod inbound;
mod outbound;
mod reconcile;
#[allow(dead_code)]
#[path = "../it/support/mod.rs"]
mod support;

use std::future::Future;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};

/// Runs `bench` in a database of its own, created and migrated first, dropped after.
async fn in_fresh_database<F, Fut>(bench: F)
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("paysync_bench_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let options: sqlx::postgres::PgConnectOptions = admin_url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect_with(options.database(&name))
        .await
        .unwrap();
    paysync::store::MIGRATOR.run(&pool).await.unwrap();
    bench(pool.clone()).await;
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// `outbound` runs every row; `outbound-live` only those at the live-mode budget.
async fn outbound_tables(budgets: &[outbound::Budget]) {
    for &budget in budgets {
        match budget {
            outbound::Budget::Test => {
                println!("Outbound\n");
                println!(
                    "| transport | changes | commit→call p50 | commit→call p99 | commit→applied p50 | commit→applied p99 | creates at Stripe latency 0 ms | 300 ms | 1,000 ms |"
                );
                println!("|---|---|---|---|---|---|---|---|---|");
            }
            outbound::Budget::Live => {
                println!("\nOutbound at the live-mode budget (100 req/s)\n");
                println!("| transport | creates at Stripe latency 300 ms | 1,000 ms |");
                println!("|---|---|---|");
            }
        }
        in_fresh_database(|pool| outbound::outbound_postgres_transport(pool, budget)).await;
        in_fresh_database(|pool| outbound::outbound_kafka_mock_cluster(pool, budget)).await;
        in_fresh_database(|pool| outbound::outbound_kafka_tansu(pool, budget)).await;
    }
}

async fn ingest_tables() {
    println!("\nInbound ingest (verified and durably queued before the 200)\n");
    println!(
        "| | transport | connections | rate | p50 | p99 | max | load client CPU | paysync CPU | PostgreSQL CPU | machine busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    in_fresh_database(inbound::ingest_postgres_transport).await;
    in_fresh_database(inbound::ingest_kafka_mock_cluster).await;
    in_fresh_database(inbound::ingest_kafka_tansu).await;
}

async fn apply_tables() {
    println!("\nInbound apply\n");
    println!("| | transport | queued | rate |");
    println!("|---|---|---|---|");
    in_fresh_database(inbound::apply_postgres_transport).await;
    in_fresh_database(inbound::apply_kafka_mock_cluster).await;
    in_fresh_database(inbound::apply_kafka_tansu).await;
}

/// `sync` runs every row; `sync-postgres` or `sync-kafka` one transport's.
async fn sync_tables(postgres: bool, kafka: bool) {
    println!("\nInbound end to end: signed webhook → applied in `customers`, every worker on\n");
    println!(
        "| transport | conns | events / customers | 2xx events/s | applied events/s | p50 | p99 | CPU per event (paysync + PostgreSQL) | WAL per event | machine busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let shapes = end_to_end::chosen_shapes();
    for shape in shapes.iter().filter(|_| postgres) {
        in_fresh_database(|pool| end_to_end::postgres_transport(pool, *shape)).await;
        in_fresh_database(|pool| end_to_end::postgres_transport_on_arrival(pool, *shape)).await;
    }
    if postgres && shapes.iter().any(|s| s.connections == 64) {
        in_fresh_database(end_to_end::http_ceiling).await;
    }
    // The mock cluster cannot hold the largest load (5 MB per partition).
    for shape in shapes.iter().filter(|s| kafka && s.events <= 20_000) {
        in_fresh_database(|pool| end_to_end::kafka_mock_cluster(pool, *shape)).await;
        in_fresh_database(|pool| end_to_end::kafka_tansu(pool, *shape)).await;
    }
}

/// The billing mirror and og, side by side on the same stream and PostgreSQL.
async fn billing_tables() {
    println!("\nBilling mirror beside og: the same signed mixed stream → rows in `stripe.*`\n");
    println!(
        "| engine | conns | events / customers | applied events/s | p50 | p99 | CPU per event (server + PostgreSQL) | peak memory |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for connections in [64, 1] {
        billing::og(connections).await;
        in_fresh_database(|pool| billing::paysync(pool, connections, false)).await;
        in_fresh_database(|pool| billing::paysync(pool, connections, true)).await;
    }
}

async fn reconcile_tables() {
    println!(
        "\nReconcile (a full run of `paysync reconcile --once`; Stripe is an in-memory fake)\n"
    );
    println!(
        "| customers | Stripe | duration | rate | of the budget's ceiling | pages | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    for customers in [10_000, 100_000] {
        in_fresh_database(|pool| reconcile::reconcile_run(pool, customers)).await;
    }
}

#[tokio::main]
async fn main() {
    // The tables go to stdout; the in-process apps log to stderr, warnings only unless
    // RUST_LOG says otherwise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = wanted.is_empty();
    let run = |name: &str| all || wanted.iter().any(|w| w == name);
    if run("outbound") {
        outbound_tables(&[outbound::Budget::Test, outbound::Budget::Live]).await;
    } else if run("outbound-live") {
        outbound_tables(&[outbound::Budget::Live]).await;
    }
    if run("ingest") {
        ingest_tables().await;
    }
    if run("apply") {
        apply_tables().await;
    }
    if run("sync") || run("sync-postgres") || run("sync-kafka") {
        let both = run("sync");
        sync_tables(both || run("sync-postgres"), both || run("sync-kafka")).await;
    }
    if run("billing") {
        billing_tables().await;
    }
    if run("reconcile") {
        reconcile_tables().await;
    }
}
