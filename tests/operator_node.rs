//! The product installed as a user installs it: the OCI images of `tests/cluster/images.sh`
//! running as pods on a real node (kubelet + containerd, `tests/cluster/node-up.sh`), the chart
//! installed with `helm`, the simulator as a pod, `examples/basic.yaml` applied with kubectl.
//!
//! These tests need root, the Debian packages of docs/node.md and the images: they are ignored
//! by a plain `cargo test`, and `tests/run-all.sh` runs them after building the images:
//!
//! ```text
//! tests/cluster/images.sh && cargo test --test operator_node -- --ignored
//! ```
//!
//! One node serves the whole binary; it stops, and everything it did to the machine is undone,
//! when the test process exits (up.sh's `--owner-pid`). Every test uses namespaces of its own.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::Value;

use common::cluster::{Kubectl, KubectlOutput, parse_env, repo_path, unique_name, unique_temp_dir};
use common::stack::{eventually, http};

/// The largest an image archive may be. The operator image measured 8.1 MiB (one static
/// binary and the CA bundle); a bound well above it still catches a base image or a debug build
/// slipping in.
const MAX_IMAGE_BYTES: u64 = 32 * 1024 * 1024;

/// What pods take to start here: images are local, but the machine is small and shared.
const POD_START: Duration = Duration::from_secs(120);

/// Held by every test that installs the operator: a cluster-wide operator would act on the
/// objects of another test's operator.
static OPERATORS: Mutex<()> = Mutex::new(());

fn one_operator_at_a_time() -> MutexGuard<'static, ()> {
    // A test that failed while holding it leaves nothing behind that matters to the next one.
    OPERATORS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The token the simulator's default fixture accepts for writes.
const SIM_TOKEN: &str = "sk_test_write";

// --- The tests ------------------------------------------------------------------------------

#[test]
#[ignore = "needs root and the images: run by tests/run-all.sh (see the module docs)"]
fn the_images_are_small_and_start_as_a_non_root_user_on_a_read_only_root_file_system() {
    let node = node();
    for key in ["GITDEV_OPERATOR_ARCHIVE_BYTES", "GITDEV_SIM_ARCHIVE_BYTES"] {
        let bytes: u64 = node.images[key].parse().expect("a size in bytes");
        assert!(
            bytes <= MAX_IMAGE_BYTES,
            "{key} = {bytes}: over the bound of {MAX_IMAGE_BYTES} bytes"
        );
    }
    let ns = node.namespace("image");

    // No runAsUser: the user is the image's own, and runAsNonRoot makes the kubelet refuse to
    // start a container whose image would run as root.
    let help = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: help
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
  containers:
    - name: operator
      image: {image}
      imagePullPolicy: Never
      args: ["--help"]
      securityContext:
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities:
          drop: ["ALL"]
"#,
        image = node.images["GITDEV_OPERATOR_IMAGE"]
    );
    node.kubectl(["apply", "-n", &ns, "-f", "-"], Some(&help))
        .expect_success();
    eventually(POD_START, "the --help pod to succeed", || {
        let phase = node.pod_field(&ns, "help", "{.status.phase}");
        assert_ne!(phase, "Failed", "{}", node.describe(&ns, "pod/help"));
        (phase == "Succeeded").then_some(())
    });
    let logs = node
        .kubectl(["logs", "-n", &ns, "help"], None)
        .expect_success();
    assert!(
        logs.contains("Usage: gitdev-operator"),
        "--help printed:\n{logs}"
    );

    // The simulator serves while its root file system is read-only; its process is user 65532.
    node.kubectl(["apply", "-n", &ns, "-f", "deploy/gitdev-sim.yaml"], None)
        .expect_success();
    let sim = node.wait_for_sim(&ns);
    let container = node.pod_field(&ns, &sim.pod, "{.status.containerStatuses[0].containerID}");
    let id = container
        .strip_prefix("containerd://")
        .unwrap_or_else(|| panic!("not a containerd container: {container}"));
    let pid = node.task_pid(id);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("a Uid line");
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "real, effective, saved and file-system user of the simulator"
    );
    let health = http()
        .get(format!("{}/_sim/health", sim.root))
        .send()
        .expect("GET /_sim/health");
    assert!(health.status().is_success(), "{}", health.status());
    node.delete_namespace(&ns);
}

