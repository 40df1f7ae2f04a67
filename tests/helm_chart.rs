//! The Helm chart `charts/gitdev-operator`: lint, rendering, schema, server-side validation, a
//! real install/upgrade/uninstall, and the operator running with nothing but the chart's RBAC.
//!
//! Helm is the cached v3.17.2 of `tests/cluster/build.sh`; the cluster is the harness's real
//! kube-apiserver (tests/common). See docs/helm.md.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::cluster::{Cluster, KubectlOutput, TestNamespace, cluster, repo_path};
use common::stack::{Proc, Sim, eventually};
use serde_json::{Value, json};

const CHART: &str = "charts/gitdev-operator";
const WAIT: Duration = Duration::from_secs(60);

// --- Helm --------------------------------------------------------------------------------------

/// The Helm binary of `tests/cluster/build.sh` (unpacked on first use, then cached).
fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(repo_path("tests/cluster/build.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run tests/cluster/build.sh");
        assert!(
            out.status.success(),
            "tests/cluster/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout
            .lines()
            .last()
            .expect("build.sh prints its bin directory");
        let helm = Path::new(bin.trim()).join("helm");
        assert!(helm.is_file(), "{} is missing", helm.display());
        helm
    })
}

/// `helm` with its cache, configuration and data kept in the target directory, never in `~`.
fn helm() -> Command {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let mut cmd = Command::new(helm_binary());
    cmd.current_dir(common::cluster::repo_root())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null());
    cmd
}

