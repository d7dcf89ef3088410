//! The Helm chart, checked offline (no API server runs here): `helm lint --strict`; the
//! manifests `helm template` renders with the default values and with every optional
//! feature on, validated against the Kubernetes 1.33 schemas; least-privilege RBAC; pods
//! that pass the Pod Security "restricted" profile; the chart's CRD identical to `crds/`;
//! the alert rules through promtool; the example SyncPolicies against the CRD's schema.
//! The tools come from `scripts/tools` (scripts/test runs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;

pub(crate) const CHART: &str = "charts/paysync";

/// Every optional feature of the chart on.
const ALL_ON: &str = "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,\
metrics.dashboard.enabled=true,networkPolicy.enabled=true,ingress.enabled=true,\
ingress.host=paysync.example.com,kafka.brokers=kafka:9092,reconcile.enabled=false";

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn tool(variable: &str) -> PathBuf {
    let path = std::env::var_os(variable).map(PathBuf::from);
    match path {
        Some(path) if path.exists() => path,
        _ => panic!(
            "{variable} does not name an installed tool: run `eval \"$(scripts/tools)\"` (scripts/test does)"
        ),
    }
}

/// Runs `program` in the repository; its stdout, or the test fails with its stderr.
pub(crate) fn run(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `helm` with `args`; the command's output, and whether it succeeded.
pub(crate) fn helm(args: &[&str]) -> (bool, String) {
    let output = Command::new(tool("PAYSYNC_HELM"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The chart rendered with `set` (none: the defaults), CRDs included, as YAML text.
pub(crate) fn render_text(set: Option<&str>) -> String {
    let mut args = vec![
        "template",
        "paysync",
        CHART,
        "--namespace",
        "payments",
        "--kube-version",
        "1.33.0",
        "--include-crds",
    ];
    if let Some(set) = set {
        args.extend(["--set", set]);
    }
    let (ok, text) = helm(&args);
    assert!(ok, "helm template failed:\n{text}");
    text
}

pub(crate) fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// A file of the test's own under the system's temporary directory.
pub(crate) fn scratch(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paysync-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn the_chart_lints_strictly_and_its_values_schema_refuses_bad_values() {
    for set in [None, Some(ALL_ON)] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(set) = set {
            args.extend(["--set", set]);
        }
        let (ok, text) = helm(&args);
        assert!(ok, "helm lint {set:?}:\n{text}");
    }
    for bad in [
        "replicaCount=0",
        "logFormat=xml",
        "database.existingSecret=",
        "unknown=1",
    ] {
        let (ok, text) = helm(&["lint", "--strict", CHART, "--set", bad]);
        assert!(!ok, "values.schema.json let {bad} through:\n{text}");
    }
}

#[test]
fn rendered_manifests_are_valid_kubernetes_1_33() {
    let validate = tool("PAYSYNC_KUBERNETES_VALIDATE");
    for (name, set) in [("default.yaml", None), ("all-on.yaml", Some(ALL_ON))] {
        let rendered = render_text(set);
        let kinds: Vec<String> = documents(&rendered)
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        for kind in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Job",
            "PodDisruptionBudget",
            "CustomResourceDefinition",
        ] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "{name} has no {kind}: {kinds:?}"
            );
        }
        if set.is_some() {
            for kind in [
                "ServiceMonitor",
                "PrometheusRule",
                "ConfigMap",
                "NetworkPolicy",
                "Ingress",
            ] {
                assert!(
                    kinds.iter().any(|k| k == kind),
                    "{name} has no {kind}: {kinds:?}"
                );
            }
        }
        let file = scratch(name, &rendered);
        let file = file.to_str().unwrap();
        run(&validate, &["-k", "1.33.0", "--strict", file]);
    }
}

/// The problems a Role's rules have: a wildcard anywhere, or a write to Secrets.
fn rbac_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let kind = doc["kind"].as_str().unwrap_or_default();
    if kind == "ClusterRole" || kind == "ClusterRoleBinding" {
        problems.push(format!("a {kind}: nothing but the CRD may be cluster-wide"));
    }
    for rule in doc["rules"].as_array().into_iter().flatten() {
        for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
            if rule[field]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v == "*")
            {
                problems.push(format!("{field} has *: {rule}"));
            }
        }
        let secrets = rule["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r == "secrets");
        let writes = rule["verbs"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| !["get", "list", "watch"].contains(&v.as_str().unwrap_or_default()));
        if secrets && writes {
            problems.push(format!("writes Secrets: {rule}"));
        }
    }
    problems
}

