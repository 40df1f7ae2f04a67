//! What the objects themselves say: how many are Ready, Progressing or Stalled (and why), what
//! their remote deployments are doing, and when one has been progressing for long. Counted from
//! the controller's object cache at each scrape rather than kept up with +1/-1 on events, so
//! that the figures are exact after deletes, relists and restarts: the cache is the cluster.
//!
//! Also the two figures that need a before and an after — time from a spec change to Ready, and
//! deployments that finished — derived from the status the round writes: they are counted once
//! per transition, because a status is written only when it changes, and a restarted operator
//! reads the transition as already written.
//!
//! Labels take values from fixed lists (`HEALTHS`, `REASONS`, `REMOTE_STATUSES`): whatever a
//! status holds (a hand-edited one included), no object name and no unbounded value reaches
//! a label.

use std::sync::Mutex;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::controller::cached::Cached;
use crate::resource::{GitDeployment, GitDeploymentStatus};

/// The health of an object, as its `Ready`, `Reconciling` and `Stalled` conditions say it.
pub const HEALTHS: [&str; 3] = ["Ready", "Progressing", "Stalled"];

/// Every reason the operator writes on its conditions (`decision.rs`, `secrets.rs`,
/// `recover.rs`, `verify.rs`, `round.rs`, `reconcile.rs`). Any other value counts as `Other`.
pub const REASONS: &[&str] = &[
    "AlreadyManaged",
    "ApiError",
    "ApiUnavailable",
    "Building",
    "Cancelled",
    "CancelledExternally",
    "CleanupBlocked",
    "Conflict",
    "Creating",
    "CreationUncertain",
    "CreationUnconfirmed",
    "CredentialsInvalid",
    "CredentialsKeyMissing",
    "CredentialsNotFound",
    "Deleting",
    "Deploying",
    "DeploymentFailed",
    "EnvNameInvalid",
    "EnvSecretNotFound",
    "EnvTooLarge",
    "InsufficientScope",
    "InternalError",
    "InvalidBranch",
    "InvalidCommit",
    "InvalidRequest",
    "Paused",
    "Pending",
    "ProjectNotFound",
    "Queued",
    "RateLimited",
    "RemoteDeleted",
    "Succeeded",
    "Unauthorized",
];

/// `.status.status` values: the API's deployment statuses, `deleted` (gone remotely), and
/// `none` for an object with no remote deployment yet. Any other value counts as `other`.
pub const REMOTE_STATUSES: [&str; 8] = [
    "none",
    "queued",
    "building",
    "deploying",
    "success",
    "failed",
    "cancelled",
    "deleted",
];

/// The remote statuses at which a deployment is over.
const TERMINAL: [&str; 3] = ["success", "failed", "cancelled"];

/// Progressing for this reason is a person's choice, not a deployment that does not finish.
const DELIBERATE: &str = "Paused";

/// Where one object stands, in label values only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub health: &'static str,
    pub reason: &'static str,
    pub remote: &'static str,
    /// Since when it has been progressing, unless it is not or is paused.
    pub progressing_since: Option<Timestamp>,
}

fn known(value: &str, list: &[&'static str], other: &'static str) -> &'static str {
    list.iter().find(|k| **k == value).copied().unwrap_or(other)
}

fn condition<'a>(status: &'a GitDeploymentStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn is_true(status: &GitDeploymentStatus, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

/// Where `obj` stands. An object whose spec changed after its status was written, or that has
/// no conditions yet, is Progressing (`Pending`), as kstatus reads it: its conditions speak of
/// a spec it no longer has.
pub fn standing(obj: &GitDeployment) -> Standing {
    let empty = GitDeploymentStatus::default();
    let status = obj.status.as_ref().unwrap_or(&empty);
    let remote = status
        .status
        .as_deref()
        .map_or("none", |s| known(s, &REMOTE_STATUSES, "other"));
    let stale = obj.metadata.generation.is_some()
        && status.observed_generation.unwrap_or(0) < obj.metadata.generation.unwrap_or(0);
    let reason = condition(status, "Ready").map(|c| c.reason.as_str());
    let (health, reason) = match reason {
        Some(reason) if !stale => {
            let health = if is_true(status, "Stalled") {
                "Stalled"
            } else if is_true(status, "Ready") {
                "Ready"
            } else {
                "Progressing"
            };
            (health, known(reason, REASONS, "Other"))
        }
        _ => ("Progressing", "Pending"),
    };
    let progressing_since = match condition(status, "Reconciling") {
        _ if health != "Progressing" || reason == DELIBERATE => None,
        Some(c) if c.status == "True" => Some(c.last_transition_time.0),
        // Never reconciled: waiting since it was made.
        None => obj.metadata.creation_timestamp.as_ref().map(|t| t.0),
        // A spec change not reconciled yet: it has only just started.
        Some(_) => None,
    };
    Standing {
        health,
        reason,
        remote,
        progressing_since,
    }
}

/// What a status write tells about the object's deployments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transition {
    /// The object became Ready for a spec it was progressing towards: how long that took.
    pub ready_after: Option<Duration>,
    /// Its deployment was seen ending, with this remote status.
    pub completed: Option<&'static str>,
}

