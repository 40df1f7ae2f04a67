//! Two operator replicas with leader election on one world's namespace and simulator.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::stack::{Operator, Sim, eventually};
use super::world::World;

/// The Lease duration the replicas are started with.
pub const LEASE_SECONDS: u64 = 6;

/// `replica-a` holds the Lease, `replica-b` stands by (its `POD_NAME`s are their identities).
pub struct TwoReplicas {
    // Declared first so that the replicas stop before their namespace and simulator go.
    pub a: Operator,
    pub b: Operator,
    pub world: World,
}

impl TwoReplicas {
    /// Starts `replica-a`, waits until it holds the Lease, then starts `replica-b`, so that
    /// which one leads is known.
    pub fn start(prefix: &str) -> TwoReplicas {
        let world = World::new(prefix, 0.5);
        let lease_seconds = LEASE_SECONDS.to_string();
        let lease_args = [
            "--leader-election",
            "--lease-duration-seconds",
            &lease_seconds,
            "--lease-namespace",
            &world.ns,
        ];
        let replica =
            |name: &str| world.spawn_operator_with_env(&lease_args, &[("POD_NAME", name)]);
        let a = replica("replica-a");
        world.wait_for_holder(Duration::from_secs(30), "replica-a");
        let b = replica("replica-b");
        TwoReplicas { a, b, world }
    }
}

/// Sends `signal` (`STOP`, `CONT`, …) to an operator process: SIGSTOP freezes it as a stalled
/// node or a long GC pause would, with its connections left open.
pub fn signal(operator: &Operator, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &operator.proc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {}", operator.proc.pid());
}

/// Writes the simulator answered (creates, cancels, deletes), whatever their status.
pub fn writes(sim: &Sim) -> u64 {
    let stats = sim.stats();
    [
        "POST /v1/deployments",
        "POST /v1/deployments/{id}/cancel",
        "DELETE /v1/deployments/{id}",
    ]
    .iter()
    .map(|route| stats["by_route"][route]["total"].as_u64().unwrap_or(0))
    .sum()
}

/// `(generation, observedGeneration, Ready reason)` of a gitdeployment object as JSON.
pub fn progress(obj: &Value) -> (i64, i64, String) {
    let ready = obj["status"]["conditions"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .and_then(|c| c["reason"].as_str())
        .unwrap_or_default()
        .to_string();
    (
        obj["metadata"]["generation"].as_i64().unwrap_or(0),
        obj["status"]["observedGeneration"].as_i64().unwrap_or(0),
        ready,
    )
}

impl std::ops::Deref for TwoReplicas {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl World {
    /// The `holderIdentity` of the operator's Lease in this namespace (empty while none).
    pub fn lease_holder(&self) -> String {
        self.kubectl(&[
            "get",
            "lease",
            "gitdev-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .stdout
    }

    #[track_caller]
    pub fn wait_for_holder(&self, timeout: Duration, holder: &str) {
        eventually(timeout, &format!("{holder} to hold the lease"), || {
            (self.lease_holder() == holder).then_some(())
        });
    }

    /// Waits until the object's current generation is deployed: observed, and Ready=Succeeded.
    #[track_caller]
    pub fn wait_deployed(&self, name: &str, timeout: Duration) {
        eventually(timeout, &format!("{name} to be deployed"), || {
            let (generation, observed, ready) = progress(&self.get(name));
            (generation > 0 && observed == generation && ready == "Succeeded").then_some(())
        });
    }
}
