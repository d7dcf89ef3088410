//! The inbound benchmark as a user runs it (`scripts/bench sync`): the real binary with every
//! worker on takes the peer-shaped load and applies it. One load client in this process sends
//! a fixed set of signed events over keep-alive HTTP/1.1 connections (each connection takes
//! the next event when its last one was answered): for each customer a `customer.created`
//! and then `customer.updated`s, every event a change, `created` strictly increasing. The
//! clock runs from the first request until the last event is applied (its dedup record is
//! processed); a valid run answers every delivery 2xx and ends with every customer at its last
//! event. Reported: 2xx events/s, applied events/s, latency of the 2xx, CPU per applied event
//! (paysync and PostgreSQL) and WAL bytes per event (the server's, so run nothing else).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::inbound::{
    SECRET, busy_between, connect, cores, cpu_time, customer_event, deliver_to, machine_ticks, ms,
    percentile, postgres_cpu_time,
};
use crate::support::app::wait_for;
use crate::support::mock_kafka::MockKafka;
use crate::support::serve_process::{ServeProcess, database_url};
use crate::support::webhooks::now;

/// One load: `events` events over `customers` customers through `connections` connections.
#[derive(Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub events: usize,
    pub customers: usize,
}

/// The peer comparison's shapes.
pub const SHAPES: [Shape; 3] = [
    Shape {
        connections: 64,
        events: 20_000,
        customers: 2_000,
    },
    Shape {
        connections: 1,
        events: 20_000,
        customers: 2_000,
    },
    Shape {
        connections: 64,
        events: 100_000,
        customers: 10_000,
    },
];

/// [`SHAPES`], or only those with as many connections as `PAYSYNC_BENCH_CONNECTIONS` says
/// (to profile one row).
pub fn chosen_shapes() -> Vec<Shape> {
    let connections: Option<usize> = std::env::var("PAYSYNC_BENCH_CONNECTIONS")
        .ok()
        .map(|n| n.parse().expect("PAYSYNC_BENCH_CONNECTIONS: a number"));
    SHAPES
        .into_iter()
        .filter(|shape| connections.is_none_or(|n| n == shape.connections))
        .collect()
}

/// The event bodies of a load, in the order they are sent: event `i` is about customer
/// `i % customers`, its first one a `customer.created`, each at a later second than the last.
fn events(shape: Shape, run: &str) -> Vec<String> {
    let base = now() - shape.events as i64 - 60;
    (0..shape.events)
        .map(|i| {
            let kind = if i < shape.customers {
                "customer.created"
            } else {
                "customer.updated"
            };
            let customer = i % shape.customers;
            let id = event_id(run, i);
            customer_event(kind, &id, customer, base + i as i64, &format!("Name {i}"))
        })
        .collect()
}

/// The id of a run's event `i`.
fn event_id(run: &str, i: usize) -> String {
    format!("evt_{run}n{i}")
}

/// How many of the last events sent the end of a run is first looked for by.
const LAST_SENT: usize = 64;

pub struct Delivered {
    pub latencies: Vec<Duration>,
    pub failures: usize,
    pub elapsed: Duration,
}

/// Sends every event once, `connections` at a time, to paysync's webhook route.
async fn deliver(target: SocketAddr, bodies: Arc<Vec<String>>, connections: usize) -> Delivered {
    deliver_to_route(target, ("/webhooks/stripe", SECRET), bodies, connections).await
}

