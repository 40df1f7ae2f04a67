//! Convergence benchmark: N objects made at once against `gitdev-sim`, on a fresh local control
//! plane per run, with release builds of the operator and the simulator. It prints figures and
//! whether each target of docs/performance.md is met; it asserts nothing about time.
//!
//!   cargo bench --bench convergence                          # every workload, 3 runs each
//!   cargo bench --bench convergence -- --workload pro-100 --runs 1
//!   cargo bench --bench convergence -- --objects 300 --token sk_test_starter --phase 1
//!   cargo bench --bench convergence -- --idle                # create → POST when idle
//!
//! Workloads: pro-100, pro-1000, starter-200, enterprise-10000 (2 s phases, so T = 6 s).

#[path = "../../tests/common/mod.rs"]
mod common;
mod figures;
mod run;
mod workload;

use figures::{Dist, Report, RunFigures, Spread, Verdict, at_most};
use workload::{Create, Workload};

struct Args(Vec<String>);

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        match self.0.get(i + 1) {
            Some(v) => Some(v.as_str()),
            None => fail(&format!("{name} needs a value")),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.value(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| fail(&format!("{name} {v}: not a number"))),
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("convergence: {message}");
    std::process::exit(2)
}

fn main() {
    let args = Args(std::env::args().skip(1).collect());
    // `cargo test --all-targets` runs harness-less benches too; only `cargo bench` passes
    // `--bench`, and only then do the minutes-long workloads run.
    if !args.flag("--bench") {
        println!("convergence: a benchmark; run it with `cargo bench --bench convergence`");
        return;
    }
    let runs: usize = args.number("--runs", 3);
    if runs == 0 {
        fail("--runs must be at least 1");
    }
    let create = args.value("--create").map(|c| {
        Create::parse(c).unwrap_or_else(|| fail(&format!("--create {c}: use kubectl or client")))
    });
    let idle_only = args.flag("--idle");
    let mut workloads = match (args.value("--objects"), args.value("--workload")) {
        (Some(_), _) => vec![Workload::custom(
            args.number("--objects", 100),
            args.value("--token").unwrap_or("sk_test_write"),
            args.number("--phase", 2.0),
        )],
        (None, Some(names)) => names
            .split(',')
            .map(|name| {
                Workload::named(name).unwrap_or_else(|| {
                    let known: Vec<String> = Workload::all().into_iter().map(|w| w.name).collect();
                    fail(&format!("no workload {name}; known: {}", known.join(", ")))
                })
            })
            .collect(),
        (None, None) if idle_only => Vec::new(),
        (None, None) => Workload::all(),
    };
    for w in &mut workloads {
        if let Some(c) = create {
            w.create = c;
        }
    }

    let mut verdicts = (0, 0);
    for w in &workloads {
        println!("\n== {}: {}; {runs} run(s)", w.name, w.describe());
        let figures: Vec<RunFigures> = (1..=runs)
            .map(|k| {
                println!("  run {k} of {runs}");
                let f = run::run(w);
                print_run(w, &f);
                f
            })
            .collect();
        let report = summarize(w, &figures);
        println!(
            "-- {}: median (min–max) of {runs} run(s), at commit {}",
            w.name,
            commit()
        );
        report.print();
        count(&report, &mut verdicts);
    }
    if idle_only || args.value("--workload").is_none() && args.value("--objects").is_none() {
        println!("\n== idle: create → POST with nothing else to do (50 objects, one at a time)");
        let mut report = Report::default();
        let latencies = run::idle_latency(50);
        match Dist::of(latencies) {
            Some(d) => {
                let (value, verdict) = at_most(&[d.p99 * 1000.0], 100.0, false, " ms", 0);
                report.figure(
                    "create → POST p99",
                    format!("{value} (p50 {:.0} ms)", d.p50 * 1000.0),
                    verdict,
                );
            }
            None => report.figure("create → POST", "not measured".into(), None),
        }
        report.print();
        count(&report, &mut verdicts);
    }
    println!("\n{} of {} targets met", verdicts.0, verdicts.1);
}

fn count(report: &Report, verdicts: &mut (usize, usize)) {
    for v in report.verdicts() {
        verdicts.1 += 1;
        if v.met {
            verdicts.0 += 1;
        }
    }
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn ms(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            d.p50 * 1000.0,
            d.p99 * 1000.0,
            d.max * 1000.0
        ),
        None => "none".into(),
    }
}

