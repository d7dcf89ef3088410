//! `/v1/dead-letters`: changes that could not be synced, and their replay.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::ApiQuery;
use super::{ApiError, AppState, ErrorBody};
use crate::store::{self, dead_letters::DeadLetter};
use crate::sync::dead_letters::{ReplayError, replay};

/// Largest page of dead letters.
const MAX_LIST: i64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(replay_dead_letter))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterBody {
    pub id: Uuid,
    /// `outbound` (local → Stripe) or `inbound` (Stripe → local).
    pub source: String,
    /// The local customer id (outbound) or Stripe event id (inbound).
    pub key: String,
    /// The message as it arrived: its JSON, or (for a message that is not JSON) its text, with
    /// anything that is not UTF-8 replaced by U+FFFD.
    pub payload: serde_json::Value,
    /// The last error.
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    /// Closed without a replay because its cause is gone (e.g. the customer was deleted on
    /// both sides); `closed_reason` says why.
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_reason: Option<String>,
}

impl From<DeadLetter> for DeadLetterBody {
    fn from(letter: DeadLetter) -> Self {
        Self {
            id: letter.id,
            source: letter.source.as_str().to_owned(),
            key: letter.key,
            payload: serde_json::from_slice(&letter.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&letter.payload).into_owned())
            }),
            error: letter.error,
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at,
            last_failed_at: letter.last_failed_at,
            replayed_at: letter.replayed_at,
            closed_at: letter.closed_at,
            closed_reason: letter.closed_reason,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    pub data: Vec<DeadLetterBody>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Include replayed and closed dead letters (default: only open ones).
    pub all: Option<bool>,
    /// At most this many, newest first (1 to 500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// List dead letters, newest first.
#[utoipa::path(get, path = "/dead-letters", tag = "dead letters", params(DeadLetterQuery),
    responses(
        (status = 200, description = "Dead letters", body = DeadLetterList),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_dead_letters(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    let mut conn = store::acquire(&state.pool).await?;
    let letters = store::dead_letters::list(&mut conn, query.all.unwrap_or(false), limit).await?;
    Ok(Json(DeadLetterList {
        data: letters.into_iter().map(DeadLetterBody::from).collect(),
    }))
}

/// Replay a dead letter: an outbound one queues its customer for another sync of its current
/// state; an inbound one puts its Stripe event back in the inbox to be applied again.
#[utoipa::path(post, path = "/dead-letters/{id}/replay", tag = "dead letters",
    params(("id" = Uuid, Path, description = "Dead letter id")),
    responses(
        (status = 202, description = "Queued for another sync"),
        (status = 400, description = "Not a dead letter id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 409, description = "Already replayed, or closed (its cause is gone)", body = ErrorBody),
        (status = 422, description = "Not replayable (a message paysync could not read)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn replay_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("{id:?} is not a dead letter id (a UUID)"),
        )
    })?;
    match replay(&state.pool, id).await {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(ReplayError::NotFound(_)) => {
            Err(ApiError::not_found(format!("dead letter {id} not found")))
        }
        Err(e @ ReplayError::AlreadyReplayed(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_replayed",
            e.to_string(),
        )),
        Err(e @ ReplayError::Closed { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "closed", e.to_string()))
        }
        Err(ReplayError::Store(e)) => Err(e.into()),
        Err(e @ (ReplayError::BadKey { .. } | ReplayError::NotReplayable { .. })) => {
            Err(ApiError::unprocessable("not_replayable", e.to_string()))
        }
    }
}
