//! Kubernetes events about gitdeployments (`events.k8s.io/v1`), as kube-runtime's recorder
//! makes them: a new event is created; the same event (object, type, reason, action) again
//! within a few minutes becomes a series, a patch of the first one with a count.
//!
//! Our own recorder because of scale: kube-runtime's keeps every event it published, whole
//! (note, object reference, times), and sweeps that cache on every publish under one lock.
//! At ten thousand objects (a `Created` and a `DeploymentSucceeded` each) that is tens of
//! MiB and a full scan per event. Here a series is remembered by a hash of its key, its
//! event's name and count (a few dozen bytes), and swept at most once per sweep interval.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
pub use kube::runtime::events::EventType;
use kube::{Api, Client};

use super::context::lock;

/// How long an event can still become a series (as long as kube-runtime's recorder).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How often remembered series are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One event to publish.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    /// Events that differ only in their note are one series: a new statement needs its own
    /// action.
    pub action: &'a str,
    pub note: &'a str,
}

/// Publishes events with the operator's name as reporting controller.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<Series>,
}

#[derive(Default)]
struct Series {
    by_key: HashMap<u64, Published>,
    swept: Option<Instant>,
}

/// What is remembered of a published event to make it a series.
struct Published {
    name: String,
    count: i32,
    last: Instant,
}

impl Recorder {
    /// `instance` names this replica (the pod), `controller` the operator.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Recorder {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            series: Mutex::default(),
        }
    }

    pub async fn publish(
        &self,
        event: &Event<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = key(event, regarding);
        let now = Instant::now();
        // Taken out while the request is under way: a concurrent publish of the same event
        // then starts a new one instead of patching a half-made series.
        let earlier = {
            let mut series = lock(&self.series);
            series.sweep(now);
            series
                .by_key
                .remove(&key)
                .filter(|p| now.duration_since(p.last) < SERIES_WINDOW)
        };
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let published = match earlier {
            Some(mut p) => {
                p.count = p.count.saturating_add(1);
                let body = series_patch(p.count, Timestamp::now());
                api.patch(&p.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await?;
                p.last = now;
                p
            }
            None => {
                let event_time = Timestamp::now();
                let name = format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    event_time.as_nanosecond()
                );
                let body = self.body(event, regarding, &name, event_time);
                api.create(&PostParams::default(), &body).await?;
                Published {
                    name,
                    count: 1,
                    last: now,
                }
            }
        };
        lock(&self.series).by_key.insert(key, published);
        Ok(())
    }

    fn body(
        &self,
        event: &Event<'_>,
        regarding: &ObjectReference,
        name: &str,
        event_time: Timestamp,
    ) -> K8sEvent {
        K8sEvent {
            action: Some(event.action.to_string()),
            reason: Some(event.reason.to_string()),
            note: Some(event.note.to_string()),
            event_time: Some(MicroTime(event_time)),
            regarding: Some(regarding.clone()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            ..K8sEvent::default()
        }
    }

    /// How many series are remembered.
    pub fn remembered(&self) -> usize {
        lock(&self.series).by_key.len()
    }
}

impl Series {
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.by_key
            .retain(|_, p| now.duration_since(p.last) < SERIES_WINDOW);
    }
}

/// The patch that makes a published event a series of `count`. Only the series: the API
/// server refuses any change to an event's note (and the rest is the first event's anyway).
fn series_patch(count: i32, last_observed: Timestamp) -> serde_json::Value {
    serde_json::json!({
        "series": EventSeries {
            count,
            last_observed_time: MicroTime(last_observed),
        }
    })
}

/// The series an event belongs to: the object (not its version), type, reason and action.
/// A 64-bit hash: two series that collide share a count, which only misnumbers an event.
fn key(event: &Event<'_>, regarding: &ObjectReference) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &regarding.api_version,
        &regarding.kind,
        &regarding.namespace,
        &regarding.name,
        &regarding.uid,
    )
        .hash(&mut h);
    matches!(event.type_, EventType::Warning).hash(&mut h);
    (event.reason, event.action).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str, version: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("git.dev/v1alpha1".into()),
            kind: Some("Deployment".into()),
            namespace: Some("ns".into()),
            name: Some("web".into()),
            uid: Some(uid.into()),
            resource_version: Some(version.into()),
            ..ObjectReference::default()
        }
    }

    fn event<'a>(reason: &'a str, action: &'a str, note: &'a str) -> Event<'a> {
        Event {
            type_: EventType::Warning,
            reason,
            action,
            note,
        }
    }

    #[test]
    fn a_series_is_the_same_object_type_reason_and_action_whatever_the_version_or_note() {
        let a = key(
            &event("RateLimited", "RateLimited", "x"),
            &reference("u1", "1"),
        );
        let later = key(
            &event("RateLimited", "RateLimited", "y"),
            &reference("u1", "9"),
        );
        assert_eq!(a, later);
        for other in [
            key(&event("RateLimited", "Other", "x"), &reference("u1", "1")),
            key(&event("Created", "RateLimited", "x"), &reference("u1", "1")),
            key(
                &event("RateLimited", "RateLimited", "x"),
                &reference("u2", "1"),
            ),
        ] {
            assert_ne!(a, other);
        }
        let normal = Event {
            type_: EventType::Normal,
            ..event("RateLimited", "RateLimited", "x")
        };
        assert_ne!(a, key(&normal, &reference("u1", "1")));
    }

    #[test]
    fn a_series_patch_changes_only_the_count_and_time_never_the_immutable_note() {
        let at: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let patch = series_patch(3, at);
        assert_eq!(
            patch,
            serde_json::json!({
                "series": {"count": 3, "lastObservedTime": "2026-12-03T10:00:00.000000Z"}
            })
        );
    }

    #[test]
    fn old_series_are_swept_at_most_once_per_interval() {
        let start = Instant::now();
        let mut s = Series::default();
        let published = |last| Published {
            name: "web.1".into(),
            count: 1,
            last,
        };
        s.by_key.insert(1, published(start));
        s.sweep(start);
        s.by_key.insert(2, published(start));
        // Past the window, but within the sweep interval of the last sweep: kept for now.
        s.sweep(start + SWEEP_EVERY / 2);
        assert_eq!(s.by_key.len(), 2);
        s.sweep(start + SERIES_WINDOW + SWEEP_EVERY);
        assert!(s.by_key.is_empty());
    }
}
