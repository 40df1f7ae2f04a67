//! Two operator replicas with leader election against a real kube-apiserver: exactly one acts,
//! and killing the leader hands over within the Lease duration.

mod common;

use std::time::{Duration, Instant};

use common::replicas::{LEASE_SECONDS, TwoReplicas};
use common::stack::eventually;
use common::world::gitdeployment;

#[test]
fn of_two_replicas_only_the_lease_holder_acts_and_a_killed_leader_hands_over_within_the_lease() {
    let mut r = TwoReplicas::start("e2e-ha");
    // The standby serves health checks but does not act.
    eventually(Duration::from_secs(30), "replica-b healthy", || {
        (r.b.get("/readyz").0 == 200).then_some(())
    });

    r.token_secret("sk_test_write");
    r.apply(&gitdeployment("one", "main", "")).expect_success();
    r.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "gitdeployment/one",
        "--timeout=60s",
    ])
    .expect_success();
    assert!(r.a.metric("gitdev_reconciliations_total") > 0.0);
    assert_eq!(
        r.b.metric("gitdev_reconciliations_total"),
        0.0,
        "the standby must not reconcile"
    );
    assert_eq!(
        r.b.metric("gitdev_api_requests_total{endpoint=\"create\",outcome=\"success\"}"),
        0.0
    );

    // SIGKILL: no release, the standby must wait out the Lease.
    let killed = Instant::now();
    r.a.kill();
    r.wait_for_holder(Duration::from_secs(LEASE_SECONDS * 3), "replica-b");
    let handover = killed.elapsed();
    println!(
        "handover after SIGKILL of the leader: {:.1}s (lease {LEASE_SECONDS}s)",
        handover.as_secs_f64()
    );
    assert!(
        handover <= Duration::from_secs(LEASE_SECONDS + 3),
        "handover took {handover:?}"
    );

    r.apply(&gitdeployment("two", "feature/login", ""))
        .expect_success();
    r.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "gitdeployment/two",
        "--timeout=60s",
    ])
    .expect_success();
    assert!(r.b.metric("gitdev_reconciliations_total") > 0.0);
    // Still exactly one remote deployment per object.
    assert_eq!(r.sim.deployments_of("main").len(), 1);
    assert_eq!(r.sim.deployments_of("feature/login").len(), 1);
}

#[test]
fn a_leader_stopped_with_sigterm_releases_the_lease_and_the_standby_takes_over_within_the_lease() {
    let mut r = TwoReplicas::start("e2e-ha-term");
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    let status =
        r.a.proc
            .terminate(Duration::from_secs(10))
            .expect("leader exits on SIGTERM");
    assert!(status.success(), "{}", r.a.proc.log_tail(20));
    assert!(
        r.a.proc.log_tail(5).contains("released the leader Lease"),
        "{}",
        r.a.proc.log_tail(5)
    );
    // The standby re-checks the Lease when it would have expired, and finds it free.
    r.wait_for_holder(Duration::from_secs(LEASE_SECONDS * 3), "replica-b");
    assert!(
        stopped.elapsed() <= Duration::from_secs(LEASE_SECONDS + 3),
        "took {:?}",
        stopped.elapsed()
    );
}
