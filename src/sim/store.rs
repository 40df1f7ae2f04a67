//! Deployments in memory and their lifecycle.
//!
//! No timers: a deployment remembers when it was created and how long each phase lasts, and
//! its status is derived from the elapsed time whenever someone looks. A cancel freezes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use super::config::PhaseDurations;
use super::wire::{
    CancelResponse, CreateResponse, DeploymentStatus, GetResponse, ListItem, ListMeta, ListResponse,
};

/// Branches whose name starts with this end in `failed` after building.
pub const FAILING_BRANCH_PREFIX: &str = "fail";

const ID_PREFIX: &str = "dep_";
const ID_LEN: usize = 10;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, Debug)]
pub(crate) struct Cancellation {
    pub by: String,
    pub at: Timestamp,
    /// Time from creation to the cancel.
    pub after: Duration,
}

#[derive(Clone, Debug)]
pub(crate) struct Deployment {
    pub id: Arc<str>,
    pub seq: u64,
    pub project_id: String,
    pub branch: String,
    pub commit_sha: String,
    pub env_vars: BTreeMap<String, String>,
    /// User id of the token that created it.
    pub created_by: String,
    /// Exact creation time; the wire shows it in whole seconds.
    pub created_at: Timestamp,
    pub created: Instant,
    pub phases: PhaseDurations,
    pub fails: bool,
    pub cancelled: Option<Cancellation>,
}

/// What a deployment looks like at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub status: DeploymentStatus,
    /// Time from creation to the terminal state, once terminal.
    pub completed_after: Option<Duration>,
}

/// Where a deployment that is never cancelled ends, and when.
pub(crate) fn natural_end(phases: &PhaseDurations, fails: bool) -> (DeploymentStatus, Duration) {
    if fails {
        (DeploymentStatus::Failed, phases.queued + phases.building)
    } else {
        (
            DeploymentStatus::Success,
            phases.queued + phases.building + phases.deploying,
        )
    }
}

/// The status of a deployment `elapsed` after its creation, if it is never cancelled.
pub(crate) fn status_at(phases: &PhaseDurations, fails: bool, elapsed: Duration) -> Snapshot {
    let (end_status, end) = natural_end(phases, fails);
    if elapsed >= end {
        return Snapshot {
            status: end_status,
            completed_after: Some(end),
        };
    }
    let status = if elapsed < phases.queued {
        DeploymentStatus::Queued
    } else if elapsed < phases.queued + phases.building {
        DeploymentStatus::Building
    } else {
        DeploymentStatus::Deploying
    };
    Snapshot {
        status,
        completed_after: None,
    }
}

/// `"14.2s"`: seconds with one decimal.
pub(crate) fn format_build_duration(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    format!("{}.{}s", tenths / 10, tenths % 10)
}

/// Wire timestamps have whole-second precision, like the published examples.
pub(crate) fn wire_time(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|sd| t.checked_add(sd).ok())
        .unwrap_or(t)
}

