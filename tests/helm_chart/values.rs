//! Lint, values and schema: every value known, set, documented and checked.

use serde_json::Value;

use crate::helm::*;

#[test]
fn helm_lint_strict_passes_with_the_default_values_and_with_every_value_set() {
    for extra in [
        &[][..],
        &["-f", "charts/gitdev-operator/ci/all-values.yaml"][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = run_helm(&args).expect_success();
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{out}"
        );
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{out}"
        );
    }
}

/// Leaf paths of values.yaml (`image.tag`, …); a map that is empty there is one free-form value.
fn value_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // Kubernetes objects taken as they are (security contexts, resources): one value.
                if matches!(
                    path.as_str(),
                    "podSecurityContext" | "securityContext" | "resources"
                ) {
                    out.push(path);
                } else {
                    value_paths(v, &path, out);
                }
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, k| v.get(k))
}

#[test]
fn every_value_of_values_yaml_is_in_the_schema_set_in_ci_all_values_and_documented_in_docs_helm_md()
{
    let defaults = yaml_file("charts/gitdev-operator/values.yaml");
    let all = yaml_file("charts/gitdev-operator/ci/all-values.yaml");
    let schema: Value =
        serde_json::from_str(&read("charts/gitdev-operator/values.schema.json")).unwrap();
    let docs = read("docs/helm.md");
    let mut paths = Vec::new();
    value_paths(&defaults, "", &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    for path in &paths {
        let schema_path = path
            .split('.')
            .map(|k| format!("properties.{k}"))
            .collect::<Vec<_>>()
            .join(".");
        assert!(
            lookup(&schema, &schema_path).is_some(),
            "values.schema.json does not describe {path}"
        );
        assert!(
            lookup(&all, path).is_some(),
            "ci/all-values.yaml does not set {path}"
        );
        assert!(
            docs.contains(&format!("`{path}`")),
            "docs/helm.md does not document `{path}`"
        );
    }
    // And the values file of the tests holds nothing values.yaml does not have (but `global`).
    let mut set = Vec::new();
    value_paths(&all, "", &mut set);
    for path in set {
        let top = path.split('.').next().unwrap();
        assert!(
            top == "global" || defaults.get(top).is_some(),
            "ci/all-values.yaml sets {path}, unknown to values.yaml"
        );
    }
}

#[test]
fn a_wrong_value_fails_helm_template_with_the_schemas_message() {
    let cases = [
        (
            "logFormat: xml\n",
            "logFormat must be one of the following: \"text\", \"json\"",
        ),
        (
            "replicas: 0\n",
            "replicas: Must be greater than or equal to 1",
        ),
        (
            "replicas: \"2\"\n",
            "replicas: Invalid type. Expected: integer",
        ),
        ("replica: 2\n", "Additional property replica is not allowed"),
        (
            "image:\n  pullPolicy: Sometimes\n",
            "image.pullPolicy must be one of the following: \"Always\", \"IfNotPresent\", \"Never\"",
        ),
        (
            "apiUrl: ftp://api.git.dev/v1\n",
            "apiUrl: Does not match pattern",
        ),
        ("apiUrl: api.git.dev\n", "apiUrl: Does not match pattern"),
        (
            "watchNamespace: Team_A\n",
            "watchNamespace: Does not match pattern",
        ),
        (
            "watchNamespaces: [apps, Team_A]\n",
            "watchNamespaces.1: Does not match pattern",
        ),
        (
            "watchNamespaces: [apps, apps]\n",
            "watchNamespaces: array items[0,1] must be unique",
        ),
        (
            "watchNamespaces: apps\n",
            "watchNamespaces: Invalid type. Expected: array, given: string",
        ),
        (
            "leaderElection:\n  enabled: \"yes\"\n",
            "leaderElection.enabled: Invalid type. Expected: boolean",
        ),
        (
            "leaderElection:\n  leaseDurationSeconds: 2\n",
            "leaderElection.leaseDurationSeconds: Must be greater than or equal to 3",
        ),
        (
            "leaderElection:\n  renewDeadlineSeconds: -1\n",
            "leaderElection.renewDeadlineSeconds: Must be greater than or equal to 0",
        ),
        (
            "podDisruptionBudget:\n  maxUnavailable: 2\n",
            "Additional property maxUnavailable is not allowed",
        ),
        (
            "serviceMonitor:\n  enable: true\n",
            "Additional property enable is not allowed",
        ),
        ("extraEnv:\n  - value: x\n", "name is required"),
    ];
    for (values, message) in cases {
        let err = try_template("gitdev", "gitdev-system", values).expect_failure();
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{values}: {err}"
        );
        assert!(
            err.contains(message),
            "{values}: expected {message:?} in {err}"
        );
    }
    // Not schema matters, but as clear: a renew deadline that does not fit below the Lease…
    for (values, message) in [
        (
            "leaderElection:\n  renewDeadlineSeconds: 15\n",
            "leaderElection.renewDeadlineSeconds (15) must be less than leaderElection.leaseDurationSeconds (15), so that a leader that cannot renew stops before another replica can take over",
        ),
        (
            "leaderElection:\n  renewDeadlineSeconds: 1\n",
            "leaderElection.renewDeadlineSeconds: 1 is too short; use 0 (two thirds of leaderElection.leaseDurationSeconds) or at least 2",
        ),
    ] {
        let err = try_template("gitdev", "gitdev-system", values).expect_failure();
        assert!(
            err.contains(message),
            "{values}: expected {message:?} in {err}"
        );
    }
    // … and a ServiceAccount the chart does not create needs a name.
    let err = try_template(
        "gitdev",
        "gitdev-system",
        "serviceAccount:\n  create: false\n",
    )
    .expect_failure();
    assert!(
        err.contains("serviceAccount.name is required when serviceAccount.create is false"),
        "{err}"
    );
    // Valid URLs pass: a cluster Service, a port, IPv6, no path.
    for url in [
        "http://gitdev-sim.gitdev-system.svc:8080/v1",
        "https://api.git.dev",
        "http://[::1]:8080/v1",
    ] {
        try_template("gitdev", "gitdev-system", &format!("apiUrl: {url}\n")).expect_success();
    }
}
