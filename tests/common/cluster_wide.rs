//! An operator that watches every namespace, as a cluster-wide install runs it, over several
//! namespaces that share one simulator: for what only shows between namespaces (one tenant's
//! object against another's).
//!
//! Such an operator acts on every gitdeployment it can see. So it runs on the binary's
//! [`second_cluster`], never where other tests run operators of their own; the worlds there
//! take turns, and each removes its objects when it ends, so that the next one's operator finds
//! none of them (namespaces of the local control plane never finish terminating).

use super::cluster::second_cluster;
use super::stack::Operator;
use super::world::World;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Held by the cluster-wide world that runs now.
static TURN: Mutex<()> = Mutex::new(());

pub struct ClusterWide {
    /// One world per namespace, in the order asked for; all share the first one's simulator,
    /// which is the one the operator talks to. None runs an operator of its own.
    pub worlds: Vec<World>,
    _turn: MutexGuard<'static, ()>,
}

impl ClusterWide {
    /// Waits for its turn, then makes a namespace per prefix, each with the write token Secret
    /// (one project: `proj_8f3k29`), and a simulator whose phases last `phase` seconds. No
    /// operator runs yet.
    pub fn new(prefixes: &[&str], phase: f64) -> ClusterWide {
        let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        let (first, rest) = prefixes.split_first().expect("at least one namespace");
        let home = World::on(second_cluster(), first, phase);
        let mut worlds: Vec<World> = rest.iter().map(|p| home.beside(p)).collect();
        worlds.insert(0, home);
        for w in &worlds {
            w.token_secret("sk_test_write");
        }
        ClusterWide {
            worlds,
            _turn: turn,
        }
    }

    /// An operator watching every namespace, held by the caller.
    pub fn spawn_operator(&self, extra: &[&str]) -> Operator {
        let home = &self.worlds[0];
        Operator::start_watching(home.cluster, &home.sim.api_url(), None, extra, &[])
    }
}

impl Drop for ClusterWide {
    /// Deletes every gitdeployment of these namespaces and takes their finalizers off (no
    /// cleanup runs: the simulator goes too), before the turn passes on. Deleted first, so
    /// that an operator still running cannot put a finalizer back.
    fn drop(&mut self) {
        for w in &self.worlds {
            w.kubectl(&["delete", "gitdeployments", "--all", "--wait=false"]);
            let names = w.kubectl(&["get", "gitdeployments", "-o", "name"]).stdout;
            for name in names.lines() {
                w.kubectl(&[
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
    }
}
