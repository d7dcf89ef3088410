//! Inbound benchmarks (`cargo test --test bench`, which `scripts/bench` runs; never part of the tests); they
//! report numbers and assert only that a run was valid (every request answered 200, every
//! event applied).
//!
//! - Ingest: the real binary (inbound worker off, so only the ingress works) takes signed
//!   `customer.updated` deliveries from a load client in this process: plain HTTP/1.1 over
//!   keep-alive connections, signing each event as Stripe does. Both processes' CPU time is
//!   read from /proc, so the client's share of the machine is reported next to the rate.
//! - Apply: events queued up front (inbox rows, or inbound-topic messages) for 10,000 linked
//!   customers; paysync starts and applies them. The rate is events over the span between the
//!   first and the last event's `processed_at`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use paysync::domain::DEFAULT_ACCOUNT;
use paysync::store::processed_events::{self, EventRef};
use paysync::transport::kafka::Envelope;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sqlx::PgPool;

use crate::support::app::{TestApp, inbound_settings, kafka_settings, settings, wait_for};
use crate::support::mock_kafka::MockKafka;
use crate::support::serve_process::{ServeProcess, database_url};
use crate::support::webhooks::{now, signature};

pub(crate) const SECRET: &str = "whsec_bench";
/// Distinct Stripe customers the events are about.
const CUSTOMERS: usize = 10_000;
/// Events queued for the apply benchmark.
const APPLY_EVENTS: usize = 50_000;
/// librdkafka's mock broker keeps at most 5 MB per partition (older messages are dropped, as
/// retention would), so the queue it holds up front is smaller: 4 partitions × ~4.5 MB.
const APPLY_EVENTS_MOCK: usize = 12_000;
pub const TANSU: &str = "127.0.0.1:19092";

/// CPU time (user + system) a process has used so far.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// CPU time of every PostgreSQL server process (the server is shared: run nothing else).
pub(crate) fn postgres_cpu_time() -> Duration {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .map(cpu_time)
        .sum()
}

/// Busy and total CPU time of the whole machine so far (from /proc/stat, in ticks).
pub(crate) fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the machine busy between two [`machine_ticks`] readings.
pub(crate) fn busy_between(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
}

pub(crate) fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// A realistic `customer.updated` event, as Stripe sends it (about 1.3 KB).
fn customer_updated(event_id: &str, customer: usize, created: i64, name: &str) -> String {
    customer_event("customer.updated", event_id, customer, created, name)
}

/// A realistic customer event of `kind`, as Stripe sends it (about 1.3 KB).
pub(crate) fn customer_event(
    kind: &str,
    event_id: &str,
    customer: usize,
    created: i64,
    name: &str,
) -> String {
    json!({
        "id": event_id,
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": created,
        "data": {
            "object": {
                "id": format!("cus_bench{customer}"),
                "object": "customer",
                "address": {"city": "London", "country": "GB", "line1": "12 Example Street",
                            "line2": null, "postal_code": "N1 9GU", "state": null},
                "balance": 0,
                "created": 1_700_000_000,
                "currency": "gbp",
                "default_source": null,
                "delinquent": false,
                "description": "Bench customer",
                "discount": null,
                "email": format!("bench-{customer}@example.com"),
                "invoice_prefix": "7A3C2B1D",
                "invoice_settings": {"custom_fields": null, "default_payment_method": null,
                                     "footer": null, "rendering_options": null},
                "livemode": false,
                "metadata": {"plan": "pro", "seats": "12"},
                "name": name,
                "next_invoice_sequence": 1,
                "phone": "+44 20 7946 0958",
                "preferred_locales": ["en-GB"],
                "shipping": null,
                "tax_exempt": "none",
                "test_clock": null
            },
            "previous_attributes": {"name": "Previous name"}
        },
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": "req_bench", "idempotency_key": "dashboard-edit"},
        "type": kind
    })
    .to_string()
}