impl Deployment {
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        if let Some(c) = &self.cancelled {
            return Snapshot {
                status: DeploymentStatus::Cancelled,
                completed_after: Some(c.after),
            };
        }
        status_at(
            &self.phases,
            self.fails,
            now.saturating_duration_since(self.created),
        )
    }

    pub fn url(&self) -> String {
        format!("https://{}.git.dev", self.id)
    }

    pub fn created(&self) -> CreateResponse {
        CreateResponse {
            id: self.id.to_string(),
            // The create answer always says queued, whatever the phase durations.
            status: DeploymentStatus::Queued,
            project_id: self.project_id.clone(),
            branch: self.branch.clone(),
            commit_sha: self.commit_sha.clone(),
            created_at: wire_time(self.created_at),
            url: self.url(),
        }
    }

    pub fn summary(&self, now: Instant) -> ListItem {
        ListItem {
            id: self.id.to_string(),
            status: self.snapshot(now).status,
            branch: self.branch.clone(),
            created_at: wire_time(self.created_at),
        }
    }

    /// `base_url` is the API base as the client sees it, e.g. `http://127.0.0.1:8080/v1`.
    pub fn details(&self, now: Instant, base_url: &str) -> GetResponse {
        let snap = self.snapshot(now);
        let completed_at = match (&self.cancelled, snap.completed_after) {
            (Some(c), _) => Some(wire_time(c.at)),
            (None, Some(after)) => Some(wire_time(plus(self.created_at, after))),
            (None, None) => None,
        };
        GetResponse {
            id: self.id.to_string(),
            status: snap.status,
            project_id: self.project_id.clone(),
            branch: self.branch.clone(),
            commit_sha: self.commit_sha.clone(),
            build_duration: snap.completed_after.map(format_build_duration),
            deploy_url: self.url(),
            logs_url: format!("{base_url}/deployments/{}/logs", self.id),
            created_at: wire_time(self.created_at),
            completed_at,
            cancelled_by: self.cancelled.as_ref().map(|c| c.by.clone()),
            cancelled_at: self.cancelled.as_ref().map(|c| wire_time(c.at)),
        }
    }

    /// The build log as far as the deployment got: a few timestamped lines per phase reached.
    pub fn logs(&self, now: Instant) -> String {
        let elapsed = match &self.cancelled {
            Some(c) => c.after,
            None => now.saturating_duration_since(self.created),
        };
        let p = &self.phases;
        let (end_status, end) = natural_end(p, self.fails);
        let mut out = String::with_capacity(1024);
        let mut line = |offset: Duration, phase: &str, text: &str| {
            let ts = plus(self.created_at, offset);
            let ts = ts.round(jiff::Unit::Millisecond).unwrap_or(ts);
            let _ = writeln!(out, "{ts:.3} [{phase}] {text}");
        };
        let short = &self.commit_sha[..self.commit_sha.len().min(7)];
        line(
            Duration::ZERO,
            "queued",
            &format!(
                "Deployment {} created for {} (branch {}, commit {short})",
                self.id, self.project_id, self.branch
            ),
        );
        if self.env_vars.is_empty() {
            line(Duration::ZERO, "queued", "No environment variables");
        } else {
            let names: Vec<&str> = self.env_vars.keys().map(String::as_str).collect();
            line(
                Duration::ZERO,
                "queued",
                &format!(
                    "{} environment variable(s): {}",
                    names.len(),
                    names.join(", ")
                ),
            );
        }
        line(Duration::ZERO, "queued", "Waiting for a build runner");
        // A cancel is only accepted before the natural end, so `elapsed < end` when cancelled.
        if elapsed >= p.queued {
            line(
                p.queued,
                "building",
                &format!("Cloning repository at {}", self.commit_sha),
            );
            line(p.queued, "building", "Installing dependencies");
            line(p.queued, "building", "Running build command");
        }
        if self.fails {
            if elapsed >= end {
                line(end, "building", "error: build command exited with status 1");
                line(
                    end,
                    "failed",
                    &format!("Build failed after {}", format_build_duration(end)),
                );
            }
        } else {
            let deploying = p.queued + p.building;
            if elapsed >= deploying {
                line(deploying, "deploying", "Build completed");
                line(deploying, "deploying", "Uploading build output");
                line(deploying, "deploying", "Starting instances");
            }
            if elapsed >= end {
                line(end, "deploying", "Health check passed");
                line(
                    end,
                    end_status.as_str(),
                    &format!(
                        "Deployment live at {} (took {})",
                        self.url(),
                        format_build_duration(end)
                    ),
                );
            }
        }
        if let Some(c) = &self.cancelled {
            line(
                c.after,
                "cancelled",
                &format!("Deployment cancelled by {}", c.by),
            );
        }
        out
    }
}

/// Why a cancel was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CancelError {
    NotFound,
    NotCancellable(DeploymentStatus),
}

pub(crate) struct NewDeployment {
    pub project_id: String,
    pub branch: String,
    pub commit_sha: String,
    pub env_vars: BTreeMap<String, String>,
    pub created_by: String,
    pub phases: PhaseDurations,
}

/// All deployments of all projects.
#[derive(Default)]
pub(crate) struct Store {
    deployments: HashMap<Arc<str>, Deployment>,
    /// Project id → creation sequence → deployment id; iterated backwards for newest first.
    by_project: HashMap<String, BTreeMap<u64, Arc<str>>>,
    /// Every id ever handed out, deleted ones included, so that none is reused.
    used_ids: HashSet<Arc<str>>,
    next_seq: u64,
}

fn random_id() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    let mut id = String::with_capacity(ID_PREFIX.len() + ID_LEN);
    id.push_str(ID_PREFIX);
    for _ in 0..ID_LEN {
        let i = rng.random_range(0..ID_ALPHABET.len());
        id.push(char::from(ID_ALPHABET[i]));
    }
    id
}

