//! The local Kubernetes control plane that the integration tests run against (tests/cluster/,
//! tests/common/): it comes up, serves what the operator needs, isolates tests from each other
//! and goes away. See docs/control-plane.md.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{process_is_running, repo_path, unique_temp_dir, wait_until};
use common::{LocalControlPlane, cluster};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// Extra control planes (the teardown tests) start one at a time: each costs ~300 MB and a
/// core for a few seconds.
static EXTRA_CONTROL_PLANE: Mutex<()> = Mutex::new(());

/// Listening TCP and UDP sockets of a process, as `proto address:port`, from `ss`.
fn listening_sockets(pid: u32) -> Vec<String> {
    let output = Command::new("ss")
        .args(["-H", "-l", "-t", "-u", "-n", "-p"])
        .output()
        .expect("ss (iproute2)");
    assert!(output.status.success(), "ss failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            format!("{} {}", fields[0], fields[4])
        })
        .collect()
}

#[tokio::test]
async fn the_control_plane_comes_up_reports_its_version_and_listens_only_on_loopback() {
    let cluster = cluster();

    let kubectl_version: Value =
        serde_json::from_str(&cluster.kubectl(["version", "-o", "json"]).expect_success())
            .expect("JSON");
    let kubectl_says = kubectl_version["serverVersion"]["gitVersion"]
        .as_str()
        .expect("serverVersion.gitVersion");
    let version = cluster
        .client()
        .await
        .apiserver_version()
        .await
        .expect("/version");
    assert_eq!(
        version.git_version, kubectl_says,
        "kubectl and /version disagree"
    );

    let Some(local) = cluster.local() else {
        eprintln!("using $KUBECONFIG's cluster ({kubectl_says}): version and sockets not checked");
        return;
    };
    assert_eq!(
        version.git_version,
        common::cluster::expected_kube_version()
    );
    assert_eq!(version.major, "1");

    // Every socket of kube-apiserver and etcd listens on 127.0.0.1, and only on the ports up.sh
    // chose: no metrics, pprof or peer listener on another address.
    let mut sockets = listening_sockets(local.apiserver_pid());
    sockets.extend(listening_sockets(local.etcd_pid()));
    let expected: BTreeSet<String> = [
        local.apiserver_port(),
        local.etcd_port(),
        local.etcd_peer_port(),
    ]
    .iter()
    .map(|port| format!("tcp 127.0.0.1:{port}"))
    .collect();
    assert_eq!(
        sockets.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "listening sockets: {sockets:?}"
    );
}

#[tokio::test]
async fn a_crd_with_a_status_subresource_printer_columns_and_cel_rules_is_served() {
    let cluster = cluster();
    let fixture = repo_path("tests/fixtures/widgets.example.test.yaml");
    let crds = cluster.apply_crds(&fixture).expect("the test CRD installs");
    assert_eq!(crds, ["widgets.example.test"]);
    let ns = cluster.namespace("widgets").await;
    let widget = |size: &str, min: i64, max: i64| {
        format!(
            "apiVersion: example.test/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: {ns}\n\
             spec:\n  size: {size}\n  minReplicas: {min}\n  maxReplicas: {max}\n"
        )
    };
    let apply =
        |yaml: &str| cluster.kubectl_with_stdin(["apply", "--server-side", "-f", "-"], yaml);

    // A valid object is accepted.
    apply(&widget("small", 1, 3)).expect_success();

    // An object breaking a rule is rejected, with the rule's message.
    let stderr = apply(&widget("small", 5, 2)).expect_failure();
    assert!(
        stderr.contains("minReplicas must not exceed maxReplicas"),
        "stderr: {stderr}"
    );

    // A transition rule (self == oldSelf) makes a field immutable.
    let stderr = apply(&widget("large", 1, 3)).expect_failure();
    assert!(stderr.contains("field is immutable"), "stderr: {stderr}");

    // The status subresource takes a status patch; the main resource ignores status.
    let gvk = GroupVersionKind::gvk("example.test", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().await,
        &ns,
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    );
    let params = PatchParams::default();
    let patched = widgets
        .patch_status(
            "w1",
            &params,
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await
        .expect("status patch");
    assert_eq!(patched.data["status"]["phase"], "Ready");
    let patched = widgets
        .patch(
            "w1",
            &params,
            &Patch::Merge(
                json!({"status": {"phase": "Ignored"}, "metadata": {"labels": {"touched": "yes"}}}),
            ),
        )
        .await
        .expect("main resource patch");
    assert_eq!(
        patched.labels().get("touched").map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        patched.data["status"]["phase"], "Ready",
        "the main resource must not change status"
    );

    // kubectl get shows the printer columns.
    let table = cluster
        .kubectl(["get", "widgets", "-n", &ns])
        .expect_success();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SIZE", "MIN", "MAX", "PHASE", "AGE"],
        "table:\n{table}"
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["w1", "small", "1", "3", "Ready"],
        "table:\n{table}"
    );

    if cluster.local().is_none() {
        // Leave no test CRD behind in a developer's cluster.
        drop(ns);
        cluster.kubectl(["delete", "crd", "widgets.example.test", "--wait=false"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_harness_users_in_parallel_get_separate_namespaces_and_do_not_see_each_others_objects()
{
    let cluster = cluster();
    // Both create their object before either lists, so each list would see the other's object
    // if namespaces did not keep them apart.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let user = |who: &'static str| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            let ns = cluster.namespace("parallel").await;
            let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client().await, &ns);
            let config_map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some("same-name".into()),
                    ..ObjectMeta::default()
                },
                data: Some([("owner".to_string(), who.to_string())].into()),
                ..ConfigMap::default()
            };
            config_maps
                .create(&PostParams::default(), &config_map)
                .await
                .expect("create");
            barrier.wait().await;
            let listed = config_maps
                .list(&ListParams::default())
                .await
                .expect("list");
            let mine: Vec<_> = listed
                .items
                .iter()
                .filter(|cm| cm.name_any() == "same-name")
                .collect();
            assert_eq!(mine.len(), 1, "{who} sees {listed:?}");
            assert_eq!(
                mine[0]
                    .data
                    .as_ref()
                    .and_then(|d| d.get("owner"))
                    .map(String::as_str),
                Some(who)
            );
            ns.name().to_string()
        })
    };
    let (a, b) = tokio::join!(user("alice"), user("bob"));
    let (a, b) = (a.expect("alice"), b.expect("bob"));
    assert_ne!(a, b);
    assert!(
        a.starts_with("parallel-") && b.starts_with("parallel-"),
        "{a} {b}"
    );
}

