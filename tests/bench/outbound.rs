//! Outbound benchmark (`cargo test --test bench`, which `scripts/bench` runs; never part of the tests): it
//! reports numbers and asserts only that the run was valid (no failures, no 429s).
//!
//! A recording proxy in front of localstripe timestamps every Stripe call, so latency is
//! measured from a change's commit to the moment paysync issues its Stripe call (Stripe's own
//! latency excluded) and, separately, to Stripe having applied it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::support::app::{TestApp, kafka_settings, syncing_settings, wait_for, with_spec};
use crate::support::fault_proxy::{FaultProxy, Recorded};
use crate::support::mock_kafka::MockKafka;
use crate::support::private_stripe::PrivateStripe;
use crate::support::stripe::unique_email;
use paysync::transport::kafka::relay::RelaySettings;

/// Stripe's test-mode limit, the budget the benchmark configures.
const RATE_BUDGET: u32 = 25;
/// Stripe's live-mode limit, the budget of the live rows.
const LIVE_RATE_BUDGET: u32 = 100;
/// Changes in the latency phase, paced well below the budget.
const LATENCY_CHANGES: usize = 200;
const LATENCY_PACE: Duration = Duration::from_millis(200);
/// Seconds of the budget each throughput phase's creates take (one call each): 375 customers
/// in test mode, 1,500 live.
const THROUGHPUT_SECONDS: usize = 15;
/// Stripe's processing time in each throughput phase: localstripe's own (a few ms), and real
/// Stripe's typical and slow answers.
const STRIPE_LATENCIES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(300),
    Duration::from_millis(1000),
];

/// Where the Kafka transport runs, if it is used.
struct KafkaTarget {
    brokers: String,
    topic_prefix: String,
    options: Vec<(String, String)>,
}

async fn spawn(
    pool: PgPool,
    proxy: &FaultProxy,
    kafka: Option<&KafkaTarget>,
    rate: u32,
) -> TestApp {
    let budget = json!({"rateLimit": {"requestsPerSecond": rate, "burst": rate}});
    let mut settings = with_spec(syncing_settings(&proxy.base_url), budget);
    // As `paysync serve` runs by default (`STRIPE_TIMEOUT`), not the tests' short timeout: at
    // 1 s per call, localstripe queueing a burst of 100 creates takes longer than 2 s.
    settings.stripe_calls.timeout = Duration::from_secs(20);
    // As `paysync serve` runs by default.
    if let Some(outbound) = settings.outbound.as_mut() {
        outbound.concurrency = paysync::config::DEFAULT_OUTBOUND_CONCURRENCY as usize;
    }
    if let Some(kafka) = kafka {
        let mut kafka_settings = kafka_settings(&kafka.brokers);
        kafka_settings.topic_prefix = kafka.topic_prefix.clone();
        kafka_settings.partitions = 2;
        kafka_settings.options.extend(kafka.options.iter().cloned());
        settings.kafka = Some(kafka_settings);
        settings.relay = Some(RelaySettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
        });
    }
    TestApp::spawn_settings(pool, settings).await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The `metadata[paysync_version]` of an update, from its form-encoded body.
fn version_of(body: &str) -> Option<i64> {
    body.split('&')
        .find_map(|pair| {
            pair.strip_prefix("metadata[paysync_version]=")
                .or_else(|| pair.strip_prefix("metadata%5Bpaysync_version%5D="))
        })
        .and_then(|v| v.parse().ok())
}

