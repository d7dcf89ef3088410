//! Reading localstripe directly, to check what paysync wrote there.

use reqwest::StatusCode;
use serde_json::Value;

/// The localstripe that `scripts/services up` starts.
pub const LOCALSTRIPE: &str = "http://127.0.0.1:8420";

/// An email no other test uses (localstripe is shared by all tests).
pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::now_v7().simple())
}

pub struct Localstripe {
    http: reqwest::Client,
}

impl Localstripe {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
        }
    }

    /// A customer, or `None` once deleted (localstripe answers 404).
    pub async fn customer(&self, id: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{LOCALSTRIPE}/v1/customers/{id}"))
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

    /// Every live customer with this email.
    pub async fn customers_with_email(&self, email: &str) -> Vec<Value> {
        let page: Value = self
            .http
            .get(format!("{LOCALSTRIPE}/v1/customers"))
            .query(&[("email", email), ("limit", "100")])
            .bearer_auth("sk_test_paysync")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["data"].as_array().cloned().unwrap_or_default()
    }
}
