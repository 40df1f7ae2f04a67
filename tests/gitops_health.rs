//! What Argo CD and Flux make of a gitdeployment in each of its states, and every example of
//! `examples/` applied as it is to a real control plane with a real operator and simulator.
//!
//! Each state is reached for real (kube-apiserver, `gitdev-operator`, `gitdev-sim`) and the
//! object is captured with `kubectl get -o json` into `CARGO_TARGET_TMPDIR/gitops-health/`. Each
//! capture is then judged by
//! - `examples/argocd/health.lua`, run by a real Lua 5.1 (mlua; Argo CD's gopher-lua is 5.1);
//! - kstatus, `sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute`, and Flux's CEL status reader
//!   (`github.com/fluxcd/pkg/runtime/cel`) with the `healthCheckExprs` of
//!   `examples/flux/kustomization.yaml`: the Go program in `tests/kstatus/`, built here with
//!   `go build` (the Go build cache keeps later runs fast).
//!
//! [`STATES`] is the contract; docs/gitops.md shows it as a table, and a test keeps the two equal.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::cluster::{Cluster, cluster, repo_path};
use common::stack::{eventually, http};
use common::world::World;
use serde::Deserialize;
use serde_json::{Value, json};

/// Long enough to see `queued` and `building` (the operator looks every 2 s while queued).
const OBSERVABLE_PHASE_SECONDS: f64 = 4.0;
/// For tests that only need the end of a deployment.
const QUICK_PHASE_SECONDS: f64 = 0.5;
const WAIT: Duration = Duration::from_secs(90);

/// A state of a gitdeployment, and the verdict each GitOps tool must give.
struct State {
    /// File name of its capture, without `.json`.
    name: &'static str,
    /// What the object shows in that state.
    shows: &'static str,
    /// `hs.status` of examples/argocd/health.lua.
    argocd: &'static str,
    /// `status.Compute` of kstatus: what Flux `healthChecks`/`wait: true` use without
    /// `healthCheckExprs`.
    kstatus: &'static str,
    /// Flux's CEL status reader with the `healthCheckExprs` of examples/flux/kustomization.yaml.
    flux: &'static str,
}

const STATES: &[State] = &[
    State {
        name: "generation-not-observed",
        shows: "`status: {observedGeneration: 0}`, the schema's default: the operator has not reconciled the object yet",
        argocd: "Progressing",
        // kstatus only compares observedGeneration when it exists, and counts an object without
        // status or conditions as Current; the CRD's default status gives it one to compare,
        // so a brand-new object is InProgress even while the operator is down.
        kstatus: "InProgress",
        flux: "InProgress",
    },
    State {
        name: "new-generation-not-observed",
        shows: "`status.observedGeneration` < `metadata.generation`: a spec change the operator has not seen yet",
        argocd: "Progressing",
        kstatus: "InProgress",
        flux: "InProgress",
    },
    State {
        name: "queued",
        shows: "Reconciling=True, reason `Queued`",
        argocd: "Progressing",
        kstatus: "InProgress",
        flux: "InProgress",
    },
    State {
        name: "building",
        shows: "Reconciling=True, reason `Building`",
        argocd: "Progressing",
        kstatus: "InProgress",
        flux: "InProgress",
    },
    State {
        name: "success",
        shows: "Ready=True, reason `Succeeded`",
        argocd: "Healthy",
        kstatus: "Current",
        flux: "Current",
    },
    State {
        name: "failed",
        shows: "Stalled=True, reason `DeploymentFailed`",
        argocd: "Degraded",
        kstatus: "Failed",
        flux: "Failed",
    },
    State {
        name: "cancelled",
        shows: "Ready=True, reason `Cancelled` (`spec.cancel: true` during the build)",
        argocd: "Healthy",
        kstatus: "Current",
        flux: "Current",
    },
    State {
        name: "paused-nothing-due",
        shows: "`git.dev/paused: \"true\"` on a live deployment whose spec is deployed: Ready=True, reason `Succeeded`, the message notes the pause",
        argocd: "Healthy",
        kstatus: "Current",
        flux: "Current",
    },
    State {
        name: "paused",
        shows: "`git.dev/paused: \"true\"` holds back the deployment of a changed spec: Reconciling=True, reason `Paused`",
        argocd: "Suspended",
        // kstatus has no "suspended": InProgress is the truth (the spec is not deployed, and
        // will be once the pause is lifted); Current would let Flux move on as if it were.
        kstatus: "InProgress",
        flux: "InProgress",
    },
    State {
        name: "invalid-credentials",
        shows: "Stalled=True, reason `CredentialsNotFound` (no token Secret)",
        argocd: "Degraded",
        kstatus: "Failed",
        flux: "Failed",
    },
    State {
        name: "deleting",
        shows: "`metadata.deletionTimestamp` set, finalizer `git.dev/cleanup` still held",
        argocd: "Progressing",
        kstatus: "Terminating",
        flux: "InProgress",
    },
];

