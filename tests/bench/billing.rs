//! The billing mirror beside the peer (`scripts/bench billing`): one load client sends the same
//! mixed stream of signed events (subscriptions, invoices, payment intents, charges, prices;
//! every event a new state of its object, `created` strictly increasing) to og
//! (supabase/stripe-sync-engine behind its webhook route, `../shared/peer-og`, its default pool
//! of 10) and to `paysync serve` with every worker on, on the same PostgreSQL, one after the
//! other. The clock runs from the first request until the last event is applied (og applies
//! before its 2xx; paysync's dedup records say when). A valid run answers every delivery 2xx
//! and ends with every object at its last event in both databases. Reported: applied
//! events/s, 2xx latency, CPU per event of the server and of PostgreSQL, the server's peak
//! memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use crate::end_to_end::{Delivered, deliver_to_route};
use crate::inbound::{SECRET, cpu_time, ms, percentile, postgres_cpu_time};
use crate::support::app::wait_for;
use crate::support::billing::{event, object};
use crate::support::og::{OG_SECRET, Og, og_connection, truncate_og};
use crate::support::serve_process::{ServeProcess, database_url};
use crate::support::webhooks::now;

/// The kinds of the stream, with the event types each object goes through in turn.
const KINDS: [(&str, &[&str]); 5] = [
    (
        "subscriptions",
        &[
            "customer.subscription.created",
            "customer.subscription.updated",
        ],
    ),
    (
        "invoices",
        &["invoice.created", "invoice.finalized", "invoice.paid"],
    ),
    (
        "payment_intents",
        &["payment_intent.created", "payment_intent.succeeded"],
    ),
    (
        "charges",
        &["charge.pending", "charge.succeeded", "charge.updated"],
    ),
    ("prices", &["price.created", "price.updated"]),
];
const EVENTS: usize = 20_000;
const CUSTOMERS: usize = 2_000;

/// Event `i` is about customer `i % CUSTOMERS`'s object of kind `(i / CUSTOMERS) % 5`, in its
/// next state; returns the bodies and, per table, each object's id and last event time.
fn stream(run: &str) -> (Vec<String>, HashMap<&'static str, HashMap<String, i64>>) {
    let base = now() - EVENTS as i64 - 60;
    let mut last: HashMap<&'static str, HashMap<String, i64>> = HashMap::new();
    let mut states: HashMap<String, usize> = HashMap::new();
    let bodies = (0..EVENTS)
        .map(|i| {
            let customer = i % CUSTOMERS;
            let (table, types) = KINDS[(i / CUSTOMERS) % KINDS.len()];
            let id = format!("{table}_{run}_{customer}");
            let state = states.entry(id.clone()).or_default();
            let event_type = types[*state % types.len()];
            *state += 1;
            let at = base + i as i64;
            let body = object(table, &id, *state as i64, &format!("cus_{run}_{customer}"));
            last.entry(table).or_default().insert(id, at);
            event(&format!("evt_{run}_{i}"), event_type, at, &body)
        })
        .collect();
    (bodies, last)
}

/// Objects whose row holds their last event (its time in `last_synced_at`).
async fn at_last_event(
    conn: &mut PgConnection,
    last: &HashMap<&'static str, HashMap<String, i64>>,
) -> usize {
    let mut matching = 0;
    for (table, objects) in last {
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select id, extract(epoch from last_synced_at)::bigint from stripe.\"{table}\""
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        matching += rows
            .iter()
            .filter(|(id, at)| objects.get(id) == Some(at))
            .count();
    }
    matching
}

/// The peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Row<'a> {
    who: &'a str,
    connections: usize,
    applied_in: Duration,
    delivered: Delivered,
    server_cpu: Duration,
    postgres_cpu: Duration,
    peak_mib: f64,
}

