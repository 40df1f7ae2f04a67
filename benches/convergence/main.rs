//! Convergence benchmark: N objects applied at once against `gitdev-sim`, on the real local
//! control plane, with release builds of the operator and the simulator. Prints figures; it
//! asserts nothing about time.
//!
//!   cargo bench --bench convergence                      # the two workloads of the targets
//!   cargo bench --bench convergence -- --objects 200 --token sk_test_starter --phase 2
//!
//! Workloads (docs/performance.md): 1,000 objects with a Pro token and 200 with
//! a Starter token, 2 s phases (T = 6 s). The floor for N objects with a token of limit L/min
//! and burst B is max(0, N − B) × 60 / L + T.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::cluster;
use common::stack::{Operator, Sim};

struct Workload {
    objects: usize,
    token: String,
    phase: f64,
}

fn plan(token: &str) -> (f64, f64) {
    match token {
        "sk_test_starter" => (100.0, 20.0),
        "sk_test_admin" => (10_000.0, 2_000.0),
        _ => (1_000.0, 200.0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs harness-less benches too; only `cargo bench` passes
    // `--bench`, and only then do the minutes-long workloads run.
    if !args.iter().any(|a| a == "--bench") {
        println!("convergence: a benchmark; run it with `cargo bench --bench convergence`");
        return;
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let workloads = match arg("--objects") {
        Some(n) => vec![Workload {
            objects: n.parse().expect("--objects N"),
            token: arg("--token").unwrap_or_else(|| "sk_test_write".into()),
            phase: arg("--phase").map_or(2.0, |p| p.parse().expect("--phase SECONDS")),
        }],
        None => vec![
            Workload {
                objects: 1000,
                token: "sk_test_write".into(),
                phase: 2.0,
            },
            Workload {
                objects: 200,
                token: "sk_test_starter".into(),
                phase: 2.0,
            },
        ],
    };
    for w in workloads {
        run(&w);
    }
    if arg("--objects").is_none() {
        idle_latency(50);
    }
}

/// `kubectl apply` → `POST` latency when idle: objects created one at a time through the
/// Kubernetes API (a kubectl process start alone costs tens of milliseconds), each timed until
/// the simulator has counted its create.
fn idle_latency(samples: usize) {
    let cluster = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = rt.block_on(cluster.namespace("bench-latency"));
    let sim = Sim::start(0.0);
    let _op = Operator::start(cluster, &sim.api_url(), &ns, &[]);
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: sk_test_write\n";
    cluster
        .kubectl_with_stdin(["-n", &ns, "apply", "-f", "-"], secret)
        .expect_success();
    let api: kube::Api<gitdev::resource::GitDeployment> =
        kube::Api::namespaced(rt.block_on(cluster.client()), &ns);
    let creates = || {
        sim.stats()["by_route"]["POST /v1/deployments"]["total"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut latencies = Vec::new();
    for i in 0..samples {
        let before = creates();
        let spec: gitdev::resource::GitDeploymentSpec = serde_json::from_value(
            serde_json::json!({"projectId": "proj_8f3k29", "branch": "main"}),
        )
        .unwrap();
        let obj = gitdev::resource::GitDeployment::new(&format!("idle-{i}"), spec);
        let started = Instant::now();
        rt.block_on(api.create(&Default::default(), &obj))
            .expect("create object");
        while creates() == before {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no POST within 10 s of creating idle-{i}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(started.elapsed());
        // Idle between samples: the previous deployment has settled.
        std::thread::sleep(Duration::from_millis(300));
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "\n== create -> POST latency when idle ({samples} objects one at a time)\np50 {:.0} ms   p99 {:.0} ms   max {:.0} ms   (target p99 <= 100 ms)",
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
}

fn ready_count(cluster: &common::cluster::Cluster, ns: &str, field: &str) -> usize {
    let path = format!("jsonpath={{range .items[*]}}{field}{{\"\\n\"}}{{end}}");
    let out = cluster
        .kubectl(["-n", ns, "get", "gitdeployments", "-o", &path])
        .stdout;
    out.lines()
        .filter(|l| !l.is_empty() && *l != "False")
        .count()
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn run(w: &Workload) {
    let n = w.objects;
    let (limit, burst) = plan(&w.token);
    let floor = ((n as f64 - burst).max(0.0)) * 60.0 / limit + 3.0 * w.phase;
    let cluster = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = rt.block_on(cluster.namespace("bench"));
    let sim = Sim::start(w.phase);
    let op = Operator::start(cluster, &sim.api_url(), &ns, &[]);
    let mut manifest = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: {}\n",
        w.token
    );
    for i in 0..n {
        manifest.push_str(&format!(
            "---\napiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: app-{i}\nspec:\n  projectId: proj_8f3k29\n  branch: main\n  envVars:\n    INDEX: \"{i}\"\n"
        ));
    }
    println!(
        "\n== {n} objects, token {} ({limit}/min, burst {burst}), phases {}s",
        w.token, w.phase
    );
    let started = Instant::now();
    // "At once": one kubectl creates objects one by one (tens of ms each on a loaded 2-core
    // machine), so eight of them share the work.
    let docs: Vec<&str> = manifest.split("---\n").collect();
    std::thread::scope(|s| {
        for chunk in docs.chunks(docs.len().div_ceil(8)) {
            let part = chunk.join("---\n");
            let ns = &ns;
            s.spawn(move || {
                cluster
                    .kubectl_with_stdin(["-n", ns, "apply", "-f", "-"], &part)
                    .expect_success()
            });
        }
    });
    println!(
        "kubectl apply of {n} objects took {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let deadline = Duration::from_secs((floor * 4.0) as u64 + 120);
    let ready_field = "{.status.conditions[?(@.type==\"Ready\")].status}";
    let all_ready = loop {
        if ready_count(cluster, &ns, ready_field) == n {
            break Some(started.elapsed());
        }
        if started.elapsed() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let requests_at_ready = sim.stats()["total"].as_u64().unwrap_or(0);
    let all_details = loop {
        if ready_count(cluster, &ns, "{.status.completedAt}") == n {
            break Some(started.elapsed());
        }
        if started.elapsed() > deadline * 2 {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1000));
    };

    let stats = sim.stats();
    let total = stats["total"].as_u64().unwrap_or(0);
    let rate_limited = stats["by_status"]["429"].as_u64().unwrap_or(0);
    let writes = op.metric("gitdev_kubernetes_writes_total{kind=\"status\"}")
        + op.metric("gitdev_kubernetes_writes_total{kind=\"state\"}");
    let deployments = sim.deployments_of("main").len();
    match all_ready {
        Some(t) => println!(
            "all Ready after            {:.1}s   floor {floor:.1}s   ratio {:.2}   (target <= 1.10)",
            t.as_secs_f64(),
            t.as_secs_f64() / floor
        ),
        None => println!("NOT all Ready within {deadline:?}"),
    }
    if let Some(t) = all_details {
        println!("completion details on all  {:.1}s", t.as_secs_f64());
    }
    println!("remote deployments         {deployments} (expected {n})");
    println!(
        "API requests / deployment  {:.2} converged (target <= 2.05), {:.2} when all were Ready",
        total as f64 / n as f64,
        requests_at_ready as f64 / n as f64
    );
    for (route, counts) in stats["by_route"].as_object().into_iter().flatten() {
        let c = counts["total"].as_u64().unwrap_or(0);
        println!(
            "  {route:<32} {c:>7}  {:.2} / deployment",
            c as f64 / n as f64
        );
    }
    println!("429 answers                {rate_limited} (target 0)");
    println!(
        "Kubernetes writes / deployment {:.2} (status and state annotation; plus 1 finalizer)",
        writes / n as f64
    );
    println!(
        "operator peak RSS          {:.1} MiB",
        peak_rss_mib(op.proc.pid())
    );
}
