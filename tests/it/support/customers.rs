//! Waiting for customers to reach Stripe.

use std::time::Duration;

use serde_json::Value;

use super::app::{TestApp, wait_for};

/// Generous: the fault tests retry through several injected failures and 2 s timeouts.
pub const SYNC_DEADLINE: Duration = Duration::from_secs(60);

/// Waits until the customer's sync has reached `version`; returns the customer.
pub async fn wait_synced(app: &TestApp, id: &str, version: i64) -> Value {
    wait_for(
        &format!("customer {id} synced at version {version}"),
        SYNC_DEADLINE,
        || async {
            let customer: Value = app
                .get_customer(id)
                .await
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if customer["sync"]["synced_version"] == version
                && customer["sync"]["state"] == "synced"
            {
                Ok(customer)
            } else {
                Err(customer["sync"].to_string())
            }
        },
    )
    .await
}
