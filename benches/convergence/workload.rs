//! The workloads of docs/performance.md and the floor the API's rate limit sets for each.

/// How the objects reach the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Eight `kubectl apply` processes share the manifest, as a user or a GitOps tool would.
    Kubectl,
    /// One Kubernetes client, 64 creates in flight: for 10,000 objects, where kubectl alone
    /// would take longer than the floor and hide what the operator does.
    Client,
}

impl Create {
    pub fn parse(s: &str) -> Option<Create> {
        match s {
            "kubectl" => Some(Create::Kubectl),
            "client" => Some(Create::Client),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub objects: usize,
    pub token: String,
    /// Seconds of each of the simulator's three phases (T = 3 × phase).
    pub phase: f64,
    pub create: Create,
    /// All `Ready` within this multiple of the floor.
    pub max_ratio: f64,
    /// The ratio must hold in every run, not only in the median.
    pub ratio_every_run: bool,
}

/// (requests per minute, burst) of the simulator's default tokens.
pub fn plan(token: &str) -> (f64, f64) {
    match token {
        "sk_test_starter" => (100.0, 20.0),
        "sk_test_admin" => (10_000.0, 2_000.0),
        _ => (1_000.0, 200.0),
    }
}

impl Workload {
    fn new(name: &str, objects: usize, token: &str, max_ratio: f64) -> Workload {
        Workload {
            name: name.to_string(),
            objects,
            token: token.to_string(),
            phase: 2.0,
            create: if objects > 1000 {
                Create::Client
            } else {
                Create::Kubectl
            },
            max_ratio,
            ratio_every_run: false,
        }
    }

    /// The workloads the targets name, in the order they run.
    pub fn all() -> Vec<Workload> {
        vec![
            Workload::new("pro-100", 100, "sk_test_write", 1.35),
            Workload {
                ratio_every_run: true,
                ..Workload::new("pro-1000", 1000, "sk_test_write", 1.10)
            },
            Workload::new("starter-200", 200, "sk_test_starter", 1.05),
            Workload::new("enterprise-10000", 10_000, "sk_test_admin", 1.15),
        ]
    }

    pub fn named(name: &str) -> Option<Workload> {
        Workload::all().into_iter().find(|w| w.name == name)
    }

    /// One of the caller's own, judged against the loosest convergence target (Pro 100's).
    pub fn custom(objects: usize, token: &str, phase: f64) -> Workload {
        Workload {
            phase,
            ..Workload::new(&format!("custom-{objects}"), objects, token, 1.35)
        }
    }

    /// No operator can have every object `Ready` sooner: the creates beyond the burst wait
    /// for the rate limit, then the last deployment takes its three phases.
    pub fn floor(&self) -> f64 {
        let (limit, burst) = plan(&self.token);
        (self.objects as f64 - burst).max(0.0) * 60.0 / limit + 3.0 * self.phase
    }

    /// The burst target applies when the budget admits every create at once.
    pub fn budget_for_all(&self) -> bool {
        let (_, burst) = plan(&self.token);
        self.objects as f64 <= burst
    }

    pub fn describe(&self) -> String {
        let (limit, burst) = plan(&self.token);
        format!(
            "{} objects, token {} ({limit}/min, burst {burst}), phases {} s, floor {:.1} s, objects made by {}",
            self.objects,
            self.token,
            self.phase,
            self.floor(),
            match self.create {
                Create::Kubectl => "8 × kubectl apply",
                Create::Client => "a client, 64 creates in flight",
            }
        )
    }
}