#[derive(Debug)]
struct Run {
    what: String,
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(what: String, out: Output) -> Run {
        Run {
            what,
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn expect_success(self) -> String {
        assert!(self.ok, "{self}");
        self.stdout
    }

    #[track_caller]
    fn expect_failure(self) -> String {
        assert!(!self.ok, "expected a failure, but {self}");
        self.stderr
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            if self.ok { "succeeded" } else { "failed" },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn run_helm(args: &[&str]) -> Run {
    let out = helm().args(args).output().expect("run helm");
    Run::of(format!("helm {}", args.join(" ")), out)
}

/// A values file for one rendering, in the target directory.
fn values_file(yaml: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-values");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.yaml", common::cluster::unique_name("values")));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `helm template RELEASE charts/gitdev-operator -n NAMESPACE -f <values>`.
fn try_template(release: &str, namespace: &str, values: &str) -> Run {
    let file = values_file(values);
    run_helm(&[
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "-f",
        file.to_str().unwrap(),
    ])
}

/// The rendered manifests, and their objects.
struct Rendered {
    yaml: String,
    objects: Vec<Value>,
}

#[track_caller]
fn template(release: &str, namespace: &str, values: &str) -> Rendered {
    let yaml = try_template(release, namespace, values).expect_success();
    let objects = serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap_or_else(|e| panic!("helm template printed invalid YAML: {e}\n{yaml}"))
        .into_iter()
        .filter(|o| !o.is_null())
        .collect();
    Rendered { yaml, objects }
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    #[track_caller]
    fn one(&self, kind: &str) -> &Value {
        match self.all(kind).as_slice() {
            [one] => one,
            other => panic!("expected one {kind}, found {}:\n{}", other.len(), self.yaml),
        }
    }

    #[track_caller]
    fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in:\n{}", self.yaml))
    }

    fn kinds(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// The manifests of some kinds only, as a YAML stream.
    fn only(&self, kinds: &[&str]) -> String {
        self.objects
            .iter()
            .filter(|o| kinds.iter().any(|k| o["kind"] == *k))
            .map(|o| serde_json::to_string(o).unwrap())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    fn container(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    }

    /// The operator container's env var `name`.
    fn env(&self, name: &str) -> Option<&Value> {
        self.container()["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
    }

    #[track_caller]
    fn env_value(&self, name: &str) -> &str {
        self.env(name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no env {name} with a value in {}", self.container()))
    }
}

/// The rules the operator needs on its objects, Secrets and Events: exactly what it calls.
fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["git.dev"], "resources": ["gitdeployments"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["git.dev"], "resources": ["gitdeployments/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// The rules of leader election: only the one Lease, and creating it.
fn lease_rules(lease: &str) -> Value {
    json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease], "verbs": ["get", "patch"]},
    ])
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

fn yaml_file(relative: &str) -> Value {
    serde_saphyr::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

// --- Lint, values, schema ----------------------------------------------------------------------

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
            "leaderElection:\n  enabled: \"yes\"\n",
            "leaderElection.enabled: Invalid type. Expected: boolean",
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
    // Not a schema matter, but as clear: a ServiceAccount the chart does not create needs a name.
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

// --- What the chart renders --------------------------------------------------------------------

#[test]
fn default_values_render_one_hardened_operator_pod_with_probes_and_a_cluster_role_of_exactly_the_verbs_it_uses()
 {
    let r = template("gitdev", "gitdev-system", "");
    assert_eq!(
        r.kinds(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
        "{}",
        r.yaml
    );
    for o in &r.objects {
        if !matches!(
            o["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        ) {
            assert_eq!(o["metadata"]["namespace"], "gitdev-system", "{o}");
        }
    }

    let deployment = r.one("Deployment");
    assert_eq!(deployment["metadata"]["name"], "gitdev-gitdev-operator");
    assert_eq!(deployment["spec"]["replicas"], 1);
    // Without leader election two pods must never overlap, not even during a rollout.
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "gitdev-gitdev-operator");
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let c = r.container();
    assert_eq!(c["image"], "gitdev-operator:0.1.0");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        c["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "50m", "memory": "64Mi"})
    );
    assert_eq!(c["resources"]["limits"], json!({"memory": "256Mi"}));

    assert_eq!(r.env_value("GITDEV_API_URL"), "https://api.git.dev/v1");
    assert_eq!(
        r.env_value("GITDEV_DEFAULT_CREDENTIALS_SECRET"),
        "gitdev-credentials"
    );
    assert_eq!(r.env_value("GITDEV_METRICS_ADDR"), "0.0.0.0:8080");
    assert_eq!(r.env_value("GITDEV_LOG_FORMAT"), "json");
    assert_eq!(r.env_value("GITDEV_LEADER_ELECTION"), "false");
    assert!(r.env("WATCH_NAMESPACE").is_none());
    assert!(r.env("GITDEV_LEASE_NAME").is_none());
    assert_eq!(
        r.env("POD_NAME").unwrap()["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.name"}})
    );
    assert_eq!(
        r.env("POD_NAMESPACE").unwrap()["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    assert_eq!(
        r.env("GITDEV_FINGERPRINT_KEY").unwrap()["valueFrom"],
        json!({"secretKeyRef": {"name": "gitdev-gitdev-operator-fingerprint", "key": "key"}})
    );

    // The fingerprint key: random on a fresh install, kept by Helm on uninstall.
    let secret = r.one("Secret");
    assert_eq!(
        secret["metadata"]["name"],
        "gitdev-gitdev-operator-fingerprint"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let key = secret["data"]["key"].as_str().unwrap();
    assert_eq!(key.len(), 64, "48 random characters, base64: {key}");
    let again = template("gitdev", "gitdev-system", "");
    assert_ne!(again.one("Secret")["data"]["key"], key);

    // RBAC: a ClusterRole of exactly the operator's calls, bound to its ServiceAccount; no Lease
    // permission without leader election.
    assert_eq!(r.one("ClusterRole")["rules"], operator_rules());
    let binding = r.one("ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "gitdev-gitdev-operator"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "gitdev-gitdev-operator", "namespace": "gitdev-system"}])
    );

    // The metrics Service selects exactly the operator's pods.
    let service = r.one("Service");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(&service["spec"]["selector"], selector);
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
}

#[test]
fn every_env_var_the_chart_sets_is_one_the_operator_reads() {
    let help = Command::new(env!("CARGO_BIN_EXE_gitdev-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for values in [
        "".to_string(),
        read("charts/gitdev-operator/ci/all-values.yaml"),
    ] {
        let r = template("gitdev", "gitdev-system", &values);
        for e in r.container()["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            // Read by the operator's code (not a flag): the Events' and Lease holder's identity,
            // the log filter, and Rust's own.
            if matches!(name, "POD_NAME" | "RUST_LOG" | "RUST_BACKTRACE") {
                continue;
            }
            assert!(
                help.contains(&format!("[env: {name}")),
                "the chart sets {name}, which `gitdev-operator --help` does not name:\n{help}"
            );
        }
    }
}

#[test]
fn watch_namespace_renders_a_role_and_binding_in_that_namespace_and_nothing_cluster_wide() {
    let r = template("gitdev", "gitdev-system", "watchNamespace: apps\n");
    assert!(r.all("ClusterRole").is_empty() && r.all("ClusterRoleBinding").is_empty());
    assert_eq!(r.env_value("WATCH_NAMESPACE"), "apps");
    let role = r.one("Role");
    assert_eq!(role["metadata"]["namespace"], "apps");
    assert_eq!(role["rules"], operator_rules());
    let binding = r.one("RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], "apps");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gitdev-gitdev-operator"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "gitdev-gitdev-operator", "namespace": "gitdev-system"}])
    );
    // Everything else stays in the release namespace.
    for kind in ["ServiceAccount", "Deployment", "Service", "Secret"] {
        assert_eq!(r.one(kind)["metadata"]["namespace"], "gitdev-system");
    }
}

#[test]
fn two_replicas_turn_on_leader_election_with_a_lease_role_in_the_release_namespace_only() {
    for values in ["replicas: 2\n", "leaderElection:\n  enabled: true\n"] {
        let r = template("gitdev", "gitdev-system", values);
        assert_eq!(r.env_value("GITDEV_LEADER_ELECTION"), "true", "{values}");
        assert_eq!(r.env_value("GITDEV_LEASE_NAME"), "gitdev-gitdev-operator");
        assert_eq!(r.env_value("GITDEV_LEASE_DURATION_SECONDS"), "15");
        assert_eq!(
            r.one("Deployment")["spec"]["strategy"]["type"],
            "RollingUpdate"
        );
        let role = r.named("Role", "gitdev-gitdev-operator-leader-election");
        assert_eq!(role["metadata"]["namespace"], "gitdev-system");
        assert_eq!(role["rules"], lease_rules("gitdev-gitdev-operator"));
        let binding = r.named("RoleBinding", "gitdev-gitdev-operator-leader-election");
        assert_eq!(binding["metadata"]["namespace"], "gitdev-system");
        assert_eq!(
            binding["roleRef"]["name"],
            "gitdev-gitdev-operator-leader-election"
        );
        assert_eq!(binding["subjects"][0]["name"], "gitdev-gitdev-operator");
        // The object permissions are still the ClusterRole's.
        assert_eq!(r.one("ClusterRole")["rules"], operator_rules());
    }
    let r = template("gitdev", "gitdev-system", "replicas: 3\n");
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 3);
}

#[test]
fn the_service_monitor_is_rendered_only_when_enabled() {
    assert!(
        template("gitdev", "gitdev-system", "")
            .all("ServiceMonitor")
            .is_empty()
    );
    let r = template(
        "gitdev",
        "gitdev-system",
        "serviceMonitor:\n  enabled: true\n",
    );
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics"}])
    );
    assert_eq!(
        sm["spec"]["namespaceSelector"],
        json!({"matchNames": ["gitdev-system"]})
    );
    let labels = &r.one("Service")["metadata"]["labels"];
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &labels[k], v,
            "the ServiceMonitor must select the metrics Service"
        );
    }
}

#[test]
fn every_value_set_lands_where_it_belongs() {
    let r = template(
        "gitdev",
        "gitdev-system",
        &read("charts/gitdev-operator/ci/all-values.yaml"),
    );
    let d = r.one("Deployment");
    assert_eq!(d["metadata"]["name"], "gitdev-all");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/name"], "gdo");
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({"example.com/owner": "platform"})
    );
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "gitdev-all-sa");
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": "registry-credentials"}])
    );
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(spec["securityContext"]["fsGroup"], 65532);
    assert_eq!(spec["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        100
    );
    let c = r.container();
    assert_eq!(
        c["image"],
        "registry.example.com/platform/gitdev-operator:0.1.0-rc.1"
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "1", "memory": "512Mi"})
    );
    for (name, value) in [
        (
            "GITDEV_API_URL",
            "http://gitdev-sim.gitdev-system.svc:8080/v1",
        ),
        ("WATCH_NAMESPACE", "apps"),
        ("GITDEV_DEFAULT_CREDENTIALS_SECRET", "team-token"),
        ("GITDEV_CONCURRENCY", "4"),
        ("GITDEV_METRICS_ADDR", "0.0.0.0:9090"),
        ("GITDEV_LOG_FORMAT", "text"),
        ("RUST_LOG", "info,gitdev=debug,kube=warn"),
        ("GITDEV_CLEANUP_GRACE_SECONDS", "60"),
        ("GITDEV_API_TIMEOUT_SECONDS", "10"),
        ("GITDEV_LEADER_ELECTION", "true"),
        ("GITDEV_LEASE_NAME", "gitdev-all-leader"),
        ("GITDEV_LEASE_DURATION_SECONDS", "20"),
        ("RUST_BACKTRACE", "1"),
        ("GITDEV_RECHECK_FINISHED_SECONDS", "120"),
    ] {
        assert_eq!(r.env_value(name), value, "{name}");
    }
    // An existing fingerprint Secret is used, and none is created.
    assert!(r.all("Secret").is_empty());
    assert_eq!(
        r.env("GITDEV_FINGERPRINT_KEY").unwrap()["valueFrom"]["secretKeyRef"],
        json!({"name": "gitdev-fingerprint-key", "key": "key"})
    );
    let sa = r.one("ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "gitdev-all-sa");
    assert_eq!(
        sa["metadata"]["annotations"],
        json!({"iam.example.com/role": "gitdev"})
    );
    let service = r.one("Service");
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["ports"][0]["port"], 9191);
    assert_eq!(
        service["metadata"]["annotations"],
        json!({"prometheus.io/scrape": "true"})
    );
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}])
    );
    assert_eq!(
        r.named("Role", "gitdev-all")["metadata"]["namespace"],
        "apps"
    );
    assert_eq!(
        r.named("Role", "gitdev-all-leader-election")["rules"],
        lease_rules("gitdev-all-leader")
    );
    let cm = r.one("ConfigMap");
    assert_eq!(cm["metadata"]["name"], "gitdev-all-argocd-health");
    assert_eq!(cm["metadata"]["namespace"], "argocd");

    // rbac.create: false renders no RBAC at all.
    let r = template("gitdev", "gitdev-system", "rbac:\n  create: false\n");
    for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(r.all(kind).is_empty(), "{kind}");
    }
    // serviceAccount.create: false uses the named one.
    let r = template(
        "gitdev",
        "gitdev-system",
        "serviceAccount:\n  create: false\n  name: platform-sa\n",
    );
    assert!(r.all("ServiceAccount").is_empty());
    assert_eq!(
        r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "platform-sa"
    );
    assert_eq!(
        r.one("ClusterRoleBinding")["subjects"][0]["name"],
        "platform-sa"
    );
}

