//! Signed Stripe deliveries as Stripe makes them.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::app::TestApp;

pub const SECRET: &str = "whsec_paysync_test";
pub const ROTATED_SECRET: &str = "whsec_paysync_previous";

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `Stripe-Signature` for `body` at `t`, as Stripe computes it.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub async fn deliver(app: &TestApp, body: &str, signature: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.unwrap()
}
