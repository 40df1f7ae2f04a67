//! A real `helm install`, upgrade and uninstall on a control plane of its own, and the Argo CD
//! snippet merged the documented way.

use std::path::Path;

use serde_json::Value;

use crate::common;
use crate::common::cluster::cluster;
use crate::helm::*;
use crate::operator::kubectl_in;

/// A control plane of its own, stopped when dropped (and by its reaper if the test binary dies).
struct OwnControlPlane(common::cluster::LocalControlPlane);

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

#[test]
fn helm_install_creates_the_crd_the_operator_makes_its_key_and_upgrades_and_uninstall_leave_the_crd_the_objects_and_the_key()
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
    // No pod runs on this control plane: start the operator binary once as the chart configures
    // its key, and let it make its key Secret at first start (no Helm lookup renders it).
    assert!(
        !kubectl(&[
            "get",
            "secret",
            "gitdev-gitdev-operator-fingerprint",
            "-n",
            ns
        ])
        .success()
    );
    let mut operator = std::process::Command::new(env!("CARGO_BIN_EXE_gitdev-operator"));
    operator
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", ns)
        .env("GITDEV_KEY_SECRET", "gitdev-gitdev-operator-fingerprint")
        .env("GITDEV_METRICS_ADDR", "127.0.0.1:0")
        .env("GITDEV_API_URL", "http://127.0.0.1:9/v1");
    let (mut operator, _) =
        common::stack::Proc::start("gitdev-operator", operator, "gitdev-operator metrics on ");
    let first = common::stack::eventually(
        std::time::Duration::from_secs(30),
        "the operator's key Secret",
        || {
            let out = kubectl(&[
                "get",
                "secret",
                "gitdev-gitdev-operator-fingerprint",
                "-n",
                ns,
                "-o",
                "jsonpath={.data.key}",
            ]);
            out.success().then(|| out.stdout.trim().to_string())
        },
    );
    operator.terminate(std::time::Duration::from_secs(15));
    assert_eq!(first.len(), 44, "32 random bytes, base64: {first}");
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

    // Upgrades keep the key: Helm never rendered it, so it never touches it.
    helm_in(&["upgrade", release, CHART, "--set", "replicas=1"]).expect_success();
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

    // A reinstall under the same name finds the key where the operator left it.
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
    // The resource actions travel with it (their content: tests/argocd_actions.rs).
    let actions = "resource.customizations.actions.git.dev_Deployment";
    assert_eq!(
        cm["data"][actions],
        r.one("ConfigMap")["data"][actions],
        "{cm}"
    );
    assert!(cm["data"][actions].is_string(), "{cm}");
}
