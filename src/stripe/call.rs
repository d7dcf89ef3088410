//! One Stripe API call over HTTP: async-stripe builds the typed request (path, form body),
//! this sends it within the account's rate budget, with a timeout, and retries what may
//! succeed later; every attempt sees its status and `Retry-After` (async-stripe's own client
//! hides them).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use stripe_client_core::{RequestBuilder, StripeMethod};
use tracing::warn;

use super::metrics::StripeMetrics;
use super::retry::{Disposition, classify_status, parse_retry_after};
use super::types::StripeErrorBody;
use super::{Error, RateLimit, Result};
use crate::backoff::Backoff;

/// The Stripe API version paysync is written against.
const STRIPE_VERSION: &str = "2025-09-30.clover";

#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub api_key: SecretString,
    /// e.g. `https://api.stripe.com` or `http://127.0.0.1:8420` for localstripe.
    pub api_base: String,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// Which failed attempts the caller may repeat by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Idempotent in effect (update to a level, delete, read): retry every transient failure.
    AnyTransient,
    /// A create: retry only failures that certainly did not apply (429, 409, refused
    /// connection); anything else is returned as ambiguous for the caller to resolve.
    OnlyUnapplied,
}

/// One attempt's failure.
#[derive(Debug)]
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

/// A failed attempt that may be tried again.
#[derive(Debug, PartialEq, Eq)]
struct Transient {
    /// The metric label of the failure.
    label: &'static str,
    /// Whether another attempt is safe for this request.
    repeatable: bool,
    retry_after: Option<Duration>,
    cause: String,
}

/// What a failed attempt means: a rejection to report (`Err`), or a transient failure.
fn assess(operation: &'static str, error: AttemptError, repeat: Repeat) -> Result<Transient> {
    let any = repeat == Repeat::AnyTransient;
    match error {
        AttemptError::Status {
            status,
            retry_after,
            should_retry,
            message,
        } => {
            if classify_status(status, should_retry) == Disposition::Permanent {
                return Err(Error::Rejected {
                    operation,
                    status,
                    message,
                });
            }
            // 429 and 409 mean Stripe did not apply the request; a 5xx may have.
            let unapplied = matches!(status, 409 | 429);
            Ok(Transient {
                label: if status == 429 {
                    "rate_limited"
                } else {
                    "server_error"
                },
                repeatable: unapplied || any,
                retry_after,
                cause: format!("HTTP {status}: {message}"),
            })
        }
        AttemptError::NotSent(cause) => Ok(Transient {
            label: "connection_error",
            repeatable: true,
            retry_after: None,
            cause,
        }),
        AttemptError::Lost(cause) => Ok(Transient {
            label: "timeout_or_reset",
            repeatable: any,
            retry_after: None,
            cause,
        }),
    }
}

/// Sends requests to one Stripe account.
pub struct Caller {
    http: reqwest::Client,
    settings: StripeSettings,
    limit: RateLimit,
    metrics: Arc<StripeMetrics>,
}

impl Caller {
    pub fn new(
        settings: StripeSettings,
        limit: RateLimit,
        metrics: Arc<StripeMetrics>,
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

    /// Sends `request` until it succeeds, is rejected, is not safe to repeat, or runs out of
    /// attempts.
    pub async fn send<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        request: RequestBuilder,
        idempotency_key: Option<&str>,
        repeat: Repeat,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_for_budget().await;
            let failed = match self.attempt(&request, idempotency_key).await {
                Ok(body) => {
                    self.metrics.attempt(operation, "ok");
                    return serde_json::from_slice(&body).map_err(|e| Error::Unreadable {
                        operation,
                        source: Arc::new(e),
                    });
                }
                Err(error) => assess(operation, error, repeat).inspect_err(|_| {
                    self.metrics.attempt(operation, "rejected");
                })?,
            };
            self.metrics.attempt(operation, failed.label);
            if !failed.repeatable {
                return Err(Error::Ambiguous {
                    operation,
                    cause: failed.cause,
                    retry_after: failed.retry_after,
                });
            }
            if attempt >= self.settings.max_attempts {
                return Err(Error::Exhausted {
                    operation,
                    attempts: attempt,
                    last: failed.cause,
                });
            }
            self.pause(operation, attempt, &failed).await;
        }
    }

    async fn wait_for_budget(&self) {
        let waited = self.limit.acquire().await;
        if !waited.is_zero() {
            self.metrics.rate_limit_waited(waited.as_secs_f64());
        }
    }

    async fn pause(&self, operation: &'static str, attempt: u32, failed: &Transient) {
        let delay = self.settings.backoff.jittered(attempt, failed.retry_after);
        warn!(operation, attempt, delay_ms = delay.as_millis() as u64, error = %failed.cause,
            "Stripe call failed; retrying");
        self.metrics.retry(operation, failed.label);
        tokio::time::sleep(delay).await;
    }

    async fn attempt(
        &self,
        request: &RequestBuilder,
        idempotency_key: Option<&str>,
    ) -> std::result::Result<bytes::Bytes, AttemptError> {
        let mut builder = self
            .http
            .request(method(request.method), self.url(request))
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
        read_response(response).await
    }

    fn url(&self, request: &RequestBuilder) -> String {
        let mut url = format!(
            "{}/v1{}",
            self.settings.api_base.trim_end_matches('/'),
            request.path
        );
        if let Some(query) = &request.query {
            url.push('?');
            url.push_str(query);
        }
        url
    }
}

fn method(method: StripeMethod) -> reqwest::Method {
    match method {
        StripeMethod::Get => reqwest::Method::GET,
        StripeMethod::Post => reqwest::Method::POST,
        StripeMethod::Delete => reqwest::Method::DELETE,
    }
}

/// The body of a 2xx answer, or what the failure says.
async fn read_response(
    response: reqwest::Response,
) -> std::result::Result<bytes::Bytes, AttemptError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> AttemptError {
        AttemptError::Status {
            status,
            retry_after: None,
            should_retry: None,
            message: "m".into(),
        }
    }

    #[test]
    fn a_create_is_repeated_only_when_it_certainly_did_not_apply() {
        let create = |e| assess("create_customer", e, Repeat::OnlyUnapplied);
        assert!(create(status(429)).unwrap().repeatable);
        assert!(create(status(409)).unwrap().repeatable);
        assert!(!create(status(503)).unwrap().repeatable);
        assert!(
            create(AttemptError::NotSent("refused".into()))
                .unwrap()
                .repeatable
        );
        assert!(
            !create(AttemptError::Lost("reset".into()))
                .unwrap()
                .repeatable
        );
        assert!(matches!(
            create(status(400)),
            Err(Error::Rejected { status: 400, .. })
        ));
    }

    #[test]
    fn idempotent_calls_repeat_every_transient_failure() {
        let update = |e| assess("update_customer", e, Repeat::AnyTransient);
        assert_eq!(update(status(503)).unwrap().label, "server_error");
        assert!(
            update(AttemptError::Lost("timeout".into()))
                .unwrap()
                .repeatable
        );
        assert_eq!(update(status(429)).unwrap().label, "rate_limited");
    }
}
