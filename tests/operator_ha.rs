//! Two operator replicas with leader election against a real kube-apiserver: exactly one acts,
//! and killing the leader hands over within the Lease duration.

mod common;

use std::time::{Duration, Instant};

use common::cluster::cluster;
use common::stack::{Operator, Sim, eventually};

const LEASE_SECONDS: u64 = 6;

fn holder(cluster: &common::cluster::Cluster, ns: &str) -> String {
    cluster
        .kubectl([
            "-n",
            ns,
            "get",
            "lease",
            "gitdev-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .stdout
}

#[test]
fn of_two_replicas_only_the_lease_holder_acts_and_a_killed_leader_hands_over_within_the_lease() {
    let cluster = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = rt.block_on(cluster.namespace("e2e-ha"));
    let sim = Sim::start(0.5);
    let lease_args = [
        "--leader-election",
        "--lease-duration-seconds",
        "6",
        "--lease-namespace",
        &ns,
    ];
    let mut a = Operator::start_with_env(
        cluster,
        &sim.api_url(),
        &ns,
        &lease_args,
        &[("POD_NAME", "replica-a")],
    );
    eventually(
        Duration::from_secs(30),
        "replica-a to hold the lease",
        || (holder(cluster, &ns) == "replica-a").then_some(()),
    );
    let b = Operator::start_with_env(
        cluster,
        &sim.api_url(),
        &ns,
        &lease_args,
        &[("POD_NAME", "replica-b")],
    );
    // The standby serves health checks but does not act.
    eventually(Duration::from_secs(30), "replica-b healthy", || {
        (b.get("/readyz").0 == 200).then_some(())
    });

    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: sk_test_write\n";
    cluster
        .kubectl_with_stdin(["-n", &ns, "apply", "-f", "-"], secret)
        .expect_success();
    let object = |name: &str, branch: &str| {
        format!(
            "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  projectId: proj_8f3k29\n  branch: {branch}\n"
        )
    };
    cluster
        .kubectl_with_stdin(["-n", &ns, "apply", "-f", "-"], &object("one", "main"))
        .expect_success();
    cluster
        .kubectl([
            "-n",
            &ns,
            "wait",
            "--for=condition=Ready",
            "gitdeployment/one",
            "--timeout=60s",
        ])
        .expect_success();
    assert!(a.metric("gitdev_reconciliations_total") > 0.0);
    assert_eq!(
        b.metric("gitdev_reconciliations_total"),
        0.0,
        "the standby must not reconcile"
    );
    assert_eq!(
        b.metric("gitdev_api_requests_total{endpoint=\"create\",outcome=\"success\"}"),
        0.0
    );

    // SIGKILL: no release, the standby must wait out the Lease.
    let killed = Instant::now();
    a.kill();
    eventually(
        Duration::from_secs(LEASE_SECONDS * 3),
        "replica-b to take the lease",
        || (holder(cluster, &ns) == "replica-b").then_some(()),
    );
    let handover = killed.elapsed();
    println!(
        "handover after SIGKILL of the leader: {:.1}s (lease {LEASE_SECONDS}s)",
        handover.as_secs_f64()
    );
    assert!(
        handover <= Duration::from_secs(LEASE_SECONDS + 3),
        "handover took {handover:?}"
    );

    cluster
        .kubectl_with_stdin(
            ["-n", &ns, "apply", "-f", "-"],
            &object("two", "feature/login"),
        )
        .expect_success();
    cluster
        .kubectl([
            "-n",
            &ns,
            "wait",
            "--for=condition=Ready",
            "gitdeployment/two",
            "--timeout=60s",
        ])
        .expect_success();
    assert!(b.metric("gitdev_reconciliations_total") > 0.0);
    // Still exactly one remote deployment per object.
    assert_eq!(sim.deployments_of("main").len(), 1);
    assert_eq!(sim.deployments_of("feature/login").len(), 1);
}

#[test]
fn a_leader_stopped_with_sigterm_releases_the_lease_and_the_standby_takes_over_within_the_lease() {
    let cluster = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = rt.block_on(cluster.namespace("e2e-ha-term"));
    let sim = Sim::start(0.5);
    let lease_args = [
        "--leader-election",
        "--lease-duration-seconds",
        "6",
        "--lease-namespace",
        &ns,
    ];
    let mut a = Operator::start_with_env(
        cluster,
        &sim.api_url(),
        &ns,
        &lease_args,
        &[("POD_NAME", "replica-a")],
    );
    eventually(
        Duration::from_secs(30),
        "replica-a to hold the lease",
        || (holder(cluster, &ns) == "replica-a").then_some(()),
    );
    let _b = Operator::start_with_env(
        cluster,
        &sim.api_url(),
        &ns,
        &lease_args,
        &[("POD_NAME", "replica-b")],
    );
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    let status = a
        .proc
        .terminate(Duration::from_secs(10))
        .expect("leader exits on SIGTERM");
    assert!(status.success(), "{}", a.proc.log_tail(20));
    assert!(
        a.proc.log_tail(5).contains("released the leader Lease"),
        "{}",
        a.proc.log_tail(5)
    );
    // The standby re-checks the Lease when it would have expired, and finds it free.
    eventually(
        Duration::from_secs(LEASE_SECONDS * 3),
        "replica-b to take the released lease",
        || (holder(cluster, &ns) == "replica-b").then_some(()),
    );
    assert!(
        stopped.elapsed() <= Duration::from_secs(LEASE_SECONDS + 3),
        "took {:?}",
        stopped.elapsed()
    );
}
