//! The chaos run: two replicas of the real binary on one database, SIGKILLed in turn, while a
//! fault proxy in front of Stripe answers some calls 500 (half of them after Stripe applied
//! the call), some 429 with `Retry-After`, and holds some for seconds before forwarding them
//! (delivered even after their sender died); once, every database session is cut (as a
//! PostgreSQL restart does). A two-way workload runs throughout: REST creates, updates and
//! deletes of customers made locally; updates, creates and deletes made directly in Stripe
//! of others (each customer changes on one side only, so the end state is known exactly).
//! Webhooks reach the replicas through a relay that retries, as Stripe does.
//!
//! Then the faults stop and the queues drain, and, before any reconcile: no local customer
//! has two Stripe customers, no acknowledged write is lost, both sides are equal; then a
//! reconcile finds no drift. `scripts/test` runs a bounded form (a minute, PostgreSQL
//! transport); `scripts/chaos --minutes N [--kafka]` runs longer ones
//! (`PAYSYNC_CHAOS_MINUTES`, `PAYSYNC_CHAOS_KAFKA`) and prints the counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::wait_for;
use crate::support::fault_proxy::{Chaos, FaultProxy};
use crate::support::mock_kafka::MockKafka;
use crate::support::private_stripe::PrivateStripe;
use crate::support::serve_process::{ServeProcess, TOKEN, database_url};
use crate::support::stripe::Localstripe;
use crate::support::webhook_relay::WebhookRelay;
use crate::support::webhooks::SECRET;

/// How a run goes: the bounded form by default, longer ones from the environment.
#[derive(Debug, Clone)]
struct Plan {
    duration: Duration,
    kafka: bool,
    /// Customers created through REST, and directly in Stripe, before the chaos starts.
    local_customers: usize,
    stripe_customers: usize,
    /// Operations per second, over all workers.
    ops_per_second: f64,
    /// A replica is killed (and restarted) every so often, drawn from this range.
    kill_every: (Duration, Duration),
    /// How long a held request waits before it is forwarded.
    hold: (Duration, Duration),
}

impl Plan {
    fn from_env() -> Self {
        let minutes: f64 = std::env::var("PAYSYNC_CHAOS_MINUTES")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(1.0);
        let kafka = std::env::var("PAYSYNC_CHAOS_KAFKA").is_ok_and(|v| v == "1" || v == "true");
        let long = minutes > 1.0;
        Self {
            duration: Duration::from_secs_f64(minutes * 60.0),
            kafka,
            local_customers: if long { 300 } else { 40 },
            stripe_customers: if long { 150 } else { 20 },
            ops_per_second: if long { 12.0 } else { 5.0 },
            kill_every: if long {
                (Duration::from_secs(15), Duration::from_secs(25))
            } else {
                (Duration::from_secs(8), Duration::from_secs(14))
            },
            hold: if long {
                (Duration::from_secs(5), Duration::from_secs(15))
            } else {
                (Duration::from_secs(3), Duration::from_secs(8))
            },
        }
    }

    /// About 8% 500s (half after Stripe applied the call), 4% 429s, and held requests: 1% in
    /// long runs, as in production-like chaos, 3% in the bounded one so that a minute sees
    /// several.
    fn faults(&self) -> Chaos {
        let long = self.duration > Duration::from_secs(60);
        Chaos {
            status: 0.04,
            status_after_forward: 0.04,
            rate_limited: 0.04,
            hold: if long { 0.01 } else { 0.03 },
            hold_range: self.hold,
        }
    }
}

/// What a customer must end as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Live { name: String, n: String },
    Deleted,
}

/// The workload's record of every acknowledged write, by side.
#[derive(Debug, Default)]
struct Expected {
    /// Customers made and changed through REST, by local id.
    local: HashMap<String, Want>,
    /// Customers made and changed in Stripe, by Stripe id.
    stripe: HashMap<String, Want>,
    ops: u64,
}

/// The replicas' base URLs, as the workload and the relay find them.
type Live = Arc<RwLock<Vec<String>>>;

