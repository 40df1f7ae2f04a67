//! Two operator replicas with leader election on one world's namespace and simulator.

use std::time::Duration;

use super::stack::{Operator, eventually};
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
}