#[test]
fn rbac_is_namespaced_least_privilege() {
    let bad: Value = serde_json::json!({"kind": "ClusterRole", "rules": [
        {"apiGroups": ["*"], "resources": ["secrets"], "verbs": ["create"]}]});
    assert_eq!(
        rbac_problems(&bad).len(),
        3,
        "the check itself must catch these"
    );
    for set in [None, Some(ALL_ON)] {
        let docs = documents(&render_text(set));
        let roles: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"].as_str().is_some_and(|k| k.contains("Role")))
            .collect();
        assert!(!roles.is_empty());
        for role in roles {
            let problems = rbac_problems(role);
            assert!(
                problems.is_empty(),
                "{}: {problems:?}",
                role["metadata"]["name"]
            );
        }
    }
}

/// Where the Pod Security "restricted" profile refuses `pod` (a PodSpec), by its rules.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host] == true {
            found.push(format!("{host} is set"));
        }
    }
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let kinds = volume
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str());
        for kind in kinds.filter(|k| *k != "name") {
            if !allowed_volumes.contains(&kind) {
                found.push(format!("volume type {kind}"));
            }
        }
    }
    let pod_context = &pod["securityContext"];
    let containers = ["containers", "initContainers"]
        .iter()
        .flat_map(|field| pod[*field].as_array().cloned().unwrap_or_default());
    for container in containers {
        let name = container["name"].as_str().unwrap_or_default().to_owned();
        let context = &container["securityContext"];
        let either = |field: &str| {
            if context[field].is_null() {
                pod_context[field].clone()
            } else {
                context[field].clone()
            }
        };
        if context["privileged"] == true {
            found.push(format!("{name}: privileged"));
        }
        if context["allowPrivilegeEscalation"] != false {
            found.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        if either("runAsNonRoot") != true {
            found.push(format!("{name}: runAsNonRoot is not true"));
        }
        if either("runAsUser") == 0 {
            found.push(format!("{name}: runs as user 0"));
        }
        let seccomp = either("seccompProfile")["type"].clone();
        if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
            found.push(format!("{name}: seccompProfile is {seccomp}"));
        }
        let caps = &context["capabilities"];
        if !caps["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c == "ALL")
        {
            found.push(format!("{name}: capabilities do not drop ALL"));
        }
        if caps["add"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c != "NET_BIND_SERVICE")
        {
            found.push(format!("{name}: adds capabilities"));
        }
        if container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| !p["hostPort"].is_null())
        {
            found.push(format!("{name}: hostPort"));
        }
    }
    found
}

#[test]
fn every_pod_passes_the_restricted_pod_security_profile() {
    let root_pod = serde_json::json!({"hostNetwork": true, "containers": [{"name": "bad"}]});
    assert_eq!(
        restricted_violations(&root_pod).len(),
        5,
        "the check itself must catch these"
    );
    for set in [None, Some(ALL_ON)] {
        let docs = documents(&render_text(set));
        let pods: Vec<(&Value, &Value)> = docs
            .iter()
            .filter(|d| d["spec"]["template"]["spec"].is_object())
            .map(|d| (&d["metadata"]["name"], &d["spec"]["template"]["spec"]))
            .collect();
        assert_eq!(pods.len(), 2, "the Deployment and the migration Job");
        for (name, pod) in pods {
            let violations = restricted_violations(pod);
            assert!(violations.is_empty(), "{name}: {violations:?}");
            let context = &pod["containers"][0]["securityContext"];
            assert_eq!(context["readOnlyRootFilesystem"], true, "{name}");
        }
    }
}

