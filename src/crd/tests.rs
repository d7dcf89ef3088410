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
            "Synced",
            "Reason",
            "Mode",
            "Direction",
            "Drift",
            "Last Reconcile",
            "Age"
        ]
    );
    let wide: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 1)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(wide, ["Mode", "Direction", "Drift", "Last Reconcile"]);
    assert_eq!(crd["spec"]["names"]["categories"], json!(["paysync"]));
    let conditions =
        &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
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

/// The API server's per-rule CEL cost budget (`PerCallLimit`).
const RULE_COST_BUDGET: u64 = 10_000_000;

/// A worst-case cost for each CEL rule, from the bounds of what it can read: every map, list
/// and string under a rule's node must be bounded (the API server otherwise sizes it by the
/// largest request, ~3 MB, which is how an unbounded map blows the budget), and the estimate
/// is coarser than the server's: every element of every collection under the node is taken as
/// a step, each costing every character of the rule, times the longest string's length over
/// ten (string operations cost by length).
#[test]
fn every_cel_rule_reads_bounded_values_and_fits_the_cost_budget() {
    let crd = serde_json::to_value(SyncPolicy::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut rules = Vec::new();
    find_rules(schema, "", &mut rules);
    assert!(!rules.is_empty());
    for (path, node, rule) in rules {
        let mut bounds = Bounds::default();
        bounds.walk(node, &path);
        assert!(
            bounds.unbounded.is_empty(),
            "the rule at {path} reads unbounded values: {:?}",
            bounds.unbounded
        );
        let per_step = rule.len() as u64 * (1 + bounds.longest_string / 10);
        let cost = bounds.elements.max(1) * per_step;
        assert!(
            cost < RULE_COST_BUDGET,
            "the rule at {path} may cost {cost}: {rule}"
        );
    }
}

/// A map with more keys than the CEL rule's bound was written for is refused.
#[test]
fn conflict_fields_have_a_bound() {
    let crd = serde_json::to_value(SyncPolicy::crd()).unwrap();
    let fields = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["conflict"]["properties"]["fields"];
    assert_eq!(fields["maxProperties"], MAX_CONFLICT_FIELDS);
}

fn find_rules<'a>(
    node: &'a serde_json::Value,
    path: &str,
    out: &mut Vec<(String, &'a serde_json::Value, String)>,
) {
    for rule in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push((
            path.to_owned(),
            node,
            rule["rule"].as_str().unwrap().to_owned(),
        ));
    }
    for (name, child) in node["properties"].as_object().into_iter().flatten() {
        find_rules(child, &format!("{path}.{name}"), out);
    }
    for child in [&node["items"], &node["additionalProperties"]] {
        if child.is_object() {
            find_rules(child, &format!("{path}[*]"), out);
        }
    }
}

#[derive(Default)]
struct Bounds {
    /// Elements of every collection under the node, nested ones multiplied.
    elements: u64,
    longest_string: u64,
    unbounded: Vec<String>,
}

impl Bounds {
    fn walk(&mut self, node: &serde_json::Value, path: &str) {
        self.walk_scaled(node, path, 1);
    }

    fn walk_scaled(&mut self, node: &serde_json::Value, path: &str, scale: u64) {
        match node["type"].as_str() {
            Some("string") => self.string(node, path),
            Some("array") => {
                let items = self.collection(node, "maxItems", path, scale);
                self.walk_scaled(&node["items"], &format!("{path}[*]"), items);
            }
            Some("object") if node["additionalProperties"].is_object() => {
                let entries = self.collection(node, "maxProperties", path, scale);
                self.walk_scaled(
                    &node["additionalProperties"],
                    &format!("{path}[*]"),
                    entries,
                );
            }
            _ => {}
        }
        for (name, child) in node["properties"].as_object().into_iter().flatten() {
            self.walk_scaled(child, &format!("{path}.{name}"), scale);
        }
    }

    fn collection(&mut self, node: &serde_json::Value, bound: &str, path: &str, scale: u64) -> u64 {
        match node[bound].as_u64() {
            Some(max) => {
                self.elements += scale * max;
                scale * max
            }
            None => {
                self.unbounded.push(format!("{path} (no {bound})"));
                scale
            }
        }
    }

    fn string(&mut self, node: &serde_json::Value, path: &str) {
        let from_enum = node["enum"]
            .as_array()
            .map(|values| values.iter().filter_map(|v| v.as_str()).map(str::len).max());
        match (node["maxLength"].as_u64(), from_enum) {
            (Some(max), _) => self.longest_string = self.longest_string.max(max),
            (None, Some(Some(max))) => self.longest_string = self.longest_string.max(max as u64),
            _ => self.unbounded.push(format!("{path} (no maxLength)")),
        }
    }
}
