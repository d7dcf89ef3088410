//! Extractors whose rejections are `ApiError`s, and the request headers the API understands.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::IF_MATCH;

use super::ApiError;

/// `axum::Json`, rejecting with the API's error format.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query`, rejecting with the API's error format.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Longest `Idempotency-Key` accepted (Stripe's own limit).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            ),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    let visible = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS || !visible {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// Most digits of a version in `If-Match` (any more could overflow an i64).
const MAX_VERSION_DIGITS: usize = 18;

/// The version named by `If-Match`: the customer's ETag (`"3"`), also accepted bare (`3`) or
/// weak (`W/"3"`). `*` matches any existing customer, as if the header were absent. Exactly
/// the grammar the OpenAPI document publishes; anything else is a 400.
pub fn if_match_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_if_match",
            "If-Match must be the customer's ETag, e.g. \"3\"",
        )
    };
    let raw = value.to_str().map_err(|_| invalid())?;
    if raw == "*" {
        return Ok(None);
    }
    let unweakened = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = match unweakened.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(invalid)?,
        // Weak ETags are always quoted.
        None if unweakened.len() != raw.len() => return Err(invalid()),
        None => unweakened,
    };
    let well_formed = !digits.is_empty()
        && digits.len() <= MAX_VERSION_DIGITS
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(invalid());
    }
    digits.parse::<i64>().map(Some).map_err(|_| invalid())
}

/// The strong ETag of a customer version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn if_match_accepts_etag_forms() {
        for (raw, expected) in [
            ("\"3\"", Some(3)),
            ("3", Some(3)),
            ("W/\"12\"", Some(12)),
            ("*", None),
        ] {
            assert_eq!(
                if_match_version(&headers("if-match", raw)).unwrap(),
                expected,
                "{raw}"
            );
        }
        assert_eq!(if_match_version(&HeaderMap::new()).unwrap(), None);
        for raw in [
            "abc",
            "\"\"",
            "0",
            "-1",
            "\"3",
            "1.5",
            " 3",
            "+3",
            "03",
            "W/3",
            "W/\"0\"",
            "1234567890123456789",
        ] {
            assert!(
                if_match_version(&headers("if-match", raw)).is_err(),
                "{raw}"
            );
        }
        assert_eq!(
            if_match_version(&headers("if-match", &etag(7))).unwrap(),
            Some(7)
        );
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert_eq!(
            idempotency_key(&headers("idempotency-key", "order-42"))
                .unwrap()
                .as_deref(),
            Some("order-42")
        );
        assert!(idempotency_key(&headers("idempotency-key", "")).is_err());
        assert!(idempotency_key(&headers("idempotency-key", "has space")).is_err());
        assert!(idempotency_key(&headers("idempotency-key", &"k".repeat(256))).is_err());
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
    }
}
