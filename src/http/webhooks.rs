//! `POST /webhooks/stripe/{policy}` (and `POST /webhooks/stripe`, the `default` policy's):
//! the signed ingress for Stripe events (no bearer token: the signature is the credential,
//! checked with the secrets of the policy the route names, so a delivery signed for one
//! account is refused on another's route). A verified customer event is tagged with its
//! account and durably queued before the 2xx, so an acknowledged delivery is never lost; if it
//! cannot be queued, Stripe gets a 503 and delivers it again.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::Serialize;
use tracing::{debug, warn};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::server::Peer;
use super::{ApiError, AppState, ErrorBody};
use crate::domain::DEFAULT_ACCOUNT;
use crate::metrics::{PolicyOutcomes, Registry};
use crate::policy::PolicyRegistry;
use crate::stripe::event::StripeEvent;
use crate::stripe::webhook::{VerifyError, WebhookVerifier};
use crate::sync::EventQueue;
use crate::telemetry::error_chain;

/// Stripe's event payloads are far smaller; this bounds memory per delivery.
pub const MAX_WEBHOOK_BYTES: usize = 256 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive_stripe_webhook))
        .routes(routes!(receive_policy_webhook))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
}

/// The ingress: the policies (whose secrets verify deliveries) and the queue.
#[derive(Clone)]
pub struct WebhookIngress {
    pub policies: Arc<PolicyRegistry>,
    pub queue: Arc<dyn EventQueue>,
    pub rejections: RejectionLog,
}

/// `paysync_webhooks_total{outcome}`.
#[derive(Debug)]
pub struct WebhookMetrics {
    deliveries: PolicyOutcomes,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            deliveries: PolicyOutcomes::default(),
        };
        registry.register(
            "webhooks",
            "Stripe webhook deliveries, by policy and outcome (accepted, bad_signature, stale, \
             oversized, malformed, ignored_type, unavailable; unknown_policy with an empty \
             policy label, so made-up names cannot grow the series)",
            metrics.deliveries.clone(),
        );
        metrics
    }
}

/// Logs refused deliveries at warn, at most [`REJECTION_LOGS_PER_SECOND`] a second (plus a
/// burst), so a flood of forged requests cannot flood the logs; the lines skipped are counted
/// in the next one. Every refusal is counted in `paysync_webhooks_total` regardless.
#[derive(Clone)]
pub struct RejectionLog {
    limiter: Arc<DefaultDirectRateLimiter>,
    skipped: Arc<AtomicU64>,
}

/// Steady rate of rejection log lines.
const REJECTION_LOGS_PER_SECOND: NonZeroU32 = NonZeroU32::MIN;
/// Rejection log lines allowed in a burst.
const REJECTION_LOG_BURST: NonZeroU32 = match NonZeroU32::new(10) {
    Some(burst) => burst,
    None => NonZeroU32::MIN,
};

impl Default for RejectionLog {
    fn default() -> Self {
        let quota = Quota::per_second(REJECTION_LOGS_PER_SECOND).allow_burst(REJECTION_LOG_BURST);
        Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
            skipped: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl RejectionLog {
    /// Logs why a delivery was refused and where it came from; never its body or a secret.
    fn refused(&self, outcome: &str, reason: &str, peer: Peer) {
        if self.limiter.check().is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        warn!(outcome, reason, %peer, skipped, "webhook delivery refused");
    }
}

impl std::fmt::Debug for WebhookIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookIngress").finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    pub received: bool,
    /// True for event types paysync does not handle (acknowledged so Stripe stops sending).
    pub ignored: bool,
}

fn count(metrics: &WebhookMetrics, policy: &str, outcome: &str) {
    crate::metrics::count_for(&metrics.deliveries, policy, outcome);
}

/// Receive a Stripe webhook delivery for the `default` policy.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "webhooks",
    request_body(content = String, description = "The event exactly as Stripe sent it", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<HMAC-SHA256 hex>")),
    responses(
        (status = 200, description = "Queued (or ignored: a type paysync does not handle)", body = WebhookReceipt),
        (status = 400, description = "Missing, malformed, wrong or expired signature, or not an event", body = ErrorBody),
        (status = 404, description = "There is no `default` policy", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody),
        (status = 503, description = "Could not be queued (or the policy has no webhook secret); Stripe retries", body = ErrorBody),
    ))]
