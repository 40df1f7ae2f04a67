//! The operator's production semantics end to end (real kube-apiserver, real `gitdev-sim`,
//! real `gitdev-operator`): exactly-once creation across crashes and lost answers, supersede
//! and history, adoption, status loss, env from Secrets, and drift made behind its back.

mod common;

use std::time::Duration;

use common::stack::{eventually, http};
use common::world::{WAIT, World, gitdeployment};
use serde_json::{Value, json};

/// A world whose operators, which each test starts itself, find a write token.
fn world(prefix: &str, phase: f64) -> World {
    let w = World::new(prefix, phase);
    w.token_secret("sk_test_write");
    w
}

impl World {
    /// Waits until the object's remote deployment (`status.deploymentId`) is `id` and Ready.
    #[track_caller]
    fn wait_ready_with(&self, name: &str, not: Option<&str>) -> String {
        eventually(WAIT, &format!("{name} Ready with a new deployment"), || {
            let obj = self.get(name);
            let id = obj["status"]["deploymentId"].as_str()?.to_string();
            let ready = obj["status"]["conditions"].as_array()?.iter().any(|c| {
                c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Succeeded"
            });
            (ready
                && Some(id.as_str()) != not
                && obj["status"]["observedGeneration"] == obj["metadata"]["generation"])
                .then_some(id)
        })
    }

    fn faults(&self, rules: Value) {
        assert_eq!(
            self.sim
                .hook("PUT", "/_sim/faults", Some(json!({ "rules": rules }))),
            200
        );
    }

    fn state(&self, name: &str) -> Value {
        let obj = self.get(name);
        let text = obj["metadata"]["annotations"]["git.dev/state"]
            .as_str()
            .unwrap_or("{}")
            .to_string();
        serde_json::from_str(&text).unwrap()
    }
}

#[test]
fn an_operator_killed_after_the_create_was_accepted_adopts_that_deployment_on_restart() {
    let w = world("sem-crash", 0.5);
    // The simulator commits the create, then holds the answer for 5 s: the window in which the
    // operator knows it sent a create but not what it made.
    w.faults(json!([{"route": "create", "latency_ms": 5000, "latency_when": "after", "count": 1}]));
    let mut first = w.spawn_operator(&[]);
    w.apply(&gitdeployment("crash", "main", ""))
        .expect_success();
    eventually(WAIT, "the simulator to accept the create", || {
        (w.sim.deployments_of("main").len() == 1).then_some(())
    });
    first.kill();
    let state = w.state("crash");
    assert!(
        state["intent"].is_object() && state["id"].is_null(),
        "intent recorded, id not yet: {state}"
    );

    let _second = w.spawn_operator(&[]);
    let id = w.wait_ready_with("crash", None);
    let remote = w.sim.deployments_of("main");
    assert_eq!(remote.len(), 1, "exactly one deployment: {remote:?}");
    assert_eq!(remote[0]["id"], id.as_str());
    assert!(w.events("crash").contains("Adopted"));
}

#[test]
fn a_create_answered_by_a_dropped_connection_is_found_and_adopted_not_repeated() {
    let w = world("sem-drop", 0.5);
    w.faults(json!([{"route": "create", "drop_rate": 1.0, "count": 1}]));
    let _op = w.spawn_operator(&[]);
    w.apply(&gitdeployment("dropped", "main", ""))
        .expect_success();
    let id = w.wait_ready_with("dropped", None);
    let remote = w.sim.deployments_of("main");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["id"], id.as_str());
}

#[test]
fn a_create_answered_500_is_looked_for_and_then_made_once() {
    let w = world("sem-500", 0.5);
    w.faults(json!([{"route": "create", "error_rate": 1.0, "count": 1}]));
    let _op = w.spawn_operator(&[]);
    w.apply(&gitdeployment("five", "main", "")).expect_success();
    w.wait_ready_with("five", None);
    assert_eq!(w.sim.deployments_of("main").len(), 1);
}

