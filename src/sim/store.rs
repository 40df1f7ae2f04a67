//! Every deployment of every project, in memory: create, look up, cancel, delete, list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;

use super::config::PhaseDurations;
use super::deployment::{Cancellation, Deployment, FAILING_BRANCH_PREFIX, plus, wire_time};
use super::wire::{CancelResponse, DeploymentStatus, ListMeta, ListResponse};

const ID_PREFIX: &str = "dep_";
const ID_LEN: usize = 10;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Why a cancel was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CancelError {
    NotFound,
    NotCancellable(DeploymentStatus),
}

/// What a create asks for, once checked against the project.
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
    use std::time::Duration;

    use super::*;
    use crate::sim::deployment::tests::{phases, secs};

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
    fn a_failing_branch_logs_its_failing_step_and_dumps_its_environment() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let f = store
            .create(new("fail/x", phases(1.0, 1.0, 1.0)), t0, Timestamp::now())
            .id
            .clone();
        let d = store.get(&f, None).unwrap();
        let building = d.logs(t0 + secs(1.5));
        assert!(
            building.contains("npm run build") && !building.contains("Type error"),
            "{building}"
        );
        let failed = d.logs(t0 + secs(2.0));
        for step in [
            "Cloning repository",
            "Installing dependencies",
            "Type error:",
            "build environment: NODE_ENV=production",
            "exited with status 1",
            "[failed] Build failed after 2.0s",
        ] {
            assert!(failed.contains(step), "{step} in {failed}");
        }
        // What a client shows of it: the failing step, the environment masked.
        let shown = crate::controller::failure::excerpt(&failed, &["production".to_string()]);
        assert!(shown.contains("Type error:"), "{shown}");
        assert!(
            shown.contains("NODE_ENV=***") && !shown.contains("production"),
            "{shown}"
        );
        assert!(shown.ends_with("Build failed after 2.0s"), "{shown}");
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
