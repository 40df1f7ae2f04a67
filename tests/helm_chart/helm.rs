//! Helm itself, the chart's rendering and what every test reads: `helm` kept inside the target
//! directory, `helm template` into objects, the rules the operator's RBAC must hold.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::common;
use crate::common::cluster::repo_path;

pub const CHART: &str = "charts/gitdev-operator";

/// The Helm binary of `tests/cluster/build.sh` (unpacked on first use, then cached).
pub fn helm_binary() -> &'static Path {
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
pub fn helm() -> Command {
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
pub struct Run {
    pub what: String,
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(what: String, out: Output) -> Run {
        Run {
            what,
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn expect_success(self) -> String {
        assert!(self.ok, "{self}");
        self.stdout
    }

    #[track_caller]
    pub fn expect_failure(self) -> String {
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

pub fn run_helm(args: &[&str]) -> Run {
    let out = helm().args(args).output().expect("run helm");
    Run::of(format!("helm {}", args.join(" ")), out)
}

/// A values file for one rendering, in the target directory.
pub fn values_file(yaml: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-values");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.yaml", common::cluster::unique_name("values")));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `helm template RELEASE charts/gitdev-operator -n NAMESPACE -f <values>`.
pub fn try_template(release: &str, namespace: &str, values: &str) -> Run {
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
pub struct Rendered {
    pub yaml: String,
    pub objects: Vec<Value>,
}

#[track_caller]
pub fn template(release: &str, namespace: &str, values: &str) -> Rendered {
    let yaml = try_template(release, namespace, values).expect_success();
    let objects = serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap_or_else(|e| panic!("helm template printed invalid YAML: {e}\n{yaml}"))
        .into_iter()
        .filter(|o| !o.is_null())
        .collect();
    Rendered { yaml, objects }
}

impl Rendered {
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    #[track_caller]
    pub fn one(&self, kind: &str) -> &Value {
        match self.all(kind).as_slice() {
            [one] => one,
            other => panic!("expected one {kind}, found {}:\n{}", other.len(), self.yaml),
        }
    }

    #[track_caller]
    pub fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in:\n{}", self.yaml))
    }

    pub fn kinds(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// The manifests of some kinds only, as a YAML stream.
    pub fn only(&self, kinds: &[&str]) -> String {
        self.objects
            .iter()
            .filter(|o| kinds.iter().any(|k| o["kind"] == *k))
            .map(|o| serde_json::to_string(o).unwrap())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    pub fn container(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    }

    /// The operator container's env var `name`.
    pub fn env(&self, name: &str) -> Option<&Value> {
        self.container()["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
    }

    #[track_caller]
    pub fn env_value(&self, name: &str) -> &str {
        self.env(name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no env {name} with a value in {}", self.container()))
    }
}

/// The rules the operator needs on its objects, Secrets, Events and exported ConfigMaps:
/// exactly what it calls.
pub fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["git.dev"], "resources": ["gitdeployments"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["git.dev"], "resources": ["gitdeployments/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch", "delete"]},
    ])
}

/// A binding of the release `gitdev` in `gitdev-system`: it grants the `role_kind`
/// (`Role`/`ClusterRole`) `gitdev-gitdev-operator` to the chart's ServiceAccount, and only to it.
#[track_caller]
pub fn assert_binds_the_service_account(binding: &Value, role_kind: &str) {
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "gitdev-gitdev-operator"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "gitdev-gitdev-operator", "namespace": "gitdev-system"}])
    );
}

/// The rules of leader election: only the one Lease, and creating it.
pub fn lease_rules(lease: &str) -> Value {
    json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease], "verbs": ["get", "patch"]},
    ])
}

pub fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

pub fn yaml_file(relative: &str) -> Value {
    serde_saphyr::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}
