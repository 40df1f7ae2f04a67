//! Prometheus metrics of the operator, served as text on `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::Endpoint;
use crate::api::client::ApiObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    reconciliations: Counter,
    failures: Family<CategoryLabels, Counter>,
    api_failures: Family<CategoryLabels, Counter>,
    duration: Histogram,
    api_requests: Family<RequestLabels, Counter>,
    api_duration: Family<EndpointLabels, Histogram>,
    budget_wait: Family<EndpointLabels, Histogram>,
    budget_waiting: Gauge<i64, AtomicI64>,
    kubernetes_writes: Family<WriteLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gitdev");
        let reconciliations = Counter::default();
        registry.register(
            "reconciliations",
            "Reconciliations of gitdeployments",
            reconciliations.clone(),
        );
        let failures = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciliations that ended in an error, by category",
            failures.clone(),
        );
        let api_failures = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_api_errors",
            "Deployments API errors met by reconciliations, by category",
            api_failures.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation",
            duration.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "HTTP requests sent to the Deployments API, by endpoint and outcome (success or error category)",
            api_requests.clone(),
        );
        let api_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "api_request_duration_seconds",
            "Duration of Deployments API requests",
            api_duration.clone(),
        );
        let budget_wait = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        registry.register(
            "api_rate_budget_wait_seconds",
            "Time calls waited for their token's rate budget before being sent",
            budget_wait.clone(),
        );
        let budget_waiting = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "api_rate_budget_waiting",
            "Calls waiting for their token's rate budget right now",
            budget_waiting.clone(),
        );
        let kubernetes_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "kubernetes_writes",
            "Writes the operator made to gitdeployments (status or state annotation)",
            kubernetes_writes.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            reconciliations,
            failures,
            api_failures,
            duration,
            api_requests,
            api_duration,
            budget_wait,
            budget_waiting,
            kubernetes_writes,
        }
    }

    pub fn reconcile_finished(&self, elapsed: Duration, failure: Option<&'static str>) {
        self.reconciliations.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(category) = failure {
            self.failures
                .get_or_create(&CategoryLabels {
                    category: category.into(),
                })
                .inc();
        }
    }

    pub fn api_failure(&self, category: &str) {
        self.api_failures
            .get_or_create(&CategoryLabels {
                category: category.into(),
            })
            .inc();
    }

    pub fn kubernetes_write(&self, kind: &str) {
        self.kubernetes_writes
            .get_or_create(&WriteLabels { kind: kind.into() })
            .inc();
    }

    pub fn set_budget_waiting(&self, n: usize) {
        self.budget_waiting.set(n as i64);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

impl ApiObserver for Metrics {
    fn request_finished(
        &self,
        endpoint: Endpoint,
        outcome: &str,
        _status: Option<u16>,
        elapsed: Duration,
    ) {
        self.api_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.as_str().into(),
                outcome: outcome.into(),
            })
            .inc();
        self.api_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.as_str().into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn budget_wait(&self, endpoint: Endpoint, waited: Duration) {
        self.budget_wait
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.as_str().into(),
            })
            .observe(waited.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_the_readme_documents() {
        let m = Metrics::new();
        m.reconcile_finished(Duration::from_millis(3), Some("api"));
        m.request_finished(
            Endpoint::Create,
            "success",
            Some(201),
            Duration::from_millis(5),
        );
        m.kubernetes_write("status");
        let text = m.render();
        for name in [
            "gitdev_reconciliations_total 1",
            "gitdev_reconcile_failures_total{category=\"api\"} 1",
            "gitdev_reconcile_duration_seconds_count 1",
            "gitdev_api_requests_total{endpoint=\"create\",outcome=\"success\"} 1",
            "gitdev_api_request_duration_seconds_count{endpoint=\"create\"} 1",
            "gitdev_api_rate_budget_waiting 0",
            "gitdev_kubernetes_writes_total{kind=\"status\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
