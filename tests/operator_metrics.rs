//! The operator's monitoring end to end: the object-state metrics of a real `gitdev-operator`
//! process on a real kube-apiserver and `gitdev-sim`, and the dashboard and alert rules checked
//! against what that process exposes. (`tests/monitoring/check.sh` runs Prometheus' own
//! `promtool` on the rules; here, every alert is checked to have a firing and a silent unit
//! test in `tests/monitoring/rules.test.yaml`.)
//!
//! Each test has its own namespace, simulator and operator, so their counts are their own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::cluster::repo_path;
use common::stack::{eventually, http};
use common::world::{WAIT, World, annotated, gitdeployment};
use serde_json::Value;

const PHASE_SECONDS: f64 = 1.0;

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of an exposition (comment lines skipped). Label values here never hold a
/// quote or a backslash, which the parser does not unescape.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the series `name` with exactly `labels`, if exposed.
fn value(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

fn scrape(w: &World) -> Vec<Sample> {
    let (code, text) = w.operator().get("/metrics");
    assert_eq!(code, 200, "{text}");
    samples(&text)
}

/// A series (name and exact labels) and the value it should have.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Waits until the series listed all have the values given; returns the last scrape.
#[track_caller]
fn wait_for_gauges(w: &World, expected: &[Expected]) -> Vec<Sample> {
    let mut last = Vec::new();
    let mut wrong = String::new();
    let found = eventually_or(WAIT, || {
        last = scrape(w);
        wrong = expected
            .iter()
            .filter(|(name, labels, v)| value(&last, name, labels) != Some(*v))
            .map(|(name, labels, v)| {
                format!(
                    "{name}{labels:?} = {:?}, expected {v}",
                    value(&last, name, labels)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        wrong.is_empty().then_some(())
    });
    assert!(found.is_some(), "the gauges never settled:\n{wrong}");
    last
}

/// Like `eventually`, but gives up with `None` so that the caller can say what it saw.
fn eventually_or<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn health(h: &'static str) -> [(&'static str, &'static str); 1] {
    [("health", h)]
}

const FAILING: &str = "fail/broken-build";

/// Three Ready objects, two whose build fails, one paused before its first deployment and one
/// whose credentials Secret does not exist.
fn mixed_world(prefix: &str) -> World {
    let w = World::with_operator(prefix, PHASE_SECONDS);
    w.token_secret("sk_test_write");
    for name in ["ok-1", "ok-2", "ok-3"] {
        w.apply(&gitdeployment(name, "main", "")).expect_success();
    }
    for name in ["bad-1", "bad-2"] {
        w.apply(&gitdeployment(name, FAILING, "")).expect_success();
    }
    w.apply(&annotated(
        &gitdeployment("paused", "main", ""),
        &[("git.dev/paused", "true")],
    ))
    .expect_success();
    w.apply(&gitdeployment(
        "no-creds",
        "main",
        "  credentialsSecretRef:\n    name: missing-secret\n",
    ))
    .expect_success();
    for name in ["ok-1", "ok-2", "ok-3"] {
        w.wait_for(name, "Ready", "Succeeded");
    }
    for name in ["bad-1", "bad-2"] {
        w.wait_for(name, "Stalled", "DeploymentFailed");
    }
    w.wait_for("paused", "Reconciling", "Paused");
    w.wait_for("no-creds", "Stalled", "CredentialsNotFound");
    w
}

#[test]
fn objects_in_mixed_states_are_counted_by_health_reason_and_remote_status() {
    let w = mixed_world("metrics-mixed");
    let all = wait_for_gauges(
        &w,
        &[
            ("gitdev_objects", &health("Ready"), 3.0),
            ("gitdev_objects", &health("Progressing"), 1.0),
            ("gitdev_objects", &health("Stalled"), 3.0),
            (
                "gitdev_objects_by_reason",
                &[("health", "Stalled"), ("reason", "DeploymentFailed")],
                2.0,
            ),
            (
                "gitdev_objects_by_reason",
                &[("health", "Stalled"), ("reason", "CredentialsNotFound")],
                1.0,
            ),
            (
                "gitdev_objects_by_reason",
                &[("health", "Progressing"), ("reason", "Paused")],
                1.0,
            ),
            (
                "gitdev_objects_by_reason",
                &[("health", "Ready"), ("reason", "Succeeded")],
                3.0,
            ),
            (
                "gitdev_objects_by_remote_status",
                &[("status", "success")],
                3.0,
            ),
            (
                "gitdev_objects_by_remote_status",
                &[("status", "failed")],
                2.0,
            ),
            (
                "gitdev_objects_by_remote_status",
                &[("status", "none")],
                2.0,
            ),
            (
                "gitdev_objects_by_remote_status",
                &[("status", "building")],
                0.0,
            ),
            (
                "gitdev_deployments_completed_total",
                &[("status", "success")],
                3.0,
            ),
            (
                "gitdev_deployments_completed_total",
                &[("status", "failed")],
                2.0,
            ),
            (
                "gitdev_deployments_completed_total",
                &[("status", "cancelled")],
                0.0,
            ),
            ("gitdev_time_to_ready_seconds_count", &[], 3.0),
            ("gitdev_objects_waiting_for_rate_budget", &[], 0.0),
            // The paused object is the only one progressing, and a pause is not being stuck.
            ("gitdev_objects_progressing_oldest_seconds", &[], 0.0),
            ("gitdev_leader", &[], 1.0),
        ],
    );
    // Three phases of about a second each, plus the operator's observation delay.
    let sum = value(&all, "gitdev_time_to_ready_seconds_sum", &[]).unwrap();
    assert!((3.0 * 2.0..3.0 * 60.0).contains(&sum), "{sum}");
    // No label carries an object's name or namespace.
    for s in &all {
        for v in s.labels.values() {
            assert!(
                !v.contains("ok-") && !v.contains("bad-") && !v.contains(&*w.ns),
                "{s:?}"
            );
        }
    }
}

#[test]
fn a_stalled_object_moves_the_gauges_which_stay_exact_after_deletes_and_a_restart() {
    let mut w = mixed_world("metrics-moves");
    w.apply(&gitdeployment("ok-3", FAILING, ""))
        .expect_success();
    w.wait_for("ok-3", "Stalled", "DeploymentFailed");
    wait_for_gauges(
        &w,
        &[
            ("gitdev_objects", &health("Ready"), 2.0),
            ("gitdev_objects", &health("Stalled"), 4.0),
            (
                "gitdev_deployments_completed_total",
                &[("status", "failed")],
                3.0,
            ),
        ],
    );
    w.kubectl(&["delete", "gitdeployment", "bad-1", "no-creds", "--wait"])
        .expect_success();
    wait_for_gauges(
        &w,
        &[
            ("gitdev_objects", &health("Ready"), 2.0),
            ("gitdev_objects", &health("Stalled"), 2.0),
            ("gitdev_objects", &health("Progressing"), 1.0),
            (
                "gitdev_objects_by_reason",
                &[("health", "Stalled"), ("reason", "DeploymentFailed")],
                2.0,
            ),
            (
                "gitdev_objects_by_remote_status",
                &[("status", "none")],
                1.0,
            ),
        ],
    );
    // A new process counts the same objects, and does not count again the deployments whose
    // end the statuses already record.
    w.stop_operator();
    w.start_operator();
    let all = wait_for_gauges(
        &w,
        &[
            ("gitdev_objects", &health("Ready"), 2.0),
            ("gitdev_objects", &health("Stalled"), 2.0),
            ("gitdev_objects", &health("Progressing"), 1.0),
            (
                "gitdev_objects_by_remote_status",
                &[("status", "failed")],
                2.0,
            ),
            (
                "gitdev_objects_by_remote_status",
                &[("status", "success")],
                2.0,
            ),
        ],
    );
    assert_eq!(
        value(
            &all,
            "gitdev_deployments_completed_total",
            &[("status", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&all, "gitdev_time_to_ready_seconds_count", &[]),
        Some(0.0)
    );
}

/// The one series of `name` whose token label is not in `except`: (token label, value).
fn token_series(all: &[Sample], name: &str, except: &[String]) -> Vec<(String, f64)> {
    all.iter()
        .filter(|s| s.name == name)
        .filter_map(|s| Some((s.labels.get("token")?.clone(), s.value)))
        .filter(|(t, _)| !except.contains(t))
        .collect()
}

#[test]
fn budget_gauges_follow_the_simulators_rate_limit_headers() {
    let w = World::with_operator("metrics-budget", PHASE_SECONDS);
    // A Starter token (100/min, burst 20) for one object, a Pro one (1000/min, burst 200) for
    // the other: the operator assumes Starter until an answer says otherwise.
    w.token_secret("sk_test_starter");
    w.apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: pro\nstringData:\n  token: sk_test_write\n")
        .expect_success();
    w.apply(&gitdeployment("starter", "main", ""))
        .expect_success();
    w.wait_for("starter", "Ready", "Succeeded");
    let starter = eventually(WAIT, "one token's budget gauges", || {
        match token_series(&scrape(&w), "gitdev_api_budget_limit", &[]).as_slice() {
            [(token, limit)] if *limit == 100.0 => Some(token.clone()),
            _ => None,
        }
    });
    assert!(!starter.contains("sk_"), "{starter}");
    w.apply(&gitdeployment(
        "pro",
        "main",
        "  credentialsSecretRef:\n    name: pro\n",
    ))
    .expect_success();
    w.wait_for("pro", "Ready", "Succeeded");
    let all = scrape(&w);
    let pro = match token_series(
        &all,
        "gitdev_api_budget_limit",
        std::slice::from_ref(&starter),
    )
    .as_slice()
    {
        [(token, limit)] => {
            assert_eq!(*limit, 1000.0, "the Pro plan's X-RateLimit-Limit");
            token.clone()
        }
        other => panic!("expected a second token's budget, found {other:?}"),
    };
    let gauge = |all: &[Sample], name: &str, token: &str| {
        value(all, name, &[("token", token)]).unwrap_or_else(|| panic!("no {name} for {token}"))
    };
    assert_eq!(gauge(&all, "gitdev_api_budget_burst", &starter), 20.0);
    assert_eq!(gauge(&all, "gitdev_api_budget_burst", &pro), 200.0);
    for token in [&starter, &pro] {
        let remaining = gauge(&all, "gitdev_api_budget_remaining", token);
        let burst = gauge(&all, "gitdev_api_budget_burst", token);
        assert!((0.0..=burst).contains(&remaining), "{remaining} of {burst}");
    }

    // Another client spends the Starter token's whole bucket and keeps it empty: the next
    // answers the operator gets say so, and its gauge follows them down.
    let draining = Arc::new(AtomicBool::new(true));
    let drain = {
        let draining = draining.clone();
        let url = format!("{}/deployments", w.sim.api_url());
        std::thread::spawn(move || {
            while draining.load(Ordering::Relaxed) {
                let _ = http().get(&url).bearer_auth("sk_test_starter").send();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    w.apply(&gitdeployment("starter-2", "main", ""))
        .expect_success();
    let low = eventually_or(WAIT, || {
        let r = gauge(&scrape(&w), "gitdev_api_budget_remaining", &starter);
        (r < 2.0).then_some(r)
    });
    draining.store(false, Ordering::Relaxed);
    drain.join().unwrap();
    assert!(
        low.is_some(),
        "the remaining budget never followed the 429s down"
    );
    // Once nobody else spends it, the bucket refills and the waiting object gets through.
    w.wait_for("starter-2", "Ready", "Succeeded");
    wait_for_gauges(&w, &[("gitdev_objects_waiting_for_rate_budget", &[], 0.0)]);
    eventually(WAIT, "the budget refilling", || {
        (gauge(&scrape(&w), "gitdev_api_budget_remaining", &starter) > 5.0).then_some(())
    });
}

/// A selector in a PromQL expression: `name{label op "value", …}`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// The `gitdev_*` selectors and the grouping labels (`by (…)`) of a PromQL expression. Only
/// what this repository's rules and dashboard use is understood: no nested braces or quoted
/// braces.
fn promql(expr: &str) -> (Vec<Selector>, BTreeSet<String>) {
    let mut selectors = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("gitdev_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let metric = tail[..end].to_string();
        let mut matchers = Vec::new();
        let after = &tail[end..];
        if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').expect("a closed selector");
            for m in inner[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let op_at = m.find(['=', '!']).expect("a label matcher");
                let name = m[..op_at].trim().to_string();
                let op_len = if m[op_at..].starts_with("=~") || m[op_at..].starts_with("!") {
                    2
                } else {
                    1
                };
                let op = m[op_at..op_at + op_len].to_string();
                let v = m[op_at + op_len..].trim().trim_matches('"').to_string();
                matchers.push((name, op, v));
            }
        }
        selectors.push(Selector { metric, matchers });
        rest = &tail[end..];
    }
    let mut grouping = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let inner = &rest[at + 4..];
        let close = inner.find(')').expect("a closed grouping");
        grouping.extend(
            inner[..close]
                .split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty()),
        );
        rest = &inner[close..];
    }
    (selectors, grouping)
}

/// Every PromQL expression of the dashboard and of the alert rules, with where it comes from.
fn monitoring_expressions() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path(
            "charts/gitdev-operator/files/dashboards/gitdev-operator.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push((
                format!("dashboard panel {}", panel["title"]),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for rule in rules() {
        exprs.push((
            format!("alert {}", rule["alert"]),
            rule["expr"].as_str().unwrap().to_string(),
        ));
    }
    exprs
}

/// The rules of examples/monitoring/prometheus-rules.yaml, which check.sh proves is the
/// chart's rendering.
fn rules() -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_path("examples/monitoring/prometheus-rules.yaml")).unwrap();
    let file: Value = serde_saphyr::from_str(&text).unwrap();
    file["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// Labels Prometheus adds to every scraped series, and the dashboard's own variables.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

#[test]
fn every_metric_and_label_the_dashboard_and_the_alerts_name_is_on_the_operators_metrics() {
    let w = World::with_operator("metrics-names", PHASE_SECONDS);
    w.token_secret("sk_test_write");
    w.apply(&gitdeployment("ok", "main", "")).expect_success();
    w.apply(&gitdeployment("bad", FAILING, "")).expect_success();
    w.wait_for("ok", "Ready", "Succeeded");
    w.wait_for("bad", "Stalled", "DeploymentFailed");
    let all = eventually(WAIT, "every series the dashboard draws", || {
        let all = scrape(&w);
        value(&all, "gitdev_time_to_ready_seconds_count", &[])
            .is_some_and(|n| n >= 1.0)
            .then_some(all)
    });
    let exposed: BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
    let labels_of = |metric: &str| -> BTreeSet<String> {
        all.iter()
            .filter(|s| s.name == metric)
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    };
    let values_of = |metric: &str, label: &str| -> BTreeSet<String> {
        all.iter()
            .filter(|s| s.name == metric)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    };
    // Families whose series exist only once something happened (an empty family is not
    // exposed at all): their names and labels are checked by src/metrics' unit tests.
    let occasional = [
        "gitdev_reconcile_failures_total",
        "gitdev_reconcile_api_errors_total",
        "gitdev_api_rate_budget_wait_seconds_bucket",
    ];
    let mut problems = Vec::new();
    let exprs = monitoring_expressions();
    assert!(exprs.len() > 20, "{exprs:?}");
    for (source, expr) in &exprs {
        let (selectors, grouping) = promql(expr);
        // Besides the operator's metrics, only Prometheus' own `up` of the scrape target.
        assert!(
            !selectors.is_empty() || expr.contains("up{"),
            "{source} names no gitdev_ metric: {expr}"
        );
        for s in &selectors {
            if !exposed.contains(s.metric.as_str()) {
                if !occasional.contains(&s.metric.as_str()) {
                    problems.push(format!("{source}: {} is not exposed", s.metric));
                }
                continue;
            }
            let labels = labels_of(&s.metric);
            for (label, op, v) in &s.matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                if !labels.contains(label) {
                    problems.push(format!("{source}: {} has no label {label}", s.metric));
                    continue;
                }
                // An exact value must be one the operator emits (reasons only while some
                // object has them: one of the reasons it writes).
                let known = values_of(&s.metric, label).contains(v)
                    || (label == "reason" && gitdev::metrics::REASONS.contains(&v.as_str()));
                if op == "=" && !known {
                    problems.push(format!(
                        "{source}: {}{{{label}=\"{v}\"}} never appears",
                        s.metric
                    ));
                }
            }
        }
        for label in &grouping {
            let somewhere = selectors.iter().any(|s| {
                labels_of(&s.metric).contains(label) || occasional.contains(&s.metric.as_str())
            });
            if !somewhere && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{source}: groups by {label}, which none of its metrics has"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `(alert, firing?)` of each alert_rule_test of the promtool unit tests.
fn unit_tests() -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(repo_path("tests/monitoring/rules.test.yaml")).unwrap();
    let file: Value = serde_saphyr::from_str(&text).unwrap();
    file["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            let fires = a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty());
            (a["alertname"].as_str().unwrap().to_string(), fires)
        })
        .collect()
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_silent() {
    let cases = unit_tests();
    let alerts: Vec<String> = rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for alert in &alerts {
        for fires in [true, false] {
            assert!(
                cases.contains(&(alert.clone(), fires)),
                "no unit test where {alert} {}",
                if fires { "fires" } else { "stays silent" }
            );
        }
    }
    for (alert, _) in &cases {
        assert!(
            alerts.contains(alert),
            "a unit test of an unknown alert {alert}"
        );
    }
}

#[test]
fn every_alert_links_to_its_own_section_of_the_runbooks() {
    let runbooks = std::fs::read_to_string(repo_path("docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    for rule in rules() {
        let alert = rule["alert"].as_str().unwrap();
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let (_, anchor) = url.split_once('#').expect("the runbook URL has an anchor");
        assert_eq!(anchor, alert.to_lowercase(), "{url}");
        assert!(
            anchors.contains(anchor),
            "docs/runbooks.md has no section #{anchor}: {anchors:?}"
        );
    }
}

#[test]
fn the_example_dashboard_is_the_charts_dashboard() {
    let chart = std::fs::read(repo_path(
        "charts/gitdev-operator/files/dashboards/gitdev-operator.json",
    ))
    .unwrap();
    let example = std::fs::read(repo_path("examples/monitoring/grafana-dashboard.json")).unwrap();
    assert!(
        chart == example,
        "copy the chart's dashboard to examples/monitoring/"
    );
    let dashboard: Value = serde_json::from_slice(&chart).unwrap();
    assert_eq!(dashboard["uid"], "gitdev-operator");
    // Panels are placed on Grafana's 24-column grid without overlapping.
    let mut cells = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{}", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
    }
}