#[test]
fn a_new_spec_while_building_cancels_the_old_deployment_and_keeps_it_in_history() {
    let w = world("sem-supersede", 3.0);
    let _op = w.spawn_operator(&[]);
    w.apply(&gitdeployment("web", "main", "  envVars:\n    V: \"1\"\n"))
        .expect_success();
    eventually(WAIT, "building", || {
        (w.get("web")["status"]["status"] == "building").then_some(())
    });
    let old = w.deployment_id("web");
    w.apply(&gitdeployment("web", "main", "  envVars:\n    V: \"2\"\n"))
        .expect_success();
    let new = w.wait_ready_with("web", Some(&old));
    let (_, remote_old) = w.sim.get("sk_test_write", &old);
    assert_eq!(remote_old["status"], "cancelled");
    let history = w.get("web")["status"]["history"].clone();
    assert_eq!(history[0]["deploymentId"], old.as_str(), "{history}");
    assert_ne!(new, old);
    assert_eq!(w.sim.deployments_of("main").len(), 2);
    assert!(w.events("web").contains("Superseded"));
}

#[test]
fn history_beyond_the_limit_is_deleted_remotely_oldest_first() {
    let w = world("sem-history", 0.0);
    let _op = w.spawn_operator(&[]);
    let mut ids = Vec::new();
    for n in 1..=3 {
        w.apply(&gitdeployment(
            "web",
            "main",
            &format!("  historyLimit: 1\n  redeploy: \"{n}\"\n"),
        ))
        .expect_success();
        let last = ids.last().cloned();
        ids.push(w.wait_ready_with("web", last.as_deref()));
    }
    // Current: ids[2]; history keeps ids[1]; ids[0] was deleted remotely.
    eventually(WAIT, "the oldest to be pruned", || {
        (w.sim.get("sk_test_write", &ids[0]).0 == 404).then_some(())
    });
    assert_eq!(w.sim.get("sk_test_write", &ids[1]).0, 200);
    let history = w.get("web")["status"]["history"].clone();
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(history[0]["deploymentId"], ids[1].as_str());
}

#[test]
fn an_object_annotated_with_a_deployment_id_adopts_it_instead_of_creating() {
    let w = world("sem-adopt", 0.0);
    let created: Value = http()
        .post(format!("{}/deployments", w.sim.api_url()))
        .bearer_auth("sk_test_write")
        .json(&json!({"project_id": "proj_8f3k29", "branch": "feature/login"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let _op = w.spawn_operator(&[]);
    let manifest = gitdeployment("adopted", "feature/login", "").replace(
        "metadata:\n  name: adopted\n",
        &format!("metadata:\n  name: adopted\n  annotations:\n    git.dev/deployment-id: {id}\n"),
    );
    w.apply(&manifest).expect_success();
    assert_eq!(w.wait_ready_with("adopted", None), id);
    assert_eq!(w.sim.deployments_of("feature/login").len(), 1);
    assert!(w.events("adopted").contains("Adopted"));
}

#[test]
fn a_lost_status_is_rebuilt_from_metadata_without_a_new_deployment() {
    let w = world("sem-status-loss", 0.0);
    let _op = w.spawn_operator(&[]);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let id = w.wait_ready_with("web", None);
    // What a restore without status, or a status wipe, leaves.
    let wiped = w
        .kubectl(&[
            "patch",
            "gitdeployment",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            "{\"status\":null}",
            "-o",
            "json",
        ])
        .expect_success();
    let wiped: Value = serde_json::from_str(&wiped).unwrap();
    // Only the schema's default is left of it.
    assert_eq!(
        wiped["status"],
        json!({"observedGeneration": 0}),
        "the patch left a status: {}",
        wiped["status"]
    );
    assert_eq!(w.wait_ready_with("web", None), id);
    assert_eq!(w.sim.deployments_of("main").len(), 1);
}

#[test]
fn rotating_an_env_from_secret_redeploys_once_and_stores_no_secret_value() {
    let w = world("sem-envfrom", 0.0);
    let secret = |v: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-env\nstringData:\n  DATABASE_PASSWORD: {v}\n"
        )
    };
    w.apply(&secret("hunter2")).expect_success();
    let _op = w.spawn_operator(&[]);
    let m = gitdeployment(
        "web",
        "main",
        "  envFrom:\n    - secretRef:\n        name: app-env\n",
    );
    w.apply(&m).expect_success();
    let first = w.wait_ready_with("web", None);
    let obj_text = w
        .kubectl(&["get", "gitdeployment", "web", "-o", "json"])
        .expect_success();
    assert!(
        !obj_text.contains("hunter2"),
        "a secret value leaked into the object"
    );
    w.apply(&secret("correct-horse")).expect_success();
    let second = w.wait_ready_with("web", Some(&first));
    w.apply(&m).expect_success();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        w.sim.deployments_of("main").len(),
        2,
        "one redeploy for one rotation"
    );
    assert_eq!(w.get("web")["status"]["deploymentId"], second.as_str());
}

