//! Policies for tests: two accounts on the two localstripe instances, policy files as a user
//! writes them (watched by the app), and deliveries signed for one policy's route.

use std::path::PathBuf;
use std::time::Duration;

use paysync::app::{PolicySource, Settings};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::app::{
    TestApp, inbound_settings, kafka_settings, policy, settings, wait_for, worker_settings,
};
use super::events::{DEADLINE, customer_object, event};
use super::mock_kafka::MockKafka;
use super::stripe::{LOCALSTRIPE, LOCALSTRIPE_B};
use super::webhooks::{now, signature};
use paysync::transport::kafka::relay::RelaySettings;

pub const ALPHA_SECRET: &str = "whsec_alpha_account";
pub const BETA_SECRET: &str = "whsec_beta_account";

/// Every worker on: outbound, inbound, and with `kafka`, the relay and consumers over it.
pub fn all_workers(mut settings: Settings, kafka: Option<&MockKafka>) -> Settings {
    settings.outbound = Some(worker_settings());
    settings.inbound = Some(inbound_settings());
    if let Some(kafka) = kafka {
        settings.kafka = Some(kafka_settings(&kafka.bootstrap));
        settings.relay = Some(RelaySettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
        });
    }
    settings
}

/// Two accounts: `alpha` on the first localstripe, `beta` on the second, each with its own
/// webhook secret; no `default` policy.
pub fn two_accounts(kafka: Option<&MockKafka>) -> Settings {
    let policies = vec![
        policy("alpha", Some(LOCALSTRIPE), &[ALPHA_SECRET], json!({})),
        policy("beta", Some(LOCALSTRIPE_B), &[BETA_SECRET], json!({})),
    ];
    all_workers(
        Settings {
            policies: PolicySource::Fixed(policies),
            ..settings()
        },
        kafka,
    )
}

/// One policy named `default` on the first localstripe with `spec`, every worker on (inbound
/// events are delivered by the test, signed with `ALPHA_SECRET`).
pub fn one_policy(spec: Value, kafka: Option<&MockKafka>) -> Settings {
    let policies = vec![policy("default", Some(LOCALSTRIPE), &[ALPHA_SECRET], spec)];
    all_workers(
        Settings {
            policies: PolicySource::Fixed(policies),
            ..settings()
        },
        kafka,
    )
}

/// One policy in a manifest file, as a user writes it: the `SyncPolicy` and its `Secret`.
pub struct PolicyManifest<'a> {
    pub name: &'a str,
    pub api_base: &'a str,
    pub webhook_secret: &'a str,
    /// More of the spec (JSON, camelCase).
    pub spec: Value,
}

/// A policies file in its own directory, rewritten as a user edits it.
pub struct PolicyFile {
    dir: PathBuf,
}

impl PolicyFile {
    pub fn new(policies: &[PolicyManifest<'_>]) -> Self {
        let dir = std::env::temp_dir().join(format!("paysync-policies-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = Self { dir };
        file.write(policies);
        file
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("policies.yaml")
    }

    /// The folder the file is in (other files can be written beside it).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Replaces the file (JSON documents are YAML documents).
    pub fn write(&self, policies: &[PolicyManifest<'_>]) {
        let mut documents = Vec::new();
        for manifest in policies {
            let secret = format!("{}-stripe", manifest.name);
            let mut spec =
                json!({"stripeSecretRef": {"name": secret}, "apiBase": manifest.api_base});
            if let (Some(spec), Some(more)) = (spec.as_object_mut(), manifest.spec.as_object()) {
                spec.extend(more.clone());
            }
            documents.push(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
                "stringData": {"apiKey": "sk_test_paysync", "webhookSecrets": manifest.webhook_secret},
            }));
            documents.push(json!({
                "apiVersion": "paysync.dev/v1alpha1", "kind": "SyncPolicy",
                "metadata": {"name": manifest.name}, "spec": spec,
            }));
        }
        let text: Vec<String> = documents.iter().map(Value::to_string).collect();
        self.write_text(&text.join("\n---\n"));
    }

    /// Replaces the file with `text` in one rename, as editors save.
    pub fn write_text(&self, text: &str) {
        let staging = self.dir.join(".policies.yaml.tmp");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, self.path()).unwrap();
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The app with the policies of `file` (watched) and every worker on (over `kafka`, if any).
pub async fn spawn_with_file(
    pool: PgPool,
    file: &PolicyFile,
    kafka: Option<&MockKafka>,
) -> TestApp {
    let settings = all_workers(
        Settings {
            policies: PolicySource::File(file.path()),
            ..settings()
        },
        kafka,
    );
    TestApp::spawn_settings(pool, settings).await
}

/// Posts `body` to `route`, signed with `secret`.
pub async fn deliver_to(app: &TestApp, route: &str, secret: &str, body: &str) -> Response {
    app.client
        .post(app.url(route))
        .header("content-type", "application/json")
        .header("stripe-signature", signature(secret, now(), body))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Waits until a delivery signed with `secret` to alpha's route gets `status` (a policy
/// change or a rotated secret applies without a restart, so only eventually).
pub async fn wait_delivery(app: &TestApp, secret: &str, status: StatusCode) {
    let body = event(
        "evt_reload_probe",
        "customer.deleted",
        0,
        customer_object("cus_Reload", "r@example.com", "R"),
    );
    wait_for(&format!("{secret} to get {status}"), DEADLINE, || async {
        let got = deliver_to(app, "/webhooks/stripe/alpha", secret, &body)
            .await
            .status();
        if got == status {
            Ok(())
        } else {
            Err(got.to_string())
        }
    })
    .await;
}

/// The value of one metric sample (0 when absent).
pub async fn metric(app: &TestApp, sample: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_default()
}

/// Asserts that the metric sample stays at `expected` for all of `window` (what must not
/// happen can only be watched for a while).
pub async fn assert_metric_stays(app: &TestApp, sample: &str, expected: f64, window: Duration) {
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        let value = metric(app, sample).await;
        assert_eq!(value, expected, "{sample} moved within {window:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the metric sample has reached `at_least`.
pub async fn wait_metric(app: &TestApp, sample: &str, at_least: f64) {
    wait_for(sample, Duration::from_secs(30), || async {
        let value = metric(app, sample).await;
        if value >= at_least {
            Ok(())
        } else {
            Err(format!("{value}"))
        }
    })
    .await;
}

/// A customer of `account` linked to `stripe_id`, in sync with it (as after a sync).
pub async fn insert_linked_in(
    pool: &PgPool,
    account: &str,
    email: &str,
    stripe_id: &str,
) -> String {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into customers (id, account, email, name, stripe_id, stripe_synced_version, \
         sync_state) values ($1, $2, $3, 'Synced', $4, 1, 'synced')",
    )
    .bind(id)
    .bind(account)
    .bind(email)
    .bind(stripe_id)
    .execute(pool)
    .await
    .unwrap();
    id.to_string()
}

/// A customer's sync state as stored (also for deleted rows).
pub async fn stored_state(pool: &PgPool, id: &str) -> (String, Option<String>, bool) {
    sqlx::query_as(
        "select sync_state, stripe_id, deleted_at is not null from customers where id = $1::uuid",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Creates a customer of `account` through the API; returns its body.
pub async fn create_in(app: &TestApp, account: &str, email: &str) -> Value {
    let response = app
        .post_customer(&json!({"email": email, "account": account}))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "creating in {account}"
    );
    response.json().await.unwrap()
}