#[test]
fn the_charts_copies_of_the_crd_and_of_the_argocd_health_check_are_byte_identical_to_the_originals()
{
    assert!(
        read("charts/gitdev-operator/crds/gitdeployments.git.dev.yaml")
            == read("crds/gitdeployments.git.dev.yaml"),
        "charts/gitdev-operator/crds/ differs from crds/: cp crds/gitdeployments.git.dev.yaml charts/gitdev-operator/crds/"
    );
    let script = read("charts/gitdev-operator/files/argocd-health.lua");
    let canonical = repo_path("examples/argocd/health.lua");
    if canonical.exists() {
        assert!(
            script == read("examples/argocd/health.lua"),
            "charts/gitdev-operator/files/argocd-health.lua differs from examples/argocd/health.lua: cp examples/argocd/health.lua charts/gitdev-operator/files/argocd-health.lua"
        );
    }
    // The rendered ConfigMap carries the script byte for byte.
    let r = template(
        "gitdev",
        "gitdev-system",
        "argocd:\n  healthCheck:\n    enabled: true\n",
    );
    let cm = r.one("ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "gitdev-system");
    assert_eq!(
        cm["data"]["resource.customizations.health.git.dev_Deployment"].as_str(),
        Some(script.as_str())
    );
    assert!(script.contains("Degraded") && script.contains("Healthy"));
}

// --- Against the real control plane ------------------------------------------------------------

#[test]
fn the_rendered_chart_passes_server_side_dry_run_on_the_control_plane() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_ns = rt.block_on(c.namespace("helm-dry"));
    let apps = rt.block_on(c.namespace("helm-dry-apps"));
    let argocd = rt.block_on(c.namespace("helm-dry-argocd"));
    let all_values = read("charts/gitdev-operator/ci/all-values.yaml")
        .replace("watchNamespace: apps", &format!("watchNamespace: {apps}"))
        .replace("namespace: argocd", &format!("namespace: {argocd}"))
        // The ServiceMonitor CRD is not installed here.
        .replace(
            "serviceMonitor:\n  enabled: true",
            "serviceMonitor:\n  enabled: false",
        );
    for (release, values) in [
        (
            format!("d{}", &release_ns[release_ns.len() - 10..]),
            String::new(),
        ),
        ("replicated".to_string(), "replicas: 2\n".to_string()),
        ("all".to_string(), all_values),
    ] {
        let r = template(&release, &release_ns, &values);
        assert!(r.all("ServiceMonitor").is_empty());
        let out = c
            .kubectl_with_stdin(["apply", "--dry-run=server", "-f", "-"], &r.yaml)
            .expect_success();
        for kind in ["deployment.apps", "serviceaccount", "service"] {
            assert!(out.contains(&format!("{kind}/")), "{out}");
        }
        assert!(out.contains("created (server dry run)"), "{out}");
    }
}

