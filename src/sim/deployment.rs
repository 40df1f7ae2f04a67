//! One deployment and its lifecycle.
//!
//! No timers: a deployment remembers when it was created and how long each phase lasts, and
//! its status is derived from the elapsed time whenever someone looks. A cancel freezes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use super::config::PhaseDurations;
use super::wire::{CreateResponse, DeploymentStatus, GetResponse, ListItem};

/// Branches whose name starts with this end in `failed` after building.
pub const FAILING_BRANCH_PREFIX: &str = "fail";

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

pub(crate) fn plus(t: Timestamp, d: Duration) -> Timestamp {
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

    /// When it reached its terminal state, to the nanosecond (the wire rounds to seconds).
    pub fn completed_at_exact(&self, now: Instant) -> Option<Timestamp> {
        match (&self.cancelled, self.snapshot(now).completed_after) {
            (Some(c), _) => Some(c.at),
            (None, Some(after)) => Some(plus(self.created_at, after)),
            (None, None) => None,
        }
    }

    /// `base_url` is the API base as the client sees it, e.g. `http://127.0.0.1:8080/v1`.
    pub fn details(&self, now: Instant, base_url: &str) -> GetResponse {
        let snap = self.snapshot(now);
        let completed_at = self.completed_at_exact(now).map(wire_time);
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

    /// The build log as far as the deployment got: the steps of each phase reached (runner,
    /// clone, install, build; upload, start, health check), timestamped. A `fail*` branch fails
    /// in its build step with a compiler's error lines, and its build script dumps the
    /// environment on the way out, values and all, as careless build scripts do: a client
    /// that shows log lines must mask what came from its secrets.
    pub fn logs(&self, now: Instant) -> String {
        let elapsed = match &self.cancelled {
            Some(c) => c.after,
            None => now.saturating_duration_since(self.created),
        };
        let p = &self.phases;
        let (end_status, end) = natural_end(p, self.fails);
        let mut out = String::with_capacity(2048);
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
            let b = p.queued;
            let steps = [
                "Build runner assigned (2 vCPU, 8 GB)".to_string(),
                format!("Cloning repository at {}", self.commit_sha),
                "Receiving objects: 100% (1342/1342), 2.1 MiB | 9.8 MiB/s, done.".into(),
                "Restored build cache from the previous deployment".into(),
                "Installing dependencies".into(),
                "Running \"npm ci\"".into(),
                "Downloading packages [=========>          ] 48%".into(),
                "Downloading packages [====================] 100%".into(),
                "added 312 packages, and audited 313 packages in 4s".into(),
                "Running build command".into(),
                "Running \"npm run build\"".into(),
                "> web@1.0.0 build".into(),
                "> next build".into(),
                "Creating an optimized build ...".into(),
            ];
            for step in &steps {
                line(b, "building", step);
            }
        }
        if self.fails {
            if elapsed >= end {
                line(end, "building", "Failed to compile.");
                line(end, "building", "./src/app/page.tsx:12:7");
                line(
                    end,
                    "building",
                    "Type error: Property 'title' does not exist on type 'PageProps'.",
                );
                line(end, "building", "  11 |   return (");
                line(end, "building", "> 12 |     <h1>{props.title}</h1>");
                line(end, "building", "     |       ^");
                if !self.env_vars.is_empty() {
                    let env: Vec<String> = (self.env_vars.iter())
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    line(
                        end,
                        "building",
                        &format!("build environment: {}", env.join(" ")),
                    );
                }
                line(
                    end,
                    "building",
                    "npm ERR! Lifecycle script `build` failed with error:",
                );
                line(
                    end,
                    "building",
                    "error: build command \"npm run build\" exited with status 1",
                );
                line(end, "building", "Cleaning up the build runner");
                line(
                    end,
                    "failed",
                    &format!("Build failed after {}", format_build_duration(end)),
                );
            }
        } else {
            let deploying = p.queued + p.building;
            if elapsed >= deploying {
                line(deploying, "building", "Compiled successfully");
                line(deploying, "deploying", "Build completed");
                line(deploying, "deploying", "Uploading build output (4.2 MiB)");
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    pub(crate) fn phases(q: f64, b: f64, d: f64) -> PhaseDurations {
        PhaseDurations {
            queued: secs(q),
            building: secs(b),
            deploying: secs(d),
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
}