struct Load {
    requests: usize,
    failures: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// `connections` keep-alive connections, each sending one delivery after another until
/// `duration` is over.
async fn blast(target: SocketAddr, run: &str, connections: usize, duration: Duration) -> Load {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|connection| {
            let run = run.to_owned();
            tokio::spawn(async move {
                let mut sender = connect(target).await;
                let (mut latencies, mut failures) = (Vec::new(), 0);
                let mut sequence = 0usize;
                while Instant::now() < deadline {
                    let customer = (connection * 7919 + sequence * 31) % CUSTOMERS;
                    let body = customer_updated(
                        &format!("evt_{run}c{connection}n{sequence}"),
                        customer,
                        chrono::Utc::now().timestamp(),
                        &format!("Name {sequence}"),
                    );
                    let (ok, latency) = deliver_one(&mut sender, target, body).await;
                    latencies.push(latency);
                    failures += usize::from(!ok);
                    sequence += 1;
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut load = Load {
        requests: 0,
        failures: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, failures) = task.await.unwrap();
        load.requests += latencies.len();
        load.failures += failures;
        load.latencies.extend(latencies);
    }
    load.elapsed = started.elapsed();
    load.latencies.sort();
    load
}

/// A keep-alive HTTP/1.1 connection to paysync (plain hyper, no pooling layer).
pub(crate) async fn connect(target: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(target).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(driver);
    sender
}

/// Delivers one event signed as Stripe signs it; whether it was answered 200, and how long
/// the answer took.
pub(crate) async fn deliver_one(
    sender: &mut SendRequest<Full<Bytes>>,
    target: SocketAddr,
    body: String,
) -> (bool, Duration) {
    deliver_to(sender, (target, "/webhooks/stripe", SECRET), body).await
}

/// [`deliver_one`] to `path`, signed with `secret`.
pub(crate) async fn deliver_to(
    sender: &mut SendRequest<Full<Bytes>>,
    (target, path, secret): (SocketAddr, &str, &str),
    body: String,
) -> (bool, Duration) {
    let request = hyper::Request::post(path)
        .header("host", target.to_string())
        .header("content-type", "application/json")
        .header("stripe-signature", signature(secret, now(), &body))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let sent = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    let ok = response.status() == hyper::StatusCode::OK;
    response.into_body().collect().await.unwrap();
    (ok, sent.elapsed())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One ingest measurement against `paysync serve` with `transport_env`.
async fn ingest(pool: PgPool, transport: &str, transport_env: Vec<(&'static str, String)>) {
    let mut env = vec![
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("PAYSYNC_NO_INBOUND", "true".to_owned()),
        ("PAYSYNC_DATABASE_MAX_CONNECTIONS", "16".to_owned()),
        ("RUST_LOG", "warn,paysync::app=info".to_owned()),
    ];
    env.extend(transport_env);
    let server = ServeProcess::start(&env).await;
    let target = server.address();
    let run = uuid::Uuid::now_v7().simple().to_string();
    // Warm-up: connections, the pool, the broker's partitions.
    blast(target, &format!("{run}w"), 16, Duration::from_secs(2)).await;
    for (connections, seconds) in [(64, 15), (1, 5)] {
        let client_before = cpu_time(std::process::id());
        let server_before = cpu_time(server.pid());
        let postgres_before = postgres_cpu_time();
        let machine_before = machine_ticks();
        let load = blast(
            target,
            &format!("{run}x{connections}"),
            connections,
            Duration::from_secs(seconds),
        )
        .await;
        let client_cpu = cpu_time(std::process::id()) - client_before;
        let server_cpu = cpu_time(server.pid()) - server_before;
        let postgres_cpu = postgres_cpu_time().saturating_sub(postgres_before);
        let machine_after = machine_ticks();
        let busy = busy_between(machine_before, machine_after);
        assert_eq!(
            load.failures, 0,
            "a valid run answers every delivery with 200"
        );
        let machine = cores() * load.elapsed.as_secs_f64();
        println!(
            "| ingest | {transport} | {connections} | {:.0} events/s | {} | {} | {} | {:.0}% | {:.0}% | {:.0}% | {:.0}% |",
            load.requests as f64 / load.elapsed.as_secs_f64(),
            ms(percentile(&load.latencies, 0.5)),
            ms(percentile(&load.latencies, 0.99)),
            ms(*load.latencies.last().unwrap()),
            100.0 * client_cpu.as_secs_f64() / machine,
            100.0 * server_cpu.as_secs_f64() / machine,
            100.0 * postgres_cpu.as_secs_f64() / machine,
            100.0 * busy,
        );
    }
    let metrics = server.metrics().await;
    let mean = |name: &str| {
        let value = |suffix: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}_{suffix} ")))
                .and_then(|v| v.parse::<f64>().ok())
        };
        value("sum")
            .zip(value("count"))
            .filter(|(_, count)| *count > 0.0)
            .map(|(sum, count)| sum / count)
    };
    if let (Some(events), Some(seconds)) = (
        mean("paysync_inbox_write_events"),
        mean("paysync_inbox_write_duration_seconds"),
    ) {
        println!(
            "  inbox writes ({transport}, all phases): {events:.1} events each, {:.2} ms each",
            seconds * 1000.0
        );
    }
    server.sigterm_and_wait().await;
}

fn kafka_env(brokers: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", brokers.to_owned()),
        (
            "KAFKA_TOPIC_PREFIX",
            format!("paysync-bench-{}", uuid::Uuid::now_v7().simple()),
        ),
        ("KAFKA_PARTITIONS", "6".to_owned()),
    ]
}

pub async fn ingest_postgres_transport(pool: PgPool) {
    ingest(pool, "PostgreSQL", Vec::new()).await;
}

pub async fn ingest_kafka_mock_cluster(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let mut env = kafka_env(&kafka.bootstrap);
    // The mock has only the default topics (it cannot create them on request).
    env.retain(|(name, _)| *name != "KAFKA_TOPIC_PREFIX");
    ingest(pool, "Kafka (librdkafka mock cluster)", env).await;
}

pub async fn ingest_kafka_tansu(pool: PgPool) {
    ingest(pool, "Kafka (tansu)", kafka_env(TANSU)).await;
}

/// 10,000 local customers linked to `cus_bench<n>` and in sync.
async fn linked_customers(pool: &PgPool) {
    sqlx::query(
        "insert into customers (id, email, name, stripe_id, stripe_synced_version, sync_state) \
         select gen_random_uuid(), 'bench-' || n || '@example.com', 'Customer ' || n, \
                'cus_bench' || n, 1, 'synced' \
         from generate_series(0, $1 - 1) n",
    )
    .bind(CUSTOMERS as i64)
    .execute(pool)
    .await
    .unwrap();
}

/// An event of the apply benchmark.
struct BenchEvent {
    id: String,
    stripe_id: String,
    raw: String,
}

/// The apply benchmark's events: each customer changed several times, in order.
fn apply_events(count: usize) -> Vec<BenchEvent> {
    let base = chrono::Utc::now().timestamp() - 3600;
    (0..count)
        .map(|i| {
            let id = format!("evt_apply{i}");
            let customer = i % CUSTOMERS;
            let raw = customer_updated(
                &id,
                customer,
                base + (i / CUSTOMERS) as i64,
                &format!("Name {i}"),
            );
            BenchEvent {
                id,
                stripe_id: format!("cus_bench{customer}"),
                raw,
            }
        })
        .collect()
}

async fn queue_in_inbox(pool: &PgPool, events: &[BenchEvent]) {
    let mut conn = pool.acquire().await.unwrap();
    for chunk in events.chunks(5_000) {
        let rows: Vec<(EventRef<'_>, &str)> = chunk
            .iter()
            .map(|event| {
                let reference = EventRef {
                    event_id: &event.id,
                    kind: "customer.updated",
                    account: "default",
                    stripe_customer_id: Some(&event.stripe_id),
                };
                (reference, event.raw.as_str())
            })
            .collect();
        processed_events::enqueue(&mut conn, &rows).await.unwrap();
    }
}

async fn queue_on_topic(brokers: &str, topic: &str, events: &[BenchEvent]) {
    // Batches well under the consumer's max.partition.fetch.bytes (1 MB): librdkafka's mock
    // broker cannot serve a batch larger than that (Kafka can), and the consumer would stall.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "262144")
        .create()
        .unwrap();
    futures::stream::iter(events)
        .map(|event| {
            let producer = &producer;
            async move {
                let body =
                    Envelope::inbound(event.raw.as_bytes(), DEFAULT_ACCOUNT, chrono::Utc::now());
                let record = FutureRecord::to(topic).key(&event.stripe_id).payload(&body);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(1_000)
        .collect::<Vec<()>>()
        .await;
}

/// Starts paysync over `events` queued events and reports how fast it applied them.
async fn apply(pool: PgPool, transport: &str, kafka: Option<(&str, &str)>, events: usize) {
    let mut settings = settings();
    settings.inbound = Some(inbound_settings());
    if let Some((brokers, prefix)) = kafka {
        let mut kafka = kafka_settings(brokers);
        kafka.topic_prefix = prefix.to_owned();
        settings.kafka = Some(kafka);
    }
    let app = TestApp::spawn_settings(pool.clone(), settings).await;
    wait_for("every event applied", Duration::from_secs(600), || async {
        let applied: i64 = sqlx::query_scalar(
            "select count(*) from processed_events where processed_at is not null",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if applied == events as i64 {
            Ok(())
        } else {
            Err(format!("{applied} of {events}"))
        }
    })
    .await;
    let (seconds, applied): (f64, i64) = sqlx::query_as(
        "select extract(epoch from max(processed_at) - min(processed_at))::float8, \
         count(*) filter (where outcome = 'applied') from processed_events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(applied, events as i64, "every event changed its customer");
    let versions: i64 = sqlx::query_scalar("select sum(version - 1)::bigint from customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(versions, events as i64, "each event applied exactly once");
    println!(
        "| apply | {transport} | {events} events, {CUSTOMERS} customers | {:.0} events/s over {seconds:.1} s |",
        events as f64 / seconds
    );
    app.stop().await;
}

pub async fn apply_postgres_transport(pool: PgPool) {
    linked_customers(&pool).await;
    queue_in_inbox(&pool, &apply_events(APPLY_EVENTS)).await;
    apply(pool, "PostgreSQL", None, APPLY_EVENTS).await;
}

pub async fn apply_kafka_mock_cluster(pool: PgPool) {
    let kafka = MockKafka::start().await;
    linked_customers(&pool).await;
    let events = apply_events(APPLY_EVENTS_MOCK);
    queue_on_topic(&kafka.bootstrap, "paysync.inbound", &events).await;
    let kafka = Some((kafka.bootstrap.as_str(), "paysync"));
    apply(
        pool,
        "Kafka (librdkafka mock cluster)",
        kafka,
        APPLY_EVENTS_MOCK,
    )
    .await;
}

pub async fn apply_kafka_tansu(pool: PgPool) {
    let prefix = format!("paysync-bench-{}", uuid::Uuid::now_v7().simple());
    linked_customers(&pool).await;
    let mut kafka = kafka_settings(TANSU);
    kafka.topic_prefix = prefix.clone();
    paysync::transport::kafka::ensure_topics(&kafka)
        .await
        .unwrap();
    queue_on_topic(
        TANSU,
        &format!("{prefix}.inbound"),
        &apply_events(APPLY_EVENTS),
    )
    .await;
    apply(pool, "Kafka (tansu)", Some((TANSU, &prefix)), APPLY_EVENTS).await;
}
