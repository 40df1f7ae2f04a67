//! The chart's monitoring: the PrometheusRule and the Grafana dashboard ConfigMap, each
//! rendered only when asked for, with the values given. (Prometheus' own checks of the rules:
//! tests/monitoring/check.sh; the metrics they name: tests/operator_metrics.rs.)

use serde_json::{Value, json};

use crate::helm::*;

const ALERTS: [&str; 7] = [
    "GitdevOperatorDown",
    "GitdevOperatorNotLeading",
    "GitdevReconcileErrors",
    "GitdevDeploymentsFailing",
    "GitdevRateBudgetExhausted",
    "GitdevCleanupBlocked",
    "GitdevObjectsStuckProgressing",
];

fn alerts(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect()
}

#[test]
fn neither_the_prometheus_rule_nor_the_dashboard_is_rendered_unless_enabled() {
    let r = template("gitdev", "gitdev-system", "");
    assert!(r.all("PrometheusRule").is_empty());
    assert!(r.all("ConfigMap").is_empty());
}

#[test]
fn the_prometheus_rule_alerts_on_the_charts_own_metrics_service_and_links_each_runbook() {
    let r = template(
        "gitdev",
        "gitdev-system",
        "monitoring:\n  prometheusRule:\n    enabled: true\n",
    );
    let rule = r.one("PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "gitdev-system");
    let service = r.one("Service")["metadata"]["name"].as_str().unwrap();
    let job = format!("job=\"{service}\"");
    let alerts = alerts(rule);
    let names: Vec<&str> = alerts
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALERTS);
    for a in &alerts {
        let name = a["alert"].as_str().unwrap();
        let expr = a["expr"].as_str().unwrap();
        assert!(expr.contains(&job), "{name} does not select {job}: {expr}");
        assert_eq!(
            a["annotations"]["runbook_url"],
            format!("docs/runbooks.md#{}", name.to_lowercase())
        );
        assert!(a["annotations"]["summary"].is_string(), "{name}");
        assert!(a["labels"]["severity"].is_string(), "{name}");
    }
    assert_eq!(alerts[4]["for"], "10m");
    assert!(alerts[6]["expr"].as_str().unwrap().ends_with("> 1800"));
}

#[test]
fn every_monitoring_value_lands_in_the_rule_and_the_dashboard() {
    let r = template(
        "gitdev",
        "gitdev-system",
        &read("charts/gitdev-operator/ci/all-values.yaml"),
    );
    let rule = r.one("PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let alerts = alerts(rule);
    assert_eq!(alerts.len(), ALERTS.len());
    for a in &alerts {
        let expr = a["expr"].as_str().unwrap();
        assert!(expr.contains("job=\"gitdev-operator\""), "{expr}");
        assert_eq!(a["labels"]["team"], "platform");
        assert!(
            a["annotations"]["runbook_url"]
                .as_str()
                .unwrap()
                .starts_with("https://docs.example.com/gitdev-operator/runbooks.md#")
        );
    }
    let expr = |i: usize| alerts[i]["expr"].as_str().unwrap();
    assert!(expr(2).ends_with("> 0.2"), "{}", expr(2));
    assert!(expr(3).ends_with("> 0.8"), "{}", expr(3));
    assert_eq!(alerts[4]["for"], "15m");
    assert!(expr(6).ends_with("> 3600"), "{}", expr(6));

    let cm = r.named("ConfigMap", "gitdev-all-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        cm["metadata"]["annotations"],
        json!({"grafana_folder": "Operators"})
    );
}

#[test]
fn the_dashboard_config_map_carries_the_dashboard_byte_for_byte_with_the_sidecar_label() {
    let r = template(
        "gitdev",
        "gitdev-system",
        "monitoring:\n  dashboard:\n    enabled: true\n",
    );
    let cm = r.one("ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "gitdev-system");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = read("charts/gitdev-operator/files/dashboards/gitdev-operator.json");
    assert_eq!(
        cm["data"]["gitdev-operator.json"].as_str(),
        Some(file.as_str())
    );
    let dashboard: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(dashboard["title"], "gitdev-operator");
}

#[test]
fn a_wrong_monitoring_value_fails_helm_template_with_the_schemas_message() {
    let cases = [
        (
            "monitoring:\n  prometheusRule:\n    rateBudgetExhaustedFor: ten minutes\n",
            "monitoring.prometheusRule.rateBudgetExhaustedFor: Does not match pattern",
        ),
        (
            "monitoring:\n  prometheusRule:\n    runbookUrl: https://x.example/runbooks.md#top\n",
            "monitoring.prometheusRule.runbookUrl: Does not match pattern",
        ),
        (
            "monitoring:\n  prometheusRule:\n    reconcileErrorRatio: 2\n",
            "monitoring.prometheusRule.reconcileErrorRatio: Must be less than or equal to 1",
        ),
        (
            "monitoring:\n  prometheusRule:\n    stuckProgressingSeconds: 10\n",
            "monitoring.prometheusRule.stuckProgressingSeconds: Must be greater than or equal to 60",
        ),
        (
            "monitoring:\n  prometheusRule:\n    job: 'a\"b'\n",
            "monitoring.prometheusRule.job: Does not match pattern",
        ),
        (
            "monitoring:\n  dashboards:\n    enabled: true\n",
            "Additional property dashboards is not allowed",
        ),
    ];
    for (values, message) in cases {
        let err = try_template("gitdev", "gitdev-system", values).expect_failure();
        assert!(err.contains(message), "{values}: {err}");
    }
}