#[sqlx::test(migrations = false)]
async fn chaos_two_replicas_killed_under_stripe_faults_lose_and_double_nothing(pool: PgPool) {
    let plan = Plan::from_env();
    let stripe = PrivateStripe::start().await;
    let proxy = FaultProxy::start_to(&stripe.base).await;
    let relay = WebhookRelay::start().await;
    register_webhook(&stripe.base, &relay.url).await;
    let kafka = if plan.kafka {
        Some(MockKafka::start().await)
    } else {
        None
    };
    let env = replica_env(&pool, &proxy, kafka.as_ref(), &plan);
    let mut replicas = vec![
        ServeProcess::start(&env).await,
        ServeProcess::start(&env).await,
    ];
    let live: Live = Arc::new(RwLock::new(
        replicas.iter().map(|r| r.base_url.clone()).collect(),
    ));
    relay.set_targets(webhook_targets(&live));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let expected = Arc::new(Mutex::new(Expected::default()));
    let local = Localstripe::at(&stripe.base);
    seed(&http, &live, &local, &expected, &plan).await;

    proxy.set_chaos(Some(plan.faults())).await;
    let started = Instant::now();
    let workers = spawn_workload(&http, &live, &stripe.base, &expected, &plan, started);
    let waits = spawn_wait_monitor(&http, &live, started + plan.duration);
    let kills = kill_loop(&mut replicas, &live, &relay, &env, &pool, &plan, started).await;
    for worker in workers {
        worker.await.unwrap();
    }
    proxy.set_chaos(None).await;
    let longest_wait = waits.await.unwrap();
    let injected = proxy.injected();

    drain(&pool, &relay, &live, &http).await;
    let expected = std::mem::take(&mut *expected.lock().unwrap());
    let report = check(&pool, &local, &expected).await;
    let drift = reconcile(&http, &live).await;
    eprintln!(
        "chaos: transport={} minutes={:.1} ops={} kills={} stripe_calls={} faults: 500={} \
         500_after_apply={} 429={} held={} (landed {}) webhooks: delivered={} retried={} | \
         lost={} dup={} unequal={} dead_letters={} drift_after={} | longest wait seen in \
         /readyz: inbound {:.1} s, outbound {:.1} s",
        if plan.kafka { "kafka" } else { "postgres" },
        plan.duration.as_secs_f64() / 60.0,
        expected.ops,
        kills,
        proxy.requests(),
        injected.status,
        injected.status_after_forward,
        injected.rate_limited,
        injected.held,
        injected.held_landed,
        relay.delivered(),
        relay.retried(),
        report.lost,
        report.dup,
        report.unequal,
        report.dead_letters,
        drift,
        longest_wait.0,
        longest_wait.1,
    );
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(drift, 0, "the reconcile after the run found drift");
    for replica in replicas {
        replica.sigterm_and_wait().await;
    }
}

fn replica_env(
    pool: &PgPool,
    proxy: &FaultProxy,
    kafka: Option<&MockKafka>,
    plan: &Plan,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DATABASE_URL", database_url(pool)),
        ("STRIPE_API_KEY", "sk_test_paysync".to_owned()),
        ("STRIPE_API_BASE", proxy.base_url.clone()),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("STRIPE_TIMEOUT", "2s".to_owned()),
        // A held request lands within its hold: the fence outlasts it.
        ("STRIPE_CREATE_FENCE", format!("{}s", plan.hold.1.as_secs())),
        ("STRIPE_BACKOFF_BASE", "50ms".to_owned()),
        ("STRIPE_BACKOFF_MAX", "1s".to_owned()),
        ("STRIPE_MAX_ATTEMPTS", "30".to_owned()),
        ("STRIPE_RATE_LIMIT", "200".to_owned()),
        ("PAYSYNC_NO_CATCH_UP", "true".to_owned()),
        ("PAYSYNC_OUTBOX_POLL_INTERVAL", "1s".to_owned()),
    ];
    if let Some(kafka) = kafka {
        env.push(("KAFKA_BROKERS", kafka.bootstrap.clone()));
        env.push(("KAFKA_PARTITIONS", "4".to_owned()));
        env.push((
            "KAFKA_OPTIONS",
            "reconnect.backoff.max.ms=500,topic.metadata.refresh.interval.ms=1000".to_owned(),
        ));
    }
    env
}

