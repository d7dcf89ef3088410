use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;
use crate::backoff::Backoff;
use crate::metrics;
use crate::stripe::{HttpStripe, RateLimit, StripeMetrics, StripeSettings};

/// A registry whose factory counts the clients it makes (real clients, never called here).
fn registry() -> (PolicyRegistry, Arc<AtomicUsize>) {
    let made = Arc::new(AtomicUsize::new(0));
    let counter = made.clone();
    let stripe_metrics = StripeMetrics::register(&mut metrics::registry());
    let factory: StripeFactory = Arc::new(move |name, key, spec| {
        counter.fetch_add(1, Ordering::SeqCst);
        let settings = StripeSettings {
            api_key: key.clone(),
            api_base: spec.api_base.clone(),
            timeout: Duration::from_secs(1),
            max_attempts: 1,
            backoff: Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
        };
        let limit = RateLimit::new(std::num::NonZeroU32::MIN, std::num::NonZeroU32::MIN);
        let client = HttpStripe::new(settings, limit, Arc::new(stripe_metrics.for_policy(name)))?;
        Ok(Arc::new(client) as Arc<dyn StripeApi>)
    });
    (PolicyRegistry::new(factory, Duration::from_secs(300)), made)
}

fn definition(name: &str, key: Option<&str>, spec: serde_json::Value) -> PolicyDefinition {
    let mut merged = json!({"stripeSecretRef": {"name": name}, "apiBase": "http://127.0.0.1:9"});
    if let (Some(merged), Some(spec)) = (merged.as_object_mut(), spec.as_object()) {
        merged.extend(spec.clone());
    }
    PolicyDefinition {
        name: name.to_owned(),
        spec: serde_json::from_value(merged).unwrap(),
        credentials: Ok(Credentials {
            api_key: key.map(SecretString::from),
            webhook_secrets: vec!["whsec_a".into()],
        }),
    }
}

#[test]
fn a_change_that_leaves_key_base_and_rate_alone_keeps_the_client() {
    let (registry, made) = registry();
    registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    registry.get("eu").unwrap().set_readiness(connected());
    let changes = registry.replace(vec![definition(
        "eu",
        Some("sk_1"),
        json!({"conflict": {"default": "LocalWins"}}),
    )]);
    assert_eq!(changes.changed, ["eu"]);
    assert!(changes.to_probe.is_empty(), "{changes:?}");
    assert_eq!(made.load(Ordering::SeqCst), 1);
    assert_eq!(
        registry.get("eu").unwrap().spec.conflict.default,
        crate::crd::Resolution::LocalWins
    );
}

#[test]
fn a_new_key_or_rate_makes_a_new_client_to_probe() {
    let (registry, made) = registry();
    registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    let changes = registry.replace(vec![definition("eu", Some("sk_2"), json!({}))]);
    assert_eq!(changes.to_probe, ["eu"]);
    let changes = registry.replace(vec![definition(
        "eu",
        Some("sk_2"),
        json!({"rateLimit": {"requestsPerSecond": 5}}),
    )]);
    assert_eq!(changes.to_probe, ["eu"]);
    assert_eq!(made.load(Ordering::SeqCst), 3);
}

#[test]
fn an_unchanged_policy_is_the_same_object() {
    let (registry, _) = registry();
    registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    let before = registry.get("eu").unwrap();
    let changes = registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    assert!(changes.changed.is_empty() && changes.added.is_empty());
    assert!(Arc::ptr_eq(&before, &registry.get("eu").unwrap()));
}

#[test]
fn removed_policies_are_reported_and_observe_to_enforce_starts_writing() {
    let (registry, _) = registry();
    registry.replace(vec![
        definition("eu", Some("sk_1"), json!({"mode": "Observe"})),
        definition("us", Some("sk_2"), json!({})),
    ]);
    assert!(!registry.get("eu").unwrap().writes_to_stripe());
    let changes = registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    assert_eq!(changes.removed, ["us"]);
    assert_eq!(changes.now_writing, ["eu"]);
    assert!(registry.get("us").is_none());
}

#[test]
fn without_a_key_a_policy_is_not_ready_and_has_no_client() {
    let (registry, made) = registry();
    registry.replace(vec![definition("eu", None, json!({}))]);
    let policy = registry.get("eu").unwrap();
    assert!(policy.stripe().is_none());
    assert_eq!(policy.readiness().reason, reasons::KEY_MISSING);
    assert!(policy.webhooks.is_some(), "webhooks still verify");
    assert_eq!(made.load(Ordering::SeqCst), 0);
}

#[test]
fn a_rejected_key_stops_the_client_until_the_key_changes() {
    let (registry, _) = registry();
    registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    registry.get("eu").unwrap().key_rejected("Invalid API Key");
    assert!(registry.get("eu").unwrap().stripe().is_none());
    registry.replace(vec![definition("eu", Some("sk_2"), json!({}))]);
    let policy = registry.get("eu").unwrap();
    assert!(policy.stripe().is_some());
    assert_eq!(policy.readiness().reason, "Checking");
}

#[test]
fn the_default_account_is_default_or_the_only_policy() {
    let (registry, _) = registry();
    registry.replace(vec![definition("eu", None, json!({}))]);
    assert_eq!(registry.default_account().as_deref(), Some("eu"));
    registry.replace(vec![
        definition("eu", None, json!({})),
        definition("us", None, json!({})),
    ]);
    assert_eq!(registry.default_account(), None);
    registry.replace(vec![
        definition("default", None, json!({})),
        definition("us", None, json!({})),
    ]);
    assert_eq!(registry.default_account().as_deref(), Some("default"));
}

#[test]
fn a_suspended_policy_is_not_ready_and_resuming_restores_its_key_state() {
    let (registry, _) = registry();
    registry.replace(vec![definition(
        "eu",
        Some("sk_1"),
        json!({"suspend": true}),
    )]);
    assert_eq!(
        registry.get("eu").unwrap().readiness().reason,
        reasons::SUSPENDED
    );
    registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    assert_eq!(registry.get("eu").unwrap().readiness().reason, "Checking");
}

fn connected() -> Readiness {
    Readiness {
        ready: true,
        reason: reasons::CONNECTED,
        message: "the API key was accepted".to_owned(),
    }
}

/// A policy changed while its key's probe is still out keeps the client, and is probed again:
/// that probe's answer goes to the replaced policy, and this one would stay `Checking`.
#[test]
fn a_change_before_the_probe_answered_is_probed_again() {
    let (registry, made) = registry();
    let first = registry.replace(vec![definition("eu", Some("sk_1"), json!({}))]);
    assert_eq!(first.to_probe, ["eu"]);
    let changes = registry.replace(vec![definition(
        "eu",
        Some("sk_1"),
        json!({"suspend": true}),
    )]);
    assert_eq!(changes.to_probe, ["eu"]);
    assert_eq!(made.load(Ordering::SeqCst), 1, "the client is kept");
}