/// Sends every event once, `connections` at a time, to `path` signed with `secret`.
pub async fn deliver_to_route(
    target: SocketAddr,
    (path, secret): (&'static str, &'static str),
    bodies: Arc<Vec<String>>,
    connections: usize,
) -> Delivered {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (bodies, next) = (bodies.clone(), next.clone());
            tokio::spawn(async move {
                let mut sender = connect(target).await;
                let (mut latencies, mut failures) = (Vec::new(), 0);
                while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (ok, latency) =
                        deliver_to(&mut sender, (target, path, secret), body.clone()).await;
                    latencies.push(latency);
                    failures += usize::from(!ok);
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut delivered = Delivered {
        latencies: Vec::new(),
        failures: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, failures) = task.await.unwrap();
        delivered.latencies.extend(latencies);
        delivered.failures += failures;
    }
    delivered.elapsed = started.elapsed();
    delivered.latencies.sort();
    delivered
}

/// Whether every event is processed, asked so that polling costs PostgreSQL little (a count of
/// every processed event alone scanned the whole table, with parallel workers, 20 times a
/// second, CPU that was charged to paysync's events): none waits in the inbox (its partial
/// index), the last events sent are processed (by key; from Kafka, where a record is only
/// written once applied), and only then the count of all.
async fn all_processed(pool: &PgPool, last_sent: &[String], expected: i64) -> Result<(), String> {
    let waiting: i64 =
        sqlx::query_scalar("select count(*) from processed_events where processed_at is null")
            .fetch_one(pool)
            .await
            .unwrap();
    if waiting > 0 {
        return Err(format!("{waiting} waiting in the inbox"));
    }
    let last: i64 = sqlx::query_scalar(
        "select count(*) from processed_events \
         where event_id = any($1) and processed_at is not null",
    )
    .bind(last_sent)
    .fetch_one(pool)
    .await
    .unwrap();
    if last < last_sent.len() as i64 {
        return Err(format!("{last} of the last {} processed", last_sent.len()));
    }
    match processed(pool).await {
        done if done == expected => Ok(()),
        done => Err(format!("{done} of {expected}")),
    }
}

async fn processed(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from processed_events where processed_at is not null")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wal_position(pool: &PgPool) -> String {
    sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wal_bytes_since(pool: &PgPool, start: &str) -> f64 {
    sqlx::query_scalar("select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
        .bind(start)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Customers whose row holds the name of their last event.
async fn customers_at_last_event(pool: &PgPool, shape: Shape) -> i64 {
    sqlx::query_scalar(
        "select count(*) from customers \
         where name = 'Name ' || ($1 - $2 + substring(email from 'bench-(\\d+)@')::int)",
    )
    .bind(shape.events as i64)
    .bind(shape.customers as i64)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// What every `paysync serve` of this benchmark is started with: its database, the webhook
/// secret the load is signed with, and the log line the harness waits for.
fn server_env(pool: &PgPool) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url(pool)),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("RUST_LOG", "warn,paysync::app=info".to_owned()),
    ]
}

/// One run of `shape` against `paysync serve` with `transport_env`, in the fresh database
/// behind `pool`.
async fn run(
    pool: PgPool,
    transport: &str,
    transport_env: Vec<(&'static str, String)>,
    shape: Shape,
) {
    let mut env = server_env(&pool);
    env.push(("PAYSYNC_DATABASE_MAX_CONNECTIONS", "16".to_owned()));
    env.extend(transport_env);
    for name in ["PAYSYNC_INBOUND_BATCH", "PAYSYNC_INBOUND_CONCURRENCY"] {
        if let Ok(value) = std::env::var(name) {
            env.push((name, value));
        }
    }
    let server = ServeProcess::start(&env).await;
    let target = server.address();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let bodies = Arc::new(events(shape, &run));
    let last_sent: Vec<String> = (shape.events.saturating_sub(LAST_SENT)..shape.events)
        .map(|i| event_id(&run, i))
        .collect();
    let wal_start = wal_position(&pool).await;
    let (server_before, postgres_before) = (cpu_time(server.pid()), postgres_cpu_time());
    let machine_before = machine_ticks();
    let started = Instant::now();
    let delivered = deliver(target, bodies, shape.connections).await;
    let expected = shape.events as i64;
    wait_for("every event applied", Duration::from_secs(600), || {
        all_processed(&pool, &last_sent, expected)
    })
    .await;
    let applied_in = started.elapsed();
    let server_cpu = cpu_time(server.pid()) - server_before;
    let postgres_cpu = postgres_cpu_time().saturating_sub(postgres_before);
    let machine_after = machine_ticks();
    let wal = wal_bytes_since(&pool, &wal_start).await;
    assert_eq!(
        delivered.failures, 0,
        "a valid run answers every delivery 2xx"
    );
    assert_eq!(
        customers_at_last_event(&pool, shape).await,
        shape.customers as i64,
        "every customer ends at its last event"
    );
    let busy = busy_between(machine_before, machine_after);
    let events = shape.events as f64;
    println!(
        "| {transport} | {} | {} / {} | {:.0} | **{:.0}** | {} | {} | {:.0} µs + {:.0} µs | {:.2} KB | {:.0}% of {:.0} cores |",
        shape.connections,
        shape.events,
        shape.customers,
        events / delivered.elapsed.as_secs_f64(),
        events / applied_in.as_secs_f64(),
        ms(percentile(&delivered.latencies, 0.5)),
        ms(percentile(&delivered.latencies, 0.99)),
        server_cpu.as_secs_f64() * 1e6 / events,
        postgres_cpu.as_secs_f64() * 1e6 / events,
        wal / events / 1024.0,
        100.0 * busy,
        cores(),
    );
    let metrics = server.metrics().await;
    let interesting = [
        "paysync_arrived_events_total",
        "paysync_inbox_write_events_",
        "paysync_inbox_write_duration_seconds_",
    ];
    for line in metrics.lines() {
        if interesting.iter().any(|prefix| line.starts_with(prefix)) && !line.contains("bucket") {
            eprintln!("  {line}");
        }
    }
    server.sigterm_and_wait().await;
}

/// What the HTTP side alone costs on this machine, as a ceiling for the rows above: the same
/// load client and the same signed bodies, but of an event type paysync acknowledges without
/// storing (`payout.paid`), so each delivery is read, verified and parsed and nothing is
/// written. 2xx/s, latency, paysync's CPU per delivery and how busy the machine was.
pub async fn http_ceiling(pool: PgPool) {
    let server = ServeProcess::start(&server_env(&pool)).await;
    let shape = SHAPES[2];
    let run = uuid::Uuid::now_v7().simple().to_string();
    let base = now() - 60;
    let bodies: Vec<String> = (0..shape.events)
        .map(|i| {
            let id = event_id(&run, i);
            customer_event("payout.paid", &id, i % shape.customers, base, "Ignored")
        })
        .collect();
    let (server_before, machine_before) = (cpu_time(server.pid()), machine_ticks());
    let delivered = deliver(server.address(), Arc::new(bodies), shape.connections).await;
    let server_cpu = cpu_time(server.pid()) - server_before;
    let machine_after = machine_ticks();
    assert_eq!(delivered.failures, 0, "every delivery answered 2xx");
    let busy = busy_between(machine_before, machine_after);
    let events = shape.events as f64;
    println!(
        "| HTTP only (ignored type, nothing stored) | {} | {} / - | {:.0} | - | {} | {} | {:.0} µs + - | - | {:.0}% of {:.0} cores |",
        shape.connections,
        shape.events,
        events / delivered.elapsed.as_secs_f64(),
        ms(percentile(&delivered.latencies, 0.5)),
        ms(percentile(&delivered.latencies, 0.99)),
        server_cpu.as_secs_f64() * 1e6 / events,
        100.0 * busy,
        cores(),
    );
    server.sigterm_and_wait().await;
}

/// Every event queued in the inbox, then applied by the inbox workers.
pub async fn postgres_transport(pool: PgPool, shape: Shape) {
    run(pool, "PostgreSQL, queued", Vec::new(), shape).await;
}

/// `PAYSYNC_APPLY_ON_ARRIVAL`: applied by the ingress, queued only when that cannot be.
pub async fn postgres_transport_on_arrival(pool: PgPool, shape: Shape) {
    let env = vec![("PAYSYNC_APPLY_ON_ARRIVAL", "true".to_owned())];
    run(pool, "PostgreSQL, on arrival", env, shape).await;
}

pub async fn kafka_mock_cluster(pool: PgPool, shape: Shape) {
    // The mock keeps at most 5 MB per partition (it drops older messages, as retention
    // would): 16 partitions hold the whole load even if nothing were applied while it runs.
    let kafka = MockKafka::start_with(&["--partitions", "16"]).await;
    let env = vec![("KAFKA_BROKERS", kafka.bootstrap.clone())];
    run(pool, "Kafka (librdkafka mock cluster)", env, shape).await;
}

/// tansu, a Kafka-protocol broker of its own (`scripts/services up --kafka`), with a topic
/// prefix of this run's: the mock cluster answers a fetch with one record batch per
/// partition, which caps how fast any consumer can read from it.
pub async fn kafka_tansu(pool: PgPool, shape: Shape) {
    let env = vec![
        ("KAFKA_BROKERS", crate::inbound::TANSU.to_owned()),
        (
            "KAFKA_TOPIC_PREFIX",
            format!("paysync-bench-{}", uuid::Uuid::now_v7().simple()),
        ),
        ("KAFKA_PARTITIONS", "16".to_owned()),
    ];
    run(pool, "Kafka (tansu)", env, shape).await;
}
