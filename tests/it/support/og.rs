//! The peer, supabase/stripe-sync-engine ("og"), as `../shared/peer-og/setup` installs it: its
//! database and its webhook server, for the compatibility tests and the benchmark.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

use super::app::wait_for;
use super::webhooks::{now, signature};

/// The peer's database and webhook secret, as `../shared/peer-og/setup` makes them.
pub const OG_DATABASE: &str = "postgres://ogbench:ogbench@127.0.0.1:5432/ogbench";
pub const OG_SECRET: &str = "whsec_ogbench_test_secret_0123456789abcdef";
/// Every table the mirror shares with og.
pub const OG_TABLES: [&str; 13] = [
    "customers",
    "products",
    "prices",
    "plans",
    "coupons",
    "subscriptions",
    "subscription_items",
    "invoices",
    "charges",
    "payment_intents",
    "payment_methods",
    "refunds",
    "tax_ids",
];

/// og's database: `PAYSYNC_PEER_OG_DATABASE`, else where the setup puts it.
fn og_database_url() -> String {
    std::env::var("PAYSYNC_PEER_OG_DATABASE").unwrap_or_else(|_| OG_DATABASE.into())
}

pub async fn og_connection() -> PgConnection {
    let url = og_database_url();
    PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("the peer's database ({url}) is not there: run ../shared/peer-og/setup ({e})")
    })
}

/// The peer's webhook server on a port of its own, stopped (by its PID) when dropped.
pub struct Og {
    pub url: String,
    child: Child,
}

impl Og {
    pub async fn start(pool_max: u32) -> Self {
        let dir = std::env::var_os("PAYSYNC_PEER_OG_DIR").map_or_else(
            || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/peer-og"),
            PathBuf::from,
        );
        let port = free_port();
        let child = Command::new("node")
            .arg(dir.join("server.cjs"))
            // Never the tests' own DATABASE_URL: og's tables are in its database.
            .env("DATABASE_URL", og_database_url())
            .env("PORT", port.to_string())
            .env("POOL_MAX", pool_max.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node and the peer (../shared/peer-og/setup) are installed");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for("the peer to listen", Duration::from_secs(60), || async {
            client
                .get(format!("{url}/health"))
                .send()
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        Self { url, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the peer runs")
    }

    /// Delivers `body` signed as Stripe would; returns the HTTP status.
    pub async fn deliver(&self, client: &reqwest::Client, body: &str) -> u16 {
        client
            .post(format!("{}/webhooks", self.url))
            .header("content-type", "application/json")
            .header("stripe-signature", signature(OG_SECRET, now(), body))
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Empties og's tables (the differential test is their only user among the tests).
pub async fn truncate_og(og: &mut PgConnection) {
    let list = OG_TABLES.map(|t| format!("stripe.{t}")).join(", ");
    sqlx::query(sqlx::AssertSqlSafe(format!("truncate {list} cascade")))
        .execute(og)
        .await
        .unwrap();
}
