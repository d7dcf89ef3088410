use kube::CustomResourceExt as _;
use serde_json::json;

use super::*;

fn policy(spec: serde_json::Value) -> Result<SyncPolicy, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "paysync.dev/v1alpha1",
        "kind": "SyncPolicy",
        "metadata": {"name": "eu", "namespace": "payments"},
        "spec": spec,
    }))
}

#[test]
fn a_minimal_policy_gets_every_default() {
    let policy = policy(json!({"stripeSecretRef": {"name": "stripe-eu"}})).unwrap();
    let spec = policy.spec;
    assert_eq!(spec.stripe_secret_ref.api_key_key, "apiKey");
    assert_eq!(spec.stripe_secret_ref.webhook_secrets_key, "webhookSecrets");
    assert_eq!(spec.api_base, "https://api.stripe.com");
    assert_eq!(spec.direction, Direction::Bidirectional);
    assert_eq!(spec.mode, Mode::Enforce);
    assert_eq!(spec.conflict.default, Resolution::Newest);
    assert_eq!(spec.deletion, Deletion::Propagate);
    assert_eq!(spec.adoption, Adoption::All);
    assert_eq!(spec.reconcile.interval, "1h");
    assert_eq!(spec.reconcile.budget_share, 50);
    assert_eq!(spec.rate_limit.requests_per_second, 20);
    assert!(!spec.suspend);
}

#[test]
fn unknown_fields_and_values_are_refused() {
    assert!(policy(json!({"stripeSecretRef": {"name": "s"}, "mood": "happy"})).is_err());
    assert!(policy(json!({"stripeSecretRef": {"name": "s"}, "mode": "enforce"})).is_err());
    assert!(policy(json!({"stripeSecretRef": {"name": "s", "keyKey": "k"}})).is_err());
}

#[test]
fn the_cel_rules_hold_for_the_file_source_too() {
    let ok = policy(json!({
        "stripeSecretRef": {"name": "s"},
        "conflict": {"default": "Newest", "fields": {"email": "LocalWins", "metadata.plan": "StripeWins"}}
    }))
    .unwrap();
    assert!(kube::core::cel::validate_cel(&ok).is_ok());
    let same_keys = policy(json!({
        "stripeSecretRef": {"name": "s", "apiKeyKey": "k", "webhookSecretsKey": "k"}
    }))
    .unwrap();
    let errors = kube::core::cel::validate_cel(&same_keys).unwrap_err();
    assert!(
        format!("{errors:?}").contains("different keys"),
        "{errors:?}"
    );
    let bad_field = policy(json!({
        "stripeSecretRef": {"name": "s"},
        "conflict": {"fields": {"nickname": "LocalWins"}}
    }))
    .unwrap();
    assert!(kube::core::cel::validate_cel(&bad_field).is_err());
}

#[test]
fn the_crd_has_status_printer_columns_short_name_and_rules() {
    let crd = serde_json::to_value(SyncPolicy::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "syncpolicies.paysync.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["sp"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Mode",
            "Direction",
            "Drift",
            "Last Reconcile",
            "Age"
        ]
    );
    let text = crd.to_string();
    assert!(text.contains("x-kubernetes-validations"), "{text}");
}

#[test]
fn the_committed_crd_is_what_the_types_generate() {
    let committed = include_str!("../../crds/syncpolicy.yaml");
    assert_eq!(
        committed,
        crd_yaml().unwrap(),
        "crds/syncpolicy.yaml is stale: run `make generate`"
    );
}

#[test]
fn a_field_rule_falls_back_to_metadata_then_to_the_default() {
    let rules = ConflictRules {
        default: Resolution::Newest,
        fields: BTreeMap::from([
            ("email".to_owned(), Resolution::LocalWins),
            ("metadata".to_owned(), Resolution::StripeWins),
            ("metadata.plan".to_owned(), Resolution::LocalWins),
        ]),
    };
    assert_eq!(rules.for_field("email"), Resolution::LocalWins);
    assert_eq!(rules.for_field("name"), Resolution::Newest);
    assert_eq!(rules.for_field("metadata.plan"), Resolution::LocalWins);
    assert_eq!(rules.for_field("metadata.seats"), Resolution::StripeWins);
}