/// Applies the rendered ServiceAccount, RBAC and fingerprint Secret for real.
fn apply_identity(c: &Cluster, r: &Rendered) {
    let manifests = r.only(&[
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Secret",
    ]);
    c.kubectl_with_stdin(["apply", "-f", "-"], &manifests)
        .expect_success();
}

fn can_i(c: &Cluster, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut args = vec!["auth", "can-i", verb];
    args.extend(resource.split_whitespace());
    args.extend(["--as", sa]);
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let out = c.kubectl(&args);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("{out}"),
    }
}

#[test]
fn kubectl_auth_can_i_shows_the_service_account_may_do_what_the_operator_needs_and_no_more() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_guard = rt.block_on(c.namespace("helm-cani"));
    let apps_guard = rt.block_on(c.namespace("helm-cani-apps"));
    let other_guard = rt.block_on(c.namespace("helm-cani-other"));
    let (release_ns, apps, other): (&str, &str, &str) = (&release_guard, &apps_guard, &other_guard);

    // Cluster-wide, with leader election.
    let release = format!("c{}", &release_ns[release_ns.len() - 10..]);
    let r = template(&release, release_ns, "replicas: 2\n");
    apply_identity(c, &r);
    let full = format!("{release}-gitdev-operator");
    let sa = format!("system:serviceaccount:{release_ns}:{full}");
    let lease = format!("leases.coordination.k8s.io/{full}");
    let yes = |verb: &str, resource: &str, ns: Option<&str>| {
        assert!(
            can_i(c, &sa, verb, resource, ns),
            "{sa} should be able to {verb} {resource} in {ns:?}"
        );
    };
    let no = |verb: &str, resource: &str, ns: Option<&str>| {
        assert!(
            !can_i(c, &sa, verb, resource, ns),
            "{sa} must not be able to {verb} {resource} in {ns:?}"
        );
    };
    for verb in ["get", "list", "watch", "patch"] {
        yes(verb, "gitdeployments.git.dev", Some(apps));
        yes(verb, "gitdeployments.git.dev", None);
    }
    yes(
        "patch",
        "gitdeployments.git.dev --subresource=status",
        Some(apps),
    );
    for verb in ["create", "update", "delete", "deletecollection"] {
        no(verb, "gitdeployments.git.dev", Some(apps));
    }
    no(
        "update",
        "gitdeployments.git.dev --subresource=status",
        Some(apps),
    );
    no(
        "update",
        "gitdeployments.git.dev --subresource=finalizers",
        Some(apps),
    );
    for verb in ["get", "list", "watch"] {
        yes(verb, "secrets", Some(apps));
        yes(verb, "secrets", None);
    }
    for verb in ["create", "update", "patch", "delete"] {
        no(verb, "secrets", Some(apps));
    }
    yes("create", "events.events.k8s.io", Some(apps));
    yes("patch", "events.events.k8s.io", Some(apps));
    no("delete", "events.events.k8s.io", Some(apps));
    no("create", "events", Some(apps)); // core/v1 Events: the operator uses events.k8s.io
    no("list", "pods", Some(apps));
    no("get", "configmaps", Some(apps));
    no("list", "namespaces", None);
    no("create", "clusterroles.rbac.authorization.k8s.io", None);
    no(
        "create",
        "rolebindings.rbac.authorization.k8s.io",
        Some(apps),
    );
    no(
        "get",
        "customresourcedefinitions.apiextensions.k8s.io",
        None,
    );
    // Leases: only its own, only in the release namespace.
    yes("create", "leases.coordination.k8s.io", Some(release_ns));
    yes("get", &lease, Some(release_ns));
    yes("patch", &lease, Some(release_ns));
    no("update", &lease, Some(release_ns));
    no("delete", &lease, Some(release_ns));
    no(
        "patch",
        "leases.coordination.k8s.io/someone-else",
        Some(release_ns),
    );
    no("list", "leases.coordination.k8s.io", Some(release_ns));
    for verb in ["get", "create", "patch"] {
        no(verb, &lease, Some(apps));
    }

    // One watched namespace: nothing anywhere else, nothing cluster-wide, no Lease.
    let release = format!("n{}", &release_ns[release_ns.len() - 10..]);
    let r = template(&release, release_ns, &format!("watchNamespace: {apps}\n"));
    apply_identity(c, &r);
    let sa = format!("system:serviceaccount:{release_ns}:{release}-gitdev-operator");
    let can = |verb: &str, resource: &str, ns: Option<&str>| can_i(c, &sa, verb, resource, ns);
    assert!(can("list", "gitdeployments.git.dev", Some(apps)));
    assert!(can(
        "patch",
        "gitdeployments.git.dev --subresource=status",
        Some(apps)
    ));
    assert!(can("get", "secrets", Some(apps)));
    assert!(can("create", "events.events.k8s.io", Some(apps)));
    for ns in [Some(other), Some(release_ns), None] {
        assert!(!can("list", "gitdeployments.git.dev", ns), "{ns:?}");
        assert!(!can("get", "secrets", ns), "{ns:?}");
        assert!(!can("create", "events.events.k8s.io", ns), "{ns:?}");
    }
    assert!(!can(
        "create",
        "leases.coordination.k8s.io",
        Some(release_ns)
    ));
    assert!(!can("delete", "gitdeployments.git.dev", Some(apps)));
    assert!(!can("patch", "secrets", Some(apps)));
}