#[test]
fn a_deployment_cancelled_from_the_dashboard_is_reported_stalled() {
    let w = world("sem-ext-cancel", 3.0);
    let _op = w.spawn_operator(&[]);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    eventually(WAIT, "building", || {
        (w.get("web")["status"]["status"] == "building").then_some(())
    });
    let id = w.deployment_id("web");
    assert_eq!(
        w.sim
            .hook("POST", &format!("/_sim/deployments/{id}/cancel"), None),
        200
    );
    let message = w.wait_for("web", "Stalled", "CancelledExternally");
    assert!(
        message.contains(&id) && message.contains("redeploy"),
        "{message}"
    );
    assert_eq!(w.condition("web", "Ready").unwrap().0, "False");
}

#[test]
fn a_deployment_deleted_behind_the_operators_back_is_reported_and_its_url_dropped() {
    let w = world("sem-ext-delete", 0.0);
    let _op = w.spawn_operator(&["--recheck-finished-seconds", "2"]);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let id = w.wait_ready_with("web", None);
    assert_eq!(
        w.sim
            .hook("DELETE", &format!("/_sim/deployments/{id}"), None),
        204
    );
    let message = w.wait_for("web", "Stalled", "RemoteDeleted");
    assert!(message.contains(&id), "{message}");
    let status = w.get("web")["status"].clone();
    assert!(
        status["url"].is_null(),
        "a deleted deployment's URL must not be claimed: {status}"
    );
    // A new redeploy value brings it back.
    w.apply(&gitdeployment("web", "main", "  redeploy: again\n"))
        .expect_success();
    w.wait_ready_with("web", Some(&id));
}

#[test]
fn a_deletion_with_no_usable_token_says_why_then_orphans_after_the_grace_period() {
    let w = world("sem-cred-loss", 0.0);
    let mut op = w.spawn_operator(&[]);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let id = w.wait_ready_with("web", None);
    // The Secret goes, and the operator restarts, so that no token it used is remembered
    // (with one, the cleanup deletes: see operator_trust).
    op.proc.terminate(Duration::from_secs(15));
    w.kubectl(&["delete", "secret", "gitdev-credentials"])
        .expect_success();
    let _op = w.spawn_operator(&[]);
    w.kubectl(&["delete", "gitdeployment", "web", "--wait=false"])
        .expect_success();
    let message = w.wait_for("web", "Stalled", "CleanupBlocked");
    assert!(
        message.contains("CredentialsNotFound") || message.contains("gitdev-credentials"),
        "{message}"
    );
    assert!(message.contains("orphaned after 20s"), "{message}");
    // The test operator's grace is 20 s: then the object goes, with a Warning naming what is left.
    eventually(Duration::from_secs(60), "the object to be gone", || {
        w.lookup("web").stdout.trim().is_empty().then_some(())
    });
    let events = w.events("web");
    assert!(
        events.contains("CleanupAbandoned") && events.contains(&id),
        "{events}"
    );
    assert_eq!(
        w.sim.get("sk_test_write", &id).0,
        200,
        "orphaned, not deleted"
    );
}
