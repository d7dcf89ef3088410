//! The test harness: spawn paysync on a free port over a test database, and typed helpers
//! for the requests tests make.

use std::future::Future;
use std::time::{Duration, Instant};

use paysync::app::{Application, PolicySource, Settings, StripeCalls};
use paysync::backoff::Backoff;
use paysync::domain::MirrorSchema;
use paysync::http::{ApiAuth, ServerLimits};
use paysync::policy::{Credentials, PolicyDefinition};
use paysync::stripe::webhook::DEFAULT_TOLERANCE;
use paysync::transport::kafka::KafkaSettings;
use paysync::transport::kafka::relay::RelaySettings;
use paysync::transport::pg::InboxSettings;
use paysync::transport::pg::WorkerSettings;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgPool};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-primary";
/// A second accepted token, as during a rotation.
pub const ROTATED_TOKEN: &str = "test-token-rotated";

pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// The API alone: changes stay queued in the outbox.
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_settings(pool, settings()).await
    }

    /// The API and the outbound worker, syncing to the Stripe at `stripe_base`.
    pub async fn spawn_syncing(pool: PgPool, stripe_base: &str) -> Self {
        Self::spawn_settings(pool, syncing_settings(stripe_base)).await
    }

    /// The API, the relay and the outbound consumer over Kafka at `brokers`.
    pub async fn spawn_kafka(pool: PgPool, stripe_base: &str, brokers: &str) -> Self {
        let mut settings = syncing_settings(stripe_base);
        settings.kafka = Some(kafka_settings(brokers));
        settings.relay = Some(RelaySettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
        });
        Self::spawn_settings(pool, settings).await
    }

    pub async fn spawn_settings(pool: PgPool, settings: Settings) -> Self {
        // Logs of the app under test, shown for failing tests (`RUST_LOG` to filter).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .with_test_writer()
            .try_init();
        // `#[sqlx::test]` applies paysync's migrations; the mirror's schema is paysync's too.
        paysync::store::mirror::migrate(&pool, &settings.mirror_schema)
            .await
            .unwrap();
        let app = Application::build(settings, pool.clone()).await.unwrap();
        let base_url = format!("http://{}", app.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(app.run(shutdown.clone()));
        Self {
            base_url,
            client: reqwest::Client::new(),
            pool,
            shutdown,
            running: Some(running),
        }
    }

    /// Shuts this replica down as SIGTERM would while others keep using the database (so
    /// their sessions stay): waits for its tasks, not for the database to be idle.
    pub async fn stop_replica(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }

    /// Shuts the app down as SIGTERM would and waits until it has (Kafka tests call this
    /// before their broker goes away, so the consumer can leave its group cleanly).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
        // Connections outside the pool (the LISTEN connection) close asynchronously; the test
        // database can only be dropped once they are gone.
        let options = self.pool.connect_options().as_ref().clone();
        wait_for(
            "the app's database sessions to close",
            Duration::from_secs(15),
            || {
                let options = options.clone();
                async move {
                    let mut conn = sqlx::PgConnection::connect_with(&options)
                        .await
                        .map_err(|e| e.to_string())?;
                    let others: i64 = sqlx::query_scalar(
                        "select count(*) from pg_stat_activity \
                     where datname = current_database() and pid <> pg_backend_pid()",
                    )
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                    conn.close().await.map_err(|e| e.to_string())?;
                    if others == 0 {
                        Ok(())
                    } else {
                        Err(format!("{others} sessions"))
                    }
                }
            },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A request with the API token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        response.text().await.unwrap()
    }

    /// GET with the API token, parsed as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.request(Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn post_customer(&self, body: &Value) -> Response {
        self.request(Method::POST, "/v1/customers")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a customer and returns its body.
    pub async fn create_customer(&self, email: &str) -> Value {
        let response = self.post_customer(&json!({ "email": email })).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn get_customer(&self, id: &str) -> Response {
        self.request(Method::GET, &format!("/v1/customers/{id}"))
            .send()
            .await
            .unwrap()
    }

    pub async fn patch_customer(&self, id: &str, body: &Value, if_match: Option<&str>) -> Response {
        let mut request = self
            .request(Method::PATCH, &format!("/v1/customers/{id}"))
            .json(body);
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        request.send().await.unwrap()
    }

    pub async fn delete_customer(&self, id: &str) -> Response {
        self.request(Method::DELETE, &format!("/v1/customers/{id}"))
            .send()
            .await
            .unwrap()
    }

    /// The outbox rows of one customer, oldest first, as `(op, version)`.
    pub async fn outbox_of(&self, id: &str) -> Vec<(String, i64)> {
        sqlx::query_as("select op, version from outbox where customer_id = $1::uuid order by id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Rows in one of the fixed tables the tests name.
    pub async fn count(&self, table: &'static str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// The API alone: the `default` policy without a Stripe key or webhook secrets, no workers.
pub fn settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        auth: ApiAuth::tokens(&[TOKEN.into(), ROTATED_TOKEN.into()]),
        http: ServerLimits::default(),
        shutdown_timeout: Duration::from_secs(5),
        policies: PolicySource::Fixed(vec![policy("default", None, &[], json!({}))]),
        stripe_calls: stripe_calls(),
        webhook_tolerance: DEFAULT_TOLERANCE,
        outbound: None,
        inbound: None,
        apply_on_arrival: false,
        catch_up: None,
        reconcile: false,
        mirror_schema: MirrorSchema::default(),
        kafka: None,
        relay: None,
    }
}

/// The API and the outbound worker syncing to the Stripe at `stripe_base`.
pub fn syncing_settings(stripe_base: &str) -> Settings {
    Settings {
        policies: PolicySource::Fixed(vec![policy("default", Some(stripe_base), &[], json!({}))]),
        outbound: Some(worker_settings()),
        ..settings()
    }
}

/// A policy as a source would give it: `spec` (SyncPolicy spec JSON, camelCase) over test
/// defaults (a generous rate); with `stripe_base`, an API key for it; `webhook_secrets` sign
/// its deliveries.
pub fn policy(
    name: &str,
    stripe_base: Option<&str>,
    webhook_secrets: &[&str],
    spec: Value,
) -> PolicyDefinition {
    let mut merged = json!({
        "stripeSecretRef": {"name": name},
        "apiBase": stripe_base.unwrap_or("https://api.stripe.com"),
        "rateLimit": {"requestsPerSecond": 200, "burst": 50},
    });
    if let (Some(merged), Some(spec)) = (merged.as_object_mut(), spec.as_object()) {
        merged.extend(spec.clone());
    }
    PolicyDefinition {
        name: name.to_owned(),
        spec: serde_json::from_value(merged).expect("a valid test policy spec"),
        credentials: Ok(Credentials {
            api_key: stripe_base.map(|_| "sk_test_paysync".into()),
            webhook_secrets: webhook_secrets.iter().map(|s| (*s).into()).collect(),
        }),
    }
}

/// Gives every fixed policy of `settings` the test webhook secrets (the current and the
/// previous one, as during a rotation).
pub fn with_webhooks(mut settings: Settings) -> Settings {
    if let PolicySource::Fixed(policies) = &mut settings.policies {
        for policy in policies {
            if let Ok(credentials) = &mut policy.credentials {
                credentials.webhook_secrets = vec![
                    super::webhooks::SECRET.into(),
                    super::webhooks::ROTATED_SECRET.into(),
                ];
            }
        }
    }
    settings
}

/// Changes the spec of every fixed policy of `settings` (`spec`: SyncPolicy spec JSON).
pub fn with_spec(mut settings: Settings, spec: Value) -> Settings {
    if let PolicySource::Fixed(policies) = &mut settings.policies {
        for policy in policies {
            let mut current = serde_json::to_value(&policy.spec).unwrap();
            if let (Some(current), Some(spec)) = (current.as_object_mut(), spec.as_object()) {
                current.extend(spec.clone());
            }
            policy.spec = serde_json::from_value(current).expect("a valid test policy spec");
        }
    }
    settings
}

/// The inbound worker with test-friendly batches and polls.
pub fn inbound_settings() -> InboxSettings {
    InboxSettings {
        batch_size: 100,
        concurrency: 2,
        poll_interval: Duration::from_millis(500),
    }
}

/// Kafka settings for tests: quick reconnects, so recovery after a broker outage is prompt.
pub fn kafka_settings(brokers: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_owned(),
        topic_prefix: "paysync".to_owned(),
        partitions: 4,
        replication_factor: 1,
        options: vec![
            ("reconnect.backoff.max.ms".to_owned(), "500".to_owned()),
            (
                "topic.metadata.refresh.interval.ms".to_owned(),
                "1000".to_owned(),
            ),
        ],
        sasl_password: None,
    }
}

/// Stripe calls for tests: short backoffs and a 2 s request timeout, so fault tests retry
/// quickly.
pub fn stripe_calls() -> StripeCalls {
    StripeCalls {
        timeout: Duration::from_secs(2),
        create_fence: Duration::from_secs(3),
        max_attempts: 10,
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(500),
        },
    }
}

pub fn worker_settings() -> WorkerSettings {
    WorkerSettings {
        batch_size: 100,
        concurrency: 4,
        poll_interval: Duration::from_millis(500),
    }
}

/// The JSON error code of a response, after checking its status.
pub async fn error_code(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status, "unexpected status");
    let body: Value = response.json().await.unwrap();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"));
    assert!(
        body["error"]["message"].is_string(),
        "no error message in {body}"
    );
    code.to_owned()
}

/// Polls `check` until it returns `Some`, failing with `what` and the last value seen after
/// `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
