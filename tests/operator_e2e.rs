//! The operator end to end, driven with `kubectl` exactly as a user would: a real
//! kube-apiserver (tests/cluster), a real `gitdev-sim` and a real `gitdev-operator` process.
//!
//! Each test has its own namespace, simulator and operator (scoped with `--namespace`), so the
//! simulator's counts belong to that test alone and tests run in parallel.

mod common;

use std::time::Duration;

use common::cluster::KubectlOutput;
use common::cluster::{Cluster, TestNamespace, cluster};
use common::stack::{InNamespace, Operator, Sim, eventually};
use serde_json::Value;

const PHASE_SECONDS: f64 = 1.0;
const WAIT: Duration = Duration::from_secs(60);

struct World {
    cluster: &'static Cluster,
    ns: TestNamespace,
    sim: Sim,
    operator: Operator,
}

impl World {
    fn k(&self) -> InNamespace<'_> {
        InNamespace {
            cluster: self.cluster,
            ns: &self.ns,
        }
    }

    fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.k().kubectl(args)
    }

    fn apply(&self, manifest: &str) -> KubectlOutput {
        self.k().apply(manifest)
    }

    fn get(&self, name: &str) -> Value {
        self.k().get(name)
    }

    fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        self.k().condition(name, type_)
    }

    #[track_caller]
    fn wait_for(&self, name: &str, type_: &str, reason: &str) -> String {
        self.k().wait_for(name, type_, reason, WAIT)
    }

    fn events(&self, name: &str) -> String {
        self.k().events(name)
    }

    fn new(prefix: &str) -> World {
        Self::with_phase(prefix, PHASE_SECONDS)
    }

    fn with_phase(prefix: &str, phase: f64) -> World {
        let cluster = cluster();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ns = rt.block_on(cluster.namespace(prefix));
        let sim = Sim::start(phase);
        let operator = Operator::start(cluster, &sim.api_url(), &ns, &[]);
        World {
            cluster,
            ns,
            sim,
            operator,
        }
    }

    fn token_secret(&self, name: &str, token: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  token: {token}\n"
        );
        self.apply(&yaml).expect_success();
    }
}

fn manifest(name: &str, branch: &str, extra: &str) -> String {
    format!(
        "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  projectId: proj_8f3k29\n  branch: {branch}\n{extra}"
    )
}

