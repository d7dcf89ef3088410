//! `POST /v1/policies/{name}/reconcile` (start a run now) and `GET /v1/reconcile-runs` (the
//! recorded runs, newest first).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::ApiQuery;
use super::{ApiError, AppState, ErrorBody};
use crate::policy::is_policy_name;
use crate::reconcile::{RunError, RunOptions, RunReport, Trigger};
use crate::store::{self, reconcile_runs};

/// Largest page of runs.
const MAX_LIST: i64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_reconcile))
        .routes(routes!(list_reconcile_runs))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReconcileStarted {
    /// The run's id (listed by `GET /v1/reconcile-runs` once it is recorded: runs of a policy
    /// in Observe mode record nothing and show in `GET /v1/policies/{name}` only).
    pub id: Uuid,
    pub policy: String,
}

impl From<RunError> for ApiError {
    fn from(error: RunError) -> Self {
        match error {
            RunError::NoPolicy(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_policy",
                format!("no policy named {name:?}"),
            ),
            e @ RunError::NotReady { .. } => {
                ApiError::new(StatusCode::CONFLICT, "policy_not_ready", e.to_string())
            }
            e @ RunError::AlreadyRunning(_) => {
                ApiError::new(StatusCode::CONFLICT, "reconcile_running", e.to_string())
            }
            RunError::Store(e) => e.into(),
        }
    }
}

/// Start a reconcile of the policy now (in the background): the whole Stripe account diffed
/// with PostgreSQL and repaired, or in Observe mode only reported.
#[utoipa::path(post, path = "/policies/{name}/reconcile", tag = "policies",
    params(("name" = String, Path, description = "The policy's name")),
    responses(
        (status = 202, description = "The run started", body = ReconcileStarted),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No policy of that name", body = ErrorBody),
        (status = 409, description = "The policy is not ready, or a run is going on", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn start_reconcile(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ReconcileStarted>), ApiError> {
    let options = RunOptions {
        trigger: Trigger::Manual,
        dry_run: false,
        plan: None,
    };
    let id = state.reconciler.clone().start(&name, options).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ReconcileStarted { id, policy: name }),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReconcileRunList {
    pub data: Vec<RunReport>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Only this policy's runs (none for a name no policy can have).
    pub policy: Option<String>,
    /// At most this many, newest first (1 to 500, default 20).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// List recorded reconcile runs with their counts, newest first.
#[utoipa::path(get, path = "/reconcile-runs", tag = "policies", params(RunQuery),
    responses(
        (status = 200, description = "Runs", body = ReconcileRunList),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_reconcile_runs(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RunQuery>,
) -> Result<Json<ReconcileRunList>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    // No run can belong to a name that is not a policy's (nor can such text reach SQL).
    if query.policy.as_deref().is_some_and(|p| !is_policy_name(p)) {
        return Ok(Json(ReconcileRunList { data: Vec::new() }));
    }
    let mut conn = store::acquire(&state.pool).await?;
    let runs = reconcile_runs::list(&mut conn, query.policy.as_deref(), limit).await?;
    Ok(Json(ReconcileRunList {
        data: runs.into_iter().map(RunReport::from).collect(),
    }))
}