#[tokio::test]
async fn a_service_account_token_can_be_minted_and_is_accepted() {
    let cluster = cluster();
    let ns = cluster.namespace("tokens").await;
    cluster
        .kubectl(["create", "serviceaccount", "robot", "-n", &ns])
        .expect_success();
    let token = cluster
        .kubectl(["create", "token", "robot", "-n", &ns, "--duration=10m"])
        .expect_success();
    let whoami = cluster
        .kubectl([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
            "--token",
            token.trim(),
        ])
        .expect_success();
    assert_eq!(whoami, format!("system:serviceaccount:{ns}:robot"));
}

/// Starts an extra control plane in a new temporary directory.
fn start_extra(owner_pid: Option<u32>) -> LocalControlPlane {
    let dir = unique_temp_dir("gitdev-cp-extra");
    LocalControlPlane::start(&dir, owner_pid).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_running(plane: &LocalControlPlane) {
    for pid in plane.server_pids() {
        assert!(
            process_is_running(pid),
            "PID {pid} of {} is not running",
            plane.dir.display()
        );
    }
}

/// Its directory is removed and none of its processes (servers, reaper) runs.
fn is_gone(plane: &LocalControlPlane) -> bool {
    let mut pids = plane.server_pids().into_iter().chain(plane.reaper_pid());
    !plane.dir.exists() && pids.all(|pid| !process_is_running(pid))
}

#[test]
fn down_stops_the_processes_and_removes_the_directory() {
    let _one_at_a_time = EXTRA_CONTROL_PLANE
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Owned by this test process too, so that a failing assertion does not leak it.
    let plane = start_extra(Some(std::process::id()));
    assert_running(&plane);
    assert!(
        plane.reaper_pid().is_some_and(process_is_running),
        "the reaper runs"
    );
    // A second control plane next to the shared one: its ports differ.
    if let Some(shared) = cluster().local() {
        assert_ne!(plane.apiserver_port(), shared.apiserver_port());
        assert_ne!(plane.etcd_port(), shared.etcd_port());
    }

    plane.stop().expect("down.sh");
    assert!(
        is_gone(&plane),
        "after down.sh, {} or its processes remain",
        plane.dir.display()
    );
    // Stopping again is harmless.
    plane.stop().expect("down.sh a second time");
}

#[test]
fn the_owner_pid_reaper_stops_the_control_plane_when_its_owner_exits() {
    let _one_at_a_time = EXTRA_CONTROL_PLANE
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    /// A stand-in owner process, killed (and reaped) when dropped, even if an assertion fails.
    struct Owner(std::process::Child);
    impl Drop for Owner {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let owner = Owner(Command::new("sleep").arg("300").spawn().expect("sleep"));
    let plane = start_extra(Some(owner.0.id()));
    assert_running(&plane);
    assert!(plane.dir.exists());

    // The owner exits (killed here rather than waited for, to keep the test short).
    drop(owner);
    let gone = wait_until(Duration::from_secs(30), || is_gone(&plane));
    if !gone {
        let _ = plane.stop();
        panic!(
            "the control plane in {} outlived its owner by 30 s",
            plane.dir.display()
        );
    }
}
