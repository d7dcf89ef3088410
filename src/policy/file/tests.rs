use secrecy::ExposeSecret as _;

use super::*;

fn read(text: &str) -> Result<Vec<PolicyDefinition>, LoadError> {
    let mut manifests = Manifests::default();
    manifests.read("policies.yaml", text)?;
    manifests.definitions()
}

const TWO_ACCOUNTS: &str = r#"
apiVersion: paysync.dev/v1alpha1
kind: SyncPolicy
metadata: {name: us}
spec:
  stripeSecretRef: {name: stripe-us}
  apiBase: http://127.0.0.1:8420
---
apiVersion: paysync.dev/v1alpha1
kind: SyncPolicy
metadata: {name: eu}
spec:
  stripeSecretRef: {name: stripe-eu}
  mode: Observe
---
apiVersion: v1
kind: Secret
metadata: {name: stripe-us}
stringData: {apiKey: sk_test_us, webhookSecrets: "whsec_a, whsec_b"}
---
apiVersion: v1
kind: Secret
metadata: {name: stripe-eu}
data: {apiKey: c2tfdGVzdF9ldQ==}
"#;

#[test]
fn reads_policies_and_their_secrets_from_string_data_or_data() {
    let definitions = read(TWO_ACCOUNTS).unwrap();
    assert_eq!(definitions.len(), 2);
    let us = &definitions[0];
    assert_eq!(us.name, "us");
    let credentials = us.credentials.as_ref().unwrap();
    assert_eq!(
        credentials.api_key.as_ref().unwrap().expose_secret(),
        "sk_test_us"
    );
    assert_eq!(credentials.webhook_secrets.len(), 2);
    let eu = definitions[1].credentials.as_ref().unwrap();
    assert_eq!(eu.api_key.as_ref().unwrap().expose_secret(), "sk_test_eu");
    assert!(eu.webhook_secrets.is_empty());
}

#[test]
fn a_policy_without_its_secret_is_not_ready() {
    let definitions = read(
        "apiVersion: paysync.dev/v1alpha1\nkind: SyncPolicy\nmetadata: {name: eu}\nspec: {stripeSecretRef: {name: missing}}\n",
    )
    .unwrap();
    let not_ready = definitions[0].credentials.as_ref().unwrap_err();
    assert_eq!(not_ready.reason, reasons::SECRET_NOT_FOUND);
    assert!(
        not_ready.message.contains("default/missing"),
        "{not_ready:?}"
    );
}

#[test]
fn errors_name_the_document_and_the_field() {
    for (text, expected) in [
        (
            "kind: ConfigMap\napiVersion: v1\n",
            "document 1: v1 ConfigMap",
        ),
        (
            "apiVersion: paysync.dev/v1alpha1\nkind: SyncPolicy\nmetadata: {name: eu}\nspec: {stripeSecretRef: {name: s}, mode: Enforced}\n",
            "unknown variant `Enforced`",
        ),
        (
            "---\n---\napiVersion: paysync.dev/v1alpha1\nkind: SyncPolicy\nmetadata: {name: eu}\nspec: {stripeSecretRef: {name: s}, reconcile: {budgetShare: 0}}\n",
            "budgetShare",
        ),
        ("a: [unclosed", "not YAML"),
    ] {
        let error = read(text).unwrap_err().to_string();
        assert!(error.contains(expected), "{text:?}: {error}");
        assert!(error.contains("policies.yaml"), "{error}");
    }
}