impl Store {
    pub fn create(&mut self, new: NewDeployment, now: Instant, wall: Timestamp) -> &Deployment {
        let id: Arc<str> = loop {
            let candidate = random_id();
            if !self.used_ids.contains(candidate.as_str()) {
                break candidate.into();
            }
        };
        self.used_ids.insert(id.clone());
        let seq = self.next_seq;
        self.next_seq += 1;
        let fails = new.branch.starts_with(FAILING_BRANCH_PREFIX);
        self.by_project
            .entry(new.project_id.clone())
            .or_default()
            .insert(seq, id.clone());
        let dep = Deployment {
            id: id.clone(),
            seq,
            project_id: new.project_id,
            branch: new.branch,
            commit_sha: new.commit_sha,
            env_vars: new.env_vars,
            created_by: new.created_by,
            created_at: wall,
            created: now,
            phases: new.phases,
            fails,
            cancelled: None,
        };
        self.deployments.entry(id).insert_entry(dep).into_mut()
    }

    /// A deployment, only if it belongs to `project` (when given).
    pub fn get(&self, id: &str, project: Option<&str>) -> Option<&Deployment> {
        self.deployments
            .get(id)
            .filter(|d| project.is_none_or(|p| d.project_id == p))
    }

    pub fn cancel(
        &mut self,
        id: &str,
        project: Option<&str>,
        by: &str,
        now: Instant,
        wall: Timestamp,
    ) -> Result<CancelResponse, CancelError> {
        let dep = self
            .deployments
            .get_mut(id)
            .filter(|d| project.is_none_or(|p| d.project_id == p))
            .ok_or(CancelError::NotFound)?;
        let status = dep.snapshot(now).status;
        if !status.is_cancellable() {
            return Err(CancelError::NotCancellable(status));
        }
        let after = now.saturating_duration_since(dep.created);
        // The exact cancel time is created_at + after, so that logs and completed_at agree.
        let at = {
            let t = plus(dep.created_at, after);
            if t > wall { wall } else { t }
        };
        dep.cancelled = Some(Cancellation {
            by: by.to_owned(),
            at,
            after,
        });
        Ok(CancelResponse {
            id: dep.id.to_string(),
            status: DeploymentStatus::Cancelled,
            cancelled_by: by.to_owned(),
            cancelled_at: wire_time(at),
        })
    }

    /// `true` when it existed (in `project`, when given) and is now gone.
    pub fn delete(&mut self, id: &str, project: Option<&str>) -> bool {
        let Some(dep) = self.get(id, project) else {
            return false;
        };
        let (seq, pid) = (dep.seq, dep.project_id.clone());
        self.deployments.remove(id);
        if let Some(m) = self.by_project.get_mut(&pid) {
            m.remove(&seq);
        }
        true
    }

    /// One page of a project's deployments, newest first, filtered on the current status.
    pub fn list(
        &self,
        project: &str,
        status: Option<DeploymentStatus>,
        limit: u32,
        offset: u64,
        now: Instant,
    ) -> ListResponse {
        let mut data = Vec::with_capacity(limit.min(100) as usize);
        let mut total: u64 = 0;
        if let Some(ids) = self.by_project.get(project) {
            for id in ids.values().rev() {
                let Some(dep) = self.deployments.get(id) else {
                    continue;
                };
                if let Some(want) = status
                    && dep.snapshot(now).status != want
                {
                    continue;
                }
                if total >= offset && data.len() < limit as usize {
                    data.push(dep.summary(now));
                }
                total += 1;
            }
        }
        ListResponse {
            data,
            meta: ListMeta {
                total,
                limit,
                offset,
            },
        }
    }

    /// Every deployment, newest first.
    pub fn all(&self) -> impl Iterator<Item = &Deployment> {
        let mut all: Vec<&Deployment> = self.deployments.values().collect();
        all.sort_by_key(|d| std::cmp::Reverse(d.seq));
        all.into_iter()
    }