#[test]
#[ignore = "needs root and the images: run by tests/run-all.sh (see the module docs)"]
fn helm_install_elects_one_leader_hands_over_upgrades_without_a_duplicate_and_uninstalls_cleanly() {
    let _one = one_operator_at_a_time();
    let node = node();
    let ns = node.namespace("install");
    let sim = node.start_sim(&ns);
    node.create_token_secret(&ns);
    let release = "demo";
    node.helm_install(release, &ns, Some(&ns), &sim, &[]);

    // Two replicas, one Lease holder: the holder is one of the two pods.
    let pods = node.wait_for_pods(&ns, release, 2);
    let lease = format!("{release}-gitdev-operator");
    let leader = eventually(POD_START, "a Lease holder", || {
        let holder = node.lease_holder(&ns, &lease);
        pods.contains(&holder).then_some(holder)
    });

    node.kubectl(["apply", "-n", &ns, "-f", "examples/basic.yaml"], None)
        .expect_success();
    node.wait_for_success(&ns, "web");
    assert_eq!(sim.posts(), 1, "one remote deployment for one object");
    assert_eq!(sim.deployments_of("main").len(), 1);

    // The leader's pod goes (it releases the Lease on SIGTERM); a live replica, the standby or
    // the ReplicaSet's replacement, whichever asks first, takes it over within the Lease's
    // duration (15 s), and the object stays as it is, with no second deployment.
    node.kubectl(["delete", "pod", "-n", &ns, &leader, "--wait=false"], None)
        .expect_success();
    let pods = node.wait_for_pods(&ns, release, 2);
    assert!(!pods.contains(&leader), "{leader} is gone: {pods:?}");
    let successor = eventually(
        Duration::from_secs(60),
        "another pod to take the Lease",
        || {
            let holder = node.lease_holder(&ns, &lease);
            pods.contains(&holder).then_some(holder)
        },
    );
    assert_ne!(successor, leader);
    node.wait_for_success(&ns, "web");

    // An upgrade that changes the pod template rolls both pods; the new ones adopt the object.
    node.helm_upgrade(
        release,
        &ns,
        Some(&ns),
        &sim,
        &["--set", "podAnnotations.rolled=yes"],
    );
    let rolled = node.wait_for_pods(&ns, release, 2);
    assert!(
        rolled.iter().all(|p| !pods.contains(p)),
        "the upgrade replaced every pod: before {pods:?}, after {rolled:?}"
    );
    eventually(POD_START, "a new Lease holder after the upgrade", || {
        rolled
            .contains(&node.lease_holder(&ns, &lease))
            .then_some(())
    });
    node.wait_for_success(&ns, "web");
    assert_eq!(
        sim.posts(),
        1,
        "no duplicate remote deployment across the upgrade"
    );
    assert_eq!(sim.deployments_of("main").len(), 1);

    // Objects first (the operator deletes their remote deployments), then the release.
    node.kubectl(
        [
            "delete",
            "-n",
            &ns,
            "-f",
            "examples/basic.yaml",
            "--timeout=120s",
        ],
        None,
    )
    .expect_success();
    assert_eq!(
        sim.deployments_of("main"),
        Vec::<Value>::new(),
        "remote deployments left"
    );
    node.helm(&[
        "uninstall",
        release,
        "-n",
        &ns,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let selector = format!("app.kubernetes.io/instance={release}");
    eventually(POD_START, "the release's pods to go", || {
        node.names(&ns, "pods", &selector).is_empty().then_some(())
    });
    let left = node.names(
        &ns,
        "deployments,replicasets,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
        &selector,
    );
    assert!(left.is_empty(), "helm uninstall left {left:?}");
    let cluster_left = node
        .kubectl(
            [
                "get",
                "clusterroles,clusterrolebindings",
                "-l",
                &selector,
                "-o",
                "name",
            ],
            None,
        )
        .expect_success();
    assert_eq!(cluster_left.trim(), "", "cluster-wide objects left");
    node.delete_namespace(&ns);
}

#[test]
#[ignore = "needs root and the images: run by tests/run-all.sh (see the module docs)"]
fn deleting_a_namespace_with_objects_and_their_token_secret_deletes_the_remote_deployments() {
    let _one = one_operator_at_a_time();
    let node = node();
    let operator_ns = node.namespace("operator");
    let apps_ns = node.namespace("apps");
    let sim = node.start_sim(&operator_ns);
    node.create_token_secret(&apps_ns);
    // Cluster-wide (the chart's default): with `watchNamespace`, the operator's Role lives in the
    // watched namespace, and the namespace's deletion removes it together with the objects, so
    // the operator can no longer read the token Secret and the cleanup never finishes.
    node.helm_install("gitdev", &operator_ns, None, &sim, &["--set", "replicas=1"]);
    node.wait_for_pods(&operator_ns, "gitdev", 1);

    node.kubectl(["apply", "-n", &apps_ns, "-f", "examples/basic.yaml"], None)
        .expect_success();
    node.wait_for_success(&apps_ns, "web");
    assert_eq!(sim.deployments_of("main").len(), 1);

    // The namespace controller deletes the object and the Secret together; the operator must
    // still reach the API with that token to delete the remote deployment.
    node.kubectl(["delete", "namespace", &apps_ns, "--timeout=180s"], None)
        .expect_success();
    assert_eq!(
        sim.deployments_of("main"),
        Vec::<Value>::new(),
        "remote deployments left"
    );
    node.helm(&[
        "uninstall",
        "gitdev",
        "-n",
        &operator_ns,
        "--wait",
        "--timeout",
        "120s",
    ]);
    node.delete_namespace(&operator_ns);
}

// --- The node -------------------------------------------------------------------------------

/// A control plane with a node, started once for this test binary.
struct Node {
    dir: PathBuf,
    kubectl: Kubectl,
    /// images.env of images.sh: names, archive paths and sizes.
    images: HashMap<String, String>,
    /// node/env of node-up.sh: the containerd socket among others.
    env: HashMap<String, String>,
    helm: PathBuf,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
    match NODE.get_or_init(Node::start) {
        Ok(node) => node,
        Err(error) => panic!("no node for the tests: {error}"),
    }
}

impl Node {
    fn start() -> Result<Node, String> {
        let images_dir = std::env::var_os("GITDEV_IMAGES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_path("target/images"));
        let images = std::fs::read_to_string(images_dir.join("images.env")).map_err(|e| {
            format!(
                "{}/images.env: {e}; build the images first with tests/cluster/images.sh",
                images_dir.display()
            )
        })?;
        let images = parse_env(&images);
        let dir = unique_temp_dir("gitdev-node-test");
        let output = Command::new(repo_path("tests/cluster/up.sh"))
            .arg("--dir")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .arg("--node")
            .arg("--images")
            .arg(&images_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run up.sh: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "up.sh --node failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let env = std::fs::read_to_string(dir.join("node/env"))
            .map_err(|e| format!("up.sh --node wrote no node/env: {e}"))?;
        let kubeconfig = dir.join("kubeconfig");
        let node = Node {
            kubectl: Kubectl::new(&kubeconfig, Some(dir.join("kubectl-cache"))),
            helm: helm_binary()?,
            images,
            env: parse_env(&env),
            dir,
        };
        // Once, before any test installs the chart: parallel installs would race to create it.
        node.kubectl(
            [
                "apply",
                "--server-side",
                "-f",
                "crds/gitdeployments.git.dev.yaml",
            ],
            None,
        )
        .expect_success();
        Ok(node)
    }

    fn kubectl<const N: usize>(&self, args: [&str; N], stdin: Option<&str>) -> KubectlOutput {
        self.kubectl.run(args, stdin)
    }

    fn namespace(&self, prefix: &str) -> String {
        let name = unique_name(&format!("node-{prefix}"));
        self.kubectl(["create", "namespace", &name], None)
            .expect_success();
        // Pods of a namespace are admitted once its default ServiceAccount exists.
        eventually(POD_START, "the namespace's default ServiceAccount", || {
            self.kubectl(["get", "serviceaccount", "default", "-n", &name], None)
                .success()
                .then_some(())
        });
        name
    }

    fn delete_namespace(&self, ns: &str) {
        self.kubectl(["delete", "namespace", ns, "--timeout=180s"], None)
            .expect_success();
    }

    fn describe(&self, ns: &str, what: &str) -> String {
        let out = self.kubectl(["describe", "-n", ns, what], None);
        format!("{}{}", out.stdout, out.stderr)
    }

    fn pod_field(&self, ns: &str, pod: &str, jsonpath: &str) -> String {
        self.kubectl(
            [
                "get",
                "pod",
                "-n",
                ns,
                pod,
                "-o",
                &format!("jsonpath={jsonpath}"),
            ],
            None,
        )
        .expect_success()
    }

    /// Names (without kind) of the objects of these kinds that match `selector`.
    fn names(&self, ns: &str, kinds: &str, selector: &str) -> Vec<String> {
        self.kubectl(["get", kinds, "-n", ns, "-l", selector, "-o", "name"], None)
            .expect_success()
            .lines()
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
            .collect()
    }

    /// The release's operator pods once `count` of them are Ready and no other is left.
    fn wait_for_pods(&self, ns: &str, release: &str, count: usize) -> Vec<String> {
        let selector = format!("app.kubernetes.io/instance={release}");
        eventually(
            POD_START,
            &format!("{count} ready pods of {release}"),
            || {
                let out = self
                    .kubectl(
                        ["get", "pods", "-n", ns, "-l", &selector, "-o", "json"],
                        None,
                    )
                    .expect_success();
                let list: Value = serde_json::from_str(&out).expect("a pod list");
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let ready: Vec<String> = items
                    .iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .filter(|p| {
                        p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                    .collect();
                (ready.len() == count && items.len() == count).then_some(ready)
            },
        )
    }

    fn lease_holder(&self, ns: &str, lease: &str) -> String {
        let out = self.kubectl(
            [
                "get",
                "lease",
                "-n",
                ns,
                lease,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        );
        if out.success() {
            out.stdout
        } else {
            String::new()
        }
    }

    fn wait_for_success(&self, ns: &str, name: &str) {
        eventually(
            POD_START,
            &format!("gitdeployment {ns}/{name} to succeed"),
            || {
                let out = self.kubectl(
                    [
                        "get",
                        "gitdeployment",
                        "-n",
                        ns,
                        name,
                        "-o",
                        "jsonpath={.status.status}",
                    ],
                    None,
                );
                (out.success() && out.stdout == "success").then_some(())
            },
        );
    }

    fn create_token_secret(&self, ns: &str) {
        self.kubectl(
            [
                "create",
                "secret",
                "generic",
                "gitdev-credentials",
                "-n",
                ns,
                &format!("--from-literal=token={SIM_TOKEN}"),
            ],
            None,
        )
        .expect_success();
    }

    /// deploy/gitdev-sim.yaml in `ns`, once its pod is Ready.
    fn start_sim(&self, ns: &str) -> SimPod {
        self.kubectl(["apply", "-n", ns, "-f", "deploy/gitdev-sim.yaml"], None)
            .expect_success();
        self.wait_for_sim(ns)
    }

    fn wait_for_sim(&self, ns: &str) -> SimPod {
        let selector = "app.kubernetes.io/name=gitdev-sim";
        eventually(POD_START, "the simulator pod to be Ready", || {
            let out = self
                .kubectl(
                    ["get", "pods", "-n", ns, "-l", selector, "-o", "json"],
                    None,
                )
                .expect_success();
            let list: Value = serde_json::from_str(&out).expect("a pod list");
            let pod = list["items"].as_array()?.first()?.clone();
            let ready = pod["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let ip = pod["status"]["podIP"].as_str()?;
            ready.then(|| SimPod {
                pod: pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                // No kube-proxy here: the operator reaches the simulator at its pod's address.
                root: format!("http://{ip}:8080"),
            })
        })
    }

    /// The chart, with the locally built image and the simulator as the API, watching `watch`
    /// (every namespace with `None`).
    fn helm_install(
        &self,
        release: &str,
        ns: &str,
        watch: Option<&str>,
        sim: &SimPod,
        extra: &[&str],
    ) {
        self.helm_release("install", release, ns, watch, sim, extra);
    }

    fn helm_upgrade(
        &self,
        release: &str,
        ns: &str,
        watch: Option<&str>,
        sim: &SimPod,
        extra: &[&str],
    ) {
        self.helm_release("upgrade", release, ns, watch, sim, extra);
    }

    fn helm_release(
        &self,
        verb: &str,
        release: &str,
        ns: &str,
        watch: Option<&str>,
        sim: &SimPod,
        extra: &[&str],
    ) {
        let image = &self.images["GITDEV_OPERATOR_IMAGE"];
        let (repository, tag) = image.rsplit_once(':').expect("IMAGE:TAG");
        let api = format!("apiUrl={}/v1", sim.root);
        let mut args = vec![
            verb,
            release,
            "charts/gitdev-operator",
            "-n",
            ns,
            "--wait",
            "--timeout",
            "180s",
        ];
        let repository = format!("image.repository={repository}");
        let tag = format!("image.tag={tag}");
        let watch = format!("watchNamespace={}", watch.unwrap_or_default());
        args.extend([
            "--set",
            &repository,
            "--set",
            &tag,
            "--set",
            "image.pullPolicy=Never",
            "--set",
            &api,
            "--set",
            &watch,
            "--set",
            "logFormat=text",
        ]);
        args.extend_from_slice(extra);
        self.helm(&args);
    }

    fn helm(&self, args: &[&str]) -> String {
        let home = self.dir.join("helm-home");
        let output = Command::new(&self.helm)
            .args(args)
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .current_dir(common::cluster::repo_root())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run helm");
        assert!(
            output.status.success(),
            "helm {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The host PID of a running container, from containerd.
    fn task_pid(&self, container: &str) -> u32 {
        let socket = &self.env["GITDEV_NODE_CONTAINERD_SOCKET"];
        let out = Command::new("ctr")
            .args(["--address", socket, "-n", "k8s.io", "tasks", "ls"])
            .output()
            .expect("run ctr");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                let mut fields = l.split_whitespace();
                (fields.next() == Some(container)).then(|| fields.next())?
            })
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no task {container} in:\n{text}"))
    }
}

/// The Helm binary of `tests/cluster/build.sh`.
fn helm_binary() -> Result<PathBuf, String> {
    let out = Command::new(repo_path("tests/cluster/build.sh"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run build.sh: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout.lines().last().unwrap_or_default().trim();
    let helm = Path::new(bin).join("helm");
    if out.status.success() && helm.is_file() {
        Ok(helm)
    } else {
        Err(format!(
            "build.sh gave no helm:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The simulator running as a pod.
struct SimPod {
    pod: String,
    /// `http://POD_IP:8080`
    root: String,
}

impl SimPod {
    fn get(&self, path: &str) -> Value {
        http()
            .get(format!("{}{path}", self.root))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The remote deployments of one branch.
    fn deployments_of(&self, branch: &str) -> Vec<Value> {
        let all = self.get("/_sim/deployments");
        let items = match all {
            Value::Array(items) => items,
            Value::Object(mut o) => match o.remove("deployments").or_else(|| o.remove("data")) {
                Some(Value::Array(items)) => items,
                other => panic!("unexpected /_sim/deployments shape: {other:?}"),
            },
            other => panic!("unexpected /_sim/deployments shape: {other}"),
        };
        items
            .into_iter()
            .filter(|d| d["branch"] == branch)
            .collect()
    }

    /// How many deployments were created (POST /v1/deployments), whatever their answer.
    fn posts(&self) -> u64 {
        self.get("/_sim/stats")["by_route"]["POST /v1/deployments"]["total"]
            .as_u64()
            .unwrap_or(0)
    }
}
