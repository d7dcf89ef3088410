//! Reading localstripe directly, to check what paysync wrote there.

use reqwest::StatusCode;
use serde_json::Value;

/// The localstripe that `scripts/services up` starts.
pub const LOCALSTRIPE: &str = "http://127.0.0.1:8420";
/// The second one it starts: another Stripe account, for tests with two policies.
pub const LOCALSTRIPE_B: &str = "http://127.0.0.1:8421";

/// An email no other test uses (localstripe is shared by all tests).
pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::now_v7().simple())
}

pub struct Localstripe {
    http: reqwest::Client,
    base: String,
}

impl Localstripe {
    pub fn new() -> Self {
        Self::at(LOCALSTRIPE)
    }

    /// The emulated account at `base` ([`LOCALSTRIPE`] or [`LOCALSTRIPE_B`]).
    pub fn at(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
        }
    }

    /// A customer, or `None` once deleted (localstripe answers 404).
    pub async fn customer(&self, id: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/v1/customers/{id}", self.base))
            .bearer_auth("sk_test_paysync")
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => Some(response.json().await.unwrap()),
            other => panic!("localstripe answered {other}"),
        }
    }

    /// Creates a customer directly in localstripe (as the Dashboard would); returns it.
    pub async fn create_customer(&self, form: &[(&str, &str)]) -> Value {
        self.write("/v1/customers", form).await
    }

    /// Updates a customer directly in localstripe; returns it.
    pub async fn update_customer(&self, id: &str, form: &[(&str, &str)]) -> Value {
        self.write(&format!("/v1/customers/{id}"), form).await
    }

    pub async fn delete_customer(&self, id: &str) {
        let response = self
            .http
            .delete(format!("{}/v1/customers/{id}", self.base))
            .bearer_auth("sk_test_paysync")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn write(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth("sk_test_paysync")
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "POST {path}");
        response.json().await.unwrap()
    }

    /// Every event of type `kind` created at or after `since` (Unix seconds; localstripe
    /// lists oldest first).
    pub async fn events(&self, kind: &str, since: i64) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![
                ("type", kind.to_owned()),
                ("created[gte]", since.to_string()),
                ("limit", "100".to_owned()),
            ];
            if let Some(after) = &after {
                query.push(("starting_after", after.clone()));
            }
            let page: Value = self
                .http
                .get(format!("{}/v1/events", self.base))
                .query(&query)
                .bearer_auth("sk_test_paysync")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data
                .last()
                .and_then(|e| e["id"].as_str())
                .map(str::to_owned);
            all.extend(data);
            if page["has_more"] != true {
                return all;
            }
        }
    }

    /// Every live customer with this email.
    pub async fn customers_with_email(&self, email: &str) -> Vec<Value> {
        let page = self
            .list(&[("email", email.to_owned()), ("limit", "100".to_owned())])
            .await;
        page["data"].as_array().cloned().unwrap_or_default()
    }

    /// Every customer of the account, page by page (localstripe lists oldest first).
    pub async fn all_customers(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", "100".to_owned())];
            if let Some(after) = &after {
                query.push(("starting_after", after.clone()));
            }
            let page = self.list(&query).await;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data
                .last()
                .and_then(|c| c["id"].as_str())
                .map(str::to_owned);
            all.extend(data);
            if page["has_more"] != true {
                return all;
            }
        }
    }

    async fn list(&self, query: &[(&str, String)]) -> Value {
        self.http
            .get(format!("{}/v1/customers", self.base))
            .query(query)
            .bearer_auth("sk_test_paysync")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A webhook endpoint registered in localstripe (shared by every test: each test registers
/// its own id, and every event reaches every endpoint, so tests only assert on their own
/// customers).
pub struct WebhookEndpoint {
    id: String,
    base: &'static str,
}

impl WebhookEndpoint {
    pub async fn register(url: &str, secret: &str) -> Self {
        Self::register_at(LOCALSTRIPE, url, secret).await
    }

    /// An endpoint of the emulated account at `base`.
    pub async fn register_at(base: &'static str, url: &str, secret: &str) -> Self {
        let id = format!("paysync-it-{}", uuid::Uuid::now_v7().simple());
        configure(base, &id, &[("url", url), ("secret", secret)]).await;
        Self { id, base }
    }

    /// Stops the deliveries. localstripe cannot remove an endpoint, so it is subscribed to
    /// an event type that never happens. (A test that fails before this leaves an endpoint
    /// whose port is closed: deliveries to it fail fast and harm no one.)
    pub async fn unregister(self) {
        configure(
            self.base,
            &self.id,
            &[
                ("url", "http://127.0.0.1:9/unused"),
                ("secret", "unused"),
                ("events[]", "paysync.never"),
            ],
        )
        .await;
    }
}

async fn configure(base: &str, id: &str, form: &[(&str, &str)]) {
    let response = reqwest::Client::new()
        .post(format!("{base}/_config/webhooks/{id}"))
        .form(form)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "registering webhook {id}");
}
