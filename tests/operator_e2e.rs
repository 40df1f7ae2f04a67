//! The operator end to end, driven with `kubectl` exactly as a user would: a real
//! kube-apiserver (tests/cluster), a real `gitdev-sim` and a real `gitdev-operator` process.
//!
//! Each test has its own namespace, simulator and operator (scoped with `--namespace`), so the
//! simulator's counts belong to that test alone and tests run in parallel.

mod common;

use std::time::Duration;

use common::stack::eventually;
use common::world::{WAIT, World, gitdeployment};

const PHASE_SECONDS: f64 = 1.0;

/// A world whose operator finds a write token.
fn world(prefix: &str) -> World {
    let w = World::with_operator(prefix, PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w
}

#[test]
fn an_applied_object_reaches_ready_with_its_url_in_status_and_in_kubectl_get() {
    let w = world("e2e-basic");
    w.apply(&gitdeployment(
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
    let (code, metrics) = w.operator().get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("gitdev_api_requests_total{endpoint=\"create\",outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert_eq!(w.operator().get("/healthz").0, 200);
    assert_eq!(w.operator().get("/readyz").0, 200);
}

#[test]
fn a_fail_branch_ends_stalled_with_deployment_failed() {
    let w = world("e2e-fail");
    w.apply(&gitdeployment("broken", "fail/broken-build", ""))
        .expect_success();
    let message = w.wait_for("broken", "Stalled", "DeploymentFailed");
    assert!(message.contains("logs"), "{message}");
    assert_eq!(w.condition("broken", "Ready").unwrap().0, "False");
    assert_eq!(w.get("broken")["status"]["status"], "failed");
}

#[test]
fn cancel_true_during_building_cancels_it_remotely_and_is_ready() {
    let w = World::with_operator("e2e-cancel", 4.0);
    w.token_secret("sk_test_write");
    w.apply(&gitdeployment("c", "main", "")).expect_success();
    eventually(WAIT, "status building", || {
        (w.get("c")["status"]["status"] == "building").then_some(())
    });
    w.apply(&gitdeployment("c", "main", "  cancel: true\n"))
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
    let w = World::with_operator("e2e-invalid", PHASE_SECONDS);
    let bad_commit = w
        .apply(&gitdeployment("x", "main", "  commitSha: NOT-HEX\n"))
        .expect_failure();
    assert!(bad_commit.contains("spec.commitSha"), "{bad_commit}");
    let no_branch = w
        .apply("apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: nobranch\nspec:\n  projectId: proj_8f3k29\n")
        .expect_failure();
    assert!(
        no_branch.contains("spec.branch: Required value"),
        "{no_branch}"
    );
    let bad_ref = w
        .apply(&gitdeployment("z", "feature..x", ""))
        .expect_failure();
    assert!(bad_ref.contains("not a valid git ref name"), "{bad_ref}");
    let bad_env = w
        .apply(&gitdeployment("e", "main", "  envVars:\n    1BAD: x\n"))
        .expect_failure();
    assert!(bad_env.contains("envVars names must match"), "{bad_env}");

    w.apply(&gitdeployment("p", "main", "  cancel: true\n"))
        .expect_success();
    let moved = w
        .apply(&gitdeployment("p", "main", "  cancel: true\n").replace("proj_8f3k29", "proj_other"))
        .expect_failure();
    assert!(moved.contains("projectId is immutable"), "{moved}");
}

#[test]
fn kubectl_delete_removes_the_remote_deployment_and_the_object_goes_away() {
    let w = world("e2e-delete");
    w.apply(&gitdeployment("gone", "main", "")).expect_success();
    w.wait_for("gone", "Ready", "Succeeded");
    let id = w.deployment_id("gone");
    w.kubectl(&["delete", "gitdeployment", "gone", "--timeout=60s"])
        .expect_success();
    let (code, body) = w.sim.get("sk_test_write", &id);
    assert_eq!(code, 404, "{body}");
    let left = w.lookup("gone").expect_success();
    assert!(left.trim().is_empty(), "{left}");
}

#[test]
fn deletion_policy_orphan_leaves_the_remote_deployment() {
    let w = world("e2e-orphan");
    w.apply(&gitdeployment("keep", "main", "  deletionPolicy: Orphan\n"))
        .expect_success();
    w.wait_for("keep", "Ready", "Succeeded");
    let id = w.deployment_id("keep");
    w.kubectl(&["delete", "gitdeployment", "keep", "--timeout=60s"])
        .expect_success();
    let (code, body) = w.sim.get("sk_test_write", &id);
    assert_eq!(code, 200);
    assert_eq!(body["status"], "success");
}

#[test]
fn a_missing_token_secret_stalls_and_recovers_when_the_secret_appears() {
    let w = World::with_operator("e2e-nosecret", PHASE_SECONDS);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
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
    w.token_secret("sk_test_write");
    w.wait_for("web", "Ready", "Succeeded");
}

#[test]
fn a_read_only_token_stalls_with_insufficient_scope_and_recovers_when_the_secret_is_fixed() {
    let w = World::with_operator("e2e-readonly", PHASE_SECONDS);
    w.token_secret("sk_test_read");
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let message = w.wait_for("web", "Stalled", "InsufficientScope");
    assert!(
        message.contains("insufficient_scope") && message.contains("deploy:write"),
        "{message}"
    );
    let before = w.sim.stats();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(before, w.sim.stats(), "no requests while stalled");
    w.token_secret("sk_test_write");
    w.wait_for("web", "Ready", "Succeeded");
    assert_eq!(w.sim.deployments_of("main").len(), 1);
}

#[test]
fn an_unknown_token_stalls_with_unauthorized() {
    let w = World::with_operator("e2e-badtoken", PHASE_SECONDS);
    w.token_secret("sk_test_nope");
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let message = w.wait_for("web", "Stalled", "Unauthorized");
    assert!(message.contains("401"), "{message}");
}

#[test]
fn reapplying_the_same_manifest_ten_times_creates_exactly_one_remote_deployment() {
    let w = world("e2e-reapply");
    let m = gitdeployment("web", "feature/login", "  envVars:\n    A: \"1\"\n");
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

#[tokio::test]
async fn an_event_said_again_in_other_words_becomes_a_series_that_keeps_the_first_note() {
    use gitdev::controller::events::{Event, EventType, Recorder};
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::Api;

    let cluster = common::cluster();
    let ns = cluster.namespace("e2e-events").await;
    let client = cluster.client().await;
    let recorder = Recorder::new(client.clone(), "gitdev-operator", None);
    let regarding = ObjectReference {
        api_version: Some("git.dev/v1alpha1".into()),
        kind: Some("Deployment".into()),
        namespace: Some(ns.name().to_string()),
        name: Some("web".into()),
        uid: Some("2c1b0f5e-0000-4000-8000-000000000001".into()),
        ..ObjectReference::default()
    };
    // The API server refuses any change to an event's note: a repeat must not send one.
    for note in [
        "waiting 10s for the API token's rate limit before create",
        "waiting 2s for the API token's rate limit before create",
    ] {
        let event = Event {
            type_: EventType::Warning,
            reason: "RateLimited",
            action: "RateLimited",
            note,
        };
        recorder
            .publish(&event, &regarding)
            .await
            .unwrap_or_else(|e| panic!("publishing {note:?}: {e}"));
    }
    let events: Api<K8sEvent> = Api::namespaced(client, ns.name());
    let listed = events.list(&Default::default()).await.expect("events");
    assert_eq!(listed.items.len(), 1, "{:?}", listed.items);
    let event = &listed.items[0];
    assert_eq!(event.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        event.note.as_deref(),
        Some("waiting 10s for the API token's rate limit before create")
    );
}