async fn register_webhook(stripe_base: &str, url: &str) {
    let response = reqwest::Client::new()
        .post(format!("{stripe_base}/_config/webhooks/chaos"))
        .form(&[("url", url), ("secret", SECRET)])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

fn webhook_targets(live: &Live) -> Vec<String> {
    live.read()
        .unwrap()
        .iter()
        .map(|base| format!("{base}/webhooks/stripe"))
        .collect()
}

/// A REST call to any live replica, sent again (to another, maybe) until a replica answers
/// something other than a 5xx: a replica killed mid-request leaves the caller no answer, as
/// an application sees it; the same request again (same body, same Idempotency-Key) is safe.
async fn rest(
    http: &reqwest::Client,
    live: &Live,
    method: Method,
    path: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0usize;
    loop {
        attempt += 1;
        let base = {
            let live = live.read().unwrap();
            live.get(attempt % live.len().max(1)).cloned()
        };
        if let Some(base) = base {
            let mut request = http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(TOKEN);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = idempotency_key {
                request = request.header("idempotency-key", key);
            }
            if let Ok(response) = request.send().await {
                let status = response.status();
                if !status.is_server_error() {
                    let body = response.json().await.unwrap_or(Value::Null);
                    return (status, body);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no replica answered {method} {path} for two minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a customer through REST; returns its id. Acknowledged writes only.
async fn create_local(http: &reqwest::Client, live: &Live, n: u64) -> String {
    let key = format!("chaos-create-{}", uuid::Uuid::now_v7().simple());
    let body = json!({
        "email": format!("local-{}@example.com", uuid::Uuid::now_v7().simple()),
        "name": format!("L-{n}"), "metadata": {"n": n.to_string()}
    });
    let (status, created) = rest(
        http,
        live,
        Method::POST,
        "/v1/customers",
        Some(&body),
        Some(&key),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// Creates a customer directly in Stripe (as the Dashboard would); returns its id.
async fn create_in_stripe(stripe: &Localstripe, n: u64) -> String {
    let email = format!("stripe-{}@example.com", uuid::Uuid::now_v7().simple());
    let (name, n) = (format!("S-{n}"), n.to_string());
    let created = stripe
        .create_customer(&[("email", &email), ("name", &name), ("metadata[n]", &n)])
        .await;
    created["id"].as_str().unwrap().to_owned()
}

/// The customers the chaos starts from, made before any fault.
async fn seed(
    http: &reqwest::Client,
    live: &Live,
    stripe: &Localstripe,
    expected: &Mutex<Expected>,
    plan: &Plan,
) {
    for n in 0..plan.local_customers as u64 {
        let id = create_local(http, live, n).await;
        let want = Want::Live {
            name: format!("L-{n}"),
            n: n.to_string(),
        };
        expected.lock().unwrap().local.insert(id, want);
    }
    for n in 0..plan.stripe_customers as u64 {
        let id = create_in_stripe(stripe, n).await;
        let want = Want::Live {
            name: format!("S-{n}"),
            n: n.to_string(),
        };
        expected.lock().unwrap().stripe.insert(id, want);
    }
}

/// Two workers write through REST (each its own half of the local customers, one write at a
/// time per customer), one writes in Stripe, until the plan's duration has passed.
fn spawn_workload(
    http: &reqwest::Client,
    live: &Live,
    stripe_base: &str,
    expected: &Arc<Mutex<Expected>>,
    plan: &Plan,
    started: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let per_worker = Duration::from_secs_f64(3.0 / plan.ops_per_second);
    (0..3)
        .map(|worker| {
            let (http, live, expected) = (http.clone(), live.clone(), expected.clone());
            let stripe = Localstripe::at(stripe_base);
            let until = started + plan.duration;
            tokio::spawn(async move {
                let mut k = 1_000_000 * (worker + 1);
                while Instant::now() < until {
                    k += 1;
                    if worker == 2 {
                        stripe_op(&stripe, &expected, k).await;
                    } else {
                        local_op(&http, &live, &expected, k, worker).await;
                    }
                    expected.lock().unwrap().ops += 1;
                    tokio::time::sleep(per_worker).await;
                }
            })
        })
        .collect()
}

/// A random live local customer of this worker's half, if any.
fn pick_local(expected: &Mutex<Expected>, worker: u64) -> Option<String> {
    let expected = expected.lock().unwrap();
    let mine: Vec<&String> = expected
        .local
        .iter()
        .filter(|(id, want)| {
            matches!(want, Want::Live { .. })
                && id.as_bytes().last().copied().unwrap_or(0) % 2 == worker as u8
        })
        .map(|(id, _)| id)
        .collect();
    (!mine.is_empty()).then(|| mine[rand::rng().random_range(0..mine.len())].clone())
}

async fn local_op(
    http: &reqwest::Client,
    live: &Live,
    expected: &Mutex<Expected>,
    k: u64,
    worker: u64,
) {
    let roll: f64 = rand::random();
    if roll < 0.05 {
        // Written from now on by the worker whose half its id falls in.
        let id = create_local(http, live, k).await;
        let want = Want::Live {
            name: format!("L-{k}"),
            n: k.to_string(),
        };
        expected.lock().unwrap().local.insert(id, want);
        return;
    }
    let Some(id) = pick_local(expected, worker) else {
        return;
    };
    let path = format!("/v1/customers/{id}");
    if roll < 0.10 {
        let (status, body) = rest(http, live, Method::DELETE, &path, None, None).await;
        assert!(
            status == StatusCode::NO_CONTENT || status == StatusCode::NOT_FOUND,
            "DELETE {status}: {body}"
        );
        expected.lock().unwrap().local.insert(id, Want::Deleted);
        return;
    }
    let body = json!({"name": format!("L-{k}"), "metadata": {"n": k.to_string()}});
    let (status, answer) = rest(http, live, Method::PATCH, &path, Some(&body), None).await;
    assert_eq!(status, StatusCode::OK, "PATCH: {answer}");
    let want = Want::Live {
        name: format!("L-{k}"),
        n: k.to_string(),
    };
    expected.lock().unwrap().local.insert(id, want);
}

/// A write made directly in Stripe: mostly updates, some creates and deletes (a customer
/// created and deleted within a second or two can reach paysync deleted first).
async fn stripe_op(stripe: &Localstripe, expected: &Mutex<Expected>, k: u64) {
    let roll: f64 = rand::random();
    if roll < 0.07 {
        let id = create_in_stripe(stripe, k).await;
        let want = Want::Live {
            name: format!("S-{k}"),
            n: k.to_string(),
        };
        expected.lock().unwrap().stripe.insert(id, want);
        return;
    }
    let target = {
        let expected = expected.lock().unwrap();
        let live: Vec<&String> = expected
            .stripe
            .iter()
            .filter(|(_, want)| matches!(want, Want::Live { .. }))
            .map(|(id, _)| id)
            .collect();
        (!live.is_empty()).then(|| live[rand::rng().random_range(0..live.len())].clone())
    };
    let Some(id) = target else {
        return;
    };
    if roll < 0.13 {
        stripe.delete_customer(&id).await;
        expected.lock().unwrap().stripe.insert(id, Want::Deleted);
        return;
    }
    let (name, n) = (format!("S-{k}"), k.to_string());
    stripe
        .update_customer(&id, &[("name", &name), ("metadata[n]", &n)])
        .await;
    let want = Want::Live { name, n };
    expected.lock().unwrap().stripe.insert(id, want);
}

/// Reads `/readyz` of a live replica every second until `until`; returns the longest inbound
/// and outbound waits it showed (how long a replica's death held events and changes up).
fn spawn_wait_monitor(
    http: &reqwest::Client,
    live: &Live,
    until: Instant,
) -> tokio::task::JoinHandle<(f64, f64)> {
    let (http, live) = (http.clone(), live.clone());
    tokio::spawn(async move {
        let mut longest = (0.0f64, 0.0f64);
        while Instant::now() < until {
            let base = live.read().unwrap().first().cloned();
            if let Some(base) = base
                && let Ok(response) = http.get(format!("{base}/readyz")).send().await
                && let Ok(ready) = response.json::<Value>().await
            {
                let queues = &ready["queues"];
                let wait = |key: &str| queues[key].as_f64().unwrap_or(0.0);
                longest.0 = longest.0.max(wait("inbound_oldest_pending_seconds"));
                longest.1 = longest.1.max(wait("outbound_oldest_pending_seconds"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        longest
    })
}

/// Kills a replica (alternately) and starts it again, until the plan's duration has passed;
/// once, half way, cuts every database session. Returns the number of kills.
async fn kill_loop(
    replicas: &mut [ServeProcess],
    live: &Live,
    relay: &WebhookRelay,
    env: &[(&'static str, String)],
    pool: &PgPool,
    plan: &Plan,
    started: Instant,
) -> u64 {
    let (mut kills, mut cut) = (0u64, false);
    loop {
        let (low, high) = plan.kill_every;
        let wait = low + (high - low).mul_f64(rand::random::<f64>());
        if started.elapsed() + wait >= plan.duration {
            tokio::time::sleep(plan.duration.saturating_sub(started.elapsed())).await;
            return kills;
        }
        tokio::time::sleep(wait).await;
        if !cut && started.elapsed() >= plan.duration / 2 {
            cut_database_sessions(pool).await;
            cut = true;
        }
        // The victim dies with whatever it was doing (requests, syncs, claims) in flight;
        // clients and the relay find out by failing, and go elsewhere.
        let victim = (kills % replicas.len() as u64) as usize;
        let restarted = ServeProcess::start(env).await;
        live.write().unwrap().push(restarted.base_url.clone());
        relay.set_targets(webhook_targets(live));
        let killed = std::mem::replace(&mut replicas[victim], restarted);
        let base = killed.base_url.clone();
        killed.sigkill().await;
        kills += 1;
        live.write().unwrap().retain(|b| *b != base);
        relay.set_targets(webhook_targets(live));
    }
}

/// What a PostgreSQL restart does to clients: every session of the database ends.
async fn cut_database_sessions(pool: &PgPool) {
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid()",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until nothing is left to do: every webhook accepted, every change synced, the inbox
/// and (on Kafka) the consumer groups empty, and so twice, three seconds apart (localstripe
/// sends its webhooks about a second after a change).
async fn drain(pool: &PgPool, relay: &WebhookRelay, live: &Live, http: &reqwest::Client) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut quiet_since: Option<Instant> = None;
    loop {
        match idle(pool, relay, live, http).await {
            Ok(()) => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(3) {
                    return;
                }
            }
            Err(busy) => {
                quiet_since = None;
                assert!(
                    Instant::now() < deadline,
                    "the queues did not drain in five minutes: {busy}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn idle(
    pool: &PgPool,
    relay: &WebhookRelay,
    live: &Live,
    http: &reqwest::Client,
) -> Result<(), String> {
    if relay.pending() > 0 {
        return Err(format!("{} webhooks not yet accepted", relay.pending()));
    }
    let (unsynced, inbox, outbox): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from customers where stripe_synced_version < version \
                   and sync_state = 'pending'), \
                (select count(*) from processed_events where processed_at is null), \
                (select count(*) from outbox where published_at is null)",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    if unsynced + inbox + outbox > 0 {
        return Err(format!(
            "unsynced {unsynced}, inbox {inbox}, outbox {outbox}"
        ));
    }
    let base = live.read().unwrap().first().cloned().ok_or("no replica")?;
    let ready: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let kafka = &ready["queues"]["kafka"];
    let lag = kafka["inbound"]["messages"].as_i64().unwrap_or(0)
        + kafka["outbound"]["messages"].as_i64().unwrap_or(0);
    if lag > 0 {
        return Err(format!("Kafka lag {lag}"));
    }
    Ok(())
}

/// What the end state broke.
#[derive(Debug, Default)]
struct Report {
    lost: u64,
    dup: u64,
    unequal: u64,
    dead_letters: i64,
    problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, count: impl FnOnce(&mut Self), what: String) {
        count(self);
        if self.problems.len() < 20 {
            self.problems.push(what);
        }
    }
}

/// A local row as the check reads it.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: uuid::Uuid,
    name: Option<String>,
    n: Option<String>,
    stripe_id: Option<String>,
    deleted: bool,
    synced: bool,
}

/// A Stripe customer's state as the workload writes it.
fn stripe_state(customer: &Value) -> Want {
    Want::Live {
        name: customer["name"].as_str().unwrap_or_default().to_owned(),
        n: customer["metadata"]["n"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

fn local_state(row: &Row) -> Want {
    if row.deleted {
        return Want::Deleted;
    }
    Want::Live {
        name: row.name.clone().unwrap_or_default(),
        n: row.n.clone().unwrap_or_default(),
    }
}

/// Both sides against the acknowledged writes, before any reconcile.
async fn check(pool: &PgPool, stripe: &Localstripe, expected: &Expected) -> Report {
    let mut report = Report::default();
    let rows: Vec<Row> = sqlx::query_as(
        "select id, name, metadata->>'n' as n, stripe_id, deleted_at is not null as deleted, \
         stripe_synced_version >= version and sync_state = 'synced' as synced from customers",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let in_stripe: HashMap<String, Value> = stripe
        .all_customers()
        .await
        .into_iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c))
        .collect();
    let mut by_paysync_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for customer in in_stripe.values() {
        if let Some(id) = customer["metadata"]["paysync_id"].as_str() {
            by_paysync_id
                .entry(id.to_owned())
                .or_default()
                .push(customer);
        }
    }
    let by_id: HashMap<String, &Row> = rows.iter().map(|r| (r.id.to_string(), r)).collect();
    let by_stripe: HashMap<&str, &Row> = rows
        .iter()
        .filter_map(|r| Some((r.stripe_id.as_deref()?, r)))
        .collect();
    for (id, want) in &expected.local {
        let made = by_paysync_id.get(id).map_or(0, Vec::len);
        if made > 1 {
            report.problem(|r| r.dup += 1, format!("{id}: {made} Stripe customers"));
        }
        let Some(row) = by_id.get(id) else {
            report.problem(|r| r.lost += 1, format!("{id}: no local row"));
            continue;
        };
        check_pair(
            &mut report,
            id,
            want,
            row,
            row.stripe_id.as_deref().and_then(|s| in_stripe.get(s)),
        );
    }
    for (stripe_id, want) in &expected.stripe {
        let row = by_stripe.get(stripe_id.as_str());
        match (want, row) {
            (Want::Deleted, None) => {}
            (_, None) => report.problem(|r| r.lost += 1, format!("{stripe_id}: never adopted")),
            (want, Some(row)) => {
                check_pair(&mut report, stripe_id, want, row, in_stripe.get(stripe_id))
            }
        }
    }
    // Every live Stripe customer belongs to exactly one local customer.
    for stripe_id in in_stripe.keys() {
        if !by_stripe.contains_key(stripe_id.as_str()) {
            report.problem(
                |r| r.dup += 1,
                format!("{stripe_id}: in Stripe, linked to nothing"),
            );
        }
    }
    report.dead_letters = sqlx::query_scalar(
        "select count(*) from dead_letters where replayed_at is null and closed_at is null",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if report.dead_letters > 0 {
        report
            .problems
            .push(format!("{} open dead letters", report.dead_letters));
    }
    report
}

/// One customer: the local row and the Stripe customer both at the acknowledged state.
fn check_pair(report: &mut Report, key: &str, want: &Want, row: &Row, stripe: Option<&Value>) {
    let local = local_state(row);
    let remote = stripe.map_or(Want::Deleted, stripe_state);
    if local != *want {
        report.problem(
            |r| r.lost += 1,
            format!("{key}: local {local:?}, acknowledged {want:?}"),
        );
    }
    if remote != local {
        report.problem(
            |r| r.unequal += 1,
            format!("{key}: local {local:?}, Stripe {remote:?}"),
        );
    }
    if !row.synced && !row.deleted {
        report.problem(|r| r.unequal += 1, format!("{key}: not synced"));
    }
}

/// Runs a reconcile through the API of a live replica; returns the drift it found.
async fn reconcile(http: &reqwest::Client, live: &Live) -> i64 {
    let (status, started) = rest(
        http,
        live,
        Method::POST,
        "/v1/policies/default/reconcile",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let report = wait_for(
        "the reconcile after the run",
        Duration::from_secs(180),
        || async {
            let (_, policy) =
                rest(http, live, Method::GET, "/v1/policies/default", None, None).await;
            let last = &policy["last_reconcile"];
            if last["id"] == id.as_str() && last["outcome"] != "running" {
                Ok(last.clone())
            } else {
                Err(last.to_string())
            }
        },
    )
    .await;
    assert_eq!(report["outcome"], "succeeded", "{report}");
    report["drift"].as_i64().unwrap()
}