/// `name 1.23, other 0.45`: a per-deployment breakdown on one line.
fn per_part(parts: &std::collections::BTreeMap<String, f64>) -> String {
    parts
        .iter()
        .map(|(name, c)| format!("{name} {c:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_run(w: &Workload, f: &RunFigures) {
    let floor = w.floor();
    match f.all_ready_seconds {
        Some(t) => println!(
            "  all Ready after {t:.1} s ({:.2} × floor {floor:.1} s); objects made in {:.1} s (the first after {:.1} s)",
            t / floor,
            f.apply_seconds,
            f.first_seen_seconds
        ),
        None => println!(
            "  NOT all Ready; objects made in {:.1} s (the first after {:.1} s)",
            f.apply_seconds, f.first_seen_seconds
        ),
    }
    println!(
        "  last POST {:+.2} s after the objects were made; seen → POST {}",
        f.last_post_after_apply,
        ms(&f.seen_to_post)
    );
    println!("  success → Ready {}", ms(&f.success_to_ready));
    if !f.slowest_to_ready.is_empty() {
        let slowest: Vec<String> = (f.slowest_to_ready.iter())
            .map(|(name, s)| format!("{name} {s:.1} s"))
            .collect();
        println!("  slowest to Ready after success: {}", slowest.join(", "));
    }
    println!(
        "  {:.2} requests / deployment ({}), {} × 429, {} remote deployments",
        f.requests_per_deployment,
        per_part(&f.requests_by_route),
        f.rate_limited,
        f.remote_deployments
    );
    println!(
        "  {:.2} Kubernetes writes / deployment ({}) for {:.2} remote transitions; Secret reads: {} API, {} cache",
        f.writes_per_deployment,
        per_part(&f.writes_by_kind),
        f.transitions_per_deployment,
        f.secret_reads_api,
        f.secret_reads_cache
    );
    println!(
        "  operator: peak RSS {:.1} MiB, idle {:.1} MiB, {:.1} CPU s / 1,000 deployments",
        f.peak_rss_mib, f.idle_rss_mib, f.cpu_seconds_per_1000
    );
}

fn summarize(w: &Workload, runs: &[RunFigures]) -> Report {
    let mut r = Report::default();
    let each = |f: fn(&RunFigures) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let floor = w.floor();
    let ready = each(|f| f.all_ready_seconds.unwrap_or(f64::INFINITY));
    let ratios: Vec<f64> = ready.iter().map(|t| t / floor).collect();
    let (value, verdict) = at_most(&ratios, w.max_ratio, w.ratio_every_run, " ×", 2);
    let secs = Spread::of(&ready).map_or("never".into(), |s| s.show(" s", 1));
    r.figure(
        "all Ready / floor",
        format!("{value}; {secs} of {floor:.1} s"),
        verdict,
    );
    let made = Spread::of(&each(|f| f.apply_seconds)).map(|s| s.show(" s", 1));
    r.figure("objects made in", made.unwrap_or_default(), None);
    let first = Spread::of(&each(|f| f.first_seen_seconds)).map(|s| s.show(" s", 1));
    r.figure("first object made after", first.unwrap_or_default(), None);
    // The operator's share: from the moment the last object existed.
    let after_made: Vec<f64> = runs
        .iter()
        .map(|f| {
            f.all_ready_seconds
                .map_or(f64::INFINITY, |t| t - f.apply_seconds)
                / floor
        })
        .collect();
    r.figure(
        "all Ready after the objects were made / floor",
        Spread::of(&after_made).map_or("never".into(), |s| s.show(" ×", 2)),
        None,
    );
    let last_post = each(|f| f.last_post_after_apply);
    if w.budget_for_all() {
        let (value, verdict) = at_most(&last_post, 1.0, false, " s", 2);
        r.figure("last POST after the objects were made", value, verdict);
    } else {
        let s = Spread::of(&last_post).map(|s| s.show(" s", 1));
        r.figure(
            "last POST after the objects were made",
            s.unwrap_or_default(),
            None,
        );
    }
    let dist = |f: fn(&RunFigures) -> Option<Dist>, p: fn(&Dist) -> f64| {
        runs.iter()
            .map(|r| f(r).map_or(f64::INFINITY, |d| p(&d) * 1000.0))
            .collect::<Vec<f64>>()
    };
    let p50 = Spread::of(&dist(|f| f.seen_to_post, |d| d.p50)).map(|s| s.show(" ms", 0));
    let p99 = Spread::of(&dist(|f| f.seen_to_post, |d| d.p99)).map(|s| s.show(" ms", 0));
    r.figure(
        "seen → POST",
        format!(
            "p50 {}, p99 {}",
            p50.unwrap_or_default(),
            p99.unwrap_or_default()
        ),
        None,
    );
    let (value, verdict) = at_most(
        &dist(|f| f.success_to_ready, |d| d.p99),
        1000.0,
        false,
        " ms",
        0,
    );
    let p50 = Spread::of(&dist(|f| f.success_to_ready, |d| d.p50)).map(|s| s.show(" ms", 0));
    r.figure(
        "success → Ready p99",
        format!("{value} (p50 {})", p50.unwrap_or_default()),
        verdict,
    );
    let details = each(|f| f.all_details_seconds.unwrap_or(f64::INFINITY));
    r.figure(
        "completion details on all",
        Spread::of(&details).map_or("never".into(), |s| s.show(" s", 1)),
        None,
    );
    let exactly_once = runs.iter().all(|f| f.remote_deployments == w.objects);
    r.figure(
        "remote deployments",
        Spread::of(&each(|f| f.remote_deployments as f64))
            .map(|s| s.show("", 0))
            .unwrap_or_default(),
        Some(Verdict {
            target: format!("= {} every run", w.objects),
            met: exactly_once,
        }),
    );
    let (value, verdict) = at_most(&each(|f| f.requests_per_deployment), 2.05, false, "", 2);
    r.figure("API requests / deployment", value, verdict);
    let (value, verdict) = at_most(&each(|f| f.rate_limited), 0.0, false, "", 0);
    r.figure("429 answers", value, verdict);
    // Writes beyond what the remote status itself changed: the target allows 2.
    let extra = each(|f| f.writes_per_deployment - f.transitions_per_deployment);
    let (value, verdict) = at_most(&extra, 2.0, false, "", 2);
    let writes = Spread::of(&each(|f| f.writes_per_deployment)).map(|s| s.show("", 2));
    let transitions = Spread::of(&each(|f| f.transitions_per_deployment)).map(|s| s.show("", 2));
    r.figure(
        "writes / deployment − transitions",
        format!(
            "{value} ({} writes, {} transitions)",
            writes.unwrap_or_default(),
            transitions.unwrap_or_default()
        ),
        verdict,
    );
    // Not fetched per reconcile: the one referenced Secret is read from the API when first
    // needed (by each reconcile that needs it before the first answer is cached), then from
    // the cache the metadata watch keeps valid.
    let api_share =
        each(|f| 100.0 * f.secret_reads_api / (f.secret_reads_api + f.secret_reads_cache).max(1.0));
    let (value, verdict) = at_most(&api_share, 1.0, false, " %", 1);
    let gets = Spread::of(&each(|f| f.secret_reads_api)).map(|s| s.show("", 0));
    let cache = Spread::of(&each(|f| f.secret_reads_cache)).map(|s| s.show("", 0));
    r.figure(
        "Secret reads from the API",
        format!(
            "{value} ({} GETs, {} from the cache)",
            gets.unwrap_or_default(),
            cache.unwrap_or_default()
        ),
        verdict,
    );
    let peak = each(|f| f.peak_rss_mib);
    if w.objects >= 10_000 {
        let (value, verdict) = at_most(&peak, 64.0, false, " MiB", 1);
        r.figure("operator peak RSS", value, verdict);
    } else {
        let s = Spread::of(&peak).map(|s| s.show(" MiB", 1));
        r.figure("operator peak RSS", s.unwrap_or_default(), None);
    }
    let idle = each(|f| f.idle_rss_mib);
    if w.objects == 100 {
        let (value, verdict) = at_most(&idle, 24.0, false, " MiB", 1);
        r.figure("operator RSS when idle", value, verdict);
    } else {
        let s = Spread::of(&idle).map(|s| s.show(" MiB", 1));
        r.figure("operator RSS when idle", s.unwrap_or_default(), None);
    }
    let cpu = Spread::of(&each(|f| f.cpu_seconds_per_1000)).map(|s| s.show(" s", 1));
    r.figure(
        "operator CPU / 1,000 deployments",
        cpu.unwrap_or_default(),
        None,
    );
    r
}
