//! Reconcile benchmark: a full run of `paysync reconcile --once` (the real binary) over 10,000
//! and 100,000 customers, in sync on both sides (so it measures the scan and the diff, not
//! repairs).
//!
//! localstripe cannot hold that many customers (its list slows down quadratically) and does
//! not filter by `created`, so Stripe here is a fake of this benchmark's own: an HTTP server
//! that serves Stripe's list semantics (newest first, `limit`, `starting_after`, `created`
//! ranges, `has_more`) from memory, with a configurable latency per call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::get;
use serde_json::{Value, json};
use sqlx::PgPool;

/// `created` of the oldest fake customer; ten customers are created per second.
const BASE_CREATED: i64 = 1_600_000_000;
const PER_SECOND: usize = 10;

/// The fake account: customers as (created, id), oldest first.
struct Account {
    customers: Vec<(i64, String)>,
    latency: Duration,
}

fn fake_id(n: usize) -> String {
    format!("cus_{n:08}")
}

async fn list(
    State(account): State<Arc<Account>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    if !account.latency.is_zero() {
        tokio::time::sleep(account.latency).await;
    }
    let number = |key: &str| query.get(key).and_then(|v| v.parse::<i64>().ok());
    let limit = number("limit").unwrap_or(10).clamp(1, 100) as usize;
    let (gte, lt) = (number("created[gte]"), number("created[lt]"));
    // Newest first: from the end of the slice, below the cursor if there is one.
    let mut end = account.customers.len();
    if let Some(after) = query.get("starting_after") {
        let position = account.customers.iter().position(|(_, id)| id == after);
        end = position.unwrap_or(0);
    }
    if let Some(lt) = lt {
        end = end.min(
            account
                .customers
                .partition_point(|(created, _)| *created < lt),
        );
    }
    let start = gte.map_or(0, |gte| {
        account
            .customers
            .partition_point(|(created, _)| *created < gte)
    });
    let window = &account.customers[start.min(end)..end];
    let data: Vec<Value> = window
        .iter()
        .rev()
        .take(limit)
        .map(|(created, id)| {
            let n: usize = id.trim_start_matches("cus_").parse().unwrap_or(0);
            json!({"id": id, "object": "customer", "created": created,
                   "email": format!("b{n}@example.com"), "metadata": {}})
        })
        .collect();
    Json(json!({"object": "list", "data": data, "has_more": window.len() > limit}))
}

/// Serves the fake account on a free port; returns its base URL.
async fn serve_account(customers: usize, latency: Duration) -> String {
    let account = Arc::new(Account {
        customers: (0..customers)
            .map(|n| (BASE_CREATED + (n / PER_SECOND) as i64, fake_id(n)))
            .collect(),
        latency,
    });
    let router = axum::Router::new()
        .route("/v1/customers", get(list))
        .with_state(account);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Local customers linked to the fake ones, holding what Stripe holds (the content hash is
/// paysync's: SHA-256 of the JSON of email, name, phone, description and metadata).
async fn seed(pool: &PgPool, customers: usize) {
    sqlx::query(
        "insert into customers (id, email, stripe_id, stripe_synced_version, sync_state, \
         stripe_synced_hash, created_at) \
         select gen_random_uuid(), 'b' || n || '@example.com', 'cus_' || lpad(n::text, 8, '0'), \
         1, 'synced', sha256(convert_to('[\"b' || n || '@example.com\",null,null,null,{}]', \
         'UTF8')), now() - interval '1 day' from generate_series(0, $1 - 1) n",
    )
    .bind(customers as i64)
    .execute(pool)
    .await
    .unwrap();
}

/// The peak resident memory of a running process so far (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One full run: (seconds, peak RSS in MiB, the run's summary).
async fn run(pool: &PgPool, stripe_base: &str, rate: u32) -> (f64, f64, Value) {
    let url = crate::support::serve_process::database_url(pool);
    let mut child = crate::support::serve_process::paysync()
        .args(["reconcile", "--once", "--output", "json"])
        .env("DATABASE_URL", url)
        .env("STRIPE_API_KEY", "sk_test_bench")
        .env("STRIPE_API_BASE", stripe_base)
        .env("STRIPE_RATE_LIMIT", rate.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    let stdout = child.stdout.take().unwrap();
    let reading = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut text = String::new();
        let mut stdout = stdout;
        stdout.read_to_string(&mut text).await.unwrap();
        text
    });
    loop {
        if let Some(rss) = peak_rss_mib(pid) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "paysync reconcile failed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let text = reading.await.unwrap();
    let summary: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["type"] == "summary")
        .expect("a summary line");
    (seconds, peak, summary)
}

/// Seconds from the run's `started_at` to its `finished_at`.
fn run_duration(summary: &Value) -> Option<f64> {
    let at = |key: &str| {
        summary[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let (started, finished) = (at("started_at")?, at("finished_at")?);
    Some((finished - started).num_microseconds()? as f64 / 1e6)
}

/// Rows of the reconcile table: at 300 ms per list call and 25 requests/s for the reconciler
/// (50% of 50/s), and with no latency and no limit.
pub async fn reconcile_run(pool: PgPool, customers: usize) {
    seed(&pool, customers).await;
    for (label, latency, rate) in [
        (
            "300 ms per call, 25 req/s budget",
            Duration::from_millis(300),
            50,
        ),
        ("no latency, no limit", Duration::ZERO, 10_000),
    ] {
        let base = serve_account(customers, latency).await;
        let (seconds, peak, summary) = run(&pool, &base, rate).await;
        assert_eq!(summary["outcome"], "succeeded", "{summary}");
        assert_eq!(
            summary["drift"], 0,
            "the benchmark's accounts must be in sync: {summary}"
        );
        assert_eq!(summary["scanned"], customers as i64, "{summary}");
        // The run's own time (from its start to its end, as recorded), without the process
        // start-up and the Stripe key check around it.
        let run_seconds = run_duration(&summary).unwrap_or(seconds);
        let per_second = customers as f64 / run_seconds;
        let ceiling = if latency.is_zero() {
            "-".to_owned()
        } else {
            format!("{:.0}% of 2,500/s", per_second / 2_500.0 * 100.0)
        };
        println!(
            "| {customers} | {label} | {run_seconds:.1} s ({seconds:.1} s with start-up) | {per_second:.0} customers/s | {ceiling} | {} pages | {peak:.0} MiB |",
            summary["pages"]
        );
    }
}