/// What changed from `before` to `after`, two statuses of one object, written at `now`.
///
/// Time to Ready runs from the moment the object started Progressing (its `Reconciling`
/// condition's transition: the first reconcile of a changed spec) to the first status that
/// says Ready. Reaching Ready takes a remote deployment that changed (a new one, or one that
/// ended): a Ready that only returns after a blip (the API unavailable for a while) on the
/// deployment it already mirrored is not counted.
pub fn transition(
    before: &GitDeploymentStatus,
    after: &GitDeploymentStatus,
    now: Timestamp,
) -> Transition {
    let remote_changed =
        before.status != after.status || before.deployment_id != after.deployment_id;
    let became_ready = is_true(after, "Ready") && !is_true(before, "Ready") && remote_changed;
    let ready_after = match condition(before, "Reconciling") {
        Some(c) if became_ready && c.status == "True" => {
            Duration::try_from(now.duration_since(c.last_transition_time.0)).ok()
        }
        _ => None,
    };
    let remote = after.status.as_deref().unwrap_or_default();
    let completed = TERMINAL
        .into_iter()
        .find(|t| *t == remote)
        .filter(|_| remote_changed);
    Transition {
        ready_after,
        completed,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    health: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemoteLabels {
    status: &'static str,
}

type Count = Gauge<i64, AtomicI64>;

/// The object gauges, counted from the object cache at each scrape. Nothing is exposed until
/// the cache has been filled once (a standby replica, or one still listing, reports no
/// objects rather than zero of each): summing the replicas' series counts each object once.
#[derive(Debug, Default)]
pub struct ObjectGauges {
    store: Mutex<Option<Store<Cached>>>,
}

impl ObjectGauges {
    /// Counts the objects of `store` from now on; call it once the store is filled.
    pub fn count(&self, store: Store<Cached>) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    fn objects(&self) -> Option<Vec<Standing>> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            store
                .as_ref()?
                .state()
                .iter()
                .map(|o| o.standing())
                .collect(),
        )
    }
}

/// The gauges of a set of objects, each health and remote status present (zero when none).
struct Counted {
    health: Family<HealthLabels, Count>,
    reason: Family<ReasonLabels, Count>,
    remote: Family<RemoteLabels, Count>,
    rate_limited: Count,
    oldest_progressing: Gauge<f64, std::sync::atomic::AtomicU64>,
}

fn counted(objects: &[Standing], now: Timestamp) -> Counted {
    let c = Counted {
        health: Family::default(),
        reason: Family::default(),
        remote: Family::default(),
        rate_limited: Count::default(),
        oldest_progressing: Gauge::default(),
    };
    for health in HEALTHS {
        c.health.get_or_create(&HealthLabels { health }).set(0);
    }
    for status in REMOTE_STATUSES {
        c.remote.get_or_create(&RemoteLabels { status }).set(0);
    }
    let mut oldest = 0.0_f64;
    for o in objects {
        c.health
            .get_or_create(&HealthLabels { health: o.health })
            .inc();
        c.reason
            .get_or_create(&ReasonLabels {
                health: o.health,
                reason: o.reason,
            })
            .inc();
        c.remote
            .get_or_create(&RemoteLabels { status: o.remote })
            .inc();
        if o.reason == "RateLimited" {
            c.rate_limited.inc();
        }
        if let Some(since) = o.progressing_since {
            // A transition time in the future (another clock) counts as just now.
            let age = now.duration_since(since).as_secs_f64().max(0.0);
            oldest = oldest.max(age);
        }
    }
    c.oldest_progressing.set(oldest);
    c
}

fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ObjectGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(objects) = self.objects() else {
            return Ok(());
        };
        let c = counted(&objects, Timestamp::now());
        let e = &mut encoder;
        emit(
            e,
            "objects",
            "gitdeployments by health (Ready, Progressing, Stalled), as their conditions say",
            &c.health,
        )?;
        emit(
            e,
            "objects_by_reason",
            "gitdeployments by health and the reason of their Ready condition",
            &c.reason,
        )?;
        emit(
            e,
            "objects_by_remote_status",
            "gitdeployments by the status of their remote deployment (none: no deployment yet)",
            &c.remote,
        )?;
        emit(
            e,
            "objects_waiting_for_rate_budget",
            "gitdeployments told to wait for their token's rate budget (reason RateLimited)",
            &c.rate_limited,
        )?;
        emit(
            e,
            "objects_progressing_oldest_seconds",
            "How long the gitdeployment progressing for longest has been progressing (paused ones aside); 0 when none",
            &c.oldest_progressing,
        )
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn cond(type_: &str, status: bool, reason: &str, since: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(at(since)),
        }
    }

    /// A status of health `health` ("Ready", "Progressing", "Stalled") for `reason`, in that
    /// health since `since`, mirroring a remote deployment `id` in `remote`.
    fn status(
        health: &str,
        reason: &str,
        since: i64,
        id: &str,
        remote: &str,
    ) -> GitDeploymentStatus {
        GitDeploymentStatus {
            observed_generation: Some(1),
            conditions: vec![
                cond("Ready", health == "Ready", reason, since),
                cond("Reconciling", health == "Progressing", reason, since),
                cond("Stalled", health == "Stalled", reason, since),
            ],
            deployment_id: Some(id.into()),
            status: Some(remote.into()),
            ..GitDeploymentStatus::default()
        }
    }

    fn object(generation: i64, status: Option<GitDeploymentStatus>) -> GitDeployment {
        let spec = serde_json::from_value(serde_json::json!({"projectId": "p", "branch": "main"}))
            .unwrap();
        let mut o = GitDeployment::new("web", spec);
        o.metadata.generation = Some(generation);
        o.metadata.creation_timestamp = Some(Time(at(-100)));
        o.status = status;
        o
    }

    #[test]
    fn an_objects_health_is_the_one_its_conditions_express() {
        let cases = [
            (
                status("Ready", "Succeeded", 0, "d1", "success"),
                ("Ready", "Succeeded", "success"),
            ),
            (
                status("Progressing", "Building", 0, "d1", "building"),
                ("Progressing", "Building", "building"),
            ),
            (
                status("Stalled", "DeploymentFailed", 0, "d1", "failed"),
                ("Stalled", "DeploymentFailed", "failed"),
            ),
            (
                status("Stalled", "RemoteDeleted", 0, "d1", "deleted"),
                ("Stalled", "RemoteDeleted", "deleted"),
            ),
        ];
        for (s, (health, reason, remote)) in cases {
            let got = standing(&object(1, Some(s)));
            assert_eq!(
                (got.health, got.reason, got.remote),
                (health, reason, remote)
            );
        }
    }

    #[test]
    fn an_object_not_yet_reconciled_or_whose_spec_changed_since_its_status_is_progressing() {
        let fresh = standing(&object(1, None));
        assert_eq!(
            (fresh.health, fresh.reason, fresh.remote),
            ("Progressing", "Pending", "none")
        );
        assert_eq!(fresh.progressing_since, Some(at(-100)));
        let changed = standing(&object(
            2,
            Some(status("Ready", "Succeeded", 0, "d1", "success")),
        ));
        assert_eq!((changed.health, changed.reason), ("Progressing", "Pending"));
        assert_eq!(changed.progressing_since, None, "it has only just changed");
    }

    #[test]
    fn values_outside_the_known_lists_never_reach_a_label() {
        let mut s = status(
            "Stalled",
            "SomethingAUserWrote-web-123",
            0,
            "d1",
            "exploded",
        );
        s.conditions[0].reason = "SomethingAUserWrote-web-123".into();
        let got = standing(&object(1, Some(s)));
        assert_eq!(
            (got.health, got.reason, got.remote),
            ("Stalled", "Other", "other")
        );
    }

    #[test]
    fn a_paused_object_is_progressing_but_not_counted_as_stuck() {
        let got = standing(&object(
            1,
            Some(status("Progressing", "Paused", 0, "d1", "success")),
        ));
        assert_eq!(got.health, "Progressing");
        assert_eq!(got.progressing_since, None);
        let building = standing(&object(
            1,
            Some(status("Progressing", "Building", 7, "d1", "building")),
        ));
        assert_eq!(building.progressing_since, Some(at(7)));
    }

    #[test]
    fn the_counts_have_every_health_and_remote_status_and_the_age_of_the_oldest_progressing_one() {
        let objects: Vec<Standing> = [
            status("Ready", "Succeeded", 0, "d1", "success"),
            status("Ready", "Succeeded", 0, "d2", "success"),
            status("Progressing", "RateLimited", 10, "d3", "queued"),
            status("Progressing", "Building", 40, "d4", "building"),
        ]
        .into_iter()
        .map(|s| standing(&object(1, Some(s))))
        .collect();
        let c = counted(&objects, at(100));
        let get = |health| c.health.get_or_create(&HealthLabels { health }).get();
        assert_eq!(
            (get("Ready"), get("Progressing"), get("Stalled")),
            (2, 2, 0)
        );
        let remote = |status| c.remote.get_or_create(&RemoteLabels { status }).get();
        assert_eq!(
            (
                remote("success"),
                remote("queued"),
                remote("failed"),
                remote("none")
            ),
            (2, 1, 0, 0)
        );
        assert_eq!(c.rate_limited.get(), 1);
        assert_eq!(c.oldest_progressing.get(), 90.0);
        let none = counted(&[], at(100));
        assert_eq!(none.oldest_progressing.get(), 0.0);
        assert_eq!(
            none.health
                .get_or_create(&HealthLabels { health: "Ready" })
                .get(),
            0
        );
    }

    fn succeeded(id: &str, since: i64) -> GitDeploymentStatus {
        status("Ready", "Succeeded", since, id, "success")
    }

    #[test]
    fn time_to_ready_runs_from_the_start_of_progressing_to_the_first_ready_status() {
        let building = status("Progressing", "Building", 10, "d2", "building");
        let t = transition(&building, &succeeded("d2", 75), at(75));
        assert_eq!(t.ready_after, Some(Duration::from_secs(65)));
        assert_eq!(t.completed, Some("success"));
        // Written again unchanged: nothing new.
        let again = transition(&succeeded("d2", 75), &succeeded("d2", 75), at(80));
        assert_eq!(again, Transition::default());
    }

    #[test]
    fn ready_again_after_a_blip_on_the_same_deployment_is_not_a_time_to_ready() {
        // The API unavailable: the status keeps mirroring what was last read.
        let blip = status("Progressing", "ApiUnavailable", 50, "d1", "success");
        let t = transition(&blip, &succeeded("d1", 60), at(60));
        assert_eq!(t, Transition::default());
        // A new spec superseding d1 while it built: timed from the first change.
        let superseding = status("Progressing", "Queued", 20, "d2", "queued");
        let t = transition(&superseding, &succeeded("d2", 90), at(90));
        assert_eq!(t.ready_after, Some(Duration::from_secs(70)));
    }

    #[test]
    fn a_deployment_seen_failing_or_cancelled_is_counted_once_and_a_new_one_again() {
        let building = status("Progressing", "Building", 0, "d1", "building");
        let failed = status("Stalled", "DeploymentFailed", 5, "d1", "failed");
        assert_eq!(
            transition(&building, &failed, at(5)).completed,
            Some("failed")
        );
        assert_eq!(transition(&failed, &failed, at(6)).completed, None);
        let next = status("Stalled", "DeploymentFailed", 9, "d2", "failed");
        assert_eq!(transition(&failed, &next, at(9)).completed, Some("failed"));
        let cancelled = status("Ready", "Cancelled", 9, "d1", "cancelled");
        let t = transition(&building, &cancelled, at(9));
        assert_eq!(t.completed, Some("cancelled"));
        assert_eq!(t.ready_after, Some(Duration::from_secs(9)));
    }
}
