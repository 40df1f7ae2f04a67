//! One run of one workload: a fresh control plane, simulator and operator; the objects made at
//! once; a watch that stamps when each object is first seen and first `Ready`; the simulator's
//! exact creation and completion times of every deployment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use gitdev::resource::{GitDeployment, GitDeploymentSpec};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};

use crate::common::cluster::Cluster;
use crate::common::stack::{Operator, Sim};
use crate::figures::{Dist, RunFigures};
use crate::workload::{Create, Workload};

/// Seconds since the Unix epoch: the clock the simulator's exact times use.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The operator's log filter: `info`, as a production install runs (debug lines for 10,000
/// objects cost CPU), unless `GITDEV_BENCH_LOG` says otherwise (to see where time goes).
fn log() -> String {
    std::env::var("GITDEV_BENCH_LOG").unwrap_or_else(|_| "info,kube=warn".into())
}

/// More environment for the operator alone, `GITDEV_BENCH_OPERATOR_ENV="K=V K=V"`: a profiler's
/// preload library and its output (docs/performance.md), which the benchmark's own process,
/// kubectl and the control plane must not load.
fn operator_env() -> Vec<(String, String)> {
    std::env::var("GITDEV_BENCH_OPERATOR_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn epoch_of(v: &serde_json::Value) -> Option<f64> {
    let t: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(t.as_nanosecond() as f64 / 1e9)
}

#[derive(Clone, Copy, Default)]
struct Stamps {
    seen: Option<f64>,
    ready: Option<f64>,
    details: bool,
}

fn is_ready(o: &GitDeployment) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn object(i: usize) -> GitDeployment {
    let spec: GitDeploymentSpec = serde_json::from_value(serde_json::json!({
        "projectId": "proj_8f3k29",
        "branch": "main",
        "envVars": { "INDEX": i.to_string() },
    }))
    .expect("a valid spec");
    GitDeployment::new(&format!("app-{i}"), spec)
}

fn manifest(objects: std::ops::Range<usize>) -> String {
    objects
        .map(|i| {
            format!(
                "apiVersion: git.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: app-{i}\nspec:\n  projectId: proj_8f3k29\n  branch: main\n  envVars:\n    INDEX: \"{i}\"\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

pub fn run(w: &Workload) -> RunFigures {
    let n = w.objects;
    let cluster = Cluster::start_fresh().unwrap_or_else(|e| panic!("control plane: {e}"));
    let figures = measure(&cluster, w);
    if let Some(local) = cluster.local() {
        let _ = local.stop();
    }
    eprintln!("  (run of {n} objects done)");
    figures
}

fn measure(cluster: &Cluster, w: &Workload) -> RunFigures {
    let n = w.objects;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ns = rt.block_on(cluster.namespace("bench"));
    let sim = Sim::start(w.phase);
    let extra_env = operator_env();
    let log = log();
    let mut env: Vec<(&str, &str)> = vec![("RUST_LOG", &log)];
    env.extend(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let op = Operator::start_with_env(cluster, &sim.api_url(), &ns, &[], &env);
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: {}\n",
        w.token
    );
    cluster
        .kubectl_with_stdin(["-n", &ns, "apply", "-f", "-"], &secret)
        .expect_success();
    // On an API server started a moment ago, kubectl's first apply of the kind (discovery, the
    // kind's OpenAPI) made its first object 1 to 17 s after it began: the budget of those
    // seconds was lost before anything existed to create. A user's kubectl or GitOps tool is
    // warm; one server-side dry run warms this one. "first object made after" shows what is
    // left.
    cluster
        .kubectl_with_stdin(
            ["-n", &ns, "apply", "--dry-run=server", "-f", "-"],
            &manifest(0..1),
        )
        .expect_success();

    let client = rt.block_on(cluster.client());
    let api: Api<GitDeployment> = Api::namespaced(client, &ns);
    let stamps: Arc<Mutex<HashMap<String, Stamps>>> = Arc::default();
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stamps = stamps.clone();
        let synced = synced.clone();
        let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
        rt.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(event)) = stream.try_next().await {
                let at = now();
                let objects: Vec<GitDeployment> = match event {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                    watcher::Event::InitDone => {
                        synced.store(true, std::sync::atomic::Ordering::SeqCst);
                        continue;
                    }
                    _ => continue,
                };
                let mut stamps = stamps.lock().unwrap();
                for o in objects {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let s = stamps.entry(name).or_default();
                    s.seen.get_or_insert(at);
                    if is_ready(&o) {
                        s.ready.get_or_insert(at);
                    }
                    s.details = o.status.as_ref().is_some_and(|s| s.completed_at.is_some());
                }
            }
        });
    }
    while !synced.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }

    let cpu_before = op.proc.cpu_seconds();
    let start = now();
    let started = Instant::now();
    match w.create {
        Create::Kubectl => {
            let per = n.div_ceil(8).max(1);
            std::thread::scope(|s| {
                for first in (0..n).step_by(per) {
                    let part = manifest(first..(first + per).min(n));
                    let ns = &ns;
                    s.spawn(move || {
                        cluster
                            .kubectl_with_stdin(["-n", ns, "apply", "-f", "-"], &part)
                            .expect_success()
                    });
                }
            });
        }
        Create::Client => {
            rt.block_on(async {
                futures::stream::iter(0..n)
                    .map(|i| {
                        let api = api.clone();
                        async move { api.create(&PostParams::default(), &object(i)).await }
                    })
                    .buffer_unordered(64)
                    .try_collect::<Vec<_>>()
                    .await
                    .expect("create objects");
            });
        }
    }
    let applied = now();
    println!(
        "  objects made in {:.1} s; waiting for all Ready",
        applied - start
    );

    // Counted from the start, so making 10,000 objects (minutes here) does not eat the wait.
    let deadline = Duration::from_secs_f64(applied - start + w.floor() * 4.0 + 180.0);
    let count = |f: fn(&Stamps) -> bool| stamps.lock().unwrap().values().filter(|s| f(s)).count();
    let mut all_ready = None;
    let mut all_details = None;
    while started.elapsed() < deadline * 2 {
        if all_ready.is_none() && count(|s| s.ready.is_some()) == n {
            all_ready = stamps
                .lock()
                .unwrap()
                .values()
                .filter_map(|s| s.ready)
                .reduce(f64::max);
        }
        if count(|s| s.details) == n {
            all_details = Some(now());
            break;
        }
        if all_ready.is_none() && started.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = op.proc.cpu_seconds() - cpu_before;
    // Idle: nothing left to observe; what stays resident is the steady state of n objects.
    std::thread::sleep(Duration::from_secs(5));
    let idle_rss = op.proc.rss_mib();

    let deployments = sim.deployments_of("main");
    let mut posts = Vec::new();
    let mut seen_to_post = Vec::new();
    let mut success_to_ready = Vec::new();
    let mut slowest_to_ready: Vec<(String, f64)> = Vec::new();
    {
        let stamps = stamps.lock().unwrap();
        for d in &deployments {
            let Some(created) = epoch_of(&d["created_at_exact"]) else {
                continue;
            };
            posts.push(created);
            let name = format!("app-{}", d["env_vars"]["INDEX"].as_str().unwrap_or(""));
            let Some(s) = stamps.get(&name) else { continue };
            if let Some(seen) = s.seen {
                seen_to_post.push(created - seen);
            }
            if let (Some(done), Some(ready)) = (epoch_of(&d["completed_at_exact"]), s.ready)
                && d["status"] == "success"
            {
                success_to_ready.push(ready - done);
                slowest_to_ready.push((
                    format!("{name} ({})", d["id"].as_str().unwrap_or("?")),
                    ready - done,
                ));
            }
        }
    }

    slowest_to_ready.sort_by(|a, b| b.1.total_cmp(&a.1));
    slowest_to_ready.truncate(3);

    let stats = sim.stats();
    let total = stats["total"].as_f64().unwrap_or(0.0);
    let per = |x: f64| x / n as f64;
    let metric = |s: &str| op.metric(s);
    let writes_by_kind: std::collections::BTreeMap<String, f64> = ["status", "state", "finalizer"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                per(metric(&format!(
                    "gitdev_kubernetes_writes_total{{kind=\"{k}\"}}"
                ))),
            )
        })
        .collect();
    RunFigures {
        apply_seconds: applied - start,
        first_seen_seconds: stamps
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| s.seen)
            .reduce(f64::min)
            .map_or(f64::NAN, |t| t - start),
        all_ready_seconds: all_ready.map(|t| t - start),
        all_details_seconds: all_details.map(|t| t - start),
        remote_deployments: deployments.len(),
        last_post_after_apply: posts.iter().copied().reduce(f64::max).unwrap_or(f64::NAN) - applied,
        seen_to_post: Dist::of(seen_to_post),
        success_to_ready: Dist::of(success_to_ready),
        slowest_to_ready,
        requests_per_deployment: per(total),
        requests_by_route: stats["by_route"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(route, c)| (route.clone(), per(c["total"].as_f64().unwrap_or(0.0))))
            .collect(),
        rate_limited: stats["by_status"]["429"].as_f64().unwrap_or(0.0),
        writes_per_deployment: writes_by_kind.values().sum(),
        writes_by_kind,
        transitions_per_deployment: per(metric("gitdev_remote_status_transitions_total")),
        secret_reads_api: metric("gitdev_secret_reads_total{source=\"api\"}"),
        secret_reads_cache: metric("gitdev_secret_reads_total{source=\"cache\"}"),
        peak_rss_mib: op.proc.peak_rss_mib(),
        idle_rss_mib: idle_rss,
        cpu_seconds_per_1000: cpu / n as f64 * 1000.0,
    }
}