/// The API server's URL and CA (base64) of the harness's kubeconfig, from
/// `kubectl config view --raw --minify --flatten`.
fn server_and_ca(c: &Cluster) -> (String, String) {
    let out = c
        .kubectl([
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ])
        .expect_success();
    let config: Value = serde_json::from_str(&out).unwrap();
    let cluster = &config["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().expect("server").to_string();
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (server, ca)
}

/// A kubeconfig that authenticates as the ServiceAccount, with a token from the TokenRequest API.
fn service_account_kubeconfig(c: &Cluster, ns: &str, sa: &str) -> PathBuf {
    let token = c
        .kubectl(["create", "token", sa, "-n", ns, "--duration=1h"])
        .expect_success();
    let (server, ca) = server_and_ca(c);
    let ca_line = if ca.is_empty() {
        "    insecure-skip-tls-verify: true\n".to_string()
    } else {
        format!("    certificate-authority-data: {ca}\n")
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n{ca_line}users:\n- name: {sa}\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context:\n    cluster: c\n    user: {sa}\n    namespace: {ns}\ncurrent-context: sa\n",
        token.trim()
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-kubeconfigs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.yaml", common::cluster::unique_name(sa)));
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts gitdev-operator exactly as the chart's Deployment configures it (its env), as the
/// chart's ServiceAccount. Only the metrics address is moved to a free loopback port.
fn start_operator_as_the_chart_does(
    c: &Cluster,
    r: &Rendered,
    release_ns: &str,
    kubeconfig: &Path,
    pod_name: &str,
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitdev-operator"));
    cmd.env_clear().env("KUBECONFIG", kubeconfig);
    for e in r.container()["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.namespace" => release_ns.to_string(),
                "metadata.name" => pod_name.to_string(),
                other => panic!("unexpected fieldRef {other}"),
            }
        } else if let Some(s) = e["valueFrom"].get("secretKeyRef") {
            let template = format!(
                "{{{{index .data \"{}\" | base64decode}}}}",
                s["key"].as_str().unwrap()
            );
            c.kubectl([
                "get",
                "secret",
                s["name"].as_str().unwrap(),
                "-n",
                release_ns,
                "-o",
                &format!("go-template={template}"),
            ])
            .expect_success()
        } else {
            panic!("unexpected env {e}")
        };
        cmd.env(name, value);
    }
    cmd.env("GITDEV_METRICS_ADDR", "127.0.0.1:0")
        // Debug logs of the operator, so that any 403 of any call shows.
        .env("RUST_LOG", "info,gitdev=debug,kube_runtime=debug,kube=warn");
    Proc::start("gitdev-operator", cmd, "gitdev-operator metrics on ").0
}

/// Only one operator of these tests runs at a time: a cluster-wide one would also act on the
/// objects of the other test.
static ONE_OPERATOR: Mutex<()> = Mutex::new(());

fn kubectl_in(c: &Cluster, ns: &str, args: &[&str]) -> KubectlOutput {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    c.kubectl(all)
}

fn ready_reason(c: &Cluster, ns: &str, name: &str) -> Option<String> {
    let out = kubectl_in(c, ns, &["get", "gitdeployment", name, "-o", "json"]);
    if !out.success() {
        return None;
    }
    let obj: Value = serde_json::from_str(&out.stdout).ok()?;
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .and_then(|c| c["reason"].as_str().map(String::from))
}

/// Create a token Secret and an object, wait for Ready/Succeeded, delete it: the remote
/// deployment is gone (404) and so is the object. Then no call of the operator was refused.
fn drive_a_full_lifecycle(
    c: &Cluster,
    sim: &Sim,
    operator: &Proc,
    apps: &TestNamespace,
    credentials: &str,
) {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {credentials}\nstringData:\n  token: sk_test_write\n"
    );
    c.kubectl_with_stdin(["-n", apps, "apply", "-f", "-"], &secret)
        .expect_success();
    let object = "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  projectId: proj_8f3k29\n  branch: main\n  envVars:\n    NODE_ENV: production\n";
    c.kubectl_with_stdin(["-n", apps, "apply", "-f", "-"], object)
        .expect_success();
    eventually(WAIT, "web to be Ready=Succeeded", || {
        assert_never_refused(operator);
        (ready_reason(c, apps, "web").as_deref() == Some("Succeeded")).then_some(())
    });
    let obj: Value = serde_json::from_str(
        &kubectl_in(c, apps, &["get", "gitdeployment", "web", "-o", "json"]).expect_success(),
    )
    .unwrap();
    assert_eq!(obj["status"]["status"], "success", "{obj}");
    assert_eq!(obj["metadata"]["finalizers"], json!(["git.dev/cleanup"]));
    assert!(
        obj["metadata"]["annotations"]["git.dev/state"].is_string(),
        "{obj}"
    );
    let id = obj["status"]["deploymentId"].as_str().unwrap().to_string();
    assert_eq!(sim.get("sk_test_write", &id).0, 200);
    // Events went through events.k8s.io.
    let events =
        kubectl_in(c, apps, &["get", "events.events.k8s.io", "-o", "json"]).expect_success();
    assert!(events.contains("\"Created\""), "{events}");

    kubectl_in(
        c,
        apps,
        &["delete", "gitdeployment", "web", "--timeout=60s"],
    )
    .expect_success();
    let (code, body) = sim.get("sk_test_write", &id);
    assert_eq!(code, 404, "{body}");
    let left = kubectl_in(
        c,
        apps,
        &[
            "get",
            "gitdeployment",
            "web",
            "--ignore-not-found",
            "-o",
            "name",
        ],
    )
    .expect_success();
    assert!(left.trim().is_empty(), "{left}");

    assert_never_refused(operator);
}

