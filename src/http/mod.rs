//! The HTTP surface (axum): the /v1 API, operational endpoints, OpenAPI and its docs page.

mod auth;
mod customers;
mod dead_letters;
mod error;
mod extract;
mod ops;
mod policies;
mod reconcile;
mod schemas;
pub mod server;
mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use auth::ApiAuth;
pub use customers::CustomerBody;
pub use dead_letters::DeadLetterBody;
pub use error::{ApiError, ErrorBody};
pub use server::ServerLimits;
pub use webhooks::{MAX_WEBHOOK_BYTES, RejectionLog, WebhookIngress, WebhookMetrics};

use crate::metrics::{Registry, latency_histogram};
use crate::policy::PolicyRegistry;
use crate::sync::queue_health::QueueHealth;
use crate::transport::kafka::KafkaProbe;

/// Largest request body accepted (customers are small; this bounds memory per request).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where the OpenAPI document and its docs page are served.
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Every metric group's registry, for `/metrics`.
    pub registry: Arc<Registry>,
    pub http: Arc<HttpMetrics>,
    pub webhook_metrics: Arc<WebhookMetrics>,
    /// How far behind sync is, shown by `/readyz`.
    pub queue_health: Arc<QueueHealth>,
    /// Checked by `/readyz` when the Kafka transport is configured.
    pub kafka: Option<KafkaProbe>,
    /// The Stripe webhook ingress.
    pub webhooks: Arc<WebhookIngress>,
    /// The effective policies: the account of a new customer, `GET /v1/policies`.
    pub policies: Arc<PolicyRegistry>,
    /// Runs reconciles on demand (`POST /v1/policies/{name}/reconcile`) and knows each
    /// policy's last run.
    pub reconciler: Arc<crate::reconcile::Reconciler>,
    /// In a cluster: whether the controller can read the SyncPolicies, checked by `/readyz`.
    pub cluster_access: Option<Arc<crate::policy::SourceAccess>>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "paysync",
        description = "Customers kept in two-way sync between PostgreSQL and Stripe. Every \
                       /v1 route needs `Authorization: Bearer <token>`. Errors are \
                       `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
    tags(
        (name = "customers", description = "Customers, synced to Stripe"),
        (name = "dead letters", description = "Changes that could not be synced, and their replay"),
        (name = "policies", description = "The SyncPolicies in effect: one per Stripe account"),
        (name = "webhooks", description = "Signed Stripe deliveries (the signature is the credential)"),
        (name = "operations", description = "Health, readiness and metrics (no authentication)")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The documented routes; the OpenAPI document is generated from these handlers.
fn documented_routes(
    v1: OpenApiRouter<AppState>,
    webhooks: OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v1", v1)
        .merge(webhooks)
        .merge(ops::router())
}

/// Every /v1 route (all behind the bearer token).
fn v1_routes() -> OpenApiRouter<AppState> {
    customers::router()
        .merge(dead_letters::router())
        .merge(policies::router())
        .merge(reconcile::router())
}

/// The OpenAPI document of the API (`paysync openapi`, `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes(v1_routes(), webhooks::router()).into_openapi()
}

/// Every route with its middleware. The API and the webhook ingress share the in-flight
/// request limit; the operational routes are outside it, so probes answer under load.
pub fn router(state: AppState, auth: ApiAuth, limits: ServerLimits) -> Router {
    let in_flight = server::InFlight::new(limits.max_requests);
    let limited = middleware::from_fn_with_state(in_flight, server::limit_in_flight);
    let v1 = v1_routes()
        .route_layer(middleware::from_fn_with_state(auth, auth::require_bearer))
        .route_layer(limited.clone());
    let webhooks = webhooks::router().route_layer(limited);
    let (routes, openapi) = documented_routes(v1, webhooks).split_for_parts();
    routes
        .merge(SwaggerUi::new(DOCS_PATH).url(OPENAPI_PATH, openapi))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn(json_method_not_allowed))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            limits,
            server::read_body_in_time,
        ))
        .layer(middleware::from_fn_with_state(
            limits,
            server::answer_in_time,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Gives axum's bodiless 405 the API's error body (its `Allow` header is kept).
async fn json_method_not_allowed(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here; see the Allow header"),
    )
    .into_response();
    let (error_parts, body) = error.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    for (name, value) in &error_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

/// Counts every request and its latency by method, route template and status.
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state.http.requests.get_or_create(&labels).inc();
    state
        .http
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Labels of an HTTP request. `route` is the matched route template (`/v1/customers/{id}`),
/// never the raw path, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// `paysync_http_*`.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: Family<HttpLabels, Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> _),
        };
        registry.register(
            "http_requests",
            "HTTP requests handled, by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, by method, route and status",
            metrics.duration.clone(),
        );
        metrics
    }
}
