//! The chart's values, one test per promise a platform team relies on: an umbrella chart's
//! `global`, security contexts that OpenShift can take over, a PodDisruptionBudget that cannot
//! block a drain, a NetworkPolicy that allows only what it lists, names within 63
//! characters, migration pods no Service selects, the CRD installed and upgraded as a
//! template (kept on uninstall), a CA and extra volumes mounted, an image by digest, a
//! priority class, NOTES for the release's namespace, and a README naming every value.

use serde_json::Value;

use crate::chart::{CHART, documents, helm, render_text, root};

fn render(set: &str) -> Vec<Value> {
    documents(&render_text(Some(set)))
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn pod_spec<'a>(docs: &'a [Value], of: &str) -> &'a Value {
    &kind(docs, of).unwrap_or_else(|| panic!("no {of}"))["spec"]["template"]["spec"]
}

#[test]
fn an_umbrella_charts_global_values_are_accepted() {
    let (ok, text) = helm(&[
        "lint",
        "--strict",
        CHART,
        "--set",
        "global.imageRegistry=registry.example.com,global.storageClass=fast",
    ]);
    assert!(ok, "{text}");
}

#[test]
fn security_contexts_can_be_overridden_and_openshift_can_assign_the_user() {
    let docs = render(
        "podSecurityContext.runAsUser=null,podSecurityContext.runAsGroup=null,\
         podSecurityContext.fsGroup=null,containerSecurityContext.readOnlyRootFilesystem=false",
    );
    for of in ["Deployment", "Job"] {
        let pod = pod_spec(&docs, of);
        let context = &pod["securityContext"];
        for field in ["runAsUser", "runAsGroup", "fsGroup"] {
            assert!(
                context.get(field).is_none(),
                "{of}: {field} is still set: {context}"
            );
        }
        assert_eq!(context["runAsNonRoot"], true, "{of}");
        assert_eq!(
            pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
            false
        );
    }
    let defaults = documents(&render_text(None));
    assert_eq!(
        pod_spec(&defaults, "Deployment")["securityContext"]["runAsUser"],
        65532
    );
}

#[test]
fn the_disruption_budget_is_rendered_only_where_it_cannot_block_a_drain() {
    assert!(kind(&render("replicaCount=1"), "PodDisruptionBudget").is_none());
    let pdb = render("replicaCount=2");
    assert_eq!(
        kind(&pdb, "PodDisruptionBudget").unwrap()["spec"]["minAvailable"],
        1
    );
    assert!(
        kind(
            &render("replicaCount=2,podDisruptionBudget.minAvailable=2"),
            "PodDisruptionBudget"
        )
        .is_none()
    );
}

#[test]
fn a_network_policy_without_peers_allows_none() {
    let docs = render("networkPolicy.enabled=true");
    let policy = kind(&docs, "NetworkPolicy").unwrap();
    assert_eq!(policy["spec"]["ingress"], serde_json::json!([]), "{policy}");
    let docs = render(
        "networkPolicy.enabled=true,networkPolicy.ingressFrom[0].namespaceSelector.matchLabels.team=edge",
    );
    let rule = &kind(&docs, "NetworkPolicy").unwrap()["spec"]["ingress"][0];
    assert_eq!(
        rule["from"][0]["namespaceSelector"]["matchLabels"]["team"],
        "edge"
    );
}

#[test]
fn every_name_fits_in_63_characters_with_a_long_release_name() {
    let release = "a-release-name-of-fifty-one-characters-for-testing1";
    assert_eq!(release.len(), 51);
    let (ok, text) = helm(&[
        "template",
        release,
        CHART,
        "--namespace",
        "payments",
        "--kube-version",
        "1.33.0",
        "--set",
        "metrics.dashboard.enabled=true",
    ]);
    assert!(ok, "{text}");
    for doc in documents(&text) {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            name.len() <= 63,
            "{} {name} has {} characters",
            doc["kind"],
            name.len()
        );
    }
}

#[test]
fn migration_pods_are_not_selected_by_the_service_the_budget_or_the_network_policy() {
    let docs = render("networkPolicy.enabled=true");
    let labels = &pod_spec_metadata(&docs, "Job")["labels"];
    let deployment_labels = &pod_spec_metadata(&docs, "Deployment")["labels"];
    let selectors = [
        (
            "Service",
            &kind(&docs, "Service").unwrap()["spec"]["selector"],
        ),
        (
            "PodDisruptionBudget",
            &kind(&docs, "PodDisruptionBudget").unwrap()["spec"]["selector"]["matchLabels"],
        ),
        (
            "NetworkPolicy",
            &kind(&docs, "NetworkPolicy").unwrap()["spec"]["podSelector"]["matchLabels"],
        ),
    ];
    for (of, selector) in selectors {
        assert!(
            selects(selector, deployment_labels),
            "{of} misses the Deployment's pods"
        );
        assert!(
            !selects(selector, labels),
            "{of} selects the migration pods: {labels}"
        );
    }
}

fn pod_spec_metadata<'a>(docs: &'a [Value], of: &str) -> &'a Value {
    &kind(docs, of).unwrap()["spec"]["template"]["metadata"]
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(key, value)| &labels[key] == value)
}

