//! Which account (SyncPolicy) a customer belongs to, as the API enforces it: chosen once at
//! creation, never changed, and refused for writes when its policy only reads from Stripe.

use axum::http::StatusCode;

use super::super::ApiError;
use crate::policy::{PolicyRegistry, is_policy_name};

/// The account a new customer joins: the one asked for, else `default`, else the only policy.
pub(super) fn for_new_customer(
    policies: &PolicyRegistry,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let name = match requested {
        Some(name) => name.to_owned(),
        None => policies.default_account().ok_or_else(|| {
            ApiError::unprocessable(
                "account_required",
                "account: required when there is no `default` policy and more than one policy",
            )
        })?,
    };
    if policies.get(&name).is_none() {
        return Err(ApiError::unprocessable(
            "unknown_account",
            format!("account: there is no policy named {name:?}"),
        ));
    }
    writable(policies, &name)?;
    Ok(name)
}

/// Refuses writes to the customers of a policy that syncs StripeToLocal (Stripe owns them).
pub(super) fn writable(policies: &PolicyRegistry, account: &str) -> Result<(), ApiError> {
    match policies.get(account) {
        Some(policy) if policy.read_only() => Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_read_only",
            format!(
                "the customers of account {account:?} are read-only here: its policy syncs StripeToLocal"
            ),
        )),
        _ => Ok(()),
    }
}

/// `account` in a PATCH may only repeat the customer's own.
pub(super) fn unchanged(current: &str, requested: Option<Option<&str>>) -> Result<(), ApiError> {
    match requested {
        Some(None) => Err(ApiError::unprocessable(
            "validation_failed",
            "account: cannot be removed",
        )),
        Some(Some(requested)) if requested != current => Err(ApiError::unprocessable(
            "account_immutable",
            format!("account: a customer cannot move accounts (it is in {current:?})"),
        )),
        _ => Ok(()),
    }
}

/// The `account` filter of a listing, when given, must be a policy name (400 otherwise).
pub(super) fn filter(account: Option<&str>) -> Result<Option<&str>, ApiError> {
    match account {
        Some(account) if !is_policy_name(account) => Err(ApiError::bad_request(
            "invalid_account_filter",
            "account must be a policy name (lowercase letters, digits and -, at most 63)",
        )),
        other => Ok(other),
    }
}
