//! Fencing with real processes (kube-apiserver, `gitdev-sim`, two `gitdev-operator` replicas):
//! a leader frozen with SIGSTOP until a standby has taken its Lease over, then woken with
//! SIGCONT, sends no write to the Deployments API, and every change made meanwhile is deployed
//! exactly once.

mod common;

use std::time::{Duration, Instant};

use common::replicas::{LEASE_SECONDS, TwoReplicas, signal, writes};
use common::stack::eventually;
use common::world::{WAIT, gitdeployment};

#[test]
fn a_leader_frozen_past_its_lease_sends_no_write_after_waking_and_every_change_is_deployed_once() {
    let mut r = TwoReplicas::start("e2e-fence");
    r.token_secret("sk_test_write");
    r.apply(&gitdeployment("steady", "main", ""))
        .expect_success();
    r.apply(&gitdeployment(
        "doomed",
        "main",
        "  envVars:\n    DOOMED: \"1\"\n",
    ))
    .expect_success();
    r.wait_deployed("steady", WAIT);
    r.wait_deployed("doomed", WAIT);
    let doomed = r.deployment_id("doomed");

    // Frozen right after a new object reaches the API server: its watch event, and perhaps its
    // reconcile, wait in the frozen process.
    r.apply(&gitdeployment("pending", "feature/login", ""))
        .expect_success();
    signal(&r.a, "STOP");
    let frozen = Instant::now();
    r.wait_for_holder(Duration::from_secs(LEASE_SECONDS * 3), "replica-b");
    println!(
        "replica-b holds the Lease {:.1}s after replica-a froze (lease {LEASE_SECONDS}s)",
        frozen.elapsed().as_secs_f64()
    );

    // While the old leader sleeps: a new spec, a new object, and a deletion (whose cleanup, a
    // cancel and a delete, needs no Kubernetes write first: only the fence stands between a
    // woken old leader and a second delete).
    r.apply(&gitdeployment(
        "steady",
        "main",
        "  envVars:\n    RELEASE: \"2\"\n",
    ))
    .expect_success();
    r.apply(&gitdeployment(
        "later",
        "main",
        "  envVars:\n    LATER: \"1\"\n",
    ))
    .expect_success();
    r.kubectl(&["delete", "gitdeployment", "doomed", "--timeout=60s"])
        .expect_success();
    for name in ["steady", "pending", "later"] {
        r.wait_deployed(name, WAIT);
    }
    let before = writes(&r.sim);

    signal(&r.a, "CONT");
    let woken = Instant::now();
    // It finds its last renewal older than the renew deadline and stops on its own.
    eventually(
        Duration::from_secs(30),
        "the woken leader to stop acting",
        || {
            let log = r.a.proc.log_tail(400);
            (log.contains("not renewed within the renew deadline")
                || log.contains("lost the leader Lease to another replica"))
            .then_some(())
        },
    );
    let status =
        r.a.proc
            .terminate(Duration::from_secs(15))
            .expect("the woken leader exits");
    assert!(
        !status.success(),
        "it must exit by itself, with an error, not on the test's SIGTERM: {status}\n{}",
        r.a.proc.log_tail(40)
    );
    println!(
        "replica-a stopped {:.1}s after waking",
        woken.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&r.a.proc.log).unwrap_or_default();
    let refused = log
        .matches("not sent: this replica does not hold the leader Lease")
        .count();
    println!("writes of replica-a refused by its fence after waking: {refused}");

    // Nothing was written since the standby finished: not by the woken leader, and the new
    // leader had nothing left to do.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(writes(&r.sim), before, "{}", r.a.proc.log_tail(60));
    // Exactly once: the first spec and the new one of `steady` and `later` on main, `pending`
    // on feature/login; each object tracks its own.
    assert_eq!(r.sim.deployments_of("main").len(), 3);
    assert_eq!(r.sim.deployments_of("feature/login").len(), 1);
    let ids: std::collections::BTreeSet<String> = ["steady", "pending", "later"]
        .iter()
        .map(|name| r.deployment_id(name))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    // The deleted object's deployment was deleted, once.
    assert_eq!(r.sim.get("sk_test_write", &doomed).0, 404);
    let deletes = &r.sim.stats()["by_route"]["DELETE /v1/deployments/{id}"]["total"];
    assert_eq!(deletes, 1, "{deletes}");
    assert_eq!(r.lease_holder(), "replica-b");
}