fn print(row: &Row<'_>) {
    let events = EVENTS as f64;
    println!(
        "| {} | {} | {EVENTS} / {CUSTOMERS} | **{:.0}** | {} | {} | {:.0} µs + {:.0} µs | {:.0} MiB |",
        row.who,
        row.connections,
        events / row.applied_in.as_secs_f64(),
        ms(percentile(&row.delivered.latencies, 0.5)),
        ms(percentile(&row.delivered.latencies, 0.99)),
        row.server_cpu.as_secs_f64() * 1e6 / events,
        row.postgres_cpu.as_secs_f64() * 1e6 / events,
        row.peak_mib,
    );
}

/// og takes the stream; every object checked at its last event.
pub async fn og(connections: usize) {
    let mut db = og_connection().await;
    truncate_og(&mut db).await;
    let peer = Og::start(10).await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let (bodies, last) = stream(&run);
    let target: SocketAddr = peer.url.trim_start_matches("http://").parse().unwrap();
    let (server_before, postgres_before) = (cpu_time(peer.pid()), postgres_cpu_time());
    let started = Instant::now();
    let delivered = deliver_to_route(
        target,
        ("/webhooks", OG_SECRET),
        Arc::new(bodies),
        connections,
    )
    .await;
    let applied_in = started.elapsed();
    let row = Row {
        who: "og 0.48.5",
        connections,
        applied_in,
        server_cpu: cpu_time(peer.pid()) - server_before,
        postgres_cpu: postgres_cpu_time().saturating_sub(postgres_before),
        peak_mib: peak_rss_mib(peer.pid()),
        delivered,
    };
    assert_eq!(row.delivered.failures, 0, "og answered every delivery 2xx");
    let objects: usize = last.values().map(HashMap::len).sum();
    assert_eq!(
        at_last_event(&mut db, &last).await,
        objects,
        "og: every object at its last event"
    );
    print(&row);
}

/// paysync takes the stream (`on_arrival`: applied by the ingress); every object checked.
pub async fn paysync(pool: PgPool, connections: usize, on_arrival: bool) {
    let env = vec![
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("RUST_LOG", "warn,paysync::app=info".to_owned()),
        ("PAYSYNC_DATABASE_MAX_CONNECTIONS", "16".to_owned()),
        ("PAYSYNC_APPLY_ON_ARRIVAL", on_arrival.to_string()),
    ];
    let server = ServeProcess::start(&env).await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let (bodies, last) = stream(&run);
    let (server_before, postgres_before) = (cpu_time(server.pid()), postgres_cpu_time());
    let started = Instant::now();
    let path = ("/webhooks/stripe", SECRET);
    let delivered = deliver_to_route(server.address(), path, Arc::new(bodies), connections).await;
    // Polled cheaply (the inbox's partial index, then the last event by key), so the wait
    // costs PostgreSQL little; then counted once.
    let last_event = format!("evt_{run}_{}", EVENTS - 1);
    wait_for("every event applied", Duration::from_secs(600), || async {
        let (waiting, last_done): (bool, bool) = sqlx::query_as(
            "select exists (select 1 from processed_events where processed_at is null), \
                    exists (select 1 from processed_events where event_id = $1 \
                            and processed_at is not null)",
        )
        .bind(&last_event)
        .fetch_one(&pool)
        .await
        .unwrap();
        if !waiting && last_done {
            Ok(())
        } else {
            Err("still applying".to_owned())
        }
    })
    .await;
    let applied_in = started.elapsed();
    let done: i64 =
        sqlx::query_scalar("select count(*) from processed_events where processed_at is not null")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(done, EVENTS as i64, "every event processed");
    let row = Row {
        who: if on_arrival {
            "paysync, on arrival"
        } else {
            "paysync, queued"
        },
        connections,
        applied_in,
        server_cpu: cpu_time(server.pid()) - server_before,
        postgres_cpu: postgres_cpu_time().saturating_sub(postgres_before),
        peak_mib: peak_rss_mib(server.pid()),
        delivered,
    };
    assert_eq!(
        row.delivered.failures, 0,
        "paysync answered every delivery 2xx"
    );
    let objects: usize = last.values().map(HashMap::len).sum();
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        at_last_event(&mut conn, &last).await,
        objects,
        "paysync: every object at its last event"
    );
    print(&row);
    server.sigterm_and_wait().await;
}