#[test]
fn the_crd_is_installed_and_upgraded_with_the_release_and_kept_on_uninstall() {
    let committed: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("crds/syncpolicy.yaml")).unwrap(),
    )
    .unwrap();
    let docs = documents(&render_text(None));
    let crd = kind(&docs, "CustomResourceDefinition").expect("the CRD");
    // YAML writes 10000 where the committed file has 10000.0: numbers compared as numbers.
    assert_eq!(
        numbers_as_f64(&crd["spec"]),
        numbers_as_f64(&committed["spec"])
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let not_kept = render("crds.keep=false");
    let crd = kind(&not_kept, "CustomResourceDefinition").unwrap();
    assert!(
        crd["metadata"]["annotations"]
            .get("helm.sh/resource-policy")
            .is_none()
    );
    assert!(kind(&render("crds.install=false"), "CustomResourceDefinition").is_none());
    assert!(
        !root().join("charts/paysync/crds").exists(),
        "a crds/ folder is never upgraded by helm"
    );
}

#[test]
fn a_ca_extra_volumes_a_digest_and_a_priority_class_reach_both_pods() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let docs = render(&format!(
        "ca.secretName=pg-ca,image.digest={digest},priorityClassName=payments-critical,\
         extraVolumes[0].name=tmp,extraVolumes[0].emptyDir.medium=Memory,\
         extraVolumeMounts[0].name=tmp,extraVolumeMounts[0].mountPath=/tmp"
    ));
    for of in ["Deployment", "Job"] {
        let pod = pod_spec(&docs, of);
        assert_eq!(pod["priorityClassName"], "payments-critical", "{of}");
        let volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap_or_else(|| panic!("{of} has no volumes"))
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(volumes, ["ca", "tmp"], "{of}");
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], "pg-ca");
        let container = &pod["containers"][0];
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(mounts, ["/etc/paysync/ca", "/tmp"], "{of}");
        assert_eq!(
            container["image"],
            format!("ghcr.io/paysync/paysync@{digest}"),
            "{of}"
        );
    }
    let (ok, _) = helm(&["lint", "--strict", CHART, "--set", "image.digest=latest"]);
    assert!(!ok, "a digest that is not sha256:… passed the schema");
}

/// The NOTES Helm prints after an install, rendered offline: Helm renders NOTES.txt only on
/// install (which needs a cluster), so a copy of the chart renders it into a ConfigMap.
fn notes(namespace: &str, set: &str) -> String {
    let copy = std::env::temp_dir().join(format!("paysync-notes-{}", uuid::Uuid::now_v7()));
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(root().join(CHART))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(
        copy.join("templates/NOTES.txt"),
        copy.join("files/NOTES.txt"),
    )
    .unwrap();
    std::fs::write(
        copy.join("templates/notes.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ tpl (.Files.Get \"files/NOTES.txt\") . | quote }}\n",
    )
    .unwrap();
    let (ok, text) = helm(&[
        "template",
        "paysync",
        copy.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        "1.33.0",
        "--show-only",
        "templates/notes.yaml",
        "--set",
        set,
    ]);
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(ok, "{text}");
    documents(&text)[0]["data"]["notes"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_notes_name_the_release_namespace_and_no_empty_host() {
    let without_host = notes("billing", "ingress.enabled=true");
    assert!(!without_host.contains("https:///"), "{without_host}");
    assert!(
        without_host.contains("ingress.host is empty"),
        "{without_host}"
    );
    assert!(
        without_host.contains("kubectl -n billing apply -f -"),
        "{without_host}"
    );
    assert!(!without_host.contains("payments"), "{without_host}");
    let with_host = notes(
        "billing",
        "ingress.enabled=true,ingress.host=pay.example.com",
    );
    assert!(
        with_host.contains("https://pay.example.com/webhooks/stripe/default"),
        "{with_host}"
    );
}

/// Numbers as floats, so `10000` and `10000.0` compare equal.
fn numbers_as_f64(value: &Value) -> Value {
    match value {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every value in values.yaml is named in the chart's README.
#[test]
fn the_charts_readme_names_every_value() {
    let values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("charts/paysync/values.yaml")).unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(root().join("charts/paysync/README.md")).unwrap();
    let mut missing = Vec::new();
    let mut paths = Vec::new();
    value_paths(&values, "", &mut paths);
    for path in paths {
        if !readme.contains(&format!("`{path}`")) {
            missing.push(path);
        }
    }
    assert!(
        missing.is_empty(),
        "charts/paysync/README.md does not name {missing:?}"
    );
}

/// The dotted paths of a values tree, down to the first non-object value (a map of free-form
/// content, such as `resources` or `podSecurityContext`, is one value).
fn value_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    const FREE_FORM: [&str; 9] = [
        "resources",
        "podSecurityContext",
        "containerSecurityContext",
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "affinity",
        "labels",
        "annotations",
    ];
    match value.as_object() {
        Some(map) if !map.is_empty() && !FREE_FORM.iter().any(|f| prefix.ends_with(f)) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                value_paths(child, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}
