//! `ApiError`: every failure of the HTTP API as `{"error": {"code", "message"}}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store;
use crate::telemetry::error_chain;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `email_taken`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// What went wrong, for a person.
    #[schema(example = "email: is not a valid address")]
    pub message: String,
}

/// A failed request. For 5xx the message sent is generic and `source` is only logged, so
/// nothing internal leaks to clients.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            source: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".to_owned(),
            source: Some(source.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            let error = self
                .source
                .as_deref()
                .map(|source| error_chain(source))
                .unwrap_or_else(|| self.message.clone());
            tracing::error!(status = self.status.as_u16(), code = self.code, error = %error, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> Self {
        use store::Error as E;
        match error {
            E::CustomerNotFound(id) => Self::not_found(format!("customer {id} not found")),
            E::VersionMismatch {
                expected, current, ..
            } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                format!("the customer is at version {current}, not {expected}; fetch it and retry"),
            ),
            E::EmailTaken => Self::new(
                StatusCode::CONFLICT,
                "email_taken",
                "another customer already uses this email",
            ),
            E::Invalid(invalid) => Self::unprocessable("validation_failed", invalid.to_string()),
            E::MetadataFull(message) => Self::new(StatusCode::CONFLICT, "metadata_full", message),
            // A value PostgreSQL refuses that no rule caught: the client's input, not a fault.
            other @ E::Database { .. } if other.is_data_error() => {
                tracing::warn!(error = %error_chain(&other), "input refused by the database");
                Self::unprocessable("invalid_value", "a value cannot be stored as sent")
            }
            // The API never takes a sync lock without waiting; seen here it is a fault.
            other @ (E::Corrupt(_) | E::Database { .. } | E::SyncInFlight) => Self::internal(other),
        }
    }
}

impl From<crate::domain::ValidationError> for ApiError {
    fn from(invalid: crate::domain::ValidationError) -> Self {
        Self::unprocessable("validation_failed", invalid.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "malformed_json",
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!(
                    "the request body is larger than {} bytes",
                    super::MAX_BODY_BYTES
                )
            }
            _ => rejection.body_text(),
        };
        // Anything else axum reports here is still the client's fault.
        let status = if status.is_server_error() {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        Self::new(status, code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_errors_do_not_leak_their_cause() {
        let response = ApiError::internal(std::io::Error::other(
            "relation \"customers\" does not exist",
        ))
        .into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "internal", "message": "internal error"}})
        );
    }

    #[tokio::test]
    async fn unauthorized_carries_a_challenge() {
        let response = ApiError::unauthorized().into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
