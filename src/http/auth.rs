//! Bearer-token authentication of the /v1 API.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;

/// Who may call the API. Tokens are kept only as SHA-256 digests and compared in constant
/// time, so neither memory dumps nor response timing reveal them.
#[derive(Clone)]
pub enum ApiAuth {
    Tokens(Arc<Vec<[u8; 32]>>),
    /// `--insecure-no-auth`: every request is let through.
    Disabled,
}

impl ApiAuth {
    pub fn tokens(tokens: &[SecretString]) -> Self {
        Self::Tokens(Arc::new(
            tokens.iter().map(|t| digest(t.expose_secret())).collect(),
        ))
    }

    fn admits(&self, presented: Option<&str>) -> bool {
        match self {
            Self::Disabled => true,
            Self::Tokens(digests) => {
                let Some(presented) = presented else {
                    return false;
                };
                let presented = digest(presented);
                // Check every configured token so the time taken does not tell which matched.
                digests
                    .iter()
                    .fold(subtle::Choice::from(0), |found, d| {
                        found | d.ct_eq(&presented)
                    })
                    .into()
            }
        }
    }
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tokens(digests) => write!(f, "ApiAuth::Tokens({} configured)", digests.len()),
            Self::Disabled => f.write_str("ApiAuth::Disabled"),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: 401 unless the request carries an accepted bearer token.
pub async fn require_bearer(
    State(auth): State<ApiAuth>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if auth.admits(bearer_token(&request)) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_any_configured_token_and_nothing_else() {
        let auth = ApiAuth::tokens(&["old-token".into(), "new-token".into()]);
        assert!(auth.admits(Some("old-token")));
        assert!(auth.admits(Some("new-token")));
        assert!(!auth.admits(Some("new-token ")));
        assert!(!auth.admits(Some("")));
        assert!(!auth.admits(None));
        assert!(ApiAuth::Disabled.admits(None));
    }

    #[test]
    fn debug_output_shows_no_token() {
        let auth = ApiAuth::tokens(&["s3cret".into()]);
        assert_eq!(format!("{auth:?}"), "ApiAuth::Tokens(1 configured)");
    }
}