#[test]
fn an_applied_object_reaches_ready_with_its_url_in_status_and_in_kubectl_get() {
    let w = World::new("e2e-basic");
    w.token_secret("gitdev-credentials", "sk_test_write");
    w.apply(&manifest(
        "web",
        "main",
        "  envVars:\n    NODE_ENV: production\n",
    ))
    .expect_success();
    let message = w.wait_for("web", "Ready", "Succeeded");
    let obj = w.get("web");
    let status = &obj["status"];
    let id = status["deploymentId"].as_str().expect("deploymentId");
    let url = format!("https://{id}.git.dev");
    assert_eq!(status["url"], url.as_str());
    assert_eq!(status["status"], "success");
    assert!(message.contains(&url), "{message}");
    assert_eq!(status["observedGeneration"], obj["metadata"]["generation"]);
    // Ready comes from the shared listing; the completion details (one GET) follow.
    let status = eventually(WAIT, "completion details", || {
        let s = w.get("web")["status"].clone();
        (s["completedAt"].is_string() && s["buildDuration"].is_string()).then_some(s)
    });
    assert!(status["createdAt"].is_string(), "{status}");
    assert_eq!(status["commitSha"].as_str().map(str::len), Some(40));
    for t in ["Reconciling", "Stalled"] {
        assert_eq!(
            w.condition("web", t).map(|c| c.0),
            Some("False".to_string()),
            "{t}"
        );
    }
    let table = w.kubectl(&["get", "gitdeployments"]).expect_success();
    assert!(
        table.contains(&url) && table.contains("success") && table.contains("proj_8f3k29"),
        "{table}"
    );
    let (code, body) = w.sim.get("sk_test_write", id);
    assert_eq!(code, 200);
    assert_eq!(body["status"], "success");
    let events = w.events("web");
    assert!(events.contains("\"Created\""), "{events}");
    // The operator counts what it did.
    let (code, metrics) = w.operator.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("gitdev_api_requests_total{endpoint=\"create\",outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert_eq!(w.operator.get("/healthz").0, 200);
    assert_eq!(w.operator.get("/readyz").0, 200);
}

#[test]
fn a_fail_branch_ends_stalled_with_deployment_failed() {
    let w = World::new("e2e-fail");
    w.token_secret("gitdev-credentials", "sk_test_write");
    w.apply(&manifest("broken", "fail/broken-build", ""))
        .expect_success();
    let message = w.wait_for("broken", "Stalled", "DeploymentFailed");
    assert!(message.contains("logs"), "{message}");
    assert_eq!(w.condition("broken", "Ready").unwrap().0, "False");
    assert_eq!(w.get("broken")["status"]["status"], "failed");
}

#[test]
fn cancel_true_during_building_cancels_it_remotely_and_is_ready() {
    let w = World::with_phase("e2e-cancel", 4.0);
    w.token_secret("gitdev-credentials", "sk_test_write");
    w.apply(&manifest("c", "main", "")).expect_success();
    eventually(WAIT, "status building", || {
        (w.get("c")["status"]["status"] == "building").then_some(())
    });
    w.apply(&manifest("c", "main", "  cancel: true\n"))
        .expect_success();
    w.wait_for("c", "Ready", "Cancelled");
    let obj = w.get("c");
    let id = obj["status"]["deploymentId"].as_str().unwrap();
    let (_, remote) = w.sim.get("sk_test_write", id);
    assert_eq!(remote["status"], "cancelled");
    assert!(obj["status"]["cancelledAt"].is_string() && obj["status"]["cancelledBy"].is_string());
    // Held off: no new deployment while cancel is true.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.sim.deployments_of("main").len(), 1);
}

#[test]
fn invalid_manifests_are_rejected_by_the_api_server_with_a_readable_message() {
    let w = World::new("e2e-invalid");
    let bad_commit = w
        .apply(&manifest("x", "main", "  commitSha: NOT-HEX\n"))
        .expect_failure();
    assert!(bad_commit.contains("spec.commitSha"), "{bad_commit}");
    let no_branch = w
        .apply("apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: nobranch\nspec:\n  projectId: proj_8f3k29\n")
        .expect_failure();
    assert!(
        no_branch.contains("spec.branch: Required value"),
        "{no_branch}"
    );
    let bad_ref = w.apply(&manifest("z", "feature..x", "")).expect_failure();
    assert!(bad_ref.contains("not a valid git ref name"), "{bad_ref}");
    let bad_env = w
        .apply(&manifest("e", "main", "  envVars:\n    1BAD: x\n"))
        .expect_failure();
    assert!(bad_env.contains("envVars names must match"), "{bad_env}");

    w.apply(&manifest("p", "main", "  cancel: true\n"))
        .expect_success();
    let moved = w
        .apply(&manifest("p", "main", "  cancel: true\n").replace("proj_8f3k29", "proj_other"))
        .expect_failure();
    assert!(moved.contains("projectId is immutable"), "{moved}");
}

#[test]
fn kubectl_delete_removes_the_remote_deployment_and_the_object_goes_away() {
    let w = World::new("e2e-delete");
    w.token_secret("gitdev-credentials", "sk_test_write");
    w.apply(&manifest("gone", "main", "")).expect_success();
    w.wait_for("gone", "Ready", "Succeeded");
    let id = w.get("gone")["status"]["deploymentId"]
        .as_str()
        .unwrap()
        .to_string();
    w.kubectl(&["delete", "gitdeployment", "gone", "--timeout=60s"])
        .expect_success();
    let (code, body) = w.sim.get("sk_test_write", &id);
    assert_eq!(code, 404, "{body}");
    let left = w
        .kubectl(&[
            "get",
            "gitdeployment",
            "gone",
            "--ignore-not-found",
            "-o",
            "name",
        ])
        .expect_success();
    assert!(left.trim().is_empty(), "{left}");
}

#[test]
fn deletion_policy_orphan_leaves_the_remote_deployment() {
    let w = World::new("e2e-orphan");
    w.token_secret("gitdev-credentials", "sk_test_write");
    w.apply(&manifest("keep", "main", "  deletionPolicy: Orphan\n"))
        .expect_success();
    w.wait_for("keep", "Ready", "Succeeded");
    let id = w.get("keep")["status"]["deploymentId"]
        .as_str()
        .unwrap()
        .to_string();
    w.kubectl(&["delete", "gitdeployment", "keep", "--timeout=60s"])
        .expect_success();
    let (code, body) = w.sim.get("sk_test_write", &id);
    assert_eq!(code, 200);
    assert_eq!(body["status"], "success");
}

#[test]
fn a_missing_token_secret_stalls_and_recovers_when_the_secret_appears() {
    let w = World::new("e2e-nosecret");
    w.apply(&manifest("web", "main", "")).expect_success();
    let message = w.wait_for("web", "Stalled", "CredentialsNotFound");
    assert!(
        message.contains("gitdev-credentials") && message.contains("kubectl create secret"),
        "{message}"
    );
    let events = w.events("web");
    assert!(
        events.contains("CredentialsNotFound") && events.contains("Warning"),
        "{events}"
    );
    // No hot loop against the API while stalled.
    std::thread::sleep(Duration::from_secs(3));
    assert!(w.sim.deployments().is_empty());
    w.token_secret("gitdev-credentials", "sk_test_write");
    w.wait_for("web", "Ready", "Succeeded");
}

#[test]
fn a_read_only_token_stalls_with_insufficient_scope_and_recovers_when_the_secret_is_fixed() {
    let w = World::new("e2e-readonly");
    w.token_secret("gitdev-credentials", "sk_test_read");
    w.apply(&manifest("web", "main", "")).expect_success();
    let message = w.wait_for("web", "Stalled", "InsufficientScope");
    assert!(
        message.contains("insufficient_scope") && message.contains("deploy:write"),
        "{message}"
    );
    let before = w.sim.stats();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(before, w.sim.stats(), "no requests while stalled");
    w.token_secret("gitdev-credentials", "sk_test_write");
    w.wait_for("web", "Ready", "Succeeded");
    assert_eq!(w.sim.deployments_of("main").len(), 1);
}

#[test]
fn an_unknown_token_stalls_with_unauthorized() {
    let w = World::new("e2e-badtoken");
    w.token_secret("gitdev-credentials", "sk_test_nope");
    w.apply(&manifest("web", "main", "")).expect_success();
    let message = w.wait_for("web", "Stalled", "Unauthorized");
    assert!(message.contains("401"), "{message}");
}

#[test]
fn reapplying_the_same_manifest_ten_times_creates_exactly_one_remote_deployment() {
    let w = World::new("e2e-reapply");
    w.token_secret("gitdev-credentials", "sk_test_write");
    let m = manifest("web", "feature/login", "  envVars:\n    A: \"1\"\n");
    for _ in 0..10 {
        w.apply(&m).expect_success();
    }
    w.wait_for("web", "Ready", "Succeeded");
    for _ in 0..10 {
        w.apply(&m).expect_success();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.sim.deployments().len(), 1, "{:?}", w.sim.deployments());
    let stats = w.sim.stats().to_string();
    assert!(stats.contains("POST /v1/deployments"), "{stats}");
}