async fn wait_all_synced(app: &TestApp, deadline: Duration) {
    wait_for("every customer synced", deadline, || async {
        let behind: i64 = sqlx::query_scalar(
            "select count(*) from customers where stripe_synced_version < version",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if behind == 0 {
            Ok(())
        } else {
            Err(format!("{behind} behind"))
        }
    })
    .await;
}

/// Creates `THROUGHPUT_SECONDS` of the budget's customers at once and waits until Stripe
/// has them all; the rate of Stripe calls paysync issued meanwhile, and over how long.
async fn throughput(app: &TestApp, proxy: &FaultProxy, rate: u32) -> (f64, f64) {
    let before = proxy.recorded().await.len();
    let emails: Vec<String> = (0..THROUGHPUT_SECONDS * rate as usize)
        .map(|_| unique_email("bench-load"))
        .collect();
    futures::stream::iter(&emails)
        .map(|email| async move { app.post_customer(&json!({ "email": email })).await })
        .buffer_unordered(16)
        .for_each(|response| async move { assert_eq!(response.status(), StatusCode::CREATED) })
        .await;
    wait_all_synced(app, Duration::from_secs(300)).await;
    let calls: Vec<Recorded> = proxy.recorded().await.split_off(before);
    let first = calls.iter().map(|c| c.arrived).min().unwrap();
    let last = calls.iter().map(|c| c.arrived).max().unwrap();
    let elapsed = last.duration_since(first).as_secs_f64();
    ((calls.len() - 1) as f64 / elapsed, elapsed)
}

/// The share of the budget `rate` paysync's Stripe calls used at each Stripe latency.
async fn shares_of_budget(
    app: &TestApp,
    proxy: &FaultProxy,
    rate: u32,
    latencies: &[Duration],
) -> Vec<String> {
    let mut shares = Vec::new();
    for latency in latencies {
        proxy.set_latency(*latency).await;
        let (calls_per_second, elapsed) = throughput(app, proxy, rate).await;
        shares.push(format!(
            "{:.1} req/s over {:.1} s = {:.0}%",
            calls_per_second,
            elapsed,
            100.0 * calls_per_second / f64::from(rate)
        ));
    }
    proxy.set_latency(Duration::ZERO).await;
    shares
}

/// The live rows: the share of a 100 req/s budget used at real Stripe's latencies.
async fn run_live(pool: PgPool, transport: &str, kafka: Option<&KafkaTarget>) {
    // A localstripe of the run's own: the shared one slows as it fills (30 creates/s after
    // the test suite and a few runs), and this measures paysync, not localstripe.
    let stripe = PrivateStripe::start().await;
    let proxy = FaultProxy::start_to(&stripe.base).await;
    let app = spawn(pool, &proxy, kafka, LIVE_RATE_BUDGET).await;
    let shares = shares_of_budget(&app, &proxy, LIVE_RATE_BUDGET, &STRIPE_LATENCIES[1..]).await;
    assert_valid(&app).await;
    println!("| {transport} | {} |", shares.join(" | "));
    app.stop().await;
}

/// A valid run has no 429s and no dead letters.
async fn assert_valid(app: &TestApp) {
    let metrics = app.metrics_text().await;
    let rate_limited = metrics
        .lines()
        .filter(|l| l.contains("result=\"rate_limited\""))
        .count();
    let dead: i64 = sqlx::query_scalar("select count(*) from dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        (rate_limited, dead),
        (0, 0),
        "a valid run has no 429s and no dead letters"
    );
}

async fn run(pool: PgPool, transport: &str, kafka: Option<&KafkaTarget>) {
    // A localstripe of the run's own: the shared one slows as it fills (30 creates/s after
    // the test suite and a few runs), and this measures paysync, not localstripe.
    let stripe = PrivateStripe::start().await;
    let proxy = FaultProxy::start_to(&stripe.base).await;
    let app = spawn(pool, &proxy, kafka, RATE_BUDGET).await;

    // Latency: changes to 20 synced customers, one every 200 ms (5/s, a fifth of the budget).
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            app.create_customer(&unique_email("bench")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    wait_all_synced(&app, Duration::from_secs(60)).await;
    let mut committed: HashMap<(String, i64), Instant> = HashMap::new();
    for i in 0..LATENCY_CHANGES {
        let id = &ids[i % ids.len()];
        let response = app
            .patch_customer(id, &json!({"name": format!("change {i}")}), None)
            .await;
        let at = Instant::now();
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value = response.json().await.unwrap();
        let stripe_id = body["sync"]["stripe_id"].as_str().unwrap().to_owned();
        committed.insert((stripe_id, body["version"].as_i64().unwrap()), at);
        tokio::time::sleep(LATENCY_PACE).await;
    }
    wait_all_synced(&app, Duration::from_secs(60)).await;
    let updates: Vec<Recorded> = proxy
        .recorded()
        .await
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/v1/customers/cus_"))
        .collect();
    let (mut to_issue, mut to_applied) = (Vec::new(), Vec::new());
    for update in &updates {
        let stripe_id = update.path.trim_start_matches("/v1/customers/").to_owned();
        if let Some(at) = version_of(&update.body).and_then(|v| committed.get(&(stripe_id, v))) {
            to_issue.push(update.arrived.saturating_duration_since(*at));
            to_applied.push(update.answered.saturating_duration_since(*at));
        }
    }
    to_issue.sort();
    to_applied.sort();

    // Throughput: many customers at once, so the budget is the bottleneck, at each Stripe
    // latency.
    let shares = shares_of_budget(&app, &proxy, RATE_BUDGET, &STRIPE_LATENCIES).await;

    assert_valid(&app).await;

    println!(
        "| {transport} | {} | {} | {} | {} | {} | {} |",
        to_issue.len(),
        ms(percentile(&to_issue, 0.5)),
        ms(percentile(&to_issue, 0.99)),
        ms(percentile(&to_applied, 0.5)),
        ms(percentile(&to_applied, 0.99)),
        shares.join(" | "),
    );
    app.stop().await;
}

/// Which rows a run measures.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// Latency, and throughput at every Stripe latency, at the test-mode budget.
    Test,
    /// Throughput at real Stripe latencies at the live-mode budget.
    Live,
}

async fn run_with(pool: PgPool, transport: &str, kafka: Option<&KafkaTarget>, budget: Budget) {
    match budget {
        Budget::Test => run(pool, transport, kafka).await,
        Budget::Live => run_live(pool, transport, kafka).await,
    }
}

pub async fn outbound_postgres_transport(pool: PgPool, budget: Budget) {
    run_with(pool, "PostgreSQL", None, budget).await;
}

pub async fn outbound_kafka_mock_cluster(pool: PgPool, budget: Budget) {
    let kafka = MockKafka::start().await;
    let target = KafkaTarget {
        brokers: kafka.bootstrap.clone(),
        topic_prefix: "paysync".to_owned(),
        options: std::env::var("BENCH_KAFKA_OPTIONS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let transport = "Kafka (librdkafka mock cluster)";
    run_with(pool, transport, Some(&target), budget).await;
}

pub async fn outbound_kafka_tansu(pool: PgPool, budget: Budget) {
    let target = KafkaTarget {
        brokers: "127.0.0.1:19092".to_owned(),
        topic_prefix: format!("paysync-bench-{}", uuid::Uuid::now_v7().simple()),
        options: Vec::new(),
    };
    run_with(pool, "Kafka (tansu)", Some(&target), budget).await;
}
