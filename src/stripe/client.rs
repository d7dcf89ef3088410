//! [`StripeApi`] over HTTP: async-stripe builds each typed request (path, form encoding),
//! paysync's transport sends it, so every attempt sees the status and `Retry-After`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use stripe_client_core::{RequestBuilder, StripeMethod, StripeRequest};
use stripe_core::customer::{
    CreateCustomer, DeleteCustomer, ListCustomer, RetrieveCustomer, UpdateCustomer,
};
use stripe_core::event::ListEvent;
use tracing::{debug, warn};

use super::retry::{Backoff, Disposition, classify_status, parse_retry_after};
use super::types::{StripeErrorBody, StripeList};
use super::{CustomerWrite, Error, RateLimit, Result, StripeApi, StripeCustomer};
use crate::domain::CustomerId;
use crate::metrics::{Metrics, StripeCallLabels};

/// The Stripe API version paysync is written against.
const STRIPE_VERSION: &str = "2025-09-30.clover";
/// Stripe's maximum page size: fewest calls per customer lookup and per catch-up.
const LIST_PAGE_SIZE: i64 = 100;

#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub api_key: SecretString,
    /// e.g. `https://api.stripe.com` or `http://127.0.0.1:8420` for localstripe.
    pub api_base: String,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

pub struct HttpStripe {
    http: reqwest::Client,
    settings: StripeSettings,
    limit: RateLimit,
    metrics: Arc<Metrics>,
}

/// Which failed attempts the transport may repeat by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Idempotent in effect (update to a level, delete, read): retry every transient failure.
    AnyTransient,
    /// A create: retry only failures that certainly did not apply (429, 409, refused
    /// connection); anything else is returned as ambiguous for the caller to resolve.
    OnlyUnapplied,
}

/// One attempt's failure.
enum AttemptError {
    Status {
        status: u16,
        retry_after: Option<Duration>,
        should_retry: Option<bool>,
        message: String,
    },
    /// The request never reached Stripe.
    NotSent(String),
    /// It may have reached Stripe (timeout, reset mid-way).
    Lost(String),
}

