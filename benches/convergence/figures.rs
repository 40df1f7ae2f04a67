//! What one run measured, and the summary of several runs against the targets.

use std::collections::BTreeMap;

/// p50 and p99 of a sample (nearest rank), in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dist {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(mut sample: Vec<f64>) -> Option<Dist> {
        if sample.is_empty() {
            return None;
        }
        sample.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((sample.len() as f64 * p).ceil() as usize).clamp(1, sample.len());
            sample[i - 1]
        };
        Some(Dist {
            p50: rank(0.50),
            p99: rank(0.99),
            max: sample[sample.len() - 1],
        })
    }
}

/// One run of one workload.
#[derive(Clone, Debug, Default)]
pub struct RunFigures {
    pub apply_seconds: f64,
    /// From the start of the apply until a watch saw the first object: how long the clients
    /// took before anything existed for the operator to act on.
    pub first_seen_seconds: f64,
    /// From the start of the apply until every object was `Ready`; `None` if they never were.
    pub all_ready_seconds: Option<f64>,
    pub all_details_seconds: Option<f64>,
    pub remote_deployments: usize,
    /// Last `POST` minus the moment the apply returned (negative: all sent before it returned).
    pub last_post_after_apply: f64,
    /// Per object: seen by a watch → its `POST` reached the simulator.
    pub seen_to_post: Option<Dist>,
    /// Per object: remote `success` → `Ready=True` seen by a watch.
    pub success_to_ready: Option<Dist>,
    /// The objects that turned Ready last after their deployment succeeded: (object, seconds).
    pub slowest_to_ready: Vec<(String, f64)>,
    pub requests_per_deployment: f64,
    pub requests_by_route: BTreeMap<String, f64>,
    pub rate_limited: f64,
    pub writes_per_deployment: f64,
    pub writes_by_kind: BTreeMap<String, f64>,
    pub transitions_per_deployment: f64,
    pub secret_reads_api: f64,
    pub secret_reads_cache: f64,
    pub peak_rss_mib: f64,
    /// Resident memory a few seconds after everything converged.
    pub idle_rss_mib: f64,
    pub cpu_seconds_per_1000: f64,
}

/// Median and spread of one figure over the runs.
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    pub fn show(&self, unit: &str, decimals: usize) -> String {
        let (median, min, max, p) = (self.median, self.min, self.max, decimals);
        if min == max {
            format!("{median:.p$}{unit}")
        } else {
            format!("{median:.p$}{unit} ({min:.p$}–{max:.p$})")
        }
    }
}

/// A target judged on a summary: met or not, with the words printed beside it.
pub struct Verdict {
    pub target: String,
    pub met: bool,
}

/// The printed table: one line per figure, with its target and verdict when it has one.
#[derive(Default)]
pub struct Report {
    lines: Vec<(String, String, Option<Verdict>)>,
}

impl Report {
    pub fn figure(&mut self, name: &str, value: String, verdict: Option<Verdict>) {
        self.lines.push((name.to_string(), value, verdict));
    }

    pub fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        self.lines.iter().filter_map(|(_, _, v)| v.as_ref())
    }

    pub fn print(&self) {
        for (name, value, verdict) in &self.lines {
            match verdict {
                Some(v) => println!(
                    "  {name:<38} {value:<34} target {:<22} {}",
                    v.target,
                    if v.met { "met" } else { "NOT MET" }
                ),
                None => println!("  {name:<38} {value}"),
            }
        }
    }
}

/// `values` of every run; `at_most` judged on the median, or on the worst run when
/// `every_run`.
pub fn at_most(
    values: &[f64],
    limit: f64,
    every_run: bool,
    unit: &str,
    decimals: usize,
) -> (String, Option<Verdict>) {
    match Spread::of(values) {
        None => ("not measured".into(), None),
        Some(s) => {
            let judged = if every_run { s.max } else { s.median };
            let every = if every_run { " every run" } else { "" };
            let target = format!("≤ {limit:.decimals$}{unit}{every}");
            let met =
                values.len() == values.iter().filter(|v| v.is_finite()).count() && judged <= limit;
            (s.show(unit, decimals), Some(Verdict { target, met }))
        }
    }
}
