//! `/v1/policies`: the effective SyncPolicies (one per Stripe account), as the running
//! process applies them: the spec (which names its Secret, never a secret's value or length),
//! whether the policy can sync and why not, and its customers by sync state.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::crd::CustomerCounts;
use crate::policy::{Policy, Readiness};
use crate::reconcile::RunReport;
use crate::store::{self, customers};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_policies))
        .routes(routes!(get_policy))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyBody {
    /// The policy's name: the `account` of its customers.
    pub name: String,
    /// The spec in effect (SyncPolicy `spec`, defaults applied).
    #[schema(value_type = Object)]
    pub spec: crate::crd::SyncPolicySpec,
    pub readiness: Readiness,
    /// Live customers of the account by sync state.
    pub customers: CustomerCountsBody,
    /// The last finished reconcile run (this process's, else the last one recorded).
    pub last_reconcile: Option<RunReport>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, ToSchema)]
pub struct CustomerCountsBody {
    pub pending: i64,
    pub synced: i64,
    pub failed: i64,
    pub orphaned: i64,
}

impl From<CustomerCounts> for CustomerCountsBody {
    fn from(counts: CustomerCounts) -> Self {
        Self {
            pending: counts.pending,
            synced: counts.synced,
            failed: counts.failed,
            orphaned: counts.orphaned,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyList {
    pub data: Vec<PolicyBody>,
}

async fn body(
    state: &AppState,
    policy: &Policy,
    counts: &BTreeMap<String, CustomerCounts>,
) -> Result<PolicyBody, ApiError> {
    let last_reconcile = state.reconciler.last_finished(&policy.name).await?;
    Ok(PolicyBody {
        name: policy.name.clone(),
        spec: policy.spec.clone(),
        readiness: policy.readiness(),
        customers: counts.get(&policy.name).copied().unwrap_or_default().into(),
        last_reconcile,
    })
}

async fn counts(state: &AppState) -> Result<BTreeMap<String, CustomerCounts>, ApiError> {
    let mut conn = store::acquire(&state.pool).await?;
    let mut counts: BTreeMap<String, CustomerCounts> = BTreeMap::new();
    for (account, sync_state, count) in customers::count_by_state(&mut conn).await? {
        counts.entry(account).or_default().add(&sync_state, count);
    }
    Ok(counts)
}

/// List the effective policies, by name.
#[utoipa::path(
    get,
    path = "/policies",
    tag = "policies",
    responses(
        (status = 200, description = "Every effective policy", body = PolicyList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_policies(State(state): State<AppState>) -> Result<Json<PolicyList>, ApiError> {
    let counts = counts(&state).await?;
    let mut data = Vec::new();
    for policy in state.policies.all() {
        data.push(body(&state, &policy, &counts).await?);
    }
    Ok(Json(PolicyList { data }))
}

/// Get one effective policy.
#[utoipa::path(
    get,
    path = "/policies/{name}",
    tag = "policies",
    params(("name" = String, Path, description = "The policy's name")),
    responses(
        (status = 200, description = "The policy", body = PolicyBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No policy of that name", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PolicyBody>, ApiError> {
    let policy = state
        .policies
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no policy named {name:?}")))?;
    let counts = counts(&state).await?;
    Ok(Json(body(&state, &policy, &counts).await?))
}