impl HttpStripe {
    pub fn new(
        settings: StripeSettings,
        limit: RateLimit,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("paysync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .build()?;
        Ok(Self {
            http,
            settings,
            limit,
            metrics,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        request: RequestBuilder,
        idempotency_key: Option<&str>,
        repeat: Repeat,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let waited = self.limit.acquire().await;
            if !waited.is_zero() {
                self.metrics
                    .stripe_rate_limit_wait
                    .observe(waited.as_secs_f64());
            }
            let outcome = self.attempt(&request, idempotency_key).await;
            let (result, retryable, retry_after, cause) = match outcome {
                Ok(bytes) => {
                    self.record(operation, "ok");
                    return serde_json::from_slice(&bytes).map_err(|e| Error::Unreadable {
                        operation,
                        source: Arc::new(e),
                    });
                }
                Err(AttemptError::Status {
                    status,
                    retry_after,
                    should_retry,
                    message,
                }) => {
                    let disposition = classify_status(status, should_retry);
                    if disposition == Disposition::Permanent {
                        self.record(operation, "rejected");
                        return Err(Error::Rejected {
                            operation,
                            status,
                            message,
                        });
                    }
                    // 429 and 409 mean Stripe did not apply the request; a 5xx may have.
                    let unapplied = matches!(status, 409 | 429);
                    let cause = format!("HTTP {status}: {message}");
                    let label = if status == 429 {
                        "rate_limited"
                    } else {
                        "server_error"
                    };
                    (
                        label,
                        unapplied || repeat == Repeat::AnyTransient,
                        retry_after,
                        cause,
                    )
                }
                Err(AttemptError::NotSent(cause)) => ("connection_error", true, None, cause),
                Err(AttemptError::Lost(cause)) => (
                    "timeout_or_reset",
                    repeat == Repeat::AnyTransient,
                    None,
                    cause,
                ),
            };
            self.record(operation, result);
            if !retryable {
                return Err(Error::Ambiguous {
                    operation,
                    cause,
                    retry_after,
                });
            }
            if attempt >= self.settings.max_attempts {
                return Err(Error::Exhausted {
                    operation,
                    attempts: attempt,
                    last: cause,
                });
            }
            let delay =
                self.settings
                    .backoff
                    .delay(attempt, retry_after, rand::rng().random::<f64>());
            warn!(operation, attempt, delay_ms = delay.as_millis() as u64, error = %cause, "Stripe call failed; retrying");
            self.metrics
                .stripe_retries
                .get_or_create(&StripeCallLabels::new(operation, result))
                .inc();
            tokio::time::sleep(delay).await;
        }
    }

    fn record(&self, operation: &'static str, result: &'static str) {
        self.metrics
            .stripe_requests
            .get_or_create(&StripeCallLabels::new(operation, result))
            .inc();
    }

    async fn attempt(
        &self,
        request: &RequestBuilder,
        idempotency_key: Option<&str>,
    ) -> std::result::Result<bytes::Bytes, AttemptError> {
        let mut url = format!(
            "{}/v1{}",
            self.settings.api_base.trim_end_matches('/'),
            request.path
        );
        if let Some(query) = &request.query {
            url.push('?');
            url.push_str(query);
        }
        let method = match request.method {
            StripeMethod::Get => reqwest::Method::GET,
            StripeMethod::Post => reqwest::Method::POST,
            StripeMethod::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self
            .http
            .request(method, url)
            .timeout(self.settings.timeout)
            .header(
                AUTHORIZATION,
                format!("Bearer {}", self.settings.api_key.expose_secret()),
            )
            .header("stripe-version", STRIPE_VERSION);
        if let Some(key) = idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        if let Some(body) = &request.body {
            builder = builder
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .body(body.clone());
        }
        let response = builder.send().await.map_err(|e| {
            if e.is_connect() {
                AttemptError::NotSent(e.to_string())
            } else {
                AttemptError::Lost(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").as_deref().and_then(parse_retry_after);
        let should_retry = header("stripe-should-retry").map(|v| v == "true");
        let body = response
            .bytes()
            .await
            .map_err(|e| AttemptError::Lost(e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let detail = serde_json::from_slice::<StripeErrorBody>(&body)
            .unwrap_or_default()
            .error;
        let message = detail
            .message
            .or(detail.code)
            .or(detail.kind)
            .unwrap_or_else(|| "no error message".to_owned());
        Err(AttemptError::Status {
            status,
            retry_after,
            should_retry,
            message,
        })
    }
}

/// Stripe removes a metadata key when it is set to an empty string.
fn metadata_with_removals(
    write: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut metadata: HashMap<String, String> = write.clone().into_iter().collect();
    for key in current.keys() {
        metadata.entry(key.clone()).or_default();
    }
    metadata
}

#[async_trait]
impl StripeApi for HttpStripe {
    async fn find_customer(
        &self,
        email: &str,
        paysync_id: CustomerId,
    ) -> Result<Option<StripeCustomer>> {
        let wanted = paysync_id.to_string();
        let mut starting_after: Option<String> = None;
        loop {
            let mut list = ListCustomer::new().email(email).limit(LIST_PAGE_SIZE);
            if let Some(after) = &starting_after {
                list = list.starting_after(after.clone());
            }
            let page: StripeList<StripeCustomer> = self
                .send("list_customers", list.build(), None, Repeat::AnyTransient)
                .await?;
            if let Some(found) = page
                .data
                .iter()
                .find(|c| c.metadata.get("paysync_id") == Some(&wanted))
            {
                return Ok(Some(found.clone()));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => starting_after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
    }

    async fn create_customer(
        &self,
        write: &CustomerWrite,
        idempotency_key: &str,
    ) -> Result<StripeCustomer> {
        let mut create = CreateCustomer::new().email(write.email.clone()).metadata(
            write
                .metadata
                .clone()
                .into_iter()
                .collect::<HashMap<_, _>>(),
        );
        if let Some(name) = &write.name {
            create = create.name(name.clone());
        }
        if let Some(phone) = &write.phone {
            create = create.phone(phone.clone());
        }
        if let Some(description) = &write.description {
            create = create.description(description.clone());
        }
        self.send(
            "create_customer",
            create.build(),
            Some(idempotency_key),
            Repeat::OnlyUnapplied,
        )
        .await
    }

    async fn update_customer(
        &self,
        stripe_id: &str,
        write: &CustomerWrite,
        idempotency_key: &str,
    ) -> Result<StripeCustomer> {
        let update = |metadata: HashMap<String, String>| {
            UpdateCustomer::new(stripe_id)
                .email(write.email.clone())
                .name(write.name.clone().unwrap_or_default())
                .phone(write.phone.clone().unwrap_or_default())
                .description(write.description.clone().unwrap_or_default())
                .metadata(metadata)
                .build()
        };
        let updated: StripeCustomer = self
            .send(
                "update_customer",
                update(metadata_with_removals(&write.metadata, &BTreeMap::new())),
                Some(idempotency_key),
                Repeat::AnyTransient,
            )
            .await?;
        // Stripe merges metadata: keys set elsewhere survive an update. Remove them so Stripe
        // holds exactly what paysync wrote (costs a second call only when there are any).
        // A blank value is a removed key (localstripe keeps it blank instead of dropping it).
        let extra = |(key, value): (&String, &String)| {
            !value.is_empty() && !write.metadata.contains_key(key)
        };
        if updated.metadata.iter().any(extra) {
            debug!(stripe_id, "removing metadata keys paysync does not have");
            return self
                .send(
                    "update_customer",
                    update(metadata_with_removals(&write.metadata, &updated.metadata)),
                    Some(&format!("{idempotency_key}:metadata")),
                    Repeat::AnyTransient,
                )
                .await;
        }
        Ok(updated)
    }

    async fn delete_customer(&self, stripe_id: &str, idempotency_key: &str) -> Result<()> {
        let deleted: Result<serde_json::Value> = self
            .send(
                "delete_customer",
                DeleteCustomer::new(stripe_id).build(),
                Some(idempotency_key),
                Repeat::AnyTransient,
            )
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(Error::Rejected { status: 404, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn retrieve_customer(&self, stripe_id: &str) -> Result<Option<StripeCustomer>> {
        let found: Result<StripeCustomer> = self
            .send(
                "retrieve_customer",
                RetrieveCustomer::new(stripe_id).build(),
                None,
                Repeat::AnyTransient,
            )
            .await;
        match found {
            Ok(customer) if customer.deleted => Ok(None),
            Ok(customer) => Ok(Some(customer)),
            Err(Error::Rejected { status: 404, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    async fn list_events(
        &self,
        kind: &str,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<StripeList<serde_json::Value>> {
        let mut list = ListEvent::new()
            .type_(kind)
            .created(stripe_types::RangeQueryTs::gte(created_gte))
            .limit(LIST_PAGE_SIZE);
        if let Some(after) = starting_after {
            list = list.starting_after(after);
        }
        self.send("list_events", list.build(), None, Repeat::AnyTransient)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_blank_every_key_paysync_does_not_have() {
        let write = BTreeMap::from([("plan".to_owned(), "pro".to_owned())]);
        let current = BTreeMap::from([
            ("plan".to_owned(), "free".to_owned()),
            ("legacy".to_owned(), "1".to_owned()),
        ]);
        let metadata = metadata_with_removals(&write, &current);
        assert_eq!(metadata["plan"], "pro");
        assert_eq!(metadata["legacy"], "");
        assert_eq!(metadata.len(), 2);
    }
}