async fn receive_stripe_webhook(
    State(state): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookReceipt>, ApiError> {
    receive(&state, DEFAULT_ACCOUNT, peer, &headers, body).await
}

/// Receive a Stripe webhook delivery for the policy (Stripe account) `policy`.
#[utoipa::path(post, path = "/webhooks/stripe/{policy}", tag = "webhooks",
    request_body(content = String, description = "The event exactly as Stripe sent it", content_type = "application/json"),
    params(
        ("policy" = String, Path, description = "The SyncPolicy whose webhook secrets sign the delivery"),
        ("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<HMAC-SHA256 hex>"),
    ),
    responses(
        (status = 200, description = "Queued (or ignored: a type paysync does not handle)", body = WebhookReceipt),
        (status = 400, description = "Missing, malformed, wrong or expired signature, or not an event", body = ErrorBody),
        (status = 404, description = "No policy of that name", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody),
        (status = 503, description = "Could not be queued (or the policy has no webhook secret); Stripe retries", body = ErrorBody),
    ))]
async fn receive_policy_webhook(
    State(state): State<AppState>,
    Path(policy): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookReceipt>, ApiError> {
    receive(&state, &policy, peer, &headers, body).await
}

async fn receive(
    state: &AppState,
    policy: &str,
    peer: Peer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookReceipt>, ApiError> {
    let metrics = state.webhook_metrics.as_ref();
    let ingress = state.webhooks.as_ref();
    let verifier = policy_verifier(ingress, metrics, policy)?;
    let event = verified_event(ingress, (policy, &verifier), metrics, peer, headers, body)?
        .for_account(policy);
    if !crate::sync::handles(&event) {
        count(metrics, policy, "ignored_type");
        return Ok(Json(WebhookReceipt {
            received: true,
            ignored: true,
        }));
    }
    let (event_id, event_type) = (event.id.clone(), event.kind.clone());
    if let Err(e) = ingress.queue.enqueue(vec![event]).await {
        count(metrics, policy, "unavailable");
        warn!(event_id, error = %error_chain(&e), "could not queue a Stripe event; answering 503 so Stripe retries");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event could not be queued; retry later",
        ));
    }
    count(metrics, policy, "accepted");
    debug!(event_id, event_type, policy, "Stripe event queued");
    Ok(Json(WebhookReceipt {
        received: true,
        ignored: false,
    }))
}

/// The verifier of `policy`'s deliveries, as it is now (a rotated secret applies to the next
/// delivery).
fn policy_verifier(
    ingress: &WebhookIngress,
    metrics: &WebhookMetrics,
    policy: &str,
) -> Result<WebhookVerifier, ApiError> {
    let Some(found) = ingress.policies.get(policy) else {
        count(metrics, "", "unknown_policy");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_policy",
            format!("there is no policy named {policy:?}"),
        ));
    };
    found.webhooks.clone().ok_or_else(|| {
        count(metrics, policy, "unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_disabled",
            format!("the policy {policy:?} has no webhook secret (its Secret's webhookSecrets key, or STRIPE_WEBHOOK_SECRETS for `default`)"),
        )
    })
}

/// The delivery's event, once its body is read and its signature verified; every refusal
/// is counted and logged (rate-limited).
fn verified_event(
    ingress: &WebhookIngress,
    (policy, verifier): (&str, &WebhookVerifier),
    metrics: &WebhookMetrics,
    peer: Peer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StripeEvent, ApiError> {
    let refuse = |outcome: &'static str, reason: &str| {
        count(metrics, policy, outcome);
        ingress.rejections.refused(outcome, reason, peer);
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refuse("oversized", "body over the size limit");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MAX_WEBHOOK_BYTES} bytes"),
            )
        } else {
            refuse("malformed", "unreadable body");
            ApiError::bad_request("unreadable_body", rejection.body_text())
        }
    })?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = verifier.verify(signature, &body, Utc::now().timestamp()) {
        let outcome = match e {
            VerifyError::OutsideTolerance { .. } => "stale",
            _ => "bad_signature",
        };
        refuse(outcome, &e.to_string());
        return Err(ApiError::bad_request("invalid_signature", e.to_string()));
    }
    StripeEvent::parse_bytes(&body).map_err(|e| {
        refuse("malformed", &e);
        ApiError::bad_request("invalid_event", e)
    })
}
