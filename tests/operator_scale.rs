//! The rate limit is the product's physical limit: 100 objects applied at once on a Starter
//! token (100 requests/min, burst 20) must all converge without collecting 429s.

mod common;

use std::time::{Duration, Instant};

use common::stack::eventually;
use common::world::World;

impl World {
    /// `field` (a JSONPath below an item) of every gitdeployment of the namespace, a line each.
    fn each_gitdeployment(&self, field: &str) -> String {
        let jsonpath = format!("jsonpath={{range .items[*]}}{field}{{\"\\n\"}}{{end}}");
        self.kubectl(&["get", "gitdeployments", "-o", &jsonpath])
            .stdout
    }
}

#[test]
fn a_hundred_objects_on_a_starter_token_all_become_ready_without_unhandled_429s() {
    const N: usize = 100;
    let w = World::with_operator("scale-starter", 0.5);
    let mut manifest = String::from(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: sk_test_starter\n",
    );
    for i in 0..N {
        manifest.push_str(&format!(
            "---\napiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: app-{i}\nspec:\n  projectId: proj_8f3k29\n  branch: main\n  envVars:\n    INDEX: \"{i}\"\n"
        ));
    }
    let started = Instant::now();
    w.apply(&manifest).expect_success();
    // From the moment they exist, no object may read as Current to kstatus/Flux: each carries
    // the schema's default `observedGeneration: 0` until the operator writes its conditions
    // (on its first reconcile, which may wait for a worker while creates queue for budget).
    let observed_generations = w.each_gitdeployment("{.status.observedGeneration}");
    assert_eq!(
        observed_generations
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        N,
        "every object has status.observedGeneration from the start:\n{observed_generations}"
    );
    eventually(Duration::from_secs(240), "all creates", || {
        (w.sim.deployments_of("main").len() == N).then_some(())
    });
    println!(
        "all {N} creates accepted after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Floor: (100 - 20) creates at 100/min = 48 s, plus the deployment's own 1.5 s.
    eventually(Duration::from_secs(240), "all objects Ready", || {
        let out = w.each_gitdeployment("{.status.conditions[?(@.type==\"Ready\")].status}");
        (out.lines().filter(|l| *l == "True").count() == N).then_some(())
    });
    let elapsed = started.elapsed().as_secs_f64();
    let floor = (N as f64 - 20.0) * 60.0 / 100.0 + 1.5;
    assert_eq!(
        w.sim.deployments_of("main").len(),
        N,
        "exactly one deployment per object"
    );

    let at_ready = w.sim.stats()["total"].as_u64().unwrap_or(0);
    println!(
        "API requests per deployment when all were Ready: {:.2}",
        at_ready as f64 / N as f64
    );
    // Completion details (completedAt, buildDuration) follow at observation priority.
    eventually(
        Duration::from_secs(240),
        "completion details on every object",
        || {
            let out = w.each_gitdeployment("{.status.completedAt}");
            (out.lines().filter(|l| !l.is_empty()).count() == N).then_some(())
        },
    );
    println!(
        "completion details on every object after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let stats = w.sim.stats();
    let total = stats["total"].as_u64().unwrap_or(0);
    let rate_limited = stats["by_status"]["429"].as_u64().unwrap_or(0);
    println!(
        "{N} objects on a Starter token: all Ready after {elapsed:.1}s (floor {floor:.1}s, ratio {:.2})",
        elapsed / floor
    );
    println!(
        "API requests per deployment: {:.2} ({total} in all)",
        total as f64 / N as f64
    );
    for (route, counts) in stats["by_route"].as_object().into_iter().flatten() {
        let n = counts["total"].as_u64().unwrap_or(0);
        println!("  {route}: {n} ({:.2} per deployment)", n as f64 / N as f64);
    }
    println!("429 answers: {rate_limited}");
    let writes = w
        .operator()
        .metric("gitdev_kubernetes_writes_total{kind=\"status\"}")
        + w.operator()
            .metric("gitdev_kubernetes_writes_total{kind=\"state\"}");
    println!(
        "Kubernetes writes per deployment (status and state, finalizers not counted): {:.2}",
        writes / N as f64
    );
    assert_eq!(
        rate_limited, 0,
        "the operator must wait for budget, not collect 429s: {stats}"
    );
}
