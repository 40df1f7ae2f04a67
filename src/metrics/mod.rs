//! Prometheus metrics of the operator, served as text on `/metrics`.
//!
//! `objects` counts the objects themselves at each scrape; the rest are counted as the
//! operator works. `docs/monitoring.md` lists every family, its labels and what to do with it.

pub(crate) mod objects;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::client::ApiObserver;
use crate::api::{BudgetSnapshot, Endpoint};
use crate::controller::cached::Cached;
use crate::resource::GitDeploymentStatus;
use objects::transition;
pub use objects::{HEALTHS, REASONS, REMOTE_STATUSES};

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

/// A token's budget, named by its fingerprint: never the token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: String,
}

/// A remote status at which a deployment is over: one of a fixed few.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CompletedLabels {
    status: &'static str,
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
    budget_remaining: Family<TokenLabels, Gauge<f64, AtomicU64>>,
    budget_limit: Family<TokenLabels, Gauge<i64, AtomicI64>>,
    budget_burst: Family<TokenLabels, Gauge<i64, AtomicI64>>,
    kubernetes_writes: Family<WriteLabels, Counter>,
    remote_transitions: Counter,
    secret_reads: Family<SourceLabels, Counter>,
    time_to_ready: Histogram,
    completed: Family<CompletedLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
    objects: Arc<objects::ObjectGauges>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
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
        let budget_remaining = Family::<TokenLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "api_budget_remaining",
            "Requests this process estimates are left in the token's bucket on the server (at most its burst)",
            budget_remaining.clone(),
        );
        let budget_limit = Family::<TokenLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "api_budget_limit",
            "Requests per minute of the token's plan (X-RateLimit-Limit; the smallest plan until the first answer)",
            budget_limit.clone(),
        );
        let budget_burst = Family::<TokenLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "api_budget_burst",
            "Capacity of the token's bucket, inferred from its limit",
            budget_burst.clone(),
        );
        let kubernetes_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "kubernetes_writes",
            "Writes the operator made to Kubernetes objects, by kind: status, state annotation or finalizer of a gitdeployment, or its exported ConfigMap",
            kubernetes_writes.clone(),
        );
        let remote_transitions = Counter::default();
        registry.register(
            "remote_status_transitions",
            "Changes of a deployment's remote status (queued, building, ...) mirrored into an object's status",
            remote_transitions.clone(),
        );
        let secret_reads = Family::<SourceLabels, Counter>::default();
        registry.register(
            "secret_reads",
            "Secrets read by reconciliations, by source: cache (unchanged since last read, per the watch) or api (a GET)",
            secret_reads.clone(),
        );
        // From seconds (the simulator) to an hour (a large build behind a long queue).
        let time_to_ready = Histogram::new([
            1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
        ]);
        registry.register(
            "time_to_ready_seconds",
            "Time from the first reconcile of a changed spec (Progressing) to the object's Ready",
            time_to_ready.clone(),
        );
        let completed = Family::<CompletedLabels, Counter>::default();
        // Each outcome exists from the start, so that rate() over a fresh process is 0, not absent.
        for status in ["success", "failed", "cancelled"] {
            completed
                .get_or_create(&CompletedLabels { status })
                .inc_by(0);
        }
        registry.register(
            "deployments_completed",
            "Remote deployments seen ending, by their final status (success, failed, cancelled)",
            completed.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica acts on gitdeployments (holds the leader Lease, or runs without election), else 0",
            leader.clone(),
        );
        let objects = Arc::new(objects::ObjectGauges::default());
        registry.register_collector(Box::new(objects.clone()));
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
            budget_remaining,
            budget_limit,
            budget_burst,
            kubernetes_writes,
            remote_transitions,
            secret_reads,
            time_to_ready,
            completed,
            leader,
            objects,
        }
    }

    /// Counts the objects of the controller's cache at each scrape from now on; called once
    /// the cache is filled.
    pub fn count_objects(&self, store: kube::runtime::reflector::Store<Cached>) {
        self.objects.count(store);
    }

    /// Whether this replica acts on objects now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// A status written over `before`: a deployment that ended, an object that became Ready.
    pub fn status_written(&self, before: &GitDeploymentStatus, after: &GitDeploymentStatus) {
        let t = transition(before, after, jiff::Timestamp::now());
        if let Some(took) = t.ready_after {
            self.time_to_ready.observe(took.as_secs_f64());
        }
        if let Some(status) = t.completed {
            self.completed
                .get_or_create(&CompletedLabels { status })
                .inc();
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

    pub fn remote_transition(&self) {
        self.remote_transitions.inc();
    }

    /// A Secret read by a reconcile: `"cache"` or `"api"`.
    pub fn secret_read(&self, source: &str) {
        self.secret_reads
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .inc();
    }

    pub fn set_budget_waiting(&self, n: usize) {
        self.budget_waiting.set(n as i64);
    }

    /// Sets the per-token budget gauges from the rate limiter's snapshots (e.g.
    /// `HttpClient::budgets()`), labelled by each token's fingerprint. Budgets live as long as
    /// the process, so no label ever has to be removed.
    pub fn set_budgets(&self, budgets: &[BudgetSnapshot]) {
        for b in budgets {
            let labels = TokenLabels {
                token: b.token_fingerprint.clone(),
            };
            self.budget_remaining
                .get_or_create(&labels)
                .set(b.remaining);
            self.budget_limit
                .get_or_create(&labels)
                .set(i64::from(b.limit_per_minute));
            self.budget_burst
                .get_or_create(&labels)
                .set(i64::from(b.burst));
        }
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
    use crate::api::ratelimit::RateLimitHeaders;
    use crate::api::{ApiToken, Priority, RateLimiter};

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
        m.api_failure("server_error");
        m.budget_wait(Endpoint::Create, Duration::from_millis(20));
        let text = m.render();
        for name in [
            "gitdev_reconciliations_total 1",
            "gitdev_reconcile_failures_total{category=\"api\"} 1",
            "gitdev_reconcile_api_errors_total{category=\"server_error\"} 1",
            "gitdev_api_rate_budget_wait_seconds_count{endpoint=\"create\"} 1",
            "gitdev_deployments_completed_total{status=\"failed\"} 0",
            "gitdev_time_to_ready_seconds_count 0",
            "gitdev_leader 0",
            "gitdev_reconcile_duration_seconds_count 1",
            "gitdev_api_requests_total{endpoint=\"create\",outcome=\"success\"} 1",
            "gitdev_api_request_duration_seconds_count{endpoint=\"create\"} 1",
            "gitdev_api_rate_budget_waiting 0",
            "gitdev_kubernetes_writes_total{kind=\"status\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn the_object_gauges_appear_once_the_cache_is_counted_and_follow_its_content() {
        use kube::runtime::reflector;
        use kube::runtime::watcher::Event;

        let m = Metrics::new();
        assert!(
            !m.render().contains("gitdev_objects"),
            "nothing before the cache is filled"
        );
        let (store, mut writer) = reflector::store::<Cached>();
        let object = |name: &str| {
            let spec =
                serde_json::from_value(serde_json::json!({"projectId": "p", "branch": "main"}))
                    .unwrap();
            let mut o = crate::resource::GitDeployment::new(name, spec);
            o.metadata.namespace = Some("apps".into());
            Cached::of(o).unwrap()
        };
        for event in [
            Event::Init,
            Event::InitApply(object("a")),
            Event::InitApply(object("b")),
            Event::InitDone,
        ] {
            writer.apply_watcher_event(&event);
        }
        m.count_objects(store);
        let text = m.render();
        assert_eq!(
            sample(&text, "gitdev_objects{health=\"Progressing\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "gitdev_objects{health=\"Ready\"}"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "gitdev_objects_by_remote_status{status=\"none\"}"),
            Some(2.0),
            "{text}"
        );
        assert!(text.contains("# TYPE gitdev_objects gauge"), "{text}");
        writer.apply_watcher_event(&Event::Delete(object("a")));
        let text = m.render();
        assert_eq!(
            sample(&text, "gitdev_objects{health=\"Progressing\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("apps") && !text.contains("\"b\""), "{text}");
    }

    /// The value of the sample `name{labels}` in an exposition.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn each_tokens_budget_is_a_gauge_labelled_by_its_fingerprint_and_never_by_the_token() {
        let limiter = RateLimiter::new();
        let token = ApiToken::new("sk_live_metrics_secret");
        let budget = limiter.budget("http://api.test/v1", &token);
        // One call answered by a Pro plan that has 150 requests left.
        let permit = budget
            .acquire(Priority::Observe, Duration::ZERO)
            .await
            .unwrap();
        permit.answered(
            &RateLimitHeaders {
                limit: Some(1000),
                remaining: Some(150),
                reset: None,
            },
            None,
        );
        let m = Metrics::new();
        let snapshots = limiter.snapshots();
        m.set_budgets(&snapshots);
        let text = m.render();
        let fp = budget.fingerprint();
        let series = |name: &str| format!("gitdev_api_budget_{name}{{token=\"{fp}\"}}");
        assert_eq!(sample(&text, &series("limit")), Some(1000.0), "{text}");
        assert_eq!(sample(&text, &series("burst")), Some(200.0), "{text}");
        let remaining = sample(&text, &series("remaining")).unwrap();
        assert_eq!(remaining, snapshots[0].remaining);
        // 150 left, plus what refilled (1000/min) since the answer.
        assert!((150.0..152.0).contains(&remaining), "{remaining}");
        assert!(
            text.contains("# TYPE gitdev_api_budget_remaining gauge"),
            "{text}"
        );
        assert!(!text.contains("sk_live"), "{text}");
    }
}
