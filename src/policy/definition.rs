//! What a source (the environment, a file, Kubernetes) says a policy is: its spec and its
//! credentials, checked against the rules the CRD states (so a file cannot hold what the API
//! server would refuse).

use std::sync::LazyLock;

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};

use crate::crd::{MAX_CONFLICT_FIELDS, SyncPolicy, SyncPolicySpec};

/// A policy name is the account key stored with customers and a path segment of its webhook
/// route: a DNS label, as Kubernetes names are.
const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
const API_BASE_PATTERN: &str = r"^https?://[^\s/]+(/.*)?$";
const INTERVAL_PATTERN: &str = r"^([1-9][0-9]*m|[1-9][0-9]*h)$";

static NAME: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(NAME_PATTERN).ok());
static API_BASE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(API_BASE_PATTERN).ok());
static INTERVAL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(INTERVAL_PATTERN).ok());

/// Whether `name` can name a policy (a DNS label): what an `account` must look like.
pub fn is_policy_name(name: &str) -> bool {
    matches(&NAME, name)
}

fn matches(pattern: &LazyLock<Option<Regex>>, text: &str) -> bool {
    pattern.as_ref().is_some_and(|re| re.is_match(text))
}

/// The secrets a policy reads from its Secret.
#[derive(Clone)]
pub struct Credentials {
    /// The Stripe API key; without it nothing is sent to Stripe.
    pub api_key: Option<SecretString>,
    /// Webhook signing secrets (several during a rotation); without any, the policy's webhook
    /// route answers 503.
    pub webhook_secrets: Vec<SecretString>,
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        let key = |c: &Self| c.api_key.as_ref().map(|k| k.expose_secret().to_owned());
        let secrets = |c: &Self| {
            c.webhook_secrets
                .iter()
                .map(|s| s.expose_secret().to_owned())
                .collect::<Vec<_>>()
        };
        key(self) == key(other) && secrets(self) == secrets(other)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish()
    }
}

/// Why a policy cannot sync (the `Ready` condition's reason and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub reason: &'static str,
    pub message: String,
}

/// A policy as a source gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDefinition {
    pub name: String,
    pub spec: SyncPolicySpec,
    pub credentials: Result<Credentials, NotReady>,
}

/// The rules of the CRD's schema that deserializing does not check (name, ranges, patterns,
/// lengths) and its CEL rules (evaluated by `kube`'s CEL evaluator, the same rules the API
/// server evaluates). Every problem, each naming its field.
pub fn check(policy: &SyncPolicy) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    if !matches(&NAME, name) {
        problems.push(format!(
            "metadata.name: {name:?} must be a DNS label (lowercase letters, digits and -, at most 63)"
        ));
    }
    check_spec(&policy.spec, &mut problems);
    if let Err(errors) = kube::core::cel::validate_cel(policy) {
        problems.extend(errors.iter().map(ToString::to_string));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn check_spec(spec: &SyncPolicySpec, problems: &mut Vec<String>) {
    if !matches(&API_BASE, &spec.api_base) {
        problems.push(format!(
            "spec.apiBase: {:?} is not an http(s) URL",
            spec.api_base
        ));
    }
    if !matches(&INTERVAL, &spec.reconcile.interval) {
        problems.push(format!(
            "spec.reconcile.interval: {:?} must be minutes or hours, e.g. 30m or 1h",
            spec.reconcile.interval
        ));
    }
    if !(1..=100).contains(&spec.reconcile.budget_share) {
        problems.push("spec.reconcile.budgetShare: must be 1 to 100".to_owned());
    }
    if spec.conflict.fields.len() > MAX_CONFLICT_FIELDS {
        problems.push(format!(
            "spec.conflict.fields: {} rules, at most {MAX_CONFLICT_FIELDS}",
            spec.conflict.fields.len()
        ));
    }
    let rate = &spec.rate_limit;
    for (field, value) in [
        ("requestsPerSecond", rate.requests_per_second),
        ("burst", rate.burst),
    ] {
        if !(1..=10_000).contains(&value) {
            problems.push(format!("spec.rateLimit.{field}: must be 1 to 10000"));
        }
    }
    let secret = &spec.stripe_secret_ref;
    for (field, value) in [
        ("name", &secret.name),
        ("apiKeyKey", &secret.api_key_key),
        ("webhookSecretsKey", &secret.webhook_secrets_key),
    ] {
        if value.is_empty() || value.len() > 253 {
            problems.push(format!(
                "spec.stripeSecretRef.{field}: must be 1 to 253 characters"
            ));
        }
    }
}

/// A reconcile interval (`30m`, `1h`) as a duration; checked by [`check`] first.
pub fn interval(spec: &SyncPolicySpec) -> Option<std::time::Duration> {
    let raw = &spec.reconcile.interval;
    let (number, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let number: u64 = number.parse().ok()?;
    match unit {
        "m" => Some(std::time::Duration::from_secs(number * 60)),
        "h" => Some(std::time::Duration::from_secs(number * 3600)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(name: &str, spec: serde_json::Value) -> SyncPolicy {
        serde_json::from_value(json!({
            "apiVersion": "paysync.dev/v1alpha1", "kind": "SyncPolicy",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_policy_passes() {
        assert_eq!(
            check(&policy("eu", json!({"stripeSecretRef": {"name": "s"}}))),
            Ok(())
        );
    }

    #[test]
    fn every_rule_of_the_schema_is_checked() {
        for (name, spec, field) in [
            (
                "EU",
                json!({"stripeSecretRef": {"name": "s"}}),
                "metadata.name",
            ),
            (
                "eu",
                json!({"stripeSecretRef": {"name": "s"}, "apiBase": "ftp://x"}),
                "spec.apiBase",
            ),
            (
                "eu",
                json!({"stripeSecretRef": {"name": "s"}, "reconcile": {"interval": "5s"}}),
                "spec.reconcile.interval",
            ),
            (
                "eu",
                json!({"stripeSecretRef": {"name": "s"}, "reconcile": {"budgetShare": 0}}),
                "budgetShare",
            ),
            (
                "eu",
                json!({"stripeSecretRef": {"name": "s"}, "rateLimit": {"requestsPerSecond": 0}}),
                "requestsPerSecond",
            ),
            (
                "eu",
                json!({"stripeSecretRef": {"name": ""}}),
                "stripeSecretRef.name",
            ),
            (
                "eu",
                json!({"stripeSecretRef": {"name": "s", "apiKeyKey": "k", "webhookSecretsKey": "k"}}),
                "different keys",
            ),
            (
                "eu",
                json!({"stripeSecretRef": {"name": "s"}, "conflict": {"fields": {"nick": "LocalWins"}}}),
                "fields may be",
            ),
        ] {
            let problems = check(&policy(name, spec.clone())).unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains(field)),
                "{spec}: {problems:?}"
            );
        }
    }

    #[test]
    fn intervals_read_as_durations() {
        let mut spec = policy("eu", json!({"stripeSecretRef": {"name": "s"}})).spec;
        assert_eq!(interval(&spec), Some(std::time::Duration::from_secs(3600)));
        spec.reconcile.interval = "30m".into();
        assert_eq!(interval(&spec), Some(std::time::Duration::from_secs(1800)));
    }
}