/// Panics with the operator's log if the API server refused it anything (403 Forbidden).
#[track_caller]
fn assert_never_refused(operator: &Proc) {
    let log = std::fs::read_to_string(&operator.log)
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        !log.contains("forbidden") && !log.contains("code: 403"),
        "the operator was refused a call:\n{}",
        operator.log_tail(80)
    );
}

#[test]
fn the_operator_with_only_the_charts_cluster_wide_rbac_and_leader_election_takes_an_object_through_its_lifecycle()
 {
    let _one = ONE_OPERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_ns = rt.block_on(c.namespace("helm-life"));
    let apps = rt.block_on(c.namespace("helm-life-apps"));
    let sim = Sim::start(0.5);
    let release = format!("l{}", &release_ns[release_ns.len() - 10..]);
    let r = template(
        &release,
        &release_ns,
        &format!("apiUrl: {}\nreplicas: 2\n", sim.api_url()),
    );
    assert!(r.env("WATCH_NAMESPACE").is_none());
    apply_identity(c, &r);
    let sa = format!("{release}-gitdev-operator");
    let kubeconfig = service_account_kubeconfig(c, &release_ns, &sa);
    let pod = format!("{sa}-7d9f8b6c5-x2x4z");
    let operator = start_operator_as_the_chart_does(c, &r, &release_ns, &kubeconfig, &pod);
    // It holds its Lease, in the release namespace, under its pod's name.
    eventually(WAIT, "the operator to hold its Lease", || {
        assert_never_refused(&operator);
        let out = kubectl_in(
            c,
            &release_ns,
            &["get", "lease", &sa, "-o", "jsonpath={.spec.holderIdentity}"],
        );
        (out.success() && out.stdout.trim() == pod).then_some(())
    });
    drive_a_full_lifecycle(c, &sim, &operator, &apps, "gitdev-credentials");
    let events =
        kubectl_in(c, &apps, &["get", "events.events.k8s.io", "-o", "json"]).expect_success();
    assert!(
        events.contains(&format!("\"reportingInstance\": \"{pod}\"")),
        "{events}"
    );
}

