//! Operational endpoints, without authentication: liveness, readiness and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::metrics;
use crate::sync::queue_health::QueueSnapshot;

/// How long readiness waits for PostgreSQL before reporting it unreachable; kept under the
/// usual probe timeout so the probe sees a 503, not a timeout.
const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    pub checks: ReadinessChecks,
    /// How far behind sync is (absent until first measured, a second or two after start).
    /// Informational: a stuck queue does not make paysync unready (a restart would not help,
    /// and webhooks must keep being accepted); alert on these instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<QueueSnapshot>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// `ok` or `unreachable`; absent with the PostgreSQL transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<&'static str>,
    /// In a cluster: `ok`, or why the SyncPolicies cannot be read (the CRD is not installed,
    /// RBAC refuses); absent outside one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: paysync can do its work (PostgreSQL answers, Kafka when configured, and in a
/// cluster the SyncPolicies can be read).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is unreachable", body = Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let ping = sqlx::query("select 1").execute(&state.pool);
    let database_ok = matches!(
        tokio::time::timeout(READINESS_CHECK_TIMEOUT, ping).await,
        Ok(Ok(_))
    );
    let kafka_ok = match &state.kafka {
        Some(probe) => Some(probe.reachable(READINESS_CHECK_TIMEOUT).await),
        None => None,
    };
    let cluster_problem = state
        .cluster_access
        .as_ref()
        .and_then(|access| access.problem());
    let ready = database_ok && kafka_ok.unwrap_or(true) && cluster_problem.is_none();
    let (status, code) = if ready {
        ("ready", StatusCode::OK)
    } else {
        ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
    };
    let database = if database_ok { "ok" } else { "unreachable" };
    (
        code,
        Json(Readiness {
            queues: state.queue_health.snapshot().await,
            status,
            checks: ReadinessChecks {
                database,
                kafka: kafka_ok.map(|ok| if ok { "ok" } else { "unreachable" }),
                kubernetes: state
                    .cluster_access
                    .as_ref()
                    .map(|_| cluster_problem.unwrap_or_else(|| "ok".to_owned())),
            },
        }),
    )
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics_text(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = metrics::encode_text(&state.registry).map_err(ApiError::internal)?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    Ok(response)
}