fn state(name: &str) -> &'static State {
    STATES
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no state {name}"))
}

// ----- the world of one test -----

/// A world with its own operator, once tests/kstatus is built: a first `go build` keeps both
/// cores busy for minutes, and no timing may start before it.
fn world(prefix: &str, phase: f64) -> World {
    kstatus_program();
    World::with_operator(prefix, phase)
}

/// A namespace that no operator watches, and a simulator nobody calls.
fn world_without_operator(prefix: &str) -> World {
    kstatus_program();
    World::new(prefix, QUICK_PHASE_SECONDS)
}

impl World {
    /// `kubectl apply -f examples/FILE`, as the examples say.
    fn apply_example(&self, file: &str) {
        let path = example_path(file);
        self.kubectl(&["apply", "-f", path.to_str().unwrap()])
            .expect_success();
    }

    /// The object as soon as `holds` is true of it: the JSON that was checked is the one returned.
    #[track_caller]
    fn get_when(&self, name: &str, what: &str, holds: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, &format!("{name}: {what}"), || {
            let obj = self.get(name);
            holds(&obj).then_some(obj)
        })
    }

    /// Waits until condition `type_` is True with `reason`; returns the object.
    #[track_caller]
    fn wait_for_object(&self, name: &str, type_: &str, reason: &str) -> Value {
        self.get_when(name, &format!("{type_}=True with reason {reason}"), |obj| {
            is_condition(obj, type_, "True", reason)
        })
    }
}

fn example_path(file: &str) -> PathBuf {
    repo_path("examples").join(file)
}

fn example(file: &str) -> String {
    let path = example_path(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is_condition(obj: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(obj, type_).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

fn generation_observed(obj: &Value) -> bool {
    obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
}

// ----- the judges -----

/// Where the captures and the built kstatus program go.
fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gitops-health");
        std::fs::create_dir_all(dir.join("captures")).expect("capture directory");
        dir
    })
}

/// What examples/argocd/health.lua returns.
#[derive(Debug, Deserialize)]
struct ArgoHealth {
    status: String,
    message: String,
}

/// Runs examples/argocd/health.lua on `obj` as Argo CD does (Lua 5.1, [`common::argocd_lua::run`]).
fn argocd_health(obj: &Value) -> ArgoHealth {
    common::argocd_lua::run("health.lua", &example("argocd/health.lua"), obj)
}

/// `tests/kstatus`, built once per test binary.
fn kstatus_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let out = work_dir().join("kstatus");
        let go = std::env::var_os("GO").unwrap_or_else(|| "go".into());
        let built = Command::new(&go)
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(repo_path("tests/kstatus"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {go:?} (Go >= 1.26 is needed for tests/kstatus; set GO to its path): {e}")
            });
        assert!(
            built.status.success(),
            "go build in tests/kstatus failed ({}):\n{}{}",
            built.status,
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// (kstatus verdict, Flux CEL verdict, what the program said on stderr) of a capture.
fn kstatus_and_flux(capture: &Path) -> (String, String, String) {
    let out = Command::new(kstatus_program())
        .arg("-flux")
        .arg(example_path("flux/kustomization.yaml"))
        .arg(capture)
        .output()
        .expect("run tests/kstatus");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kstatus failed: {stdout}{stderr}");
    let line = stdout.lines().next().unwrap_or_default();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields.len(),
        3,
        "unexpected kstatus output: {stdout}{stderr}"
    );
    assert_eq!(Path::new(fields[0]), capture, "{line}");
    (fields[1].to_string(), fields[2].to_string(), stderr)
}

