//! A kubeconfig that authenticates as a ServiceAccount with a Role of the test's choosing, for
//! tests of what a user with limited RBAC sees (the approach of `tests/helm_chart/operator.rs`:
//! a token from the TokenRequest API, the harness cluster's server and CA).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::cluster::{Cluster, unique_name};

/// The API server's URL and CA (base64) of the harness's kubeconfig.
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

/// Creates ServiceAccount `sa` in `ns` with a Role of `rules` (YAML list items, indented by two
/// spaces, e.g. `"- apiGroups: [git.dev]\n  resources: [gitdeployments]\n  verbs: [get]\n"`)
/// bound to it, and returns a kubeconfig file that acts as that ServiceAccount in `ns`.
pub fn kubeconfig_with_role(c: &Cluster, ns: &str, sa: &str, rules: &str) -> PathBuf {
    let indented: String = rules.lines().map(|l| format!("{l}\n")).collect();
    let manifest = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {sa}\n  namespace: {ns}\nrules:\n{indented}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {sa}\n  namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {sa}\nsubjects:\n- kind: ServiceAccount\n  name: {sa}\n  namespace: {ns}\n"
    );
    c.kubectl_with_stdin(["apply", "-f", "-"], &manifest)
        .expect_success();
    kubeconfig_for(c, ns, sa)
}

/// A kubeconfig file that acts as the existing ServiceAccount `sa` of `ns`, with a token from
/// the TokenRequest API and the harness cluster's server and CA.
pub fn kubeconfig_for(c: &Cluster, ns: &str, sa: &str) -> PathBuf {
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
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sa-kubeconfigs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.yaml", unique_name(sa)));
    std::fs::write(&path, config).unwrap();
    path
}
