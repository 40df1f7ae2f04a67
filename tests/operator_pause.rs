//! `git.dev/paused` and `status.lastSuccessful` end to end (real kube-apiserver, real
//! `gitdev-sim`, real `gitdev-operator`): a paused object sends the Deployments API no write and
//! says so, converges with exactly one deployment once the pause is lifted, and is deleted as
//! its `deletionPolicy` says; `kubectl get -o wide` names the last good deployment, also after
//! a later deployment failed.

mod common;

use std::time::Duration;

use common::stack::eventually;
use common::world::{WAIT, World, gitdeployment};
use serde_json::Value;

const PHASE_SECONDS: f64 = 0.5;

/// The simulator's routes that change something remotely.
const WRITES: [&str; 3] = [
    "POST /v1/deployments",
    "POST /v1/deployments/{id}/cancel",
    "DELETE /v1/deployments/{id}",
];

fn world(prefix: &str) -> World {
    let w = World::with_operator(prefix, PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w
}

impl World {
    /// Requests the simulator answered on each write route, in the order of [`WRITES`].
    fn writes(&self) -> [u64; 3] {
        let stats = self.sim.stats();
        WRITES.map(|route| stats["by_route"][route]["total"].as_u64().unwrap_or(0))
    }

    /// The object once `holds` is true of it, with its generation observed.
    #[track_caller]
    fn observed_when(&self, name: &str, what: &str, holds: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, &format!("{name}: {what}"), || {
            let obj = self.get(name);
            (obj["status"]["observedGeneration"] == obj["metadata"]["generation"] && holds(&obj))
                .then_some(obj)
        })
    }

    /// Ready=True/Succeeded with a deployment other than `not`; returns the deployment id.
    #[track_caller]
    fn ready_with(&self, name: &str, not: Option<&str>) -> String {
        let obj = self.observed_when(name, "Ready with a new deployment", |o| {
            is_condition(o, "Ready", "True", "Succeeded")
                && o["status"]["deploymentId"].as_str() != not
        });
        obj["status"]["deploymentId"]
            .as_str()
            .expect("a deployment id")
            .to_string()
    }

    fn annotate(&self, name: &str, annotation: &str) {
        self.kubectl(&["annotate", "gitdeployment", name, annotation])
            .expect_success();
    }

    fn patch_spec(&self, name: &str, spec: &str) {
        let patch = format!(r#"{{"spec":{spec}}}"#);
        self.kubectl(&[
            "patch",
            "gitdeployment",
            name,
            "--type",
            "merge",
            "-p",
            &patch,
        ])
        .expect_success();
    }

    /// Waits until the operator has seen the pause on a live object (its Ready message notes it).
    #[track_caller]
    fn pause(&self, name: &str) {
        self.annotate(name, "git.dev/paused=true");
        self.observed_when(name, "Ready=True noting the pause", |o| {
            is_condition(o, "Ready", "True", "Succeeded")
                && message(o, "Ready").contains("git.dev/paused")
        });
    }
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

fn message(obj: &Value, type_: &str) -> String {
    condition(obj, type_)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_paused_object_sends_no_write_and_says_paused_then_deploys_once_when_the_pause_is_lifted() {
    let w = world("pause-hold");
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let first = w.ready_with("web", None);
    w.pause("web");
    let before = w.writes();

    // A new spec is due; the pause holds its create (and any cancel) back.
    w.patch_spec("web", r#"{"redeploy":"2"}"#);
    let paused = w.observed_when("web", "Reconciling=True Paused", |o| {
        is_condition(o, "Reconciling", "True", "Paused")
    });
    let said = message(&paused, "Reconciling");
    assert!(
        said.contains("a new deployment of the changed spec is due")
            && said.contains("remove git.dev/paused to deploy"),
        "{said}"
    );
    assert!(
        is_condition(&paused, "Ready", "False", "Paused"),
        "{paused}"
    );
    assert!(
        is_condition(&paused, "Stalled", "False", "Paused"),
        "{paused}"
    );
    // Long enough for several polls of an operator that would (wrongly) act.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(w.writes(), before, "no POST, cancel or DELETE while paused");
    assert_eq!(w.sim.deployments_of("main").len(), 1);
    assert_eq!(w.get("web")["status"]["deploymentId"], first.as_str());

    w.annotate("web", "git.dev/paused-");
    let second = w.ready_with("web", Some(&first));
    let [creates, cancels, deletes] = w.writes();
    assert_eq!(
        [creates, cancels, deletes],
        [before[0] + 1, before[1], before[2]],
        "exactly one new deployment, nothing cancelled or deleted"
    );
    let remote = w.sim.deployments_of("main");
    assert_eq!(remote.len(), 2, "{remote:?}");
    assert!(remote.iter().any(|d| d["id"] == second.as_str()));
}

#[test]
fn deleting_a_paused_object_completes_and_cleans_up_as_its_deletion_policy_says() {
    let w = world("pause-delete");
    w.apply(&gitdeployment("gone", "main", "")).expect_success();
    w.apply(&gitdeployment(
        "kept",
        "feature/login",
        "  deletionPolicy: Orphan\n",
    ))
    .expect_success();
    let gone = w.ready_with("gone", None);
    let kept = w.ready_with("kept", None);
    w.pause("gone");
    w.pause("kept");

    for name in ["gone", "kept"] {
        w.kubectl(&["delete", "gitdeployment", name, "--timeout=60s"])
            .expect_success();
        assert!(
            w.lookup(name).expect_success().trim().is_empty(),
            "{name} is gone"
        );
    }
    assert_eq!(
        w.sim.get("sk_test_write", &gone).0,
        404,
        "policy Delete deleted the remote deployment of a paused object"
    );
    assert_eq!(
        w.sim.get("sk_test_write", &kept).0,
        200,
        "policy Orphan left it live"
    );
}

#[test]
fn kubectl_get_wide_shows_the_last_good_deployment_and_it_survives_a_later_failure() {
    let w = world("pause-lastgood");
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let good = w.ready_with("web", None);
    // A listing reports the success first; its completion time comes with the next GET.
    let obj = w.observed_when("web", "lastSuccessful with its completion time", |o| {
        o["status"]["lastSuccessful"]["completedAt"].is_string()
    });
    let last = &obj["status"]["lastSuccessful"];
    assert_eq!(last["deploymentId"], good.as_str(), "{obj}");
    assert_eq!(last["url"], obj["status"]["url"], "{obj}");
    assert_eq!(last["commitSha"], obj["status"]["commitSha"], "{obj}");
    assert_eq!(last["completedAt"], obj["status"]["completedAt"], "{obj}");

    w.patch_spec("web", r#"{"branch":"fail/broken-build"}"#);
    let failed = w.observed_when("web", "Stalled=True DeploymentFailed", |o| {
        is_condition(o, "Stalled", "True", "DeploymentFailed")
    });
    assert_ne!(failed["status"]["deploymentId"], good.as_str());
    assert_eq!(
        failed["status"]["lastSuccessful"], *last,
        "the last good deployment outlives a failed one"
    );

    let wide = w
        .kubectl(&["get", "gitdeployments", "-o", "wide"])
        .expect_success();
    let mut lines = wide.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|h| *h == "LAST-GOOD")
        .unwrap_or_else(|| panic!("no LAST-GOOD column:\n{wide}"));
    assert_eq!(header.len(), row.len(), "{wide}");
    assert_eq!(row[column], good, "{wide}");
    let narrow = w.kubectl(&["get", "gitdeployments"]).expect_success();
    assert!(
        !narrow.contains("LAST-GOOD"),
        "only with -o wide:\n{narrow}"
    );
}