/// Saves `obj` as the capture of `state_name` and checks the three verdicts of [`STATES`];
/// returns Argo CD's for further checks of its message.
#[track_caller]
fn judge(state_name: &str, obj: &Value) -> ArgoHealth {
    judge_as(state_name, state_name, obj)
}

/// [`judge`], with the capture saved as `capture.json` (for a second capture of a state).
#[track_caller]
fn judge_as(state_name: &str, capture: &str, obj: &Value) -> ArgoHealth {
    let expected = state(state_name);
    let path = work_dir().join("captures").join(format!("{capture}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(obj).unwrap()).expect("write capture");
    // The Argo CD actions offered on the real object are those the contract names.
    if let Some(actions) = common::argocd_lua::action_state(capture) {
        assert_eq!(
            common::argocd_lua::offered(obj),
            actions.enabled,
            "Argo CD actions offered on the capture {}",
            path.display()
        );
    }
    let argo = argocd_health(obj);
    assert_eq!(
        argo.status,
        expected.argocd,
        "Argo CD health of {state_name} ({}): {argo:?}",
        path.display()
    );
    assert!(
        !argo.message.is_empty(),
        "{state_name}: Argo CD health has no message"
    );
    let (kstatus, flux, said) = kstatus_and_flux(&path);
    assert_eq!(
        kstatus,
        expected.kstatus,
        "kstatus verdict of {state_name} ({}); {said}",
        path.display()
    );
    assert_eq!(
        flux,
        expected.flux,
        "Flux healthCheckExprs verdict of {state_name} ({}); {said}",
        path.display()
    );
    argo
}

fn reason_and_message(obj: &Value, type_: &str) -> String {
    let c = condition(obj, type_).unwrap_or_else(|| panic!("no {type_} condition in {obj}"));
    format!(
        "{}: {}",
        c["reason"].as_str().unwrap(),
        c["message"].as_str().unwrap()
    )
}

// ----- the states, for real -----

#[test]
fn an_object_no_operator_has_reconciled_yet_is_in_progress_for_argocd_kstatus_and_flux() {
    let w = world_without_operator("gitops-unobserved");
    w.apply_example("basic.yaml");
    let obj = w.get("web");
    assert_eq!(
        obj["status"],
        serde_json::json!({"observedGeneration": 0}),
        "only the schema's default status: {obj}"
    );
    let argo = judge("generation-not-observed", &obj);
    assert_eq!(
        argo.message,
        "waiting for the operator to observe generation 1"
    );
}

#[test]
fn the_basic_example_is_progressing_while_it_builds_and_healthy_once_it_succeeds() {
    let w = world("gitops-basic", OBSERVABLE_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply_example("basic.yaml");

    let queued = w.get_when("web", "queued", |o| {
        o["status"]["status"] == "queued" && is_condition(o, "Reconciling", "True", "Queued")
    });
    let argo = judge("queued", &queued);
    assert_eq!(
        argo.message,
        condition(&queued, "Reconciling").unwrap()["message"]
    );

    let building = w.get_when("web", "building", |o| {
        o["status"]["status"] == "building" && is_condition(o, "Reconciling", "True", "Building")
    });
    judge("building", &building);

    let ready = w.wait_for_object("web", "Ready", "Succeeded");
    assert_eq!(ready["status"]["status"], "success");
    assert!(generation_observed(&ready), "{ready}");
    let argo = judge("success", &ready);
    let url = ready["status"]["url"].as_str().unwrap();
    assert!(argo.message.contains(url), "{argo:?}");
    assert_eq!(w.sim.deployments().len(), 1);
}

#[test]
fn a_spec_change_or_a_deletion_the_operator_has_not_handled_yet_is_progressing() {
    let mut w = world("gitops-unhandled", QUICK_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply_example("basic.yaml");
    let ready = w.wait_for_object("web", "Ready", "Succeeded");
    let id = ready["status"]["deploymentId"]
        .as_str()
        .unwrap()
        .to_string();

    // The operator is away: a new spec is not observed, a deletion is not handled.
    w.stop_operator();
    let changed = example("basic.yaml").replace("NODE_ENV: production", "NODE_ENV: staging");
    assert_ne!(changed, example("basic.yaml"));
    w.apply(&changed).expect_success();
    let stale = w.get_when("web", "generation 2", |o| o["metadata"]["generation"] == 2);
    assert_eq!(stale["status"]["observedGeneration"], 1, "{stale}");
    // Still Ready=True from generation 1: only the generation tells that it is out of date.
    assert!(
        is_condition(&stale, "Ready", "True", "Succeeded"),
        "{stale}"
    );
    let argo = judge("new-generation-not-observed", &stale);
    assert_eq!(
        argo.message,
        "waiting for the operator to observe generation 2"
    );

    w.kubectl(&["delete", "gitdeployment", "web", "--wait=false"])
        .expect_success();
    let deleting = w.get_when("web", "deletionTimestamp", |o| {
        o["metadata"]["deletionTimestamp"].is_string()
    });
    assert!(
        deleting["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "git.dev/cleanup")),
        "{deleting}"
    );
    judge("deleting", &deleting);

    // Back, the operator cleans up and lets the object go.
    w.start_operator();
    eventually(WAIT, "the object to be gone", || {
        w.lookup("web")
            .expect_success()
            .trim()
            .is_empty()
            .then_some(())
    });
    assert_eq!(w.sim.get("sk_test_write", &id).0, 404);
}

#[test]
fn a_failed_build_is_degraded_in_argocd_and_failed_for_kstatus_and_flux() {
    let w = world("gitops-failed", QUICK_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    let broken = example("basic.yaml")
        .replace("name: web", "name: broken")
        .replace("branch: main", "branch: fail/broken-build");
    w.apply(&broken).expect_success();
    let failed = w.wait_for_object("broken", "Stalled", "DeploymentFailed");
    assert_eq!(failed["status"]["status"], "failed");
    let argo = judge("failed", &failed);
    assert_eq!(argo.message, reason_and_message(&failed, "Stalled"));
}

#[test]
fn a_build_cancelled_with_spec_cancel_is_healthy_in_argocd_and_current_for_kstatus_and_flux() {
    let w = world("gitops-cancelled", OBSERVABLE_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply_example("basic.yaml");
    w.get_when("web", "building", |o| o["status"]["status"] == "building");
    w.kubectl(&[
        "patch",
        "gitdeployment",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"cancel":true}}"#,
    ])
    .expect_success();
    let cancelled = w.get_when("web", "Ready=True Cancelled, generation observed", |o| {
        is_condition(o, "Ready", "True", "Cancelled") && generation_observed(o)
    });
    assert_eq!(cancelled["status"]["status"], "cancelled");
    let argo = judge("cancelled", &cancelled);
    assert_eq!(
        argo.message,
        condition(&cancelled, "Ready").unwrap()["message"]
    );
}

#[test]
fn a_paused_object_holding_back_a_new_deployment_is_suspended_in_argocd_and_in_progress_for_kstatus_and_flux()
 {
    let w = world("gitops-paused", QUICK_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply_example("basic.yaml");
    w.wait_for_object("web", "Ready", "Succeeded");

    w.kubectl(&["annotate", "gitdeployment", "web", "git.dev/paused=true"])
        .expect_success();
    let live = w.get_when("web", "Ready=True noting the pause", |o| {
        is_condition(o, "Ready", "True", "Succeeded")
            && condition(o, "Ready").is_some_and(|c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("git.dev/paused"))
            })
    });
    judge("paused-nothing-due", &live);

    // The spec changes in Git; the pause holds its deployment back.
    let changed = example("basic.yaml").replace("NODE_ENV: production", "NODE_ENV: staging");
    w.apply(&changed).expect_success();
    let paused = w.get_when("web", "Reconciling=True Paused, generation observed", |o| {
        is_condition(o, "Reconciling", "True", "Paused") && generation_observed(o)
    });
    let argo = judge("paused", &paused);
    assert_eq!(
        argo.message,
        condition(&paused, "Reconciling").unwrap()["message"]
    );
    assert!(argo.message.contains("remove git.dev/paused"), "{argo:?}");
    assert_eq!(w.sim.deployments().len(), 1, "nothing made while paused");

    // Lifted, the held-back deployment is made, once.
    w.kubectl(&["annotate", "gitdeployment", "web", "git.dev/paused-"])
        .expect_success();
    w.get_when("web", "Ready=True of the new spec", |o| {
        is_condition(o, "Ready", "True", "Succeeded")
            && o["status"]["deploymentId"] != live["status"]["deploymentId"]
    });
    assert_eq!(w.sim.deployments().len(), 2);
}

#[test]
fn a_missing_token_secret_is_degraded_in_argocd_and_failed_for_kstatus_and_flux() {
    let w = world("gitops-nocreds", QUICK_PHASE_SECONDS);
    w.apply_example("basic.yaml");
    let stalled = w.wait_for_object("web", "Stalled", "CredentialsNotFound");
    let argo = judge("invalid-credentials", &stalled);
    assert!(
        argo.message.starts_with("CredentialsNotFound: ")
            && argo.message.contains("gitdev-credentials"),
        "{argo:?}"
    );
    assert!(w.sim.deployments().is_empty());
}

#[test]
fn health_lua_says_why_a_deletion_waits_and_copes_with_missing_fields() {
    let blocked = json!({
        "apiVersion": "git.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": "web", "generation": 3, "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"observedGeneration": 3, "conditions": [
            {"type": "Ready", "status": "False", "reason": "CleanupBlocked", "message": "m"},
            {"type": "Reconciling", "status": "False", "reason": "CleanupBlocked", "message": "m"},
            {"type": "Stalled", "status": "True", "reason": "CleanupBlocked", "message": "the token Secret is gone"}
        ]}
    });
    let argo = argocd_health(&blocked);
    assert_eq!(argo.status, "Progressing");
    assert!(
        argo.message
            .ends_with("(CleanupBlocked: the token Secret is gone)"),
        "{argo:?}"
    );

    // A status without conditions (another writer, an older operator): waiting, not an error.
    let bare = json!({
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "deploymentId": null}
    });
    let argo = argocd_health(&bare);
    assert_eq!(
        (argo.status.as_str(), argo.message.as_str()),
        ("Progressing", "waiting for the operator")
    );
    let nothing = argocd_health(&json!({}));
    assert_eq!(
        (nothing.status.as_str(), nothing.message.as_str()),
        (
            "Progressing",
            "waiting for the operator to observe the object"
        )
    );
}

// ----- every other example, as it is -----

#[test]
fn the_env_from_secret_example_deploys_with_the_secret_values_as_environment_variables() {
    let w = world("gitops-envfrom", QUICK_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply_example("env-from-secret.yaml");
    let ready = w.wait_for_object("api", "Ready", "Succeeded");
    let deployments = w.sim.deployments();
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let remote = &deployments[0];
    assert_eq!(remote["id"], ready["status"]["deploymentId"]);
    assert_eq!(
        remote["env_vars"],
        json!({
            "NODE_ENV": "production",
            "DATABASE_URL": "postgres://api:example-password@db.internal:5432/api",
            "SESSION_SECRET": "example-session-secret",
        }),
        "{remote}"
    );
    // No secret value on the object.
    let text = ready.to_string();
    assert!(
        !text.contains("example-password") && !text.contains("example-session-secret"),
        "{text}"
    );
    judge_as("success", "success-env-from-secret", &ready);
}

#[test]
fn the_orphan_example_leaves_its_deployment_live_when_the_object_is_deleted() {
    let w = world("gitops-orphan", QUICK_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply_example("orphan.yaml");
    let ready = w.wait_for_object("preview", "Ready", "Succeeded");
    let id = ready["status"]["deploymentId"].as_str().unwrap();
    let path = example_path("orphan.yaml");
    w.kubectl(&["delete", "-f", path.to_str().unwrap(), "--timeout=60s"])
        .expect_success();
    let (code, remote) = w.sim.get("sk_test_write", id);
    assert_eq!(code, 200, "{remote}");
    assert_eq!(remote["status"], "success");
    assert_eq!(remote["branch"], "feature/login");
}

#[test]
fn the_adopt_example_takes_over_an_existing_deployment_and_creates_none() {
    let w = world("gitops-adopt", QUICK_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    // A deployment made outside Kubernetes, straight through the API.
    let created = http()
        .post(format!("{}/deployments", w.sim.api_url()))
        .bearer_auth("sk_test_write")
        .json(&json!({"project_id": "proj_8f3k29", "branch": "main"}))
        .send()
        .expect("POST /v1/deployments");
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().unwrap();
    let id = created["id"].as_str().expect("id").to_string();

    let placeholder = "dep_0000000000";
    let manifest = example("adopt.yaml");
    assert!(manifest.contains(placeholder), "{manifest}");
    w.apply(&manifest.replace(placeholder, &id))
        .expect_success();
    let ready = w.wait_for_object("legacy", "Ready", "Succeeded");
    assert_eq!(ready["status"]["deploymentId"], id.as_str(), "{ready}");
    assert_eq!(ready["status"]["url"], format!("https://{id}.git.dev"));
    let deployments = w.sim.deployments();
    assert_eq!(deployments.len(), 1, "created nothing: {deployments:?}");
    let events = w.events("legacy");
    assert!(
        events.contains("Adopted") && !events.contains("\"Created\""),
        "{events}"
    );
}

#[test]
fn the_cancel_example_deploys_nothing_until_cancel_is_lifted() {
    let w = world("gitops-cancel", QUICK_PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply_example("cancel.yaml");
    let held = w.get_when("frozen", "Ready=True Cancelled, generation observed", |o| {
        is_condition(o, "Ready", "True", "Cancelled") && generation_observed(o)
    });
    assert!(held["status"]["deploymentId"].is_null(), "{held}");
    assert_eq!(argocd_health(&held).status, "Healthy");
    std::thread::sleep(Duration::from_secs(2));
    assert!(w.sim.deployments().is_empty(), "held off");

    // As the example's comment says: cancel back to false deploys.
    w.kubectl(&[
        "patch",
        "gitdeployment",
        "frozen",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"cancel":false}}"#,
    ])
    .expect_success();
    w.wait_for_object("frozen", "Ready", "Succeeded");
    assert_eq!(w.sim.deployments().len(), 1);
}

// ----- the Argo CD and Flux manifests -----

/// Stand-ins for the CRDs of Argo CD (`Application`) and Flux (`Kustomization`,
/// `GitRepository`), which this control plane does not have: names, group, version, scope, and
/// an open schema (x-kubernetes-preserve-unknown-fields). A server-side dry run against them
/// checks that the examples are well-formed Kubernetes objects of the right apiVersion and kind,
/// in existing namespaces; it does not check their fields against the real CRDs' schemas (the
/// `healthCheckExprs` are checked for real by tests/kstatus, which parses and runs them).
/// Each is (group, version, kind, plural).
const GITOPS_KINDS: &[(&str, &str, &str, &str)] = &[
    ("argoproj.io", "v1alpha1", "Application", "applications"),
    (
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
    ),
    (
        "source.toolkit.fluxcd.io",
        "v1",
        "GitRepository",
        "gitrepositories",
    ),
];

/// The stand-in CRDs of [`GITOPS_KINDS`], as one YAML stream.
fn gitops_crds() -> String {
    let crds: Vec<String> = GITOPS_KINDS
        .iter()
        .map(|(group, version, kind, plural)| {
            let singular = kind.to_lowercase();
            format!(
                "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.{group}
spec:
  group: {group}
  names: {{kind: {kind}, listKind: {kind}List, plural: {plural}, singular: {singular}}}
  scope: Namespaced
  versions:
    - name: {version}
      served: true
      storage: true
      schema:
        openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"
            )
        })
        .collect();
    crds.join("---\n")
}

/// `kubectl apply --dry-run=server -o json -f FILE`, in `namespace` if given: the objects as the
/// API server would store them.
fn dry_run(cluster: &Cluster, namespace: Option<&str>, file: &str) -> Vec<Value> {
    let path = example_path(file);
    let mut args = vec![
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        path.to_str().unwrap(),
    ];
    if let Some(ns) = namespace {
        args.splice(0..0, ["-n", ns]);
    }
    let out = cluster.kubectl(args).expect_success();
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    match v["kind"].as_str() {
        Some("List") => v["items"].as_array().unwrap().clone(),
        _ => vec![v],
    }
}

#[test]
fn the_argocd_and_flux_manifests_are_accepted_by_the_api_server_and_agree_with_each_other() {
    let cluster = cluster();
    let crds = work_dir().join("gitops-crds.yaml");
    std::fs::write(&crds, gitops_crds()).unwrap();
    cluster.apply_crds(&crds).unwrap_or_else(|e| panic!("{e}"));
    for ns in ["argocd", "flux-system"] {
        cluster
            .kubectl_with_stdin(
                ["apply", "-f", "-"],
                &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
            )
            .expect_success();
    }

    // Argo CD: the health check is health.lua, verbatim.
    let cm = dry_run(cluster, None, "argocd/argocd-cm.yaml");
    assert_eq!(cm.len(), 1);
    assert_eq!(
        (cm[0]["kind"].as_str(), cm[0]["metadata"]["name"].as_str()),
        (Some("ConfigMap"), Some("argocd-cm"))
    );
    let script = cm[0]["data"]["resource.customizations.health.git.dev_Deployment"]
        .as_str()
        .expect("the health check key for group git.dev, kind Deployment");
    assert_eq!(
        script,
        example("argocd/health.lua"),
        "argocd-cm.yaml must embed health.lua as it is"
    );

    let app = dry_run(cluster, None, "argocd/application.yaml");
    assert_eq!(app.len(), 1);
    assert_eq!(app[0]["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(app[0]["kind"], "Application");
    let source = &app[0]["spec"]["source"];
    assert_eq!(source["path"], "examples");
    let include = source["directory"]["include"].as_str().unwrap();
    let files: Vec<&str> = include
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .collect();
    let synced = gitdeployment_names(cluster, &files);

    // Flux: the same files reach the same namespace, and the health checks name what they hold.
    let flux = dry_run(cluster, None, "flux/kustomization.yaml");
    let kinds: Vec<&str> = flux.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["GitRepository", "Kustomization"]);
    let ignore = flux[0]["spec"]["ignore"].as_str().unwrap();
    for file in &files {
        assert!(ignore.contains(&format!("!/examples/{file}")), "{ignore}");
    }
    let ks = &flux[1]["spec"];
    assert_eq!(ks["path"], "./examples");
    assert_eq!(ks["sourceRef"]["name"], flux[0]["metadata"]["name"]);
    assert_eq!(
        ks["targetNamespace"],
        app[0]["spec"]["destination"]["namespace"]
    );
    let checked: BTreeSet<String> = ks["healthChecks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["apiVersion"], "git.dev/v1alpha1");
            assert_eq!(c["kind"], "Deployment");
            assert_eq!(c["namespace"], ks["targetNamespace"]);
            c["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(checked, synced);
    let exprs = ks["healthCheckExprs"].as_array().unwrap();
    assert_eq!(exprs.len(), 1);
    assert_eq!(
        (exprs[0]["apiVersion"].as_str(), exprs[0]["kind"].as_str()),
        (Some("git.dev/v1alpha1"), Some("Deployment"))
    );
}

/// The names of the gitdeployments in these files of examples/ (dry run in a scratch namespace).
fn gitdeployment_names(cluster: &Cluster, files: &[&str]) -> BTreeSet<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = rt.block_on(cluster.namespace("gitops-dryrun"));
    let mut names = BTreeSet::new();
    for file in files {
        let path = example_path(file);
        assert!(path.is_file(), "{} does not exist", path.display());
        let items = dry_run(cluster, Some(ns.name()), file);
        names.extend(
            items
                .iter()
                .filter(|o| o["apiVersion"] == "git.dev/v1alpha1")
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string()),
        );
    }
    names
}

// ----- the documentation -----

/// The table of docs/gitops.md, from [`STATES`].
fn verdict_table() -> String {
    let mut table = String::from(
        "| state | what the object shows | Argo CD (`health.lua`) | kstatus (`status.Compute`; Flux without `healthCheckExprs`) | Flux with the example's `healthCheckExprs` |\n|---|---|---|---|---|\n",
    );
    for s in STATES {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s.name, s.shows, s.argocd, s.kstatus, s.flux
        ));
    }
    table
}

#[test]
fn docs_gitops_md_shows_the_verdicts_these_tests_assert() {
    let path = repo_path("docs/gitops.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table = verdict_table();
    assert!(
        doc.contains(&table),
        "{} must contain this table, generated from STATES in tests/gitops_health.rs:\n\n{table}",
        path.display()
    );
}