    pub fn len(&self) -> usize {
        self.deployments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn phases(q: f64, b: f64, d: f64) -> PhaseDurations {
        PhaseDurations {
            queued: secs(q),
            building: secs(b),
            deploying: secs(d),
        }
    }

    fn new(branch: &str, phases: PhaseDurations) -> NewDeployment {
        NewDeployment {
            project_id: "proj_a".into(),
            branch: branch.into(),
            commit_sha: "a1b2c3d4e5f6".into(),
            env_vars: BTreeMap::from([("NODE_ENV".into(), "production".into())]),
            created_by: "user_a".into(),
            phases,
        }
    }

    #[test]
    fn status_walks_queued_building_deploying_success_at_the_phase_boundaries() {
        let p = phases(1.0, 2.0, 1.0);
        let at = |s| status_at(&p, false, secs(s)).status;
        assert_eq!(at(0.0), DeploymentStatus::Queued);
        assert_eq!(at(0.999), DeploymentStatus::Queued);
        assert_eq!(at(1.0), DeploymentStatus::Building);
        assert_eq!(at(2.999), DeploymentStatus::Building);
        assert_eq!(at(3.0), DeploymentStatus::Deploying);
        assert_eq!(at(3.999), DeploymentStatus::Deploying);
        assert_eq!(at(4.0), DeploymentStatus::Success);
        assert_eq!(
            status_at(&p, false, secs(100.0)).completed_after,
            Some(secs(4.0))
        );
        assert_eq!(status_at(&p, false, secs(3.0)).completed_after, None);
    }

    #[test]
    fn a_failing_branch_fails_when_building_ends() {
        let p = phases(1.0, 2.0, 1.0);
        assert_eq!(
            status_at(&p, true, secs(2.5)).status,
            DeploymentStatus::Building
        );
        let end = status_at(&p, true, secs(3.0));
        assert_eq!(end.status, DeploymentStatus::Failed);
        assert_eq!(end.completed_after, Some(secs(3.0)));
    }

    #[test]
    fn zero_phases_finish_at_once() {
        let p = PhaseDurations::uniform(Duration::ZERO);
        assert_eq!(
            status_at(&p, false, Duration::ZERO).status,
            DeploymentStatus::Success
        );
        assert_eq!(
            status_at(&p, true, Duration::ZERO).status,
            DeploymentStatus::Failed
        );
    }

    #[test]
    fn build_duration_has_one_decimal() {
        assert_eq!(format_build_duration(secs(14.2)), "14.2s");
        assert_eq!(format_build_duration(secs(2.0)), "2.0s");
        assert_eq!(format_build_duration(Duration::ZERO), "0.0s");
        assert_eq!(format_build_duration(Duration::from_millis(1_949)), "1.9s");
        assert_eq!(format_build_duration(Duration::from_millis(1_950)), "2.0s");
    }

    #[test]
    fn details_show_duration_and_completion_only_once_terminal() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let wall: Timestamp = "2025-03-14T10:32:00.400Z".parse().unwrap();
        let id = store
            .create(new("main", phases(1.0, 1.0, 1.0)), t0, wall)
            .id
            .clone();
        let d = store.get(&id, None).unwrap();
        let early = d.details(t0 + secs(1.5), "http://h/v1");
        assert_eq!(early.status, DeploymentStatus::Building);
        assert_eq!(early.build_duration, None);
        assert_eq!(early.completed_at, None);
        assert_eq!(early.created_at.to_string(), "2025-03-14T10:32:00Z");
        assert_eq!(early.logs_url, format!("http://h/v1/deployments/{id}/logs"));
        assert_eq!(early.deploy_url, format!("https://{id}.git.dev"));
        let done = d.details(t0 + secs(3.0), "http://h/v1");
        assert_eq!(done.status, DeploymentStatus::Success);
        assert_eq!(done.build_duration.as_deref(), Some("3.0s"));
        assert_eq!(
            done.completed_at.unwrap().to_string(),
            "2025-03-14T10:32:03Z"
        );
        assert!(done.cancelled_by.is_none());
    }