/// `create` → `POST` latency when idle: objects created one at a time through the Kubernetes
/// API, each timed until the simulator has its deployment. Returns the latencies in seconds.
pub fn idle_latency(samples: usize) -> Vec<f64> {
    let cluster = Cluster::start_fresh().unwrap_or_else(|e| panic!("control plane: {e}"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let latencies = {
        let ns = rt.block_on(cluster.namespace("bench-idle"));
        let sim = Sim::start(0.0);
        let _op =
            Operator::start_with_env(&cluster, &sim.api_url(), &ns, &[], &[("RUST_LOG", &log())]);
        let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: sk_test_write\n";
        cluster
            .kubectl_with_stdin(["-n", &ns, "apply", "-f", "-"], secret)
            .expect_success();
        let api: Api<GitDeployment> = Api::namespaced(rt.block_on(cluster.client()), &ns);
        let creates = || {
            sim.stats()["by_route"]["POST /v1/deployments"]["total"]
                .as_u64()
                .unwrap_or(0)
        };
        let mut latencies = Vec::new();
        for i in 0..samples {
            let before = creates();
            let started = Instant::now();
            rt.block_on(api.create(&PostParams::default(), &object(i)))
                .expect("create object");
            while creates() == before {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "no POST within 10 s of creating app-{i}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            latencies.push(started.elapsed().as_secs_f64());
            // Idle between samples: the previous deployment has settled.
            std::thread::sleep(Duration::from_millis(300));
        }
        latencies
    };
    if let Some(local) = cluster.local() {
        let _ = local.stop();
    }
    latencies
}
