//! `POST /webhooks/stripe`: the signed ingress for Stripe events (no bearer token: the
//! signature is the credential). A verified customer event is durably queued before the 2xx,
//! so an acknowledged delivery is never lost; if it cannot be queued, Stripe gets a 503 and
//! delivers it again.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use sqlx::PgPool;
use tracing::{info, warn};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::bus::Envelope;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::store::DEFAULT_ACCOUNT;
use crate::stripe::event::StripeEvent;
use crate::stripe::webhook::{VerifyError, WebhookVerifier};

/// Stripe's event payloads are far smaller; this bounds memory per delivery.
pub const MAX_WEBHOOK_BYTES: usize = 256 * 1024;
/// How long a delivery may wait for Kafka before Stripe is told to retry: an answer well within
/// Stripe's delivery timeout, so a slow broker shows as a 503, not as a timed-out endpoint.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(8);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive_stripe_webhook))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
}

/// Where verified events go until the inbound worker applies them.
#[derive(Clone)]
pub enum InboundQueue {
    /// The PostgreSQL transport: the `processed_events` inbox, deduplicated by event id.
    Postgres(PgPool),
    /// The Kafka transport: the inbound topic, keyed by Stripe customer id.
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
}

/// The ingress: verification and the queue.
#[derive(Clone)]
pub struct WebhookIngress {
    pub verifier: WebhookVerifier,
    pub queue: InboundQueue,
}

impl std::fmt::Debug for WebhookIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookIngress")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl InboundQueue {
    async fn enqueue(&self, event: &StripeEvent, raw: &[u8]) -> Result<(), String> {
        let payload: serde_json::Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        match self {
            Self::Postgres(pool) => {
                sqlx::query(
                    "insert into processed_events (event_id, type, account, stripe_customer_id, payload) \
                     values ($1, $2, $3, $4, $5) on conflict (event_id) do nothing",
                )
                .bind(&event.id)
                .bind(&event.kind)
                .bind(event.account.as_deref().unwrap_or(DEFAULT_ACCOUNT))
                .bind(event.customer_id())
                .bind(&payload)
                .execute(pool)
                .await
                .map_err(|e| e.to_string())?;
                Ok(())
            }
            Self::Kafka { producer, topic } => {
                let occurred_at =
                    chrono::DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
                let envelope = Envelope::inbound(payload, occurred_at);
                let body = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
                let key = event.customer_id().unwrap_or(&event.id).to_owned();
                let record = FutureRecord::to(topic).key(&key).payload(&body);
                let sent =
                    tokio::time::timeout(ENQUEUE_TIMEOUT, producer.send(record, ENQUEUE_TIMEOUT))
                        .await;
                match sent {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "Kafka did not acknowledge within {ENQUEUE_TIMEOUT:?}"
                    )),
                }
            }
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    pub received: bool,
    /// True for event types paysync does not handle (acknowledged so Stripe stops sending).
    pub ignored: bool,
}

fn count(metrics: &Metrics, outcome: &str) {
    metrics
        .webhooks
        .get_or_create(&OutcomeLabels {
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Receive a Stripe webhook delivery.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "webhooks",
    request_body(content = String, description = "The event exactly as Stripe sent it", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<HMAC-SHA256 hex>")),
    responses(
        (status = 200, description = "Queued (or ignored: a type paysync does not handle)", body = WebhookReceipt),
        (status = 400, description = "Missing, malformed, wrong or expired signature, or not an event", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody),
        (status = 503, description = "Could not be queued (or webhooks are not configured); Stripe retries", body = ErrorBody),
    ))]
async fn receive_stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookReceipt>, ApiError> {
    let metrics = &state.metrics;
    let Some(ingress) = state.webhooks.as_deref() else {
        count(metrics, "unavailable");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_disabled",
            "no webhook secret is configured (STRIPE_WEBHOOK_SECRETS)",
        ));
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            count(metrics, "oversized");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MAX_WEBHOOK_BYTES} bytes"),
            )
        } else {
            count(metrics, "malformed");
            ApiError::bad_request("unreadable_body", rejection.body_text())
        }
    })?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = ingress
        .verifier
        .verify(signature, &body, Utc::now().timestamp())
    {
        let outcome = match e {
            VerifyError::OutsideTolerance { .. } => "stale",
            _ => "bad_signature",
        };
        count(metrics, outcome);
        return Err(ApiError::bad_request("invalid_signature", e.to_string()));
    }
    let event = StripeEvent::parse(&body).map_err(|e| {
        count(metrics, "malformed");
        ApiError::bad_request("invalid_event", e)
    })?;
    if !event.is_handled() {
        count(metrics, "ignored_type");
        return Ok(Json(WebhookReceipt {
            received: true,
            ignored: true,
        }));
    }
    if let Err(e) = ingress.queue.enqueue(&event, &body).await {
        count(metrics, "unavailable");
        warn!(event_id = %event.id, error = %e, "could not queue a Stripe event; answering 503 so Stripe retries");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event could not be queued; retry later",
        ));
    }
    count(metrics, "accepted");
    info!(event_id = %event.id, event_type = %event.kind, stripe_id = event.customer_id(), "Stripe event queued");
    Ok(Json(WebhookReceipt {
        received: true,
        ignored: false,
    }))
}