#[test]
fn the_operator_with_only_the_charts_namespaced_rbac_takes_an_object_in_its_watched_namespace_through_its_lifecycle()
 {
    let _one = ONE_OPERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_ns = rt.block_on(c.namespace("helm-scoped"));
    let apps = rt.block_on(c.namespace("helm-scoped-apps"));
    let sim = Sim::start(0.5);
    let release = format!("s{}", &release_ns[release_ns.len() - 10..]);
    let r = template(
        &release,
        &release_ns,
        &format!(
            "apiUrl: {}\nwatchNamespace: {apps}\ndefaultCredentialsSecret: team-token\nlogFormat: text\n",
            sim.api_url()
        ),
    );
    assert!(r.all("ClusterRole").is_empty());
    apply_identity(c, &r);
    let sa = format!("{release}-gitdev-operator");
    let kubeconfig = service_account_kubeconfig(c, &release_ns, &sa);
    let operator =
        start_operator_as_the_chart_does(c, &r, &release_ns, &kubeconfig, &format!("{sa}-0"));
    drive_a_full_lifecycle(c, &sim, &operator, &apps, "team-token");
}

/// A control plane of its own, stopped when dropped (and by its reaper if the test binary dies).
struct OwnControlPlane(common::cluster::LocalControlPlane);

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

