//! `spec.exportTo` end to end: a real kube-apiserver (tests/cluster), a real `gitdev-sim` and a
//! real `gitdev-operator`, driven with `kubectl` as a user would.
//!
//! The ConfigMap only ever describes the last successful deployment: it appears on the first
//! success, stays as it is while a new deployment builds, changes when that one succeeds, moves
//! when `exportTo` changes and goes away with the object. A ConfigMap the object does not own is
//! never written or deleted.

mod common;

use std::time::Duration;

use common::stack::eventually;
use common::world::{WAIT, World, gitdeployment};
use serde_json::Value;

/// Long enough phases to look at the ConfigMap while a deployment is queued and building.
const PHASE_SECONDS: f64 = 2.0;

fn world(prefix: &str) -> World {
    let w = World::with_operator(prefix, PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w
}

/// The ConfigMap `name` as JSON, if it exists.
fn config_map(w: &World, name: &str) -> Option<Value> {
    let out = w
        .kubectl(&["get", "configmap", name, "--ignore-not-found", "-o", "json"])
        .expect_success();
    (!out.trim().is_empty()).then(|| serde_json::from_str(&out).unwrap())
}

/// Waits until the ConfigMap `name` holds deployment `id`; returns it.
#[track_caller]
fn wait_exported(w: &World, name: &str, id: &str) -> Value {
    eventually(WAIT, &format!("ConfigMap {name} to hold {id}"), || {
        config_map(w, name).filter(|cm| cm["data"]["deploymentId"] == id)
    })
}

#[test]
fn the_config_map_appears_on_success_holds_still_while_a_new_deployment_builds_and_follows_its_success()
 {
    let w = world("export-follow");
    w.apply(&gitdeployment("web", "main", "  exportTo: web-live\n"))
        .expect_success();
    // Before the first success there is no URL to give: no ConfigMap at all.
    eventually(WAIT, "the first deployment building", || {
        (w.get("web")["status"]["status"] == "building").then_some(())
    });
    assert!(config_map(&w, "web-live").is_none());

    let first = w.wait_succeeded("web", None);
    let cm = wait_exported(&w, "web-live", &first);
    let obj = w.get("web");
    let data = &cm["data"];
    assert_eq!(data["url"], format!("https://{first}.git.dev"));
    assert_eq!(data["url"], obj["status"]["url"]);
    assert_eq!(data["commitSha"], obj["status"]["commitSha"]);
    assert!(data["completedAt"].is_string(), "{cm}");
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(owner["apiVersion"], "git.dev/v1alpha1");
    assert_eq!(owner["uid"], obj["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    let with_managers: Value = serde_json::from_str(
        &w.kubectl(&[
            "get",
            "configmap",
            "web-live",
            "--show-managed-fields",
            "-o",
            "json",
        ])
        .expect_success(),
    )
    .unwrap();
    let managers: Vec<(&str, &str)> = with_managers["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or(""),
                m["operation"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(managers, [("gitdev-operator", "Apply")], "{cm}");
    // The status that records it is written right after the ConfigMap.
    let recorded = serde_json::json!({"configMap": "web-live", "deploymentId": first});
    eventually(WAIT, "status.exported", || {
        (w.get("web")["status"]["exported"] == recorded).then_some(())
    });
    let written = cm["metadata"]["resourceVersion"].clone();

    // A new spec: a new deployment builds, and the ConfigMap keeps the live one untouched.
    w.apply(&gitdeployment(
        "web",
        "main",
        "  exportTo: web-live\n  envVars:\n    FEATURE: \"on\"\n",
    ))
    .expect_success();
    eventually(WAIT, "the second deployment in progress", || {
        let s = w.get("web")["status"].clone();
        (s["deploymentId"] != first.as_str()
            && matches!(
                s["status"].as_str(),
                Some("queued" | "building" | "deploying")
            ))
        .then_some(())
    });
    for _ in 0..3 {
        let cm = config_map(&w, "web-live").expect("the ConfigMap stays");
        assert_eq!(cm["data"]["deploymentId"], first.as_str());
        assert_eq!(cm["metadata"]["resourceVersion"], written);
        std::thread::sleep(Duration::from_millis(700));
    }

    let second = w.wait_succeeded("web", Some(&first));
    let cm = wait_exported(&w, "web-live", &second);
    assert_eq!(cm["data"]["url"], format!("https://{second}.git.dev"));
    // One write per success: the second success did not come in two steps.
    eventually(WAIT, "the completion time exported", || {
        config_map(&w, "web-live").filter(|cm| cm["data"]["completedAt"].is_string())
    });
    assert_eq!(
        w.operator()
            .metric("gitdev_kubernetes_writes_total{kind=\"export\"}"),
        2.0
    );
    let events = w.events("web");
    assert!(events.contains("\"Exported\""), "{events}");

    // It goes with the object (explicitly: no garbage collector runs on this control plane).
    w.kubectl(&["delete", "gitdeployment", "web", "--timeout=60s"])
        .expect_success();
    eventually(WAIT, "the ConfigMap deleted with its object", || {
        config_map(&w, "web-live").is_none().then_some(())
    });
}

#[test]
fn changing_export_to_moves_the_config_map_without_redeploying() {
    let w = world("export-move");
    w.apply(&gitdeployment("api", "main", "  exportTo: api-old\n"))
        .expect_success();
    let id = w.wait_succeeded("api", None);
    wait_exported(&w, "api-old", &id);

    w.apply(&gitdeployment("api", "main", "  exportTo: api-new\n"))
        .expect_success();
    wait_exported(&w, "api-new", &id);
    eventually(WAIT, "the old ConfigMap deleted", || {
        config_map(&w, "api-old").is_none().then_some(())
    });
    assert_eq!(w.deployment_id("api"), id);
    assert_eq!(w.sim.deployments_of("main").len(), 1);

    // Removing exportTo removes the output.
    w.apply(&gitdeployment("api", "main", "")).expect_success();
    eventually(WAIT, "the ConfigMap deleted with exportTo", || {
        config_map(&w, "api-new").is_none().then_some(())
    });
    eventually(WAIT, "status.exported cleared", || {
        w.get("api")["status"]["exported"].is_null().then_some(())
    });
}

#[test]
fn a_config_map_owned_by_someone_else_is_left_alone_and_the_object_says_why() {
    let w = world("export-taken");
    w.apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  theme: dark\n")
        .expect_success();
    let before = config_map(&w, "settings").unwrap();
    w.apply(&gitdeployment("site", "main", "  exportTo: settings\n"))
        .expect_success();
    let message = w.wait_for("site", "Stalled", "ExportConflict");
    assert!(
        message.contains("spec.exportTo") && message.contains("settings"),
        "{message}"
    );
    assert_eq!(w.condition("site", "Ready").unwrap().0, "False");
    let events = w.events("site");
    assert!(events.contains("ExportConflict"), "{events}");
    // The deployment itself went ahead; only its export is held back.
    eventually(WAIT, "the deployment succeeded remotely", || {
        (w.get("site")["status"]["status"] == "success").then_some(())
    });
    let after = config_map(&w, "settings").unwrap();
    assert_eq!(after["data"], before["data"]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert!(after["metadata"]["ownerReferences"].is_null(), "{after}");

    // Deleting the object does not delete a ConfigMap it never owned.
    w.kubectl(&["delete", "gitdeployment", "site", "--timeout=60s"])
        .expect_success();
    assert_eq!(
        config_map(&w, "settings").unwrap()["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

#[test]
fn a_malformed_export_to_is_rejected_by_the_api_server() {
    let w = World::new("export-invalid", PHASE_SECONDS);
    for bad in ["Not_A_Name", "-leading-dash", "trailing."] {
        let err = w
            .apply(&gitdeployment(
                "x",
                "main",
                &format!("  exportTo: \"{bad}\"\n"),
            ))
            .expect_failure();
        assert!(err.contains("spec.exportTo"), "{bad}: {err}");
    }
    let too_long = "a".repeat(254);
    let err = w
        .apply(&gitdeployment(
            "x",
            "main",
            &format!("  exportTo: {too_long}\n"),
        ))
        .expect_failure();
    assert!(err.contains("spec.exportTo"), "{err}");
    w.apply(&gitdeployment("x", "main", "  exportTo: x.preview-1\n"))
        .expect_success();
}

#[test]
fn a_config_map_deleted_or_edited_behind_the_operators_back_is_put_back_on_the_next_check() {
    let w = World::new("export-drift", PHASE_SECONDS);
    w.token_secret("sk_test_write");
    // Settled objects are looked at every 2 s instead of every 10 minutes.
    let op = w.spawn_operator(&["--recheck-finished-seconds", "2"]);
    w.apply(&gitdeployment("web", "main", "  exportTo: web-live\n"))
        .expect_success();
    let id = w.wait_succeeded("web", None);
    let original = wait_exported(&w, "web-live", &id)["data"].clone();

    w.kubectl(&["delete", "configmap", "web-live"])
        .expect_success();
    let back = wait_exported(&w, "web-live", &id);
    assert_eq!(back["data"], original);

    w.kubectl(&[
        "patch",
        "configmap",
        "web-live",
        "--type=merge",
        "-p",
        r#"{"data":{"url":"https://not-live.example"}}"#,
    ])
    .expect_success();
    eventually(WAIT, "the edited URL put back", || {
        config_map(&w, "web-live").filter(|cm| cm["data"] == original)
    });
    // Nothing changes while nothing changed: no write on the checks in between.
    let writes = || op.metric("gitdev_kubernetes_writes_total{kind=\"export\"}");
    let before = writes();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(writes(), before);
}
