//! The world of one end-to-end test: a namespace of its own, a simulator of its own and, when
//! the test wants one, an operator watching only that namespace, so that the simulator's counts
//! belong to that test alone and tests run in parallel. Its reads are the ones a user makes with
//! `kubectl`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::cluster::{Cluster, KubectlOutput, TestNamespace, cluster};
use super::stack::{Operator, Sim, eventually};

/// How long a test waits for the operator to bring an object to a condition.
pub const WAIT: Duration = Duration::from_secs(150);

/// A gitdeployment manifest in project `proj_8f3k29`; `extra` holds further `spec` lines,
/// indented by two spaces and each ending with a newline.
pub fn gitdeployment(name: &str, branch: &str, extra: &str) -> String {
    format!(
        "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  projectId: proj_8f3k29\n  branch: {branch}\n{extra}"
    )
}

/// `manifest` (from [`gitdeployment`]) with `annotations` on its object; each value is written
/// as a quoted YAML string, so it may hold anything (JSON, quotes, newlines).
pub fn annotated(manifest: &str, annotations: &[(&str, &str)]) -> String {
    let lines: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: {}\n", serde_json::to_string(v).unwrap()))
        .collect();
    let (head, tail) = manifest
        .split_once("metadata:\n")
        .expect("a manifest from gitdeployment()");
    let (name, rest) = tail.split_once('\n').expect("metadata has a name");
    format!("{head}metadata:\n{name}\n  annotations:\n{lines}{rest}")
}

pub struct World {
    pub cluster: &'static Cluster,
    pub ns: TestNamespace,
    /// Its own, or shared with the worlds made [`World::beside`] it.
    pub sim: Arc<Sim>,
    /// The world's own operator. Tests that kill, replace or pair operators start theirs with
    /// [`World::spawn_operator`] and hold them themselves.
    operator: Option<Operator>,
}

impl World {
    /// A namespace and a simulator whose phases last `phase` seconds; no operator yet.
    pub fn new(prefix: &str, phase: f64) -> World {
        World::on(cluster(), prefix, phase)
    }

    /// [`World::new`] on another cluster than the binary's shared one.
    pub fn on(cluster: &'static Cluster, prefix: &str, phase: f64) -> World {
        World::with_sim(cluster, prefix, Arc::new(Sim::start(phase)))
    }

    /// Another namespace of this world's cluster, served by this world's simulator, without an
    /// operator: for an operator that watches both (see `cluster_wide`).
    pub fn beside(&self, prefix: &str) -> World {
        World::with_sim(self.cluster, prefix, self.sim.clone())
    }

    fn with_sim(cluster: &'static Cluster, prefix: &str, sim: Arc<Sim>) -> World {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ns = rt.block_on(cluster.namespace(prefix));
        World {
            cluster,
            ns,
            sim,
            operator: None,
        }
    }

    /// [`World::new`] with the world's own operator running.
    pub fn with_operator(prefix: &str, phase: f64) -> World {
        let mut w = World::new(prefix, phase);
        w.start_operator();
        w
    }

    pub fn start_operator(&mut self) {
        assert!(self.operator.is_none(), "an operator already runs");
        self.operator = Some(self.spawn_operator(&[]));
    }

    pub fn stop_operator(&mut self) {
        let mut operator = self.operator.take().expect("an operator runs");
        operator
            .proc
            .terminate(Duration::from_secs(15))
            .expect("the operator stops within 15 s of SIGTERM");
    }

    pub fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("an operator runs")
    }

    /// An operator on this world's namespace and simulator, held by the caller.
    pub fn spawn_operator(&self, extra: &[&str]) -> Operator {
        self.spawn_operator_with_env(extra, &[])
    }

    pub fn spawn_operator_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        Operator::start_with_env(self.cluster, &self.sim.api_url(), &self.ns, extra, env)
    }

    pub fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        let mut all: Vec<&str> = vec!["-n", &self.ns];
        all.extend_from_slice(args);
        self.cluster.kubectl(all)
    }

    pub fn apply(&self, manifest: &str) -> KubectlOutput {
        self.cluster
            .kubectl_with_stdin(["-n", &self.ns, "apply", "-f", "-"], manifest)
    }

    /// The Secret `gitdev-credentials`, which the operator reads unless told otherwise.
    pub fn token_secret(&self, token: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: {token}\n"
        ))
        .expect_success();
    }

    /// The gitdeployment `name` as JSON.
    pub fn get(&self, name: &str) -> Value {
        let out = self
            .kubectl(&["get", "gitdeployment", name, "-o", "json"])
            .expect_success();
        serde_json::from_str(&out).unwrap()
    }

    /// `status.deploymentId` of the gitdeployment `name`, which must have one.
    pub fn deployment_id(&self, name: &str) -> String {
        let obj = self.get(name);
        obj["status"]["deploymentId"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no status.deploymentId: {obj}"))
            .to_string()
    }

    /// `kubectl get gitdeployment NAME --ignore-not-found -o name`: empty output once it is gone.
    pub fn lookup(&self, name: &str) -> KubectlOutput {
        self.kubectl(&[
            "get",
            "gitdeployment",
            name,
            "--ignore-not-found",
            "-o",
            "name",
        ])
    }

    /// `(status, reason, message)` of condition `type_`.
    pub fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let obj = self.get(name);
        obj["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                (s("status"), s("reason"), s("message"))
            })
    }

    /// Waits until condition `type_` is True with `reason`; returns its message.
    #[track_caller]
    pub fn wait_for(&self, name: &str, type_: &str, reason: &str) -> String {
        eventually(
            WAIT,
            &format!("{name} to be {type_}={reason}"),
            || match self.condition(name, type_) {
                Some((s, r, m)) if s == "True" && r == reason => Some(m),
                _ => None,
            },
        )
    }

    /// Waits until `name` is Ready/Succeeded, its generation observed, on a deployment other
    /// than `not`; returns that deployment's id.
    #[track_caller]
    pub fn wait_succeeded(&self, name: &str, not: Option<&str>) -> String {
        eventually(WAIT, &format!("{name} Ready on a new deployment"), || {
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

    /// The events about object `name`, as JSON text.
    pub fn events(&self, name: &str) -> String {
        let selector = format!("involvedObject.name={name}");
        self.kubectl(&["get", "events", "--field-selector", &selector, "-o", "json"])
            .expect_success()
    }
}
