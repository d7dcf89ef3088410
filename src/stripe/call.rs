//! One Stripe API call over HTTP: async-stripe builds the typed request (path, form body),
//! this sends it within the account's rate budget, with a timeout, and retries what may
//! succeed later (or, for a single attempt, reports what became of it); every attempt sees
//! its status and `Retry-After` (async-stripe's own client hides them).

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
use super::{Error, Fate, RateLimit, Result};
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

/// Whether the caller repeats failed attempts by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// A read: retry every transient failure, up to the settings' attempts.
    AnyTransient,
    /// One attempt: a transient failure is returned as [`Error::Failed`] with what became of
    /// the request, for the caller to retry (the outbound writer, which must not hold its
    /// customer's lock while it waits, and must fence a create that may still land).
    Once,
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
    fate: Fate,
    retry_after: Option<Duration>,
    cause: String,
}

/// What a failed attempt means: a rejection to report (`Err`), or a transient failure.
fn assess(operation: &'static str, error: AttemptError) -> Result<Transient> {
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
            // 429 and 409 mean Stripe did not apply the request; a 5xx may have, but Stripe
            // is done with it either way.
            let fate = if matches!(status, 409 | 429) {
                Fate::NotApplied
            } else {
                Fate::Answered
            };
            Ok(Transient {
                label: if status == 429 {
                    "rate_limited"
                } else {
                    "server_error"
                },
                fate,
                retry_after,
                cause: format!("HTTP {status}: {message}"),
            })
        }
        AttemptError::NotSent(cause) => Ok(Transient {
            label: "connection_error",
            fate: Fate::NotApplied,
            retry_after: None,
            cause,
        }),
        AttemptError::Lost(cause) => Ok(Transient {
            label: "timeout_or_reset",
            fate: Fate::MayStillLand,
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

    /// Sends `request` until it succeeds, is rejected, or runs out of attempts (one, for
    /// [`Repeat::Once`]).
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
                Err(error) => assess(operation, error).inspect_err(|_| {
                    self.metrics.attempt(operation, "rejected");
                })?,
            };
            self.metrics.attempt(operation, failed.label);
            if repeat == Repeat::Once {
                return Err(Error::Failed {
                    operation,
                    cause: failed.cause,
                    reason: failed.label,
                    retry_after: failed.retry_after,
                    fate: failed.fate,
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

    /// Counts a retry the caller of a single attempt makes.
    pub fn count_retry(&self, operation: &'static str, reason: &'static str) {
        self.metrics.retry(operation, reason);
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
    fn a_failed_attempt_says_whether_it_may_still_land() {
        let fate = |e| assess("create_customer", e).unwrap().fate;
        assert_eq!(fate(status(429)), Fate::NotApplied);
        assert_eq!(fate(status(409)), Fate::NotApplied);
        assert_eq!(fate(status(503)), Fate::Answered);
        assert_eq!(
            fate(AttemptError::NotSent("refused".into())),
            Fate::NotApplied
        );
        assert_eq!(fate(AttemptError::Lost("reset".into())), Fate::MayStillLand);
        assert!(matches!(
            assess("create_customer", status(400)),
            Err(Error::Rejected { status: 400, .. })
        ));
    }

    #[test]
    fn transient_failures_are_labelled_for_the_metrics() {
        let label = |e| assess("update_customer", e).unwrap().label;
        assert_eq!(label(status(503)), "server_error");
        assert_eq!(
            label(AttemptError::Lost("timeout".into())),
            "timeout_or_reset"
        );
        assert_eq!(label(status(429)), "rate_limited");
    }
}