    #[test]
    fn cancel_freezes_the_status_and_is_refused_once_terminal() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let p = phases(1.0, 1.0, 1.0);
        let a = store.create(new("main", p), t0, wall).id.clone();
        let b = store.create(new("main", p), t0, wall).id.clone();
        let c = store
            .cancel(&a, Some("proj_a"), "user_a", t0 + secs(1.5), wall)
            .unwrap();
        assert_eq!(c.status, DeploymentStatus::Cancelled);
        assert_eq!(c.cancelled_by, "user_a");
        let later = store.get(&a, None).unwrap().details(t0 + secs(10.0), "x");
        assert_eq!(later.status, DeploymentStatus::Cancelled);
        assert_eq!(later.build_duration.as_deref(), Some("1.5s"));
        assert_eq!(later.cancelled_by.as_deref(), Some("user_a"));
        assert!(later.cancelled_at.is_some() && later.completed_at.is_some());
        assert_eq!(
            store.cancel(&a, None, "u", t0 + secs(11.0), wall),
            Err(CancelError::NotCancellable(DeploymentStatus::Cancelled))
        );
        assert_eq!(
            store.cancel(&b, None, "u", t0 + secs(3.0), wall),
            Err(CancelError::NotCancellable(DeploymentStatus::Success))
        );
        assert_eq!(
            store.cancel(&b, Some("proj_b"), "u", t0, wall),
            Err(CancelError::NotFound),
            "another project's deployment is absent"
        );
    }

    #[test]
    fn delete_removes_it_from_lookup_and_listing() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let p = phases(1.0, 1.0, 1.0);
        let a = store
            .create(new("main", p), t0, Timestamp::now())
            .id
            .clone();
        assert!(!store.delete(&a, Some("proj_b")));
        assert!(store.delete(&a, Some("proj_a")));
        assert!(!store.delete(&a, Some("proj_a")));
        assert!(store.get(&a, None).is_none());
        assert_eq!(store.list("proj_a", None, 20, 0, t0).meta.total, 0);
    }

    #[test]
    fn list_is_newest_first_filtered_on_current_status_and_paginated() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let mut ids = Vec::new();
        for i in 0..5 {
            let branch = if i % 2 == 0 { "main" } else { "fail/x" };
            ids.push(
                store
                    .create(new(branch, phases(1.0, 1.0, 1.0)), t0, wall)
                    .id
                    .clone(),
            );
        }
        let all = store.list("proj_a", None, 20, 0, t0);
        let got: Vec<&str> = all.data.iter().map(|s| s.id.as_str()).collect();
        let want: Vec<&str> = ids.iter().rev().map(|s| &**s).collect();
        assert_eq!(got, want, "same timestamps: newest creation first");
        assert_eq!(all.meta.total, 5);

        let page = store.list("proj_a", None, 2, 3, t0);
        assert_eq!(page.data.len(), 2);
        assert_eq!(page.data[0].id, &*ids[1]);
        assert_eq!(page.meta.total, 5);

        let later = t0 + secs(2.5);
        let failed = store.list("proj_a", Some(DeploymentStatus::Failed), 20, 0, later);
        assert_eq!(failed.meta.total, 2);
        let deploying = store.list("proj_a", Some(DeploymentStatus::Deploying), 20, 0, later);
        assert_eq!(deploying.meta.total, 3);
        assert_eq!(store.list("proj_b", None, 20, 0, later).meta.total, 0);
        assert_eq!(store.list("proj_a", None, 20, 10, later).data.len(), 0);
    }

    #[test]
    fn ids_are_unique_lowercase_alphanumerics_after_dep() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let id = store
                .create(new("main", PhaseDurations::default()), t0, Timestamp::now())
                .id
                .clone();
            let rest = id.strip_prefix("dep_").unwrap();
            assert!(
                rest.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            );
            assert!(seen.insert(id));
        }
        assert_eq!(store.len(), 1000);
    }

    #[test]
    fn logs_grow_as_phases_pass() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let id = store
            .create(new("main", phases(1.0, 1.0, 1.0)), t0, Timestamp::now())
            .id
            .clone();
        let d = store.get(&id, None).unwrap();
        let counts: Vec<usize> = [0.0, 1.0, 2.0, 3.0]
            .iter()
            .map(|&s| d.logs(t0 + secs(s)).lines().count())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
        let done = d.logs(t0 + secs(3.0));
        assert!(
            done.contains("[building]") && done.contains("[success]"),
            "{done}"
        );
        assert!(
            done.contains("NODE_ENV") && !done.contains("production"),
            "names, never values"
        );

        let f = store
            .create(new("fail/x", phases(1.0, 1.0, 1.0)), t0, Timestamp::now())
            .id
            .clone();
        let fl = store.get(&f, None).unwrap().logs(t0 + secs(5.0));
        assert!(
            fl.contains("[failed]") && !fl.contains("[deploying]"),
            "{fl}"
        );
    }

    #[test]
    fn logs_of_instant_deployments_show_every_phase() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let z = PhaseDurations::uniform(Duration::ZERO);
        let id = store
            .create(new("main", z), t0, Timestamp::now())
            .id
            .clone();
        let l = store.get(&id, None).unwrap().logs(t0);
        for phase in ["[queued]", "[building]", "[deploying]", "[success]"] {
            assert!(l.contains(phase), "{phase} in {l}");
        }
        let f = store
            .create(new("fail/y", z), t0, Timestamp::now())
            .id
            .clone();
        let l = store.get(&f, None).unwrap().logs(t0);
        for phase in ["[queued]", "[building]", "[failed]"] {
            assert!(l.contains(phase), "{phase} in {l}");
        }
    }

    #[test]
    fn logs_of_a_cancelled_deployment_stop_at_the_cancel() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let id = store
            .create(new("main", phases(1.0, 1.0, 1.0)), t0, Timestamp::now())
            .id
            .clone();
        store
            .cancel(&id, None, "user_x", t0 + secs(1.5), Timestamp::now())
            .unwrap();
        let l = store.get(&id, None).unwrap().logs(t0 + secs(10.0));
        assert!(
            l.contains("[building]") && l.contains("cancelled by user_x"),
            "{l}"
        );
        assert!(
            !l.contains("[deploying]") && !l.contains("[success]"),
            "{l}"
        );
    }
}
