//! A gateway between the operator and the API, end to end (real kube-apiserver, real
//! `gitdev-sim`, real `gitdev-operator`): a create that the API committed but a gateway answered
//! with its own status and HTML page is found, not made again; a `Retry-After` no API would send
//! does not keep an object from converging once the 429s stop.

mod common;

use std::time::{Duration, Instant};

use common::stack::eventually;
use common::world::{World, gitdeployment};
use serde_json::{Value, json};

/// How long one object may take to converge. After an unknown outcome the operator may keep
/// looking for the deployment over a settle window of about a minute before it concludes
/// anything; this leaves room for that window and then some, without depending on its timing.
const CONVERGE: Duration = Duration::from_secs(150);

/// A world whose operators, which each test starts itself, find a write token.
fn world(prefix: &str, phase: f64) -> World {
    let w = World::new(prefix, phase);
    w.token_secret("sk_test_write");
    w
}

fn set_faults(w: &World, rules: Value) {
    let status = w
        .sim
        .hook("PUT", "/_sim/faults", Some(json!({ "rules": rules })));
    assert_eq!(status, 200);
}

/// The remote deployments made for the object that carries `marker` in its environment.
fn remote_of(w: &World, marker: &str) -> Vec<Value> {
    w.sim
        .deployments()
        .into_iter()
        .filter(|d| d["env_vars"]["OBJECT"] == marker)
        .collect()
}

/// A gitdeployment of `main` whose environment names it, so that its remote deployments can be
/// told apart from the other objects' in the simulator.
fn marked(name: &str) -> String {
    gitdeployment(name, "main", &format!("  envVars:\n    OBJECT: {name}\n"))
}

/// Waits until `name` is Ready with its current generation observed; returns its deployment id.
#[track_caller]
fn wait_ready(w: &World, name: &str) -> String {
    eventually(CONVERGE, &format!("{name} Ready"), || {
        let obj = w.get(name);
        let id = obj["status"]["deploymentId"].as_str()?.to_string();
        let ready = obj["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Succeeded");
        (ready && obj["status"]["observedGeneration"] == obj["metadata"]["generation"])
            .then_some(id)
    })
}

/// Requests to `POST /v1/deployments` the simulator answered with `status`.
fn creates_answered(w: &World, status: u16) -> u64 {
    w.sim.stats()["by_route"]["POST /v1/deployments"]["by_status"][status.to_string()]
        .as_u64()
        .unwrap_or(0)
}

/// One object, whose first create the simulator commits and a gateway answers with `status`
/// and an HTML page, ends Ready with exactly one remote deployment: the one the gateway hid.
/// Each status gets a world of its own: lost creates of several objects of one token and branch
/// at once could each be any of their deployments (the API does not show `env_vars`), which is
/// a different story (the operator asks a human, `CreationUncertain`).
fn a_gateways_answer_after_the_commit_ends_with_exactly_one_deployment(status: u16) {
    let name = format!("gw-{status}");
    let w = world(&name, 0.5);
    set_faults(
        &w,
        json!([{ "route": "create", "gateway_rate": 1.0, "gateway_status": status, "count": 1 }]),
    );
    let _op = w.spawn_operator(&[]);
    w.apply(&marked(&name)).expect_success();
    let started = Instant::now();
    let id = wait_ready(&w, &name);
    eprintln!("{name} Ready after {:?}", started.elapsed());
    assert_eq!(
        creates_answered(&w, status),
        1,
        "the gateway answered the first create"
    );
    let remote = remote_of(&w, &name);
    assert_eq!(remote.len(), 1, "exactly one deployment: {remote:?}");
    assert_eq!(remote[0]["id"], id.as_str(), "the one the gateway hid");
    // Settled: no create afterwards either.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(remote_of(&w, &name).len(), 1);
    assert_eq!(
        w.sim.stats()["by_route"]["POST /v1/deployments"]["total"],
        1,
        "never sent again"
    );
}

#[test]
fn a_create_committed_then_answered_408_by_a_gateway_ends_with_exactly_one_deployment() {
    a_gateways_answer_after_the_commit_ends_with_exactly_one_deployment(408);
}

#[test]
fn a_create_committed_then_answered_520_by_a_gateway_ends_with_exactly_one_deployment() {
    a_gateways_answer_after_the_commit_ends_with_exactly_one_deployment(520);
}

#[test]
fn a_create_committed_then_answered_524_by_a_gateway_ends_with_exactly_one_deployment() {
    a_gateways_answer_after_the_commit_ends_with_exactly_one_deployment(524);
}

#[test]
fn an_absurd_retry_after_on_a_429_does_not_stop_an_object_from_converging() {
    let w = world("gw-retry", 0.5);
    // Every answer is a 429 asking for three million years of silence.
    set_faults(
        &w,
        json!([{ "force_429": 1.0, "headers": { "retry-after": "99999999999999" } }]),
    );
    let op = w.spawn_operator(&[]);
    w.apply(&marked("patient")).expect_success();
    eventually(CONVERGE, "the operator to meet the 429", || {
        (w.sim.stats()["by_status"]["429"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    assert!(remote_of(&w, "patient").is_empty());
    assert_eq!(w.sim.hook("DELETE", "/_sim/faults", None), 200);
    let lifted = Instant::now();
    let id = wait_ready(&w, "patient");
    eprintln!("Ready {:?} after the 429s stopped", lifted.elapsed());
    let remote = remote_of(&w, "patient");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["id"], id.as_str());
    assert_eq!(op.get("/healthz").0, 200, "the operator kept running");
}
