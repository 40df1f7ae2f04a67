//! The real operator with nothing but the chart's RBAC: a token of the chart's ServiceAccount,
//! the chart's environment, an object taken through its whole lifecycle.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common;
use crate::common::cluster::{Cluster, KubectlOutput, TestNamespace, cluster};
use crate::common::stack::{Proc, Sim, eventually};
use crate::helm::*;
use crate::rbac::apply_identity;

const WAIT: Duration = Duration::from_secs(60);

/// Applies the chart's ServiceAccount and RBAC (of release `release`), then starts
/// gitdev-operator exactly as the chart's Deployment configures it (its env), as that
/// ServiceAccount, in pod `pod_name`. Only the metrics address is moved to a free loopback port.
fn start_operator_as_the_chart_does(
    c: &Cluster,
    r: &Rendered,
    release_ns: &str,
    release: &str,
    pod_name: &str,
) -> Proc {
    apply_identity(c, r);
    let kubeconfig = common::service_account::kubeconfig_for(
        c,
        release_ns,
        &format!("{release}-gitdev-operator"),
    );
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

pub fn kubectl_in(c: &Cluster, ns: &str, args: &[&str]) -> KubectlOutput {
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

/// Create a token Secret and an object, wait for Ready/Succeeded and its exported ConfigMap,
/// delete it: the remote deployment is gone (404) and so are the object and the ConfigMap. Then
/// no call of the operator was refused.
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
    let object = "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  projectId: proj_8f3k29\n  branch: main\n  exportTo: web-live\n  envVars:\n    NODE_ENV: production\n";
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
    // spec.exportTo: created by server-side apply with the chart's configmaps rule.
    let exported = |c: &Cluster| {
        kubectl_in(
            c,
            apps,
            &[
                "get",
                "configmap",
                "web-live",
                "--ignore-not-found",
                "-o",
                "jsonpath={.data.deploymentId}",
            ],
        )
        .expect_success()
    };
    eventually(WAIT, "the exported ConfigMap", || {
        assert_never_refused(operator);
        (exported(c) == id).then_some(())
    });

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
    eventually(WAIT, "the exported ConfigMap deleted", || {
        exported(c).is_empty().then_some(())
    });

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
    let sa = format!("{release}-gitdev-operator");
    let pod = format!("{sa}-7d9f8b6c5-x2x4z");
    let operator = start_operator_as_the_chart_does(c, &r, &release_ns, &release, &pod);
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
    let pod = format!("{release}-gitdev-operator-0");
    let operator = start_operator_as_the_chart_does(c, &r, &release_ns, &release, &pod);
    drive_a_full_lifecycle(c, &sim, &operator, &apps, "team-token");
}

#[test]
fn the_operator_with_only_the_charts_rbac_for_two_namespaces_takes_an_object_through_its_lifecycle_in_each_and_leaves_other_namespaces_alone()
 {
    let _one = ONE_OPERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_ns = rt.block_on(c.namespace("helm-multi"));
    let team_a = rt.block_on(c.namespace("helm-multi-a"));
    let team_b = rt.block_on(c.namespace("helm-multi-b"));
    let unlisted = rt.block_on(c.namespace("helm-multi-unlisted"));
    let sim = Sim::start(0.5);
    let release = format!("w{}", &release_ns[release_ns.len() - 10..]);
    let r = template(
        &release,
        &release_ns,
        &format!(
            "apiUrl: {}\nwatchNamespaces: [{team_a}, {team_b}]\n",
            sim.api_url()
        ),
    );
    assert_eq!(r.env_value("WATCH_NAMESPACE"), format!("{team_a},{team_b}"));
    // An object where the operator may not look: it must stay untouched.
    let object = "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: elsewhere\nspec:\n  projectId: proj_8f3k29\n  branch: main\n";
    c.kubectl_with_stdin(["-n", &unlisted, "apply", "-f", "-"], object)
        .expect_success();
    let pod = format!("{release}-gitdev-operator-0");
    let operator = start_operator_as_the_chart_does(c, &r, &release_ns, &release, &pod);
    for ns in [&team_a, &team_b] {
        drive_a_full_lifecycle(c, &sim, &operator, ns, "gitdev-credentials");
    }
    let elsewhere: Value = serde_json::from_str(
        &kubectl_in(
            c,
            &unlisted,
            &["get", "gitdeployment", "elsewhere", "-o", "json"],
        )
        .expect_success(),
    )
    .unwrap();
    // (The CRD's schema defaults `status.observedGeneration` to 0: that is no sign of the operator.)
    assert!(elsewhere["status"]["conditions"].is_null(), "{elsewhere}");
    assert!(elsewhere["metadata"]["finalizers"].is_null(), "{elsewhere}");
    assert!(
        elsewhere["metadata"]["annotations"]["git.dev/state"].is_null(),
        "{elsewhere}"
    );
}