#[test]
fn helm_install_creates_the_crd_keeps_the_fingerprint_key_across_upgrades_and_uninstall_leaves_the_crd_the_objects_and_the_key()
 {
    // A fresh control plane: the CRD must come from the chart, not from the harness.
    let dir = common::cluster::unique_temp_dir("gitdev-cp-helm");
    let cp = OwnControlPlane(
        common::cluster::LocalControlPlane::start(&dir, Some(std::process::id()))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let kubeconfig = cp.0.kubeconfig().to_str().unwrap().to_string();
    let k = common::cluster::Kubectl::new(&cp.0.kubeconfig(), Some(cp.0.dir.join("kubectl-cache")));
    let kubectl = |args: &[&str]| k.run(args, None);
    let ns = "gitdev-system";
    let release = "gitdev";
    let helm_in = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--namespace", ns, "--kubeconfig", kubeconfig.as_str()]);
        run_helm(&all)
    };
    let key = || {
        kubectl(&[
            "get",
            "secret",
            "gitdev-gitdev-operator-fingerprint",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.key}",
        ])
        .expect_success()
    };
    assert!(!kubectl(&["get", "crd", "gitdeployments.git.dev"]).success());

    // docs/helm.md, install: helm installs crds/ on the first install.
    let installed = helm_in(&["install", release, CHART, "--create-namespace"]).expect_success();
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    assert!(
        installed.contains(
            "kubectl apply --server-side --force-conflicts -f charts/gitdev-operator/crds/"
        ),
        "{installed}"
    );
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gitdeployments.git.dev",
    ])
    .expect_success();
    let first = key();
    assert_eq!(first.len(), 64, "{first}");
    let deployment: Value = serde_json::from_str(
        &kubectl(&[
            "get",
            "deployment",
            "gitdev-gitdev-operator",
            "-n",
            ns,
            "-o",
            "json",
        ])
        .expect_success(),
    )
    .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );

    // Upgrades keep the key (Helm's lookup finds the Secret).
    helm_in(&["upgrade", release, CHART, "--set", "replicas=2"]).expect_success();
    assert_eq!(key(), first, "an upgrade must keep the fingerprint key");
    helm_in(&[
        "upgrade",
        release,
        CHART,
        "--reuse-values",
        "--set",
        "logFormat=text",
    ])
    .expect_success();
    assert_eq!(key(), first);

    // docs/helm.md, upgrade: Helm never upgrades crds/, and since Helm created the CRD, a
    // server-side apply of a changed CRD conflicts with Helm's fields unless it forces them.
    let crds = Path::new(env!("CARGO_TARGET_TMPDIR")).join(common::cluster::unique_name("crds"));
    std::fs::create_dir_all(&crds).unwrap();
    let changed = read("charts/gitdev-operator/crds/gitdeployments.git.dev.yaml")
        .replace("    - gdeploy\n", "    - gdeploy\n    - gdtest\n");
    assert!(changed.contains("- gdtest"));
    std::fs::write(crds.join("gitdeployments.git.dev.yaml"), changed).unwrap();
    let crds = crds.to_str().unwrap();
    let conflict = kubectl(&["apply", "--server-side", "-f", crds]).expect_failure();
    assert!(conflict.contains("conflict with \"helm\""), "{conflict}");
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]).expect_success();
    let names = kubectl(&[
        "get",
        "crd",
        "gitdeployments.git.dev",
        "-o",
        "jsonpath={.spec.names.shortNames}",
    ])
    .expect_success();
    assert!(names.contains("gdtest"), "{names}");

    // An object, with no operator acting on it (pods never run on this control plane).
    kubectl(&["create", "namespace", "apps"]).expect_success();
    let object = "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: stays\nspec:\n  projectId: proj_8f3k29\n  branch: main\n";
    k.run(["-n", "apps", "apply", "-f", "-"], Some(object))
        .expect_success();

    // docs/helm.md, uninstall: what helm uninstall leaves.
    let out = helm_in(&["uninstall", release]).expect_success();
    assert!(out.contains("release \"gitdev\" uninstalled"), "{out}");
    assert!(
        out.contains("[Secret] gitdev-gitdev-operator-fingerprint"),
        "{out}"
    );
    assert!(
        kubectl(&[
            "get",
            "deployment,serviceaccount,service",
            "-n",
            ns,
            "-o",
            "name"
        ])
        .expect_success()
        .trim()
        .is_empty()
    );
    assert!(!kubectl(&["get", "clusterrole", "gitdev-gitdev-operator"]).success());
    assert!(!kubectl(&["get", "clusterrolebinding", "gitdev-gitdev-operator"]).success());
    kubectl(&["get", "crd", "gitdeployments.git.dev"]).expect_success();
    kubectl(&["get", "gitdeployment", "stays", "-n", "apps"]).expect_success();
    assert_eq!(key(), first, "uninstall keeps the fingerprint key");

    // A reinstall under the same name adopts the kept Secret and its key.
    helm_in(&["install", release, CHART]).expect_success();
    assert_eq!(key(), first);
    helm_in(&["uninstall", release]).expect_success();
}

#[test]
fn the_argocd_health_check_snippet_merges_into_argocd_cm_with_the_documented_command() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_ns = rt.block_on(c.namespace("helm-argo"));
    let argocd = rt.block_on(c.namespace("helm-argo-cd"));
    let r = template(
        "gitdev",
        &release_ns,
        &format!("argocd:\n  healthCheck:\n    enabled: true\n    namespace: {argocd}\n"),
    );
    c.kubectl_with_stdin(["apply", "-f", "-"], &r.only(&["ConfigMap"]))
        .expect_success();
    // An argocd-cm with settings of its own, which the merge must keep.
    kubectl_in(
        c,
        &argocd,
        &[
            "create",
            "configmap",
            "argocd-cm",
            "--from-literal=url=https://argocd.example.com",
        ],
    )
    .expect_success();
    // docs/helm.md: kubectl -n argocd patch configmap argocd-cm --type merge \
    //   -p "{\"data\":$(kubectl -n NS get configmap NAME -o jsonpath='{.data}')}"
    let data = kubectl_in(
        c,
        &argocd,
        &[
            "get",
            "configmap",
            "gitdev-gitdev-operator-argocd-health",
            "-o",
            "jsonpath={.data}",
        ],
    )
    .expect_success();
    kubectl_in(
        c,
        &argocd,
        &[
            "patch",
            "configmap",
            "argocd-cm",
            "--type",
            "merge",
            "-p",
            &format!("{{\"data\":{data}}}"),
        ],
    )
    .expect_success();
    let cm: Value = serde_json::from_str(
        &kubectl_in(c, &argocd, &["get", "configmap", "argocd-cm", "-o", "json"]).expect_success(),
    )
    .unwrap();
    assert_eq!(cm["data"]["url"], "https://argocd.example.com");
    assert_eq!(
        cm["data"]["resource.customizations.health.git.dev_Deployment"].as_str(),
        Some(read("charts/gitdev-operator/files/argocd-health.lua").as_str())
    );
}