#[test]
fn the_charts_crd_is_byte_identical_to_the_generated_one() {
    // crds/ against the Rust types: src/crd/tests.rs.
    let committed = std::fs::read(root().join("crds/syncpolicy.yaml")).unwrap();
    let in_chart = std::fs::read(root().join("charts/paysync/files/syncpolicy-crd.yaml")).unwrap();
    assert!(
        in_chart == committed,
        "the chart's CRD differs from crds/: run `make generate`"
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_each_has_a_runbook() {
    let docs = documents(&render_text(Some(ALL_ON)));
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let mut rules: Vec<Value> = Vec::new();
    for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
        rules.extend(group["rules"].as_array().cloned().unwrap_or_default());
    }
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for wanted in [
        "PaysyncDeadLettersGrowing",
        "PaysyncDriftFound",
        "PaysyncWebhookVerificationFailing",
        "PaysyncOutboundBacklogGrowing",
        "PaysyncInboundBacklogGrowing",
        "PaysyncPolicyNotReady",
    ] {
        assert!(names.contains(&wanted), "no {wanted}: {names:?}");
    }
    for rule in &rules {
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
        assert!(runbook.len() > 40, "{} has no runbook line", rule["alert"]);
    }
    let file = scratch(
        "rules.yaml",
        &serde_yaml_ng::to_string(&rule["spec"]).unwrap(),
    );
    let checked = run(
        &tool("PAYSYNC_PROMTOOL"),
        &["check", "rules", file.to_str().unwrap()],
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
}

#[test]
fn the_dashboard_is_valid_json_with_a_panel_per_concern() {
    let text = std::fs::read_to_string(root().join("charts/paysync/files/dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let queries: String = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for metric in [
        "paysync_policy_ready",
        "paysync_drift",
        "paysync_webhooks_total",
        "paysync_dead_letters_open",
        "paysync_outbound_oldest_pending_seconds",
    ] {
        assert!(queries.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn the_example_sync_policies_validate_against_the_crds_schema() {
    let crd: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("crds/syncpolicy.yaml")).unwrap(),
    )
    .unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let schema_file = scratch("syncpolicy.schema.json", &schema.to_string());
    let check = tool("PAYSYNC_CHECK_JSONSCHEMA");
    let mut checked = 0;
    for example in [
        "examples/syncpolicy.yaml",
        "examples/syncpolicy-observe.yaml",
        "examples/policies.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(example)).unwrap();
        for (n, doc) in documents(&text).iter().enumerate() {
            if doc["kind"] != "SyncPolicy" {
                continue;
            }
            let file = scratch(&format!("example-{checked}-{n}.json"), &doc.to_string());
            run(
                &check,
                &[
                    "--schemafile",
                    schema_file.to_str().unwrap(),
                    file.to_str().unwrap(),
                ],
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} examples");
    // And the check can fail: a mode the schema does not know.
    let bad = scratch(
        "bad.json",
        r#"{"apiVersion": "paysync.dev/v1alpha1", "kind": "SyncPolicy", "metadata": {"name": "x"},
            "spec": {"stripeSecretRef": {"name": "s"}, "mode": "Sometimes"}}"#,
    );
    let output = Command::new(check)
        .args([
            "--schemafile",
            schema_file.to_str().unwrap(),
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success(), "a bad mode passed the schema");
}

/// No Docker engine runs here, so the image is not built in CI; what can be checked is: the
/// files the build copies exist, the build is `--locked`, the runtime stage is another
/// (smaller) image that runs as a non-root user, and the chart runs what it starts.
#[test]
fn the_dockerfile_builds_locked_from_files_that_exist_and_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build and a runtime stage: {stages:?}");
    assert!(stages[1].contains("distroless"), "{}", stages[1]);
    assert!(dockerfile.contains("cargo build --release --locked"));
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let sources: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &sources[..sources.len() - 1] {
            assert!(
                root().join(source).exists(),
                "{line}: {source} does not exist"
            );
        }
    }
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    let docs = documents(&render_text(None));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["serve"]));
    let user_id = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"].clone();
    assert!(
        user.contains(&user_id.to_string()),
        "the chart runs as {user_id}, the image as {user}"
    );
}
