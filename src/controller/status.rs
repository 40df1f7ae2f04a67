//! The object's `.status`, built from what this reconcile knows. Pure: the round writes it,
//! and only when it differs from what the object already carries.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::decision::{Health, Observed, cut};
use super::state::State;
use crate::api::DeploymentStatus as Remote;
use crate::resource::{
    DeploymentFailure, GitDeployment, GitDeploymentStatus, HistoryEntry, LastSuccessful,
};

/// The longest condition message written: whatever built it (API answers included), a
/// condition stays readable in `kubectl describe` and far below the API server's limits.
/// Room for a build log excerpt (`failure::EXCERPT_LIMIT`) and what is said around it.
pub const MESSAGE_LIMIT: usize = 2048;

/// The whole status, from what was observed in this reconcile. `Observed::Unread` means the
/// remote deployment was not looked at this time: its mirrored fields are kept as they were.
pub fn build_status(
    obj: &GitDeployment,
    state: &State,
    observed: &Observed,
    health: &Health,
    read: Option<&DeploymentFailure>,
    now: Timestamp,
) -> GitDeploymentStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let mut status = GitDeploymentStatus {
        observed_generation: obj.metadata.generation,
        history: history(&previous, state),
        spec_fingerprint: state.fingerprint.clone(),
        deployment_id: state.id.clone(),
        last_successful: last_successful(&previous, observed),
        // Only the export step (`export.rs`) changes it, through the round.
        exported: previous.exported.clone(),
        ..GitDeploymentStatus::default()
    };
    match observed {
        Observed::Unread => {
            status.status = previous.status.clone();
            status.url = previous.url.clone();
            status.deploy_url = previous.deploy_url.clone();
            status.logs_url = previous.logs_url.clone();
            status.commit_sha = previous.commit_sha.clone();
            status.short_commit = previous.short_commit.clone();
            status.build_duration = previous.build_duration.clone();
            status.created_at = previous.created_at.clone();
            status.completed_at = previous.completed_at.clone();
            status.cancelled_at = previous.cancelled_at.clone();
            status.cancelled_by = previous.cancelled_by.clone();
            if previous.deployment_id != state.id {
                status.deployment_id = previous.deployment_id.clone();
            }
        }
        // Gone remotely: the object must not keep claiming a URL that no longer exists.
        Observed::Missing { id } => {
            status.deployment_id = Some(id.clone());
            status.status = Some("deleted".into());
        }
        Observed::Untracked => {}
        Observed::Found(d) => {
            status.deployment_id = Some(d.id.clone());
            status.status = Some(d.status.to_string());
            status.url = Some(d.deploy_url.clone());
            status.deploy_url = Some(d.deploy_url.clone());
            status.logs_url = (!d.logs_url.is_empty())
                .then(|| d.logs_url.clone())
                .or_else(|| {
                    previous
                        .logs_url
                        .clone()
                        .filter(|_| previous.deployment_id.as_deref() == Some(&d.id))
                });
            status.commit_sha = Some(d.commit_sha.clone());
            status.short_commit = Some(d.commit_sha.chars().take(7).collect());
            status.build_duration = d.build_duration.clone();
            status.created_at = Some(Time(d.created_at));
            status.completed_at = d.completed_at.map(Time);
            status.cancelled_at = d.cancelled_at.map(Time);
            status.cancelled_by = d.cancelled_by.clone();
        }
    }
    // Read once per deployment: what an earlier reconcile read of the current one stays.
    status.failure = read.cloned().or_else(|| {
        previous
            .failure
            .clone()
            .filter(|f| status.deployment_id.as_deref() == Some(f.deployment_id.as_str()))
    });
    status.conditions = health
        .conditions()
        .iter()
        .map(|c| {
            let before = previous.conditions.iter().find(|p| p.type_ == c.type_);
            let last_transition_time = match before {
                Some(p) if p.status == c.status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: c.type_.to_string(),
                status: c.status.to_string(),
                reason: c.reason.clone(),
                message: cut(&c.message, MESSAGE_LIMIT),
                observed_generation: obj.metadata.generation,
                last_transition_time,
            }
        })
        .collect();
    status
}

/// Records on the object's status as last read a success seen before this reconcile replaced
/// the deployment (a new spec right after it succeeded): the status built next mirrors the new
/// deployment and keeps this one as the last good. Only after a create, whose status always
/// differs from the one read (a new `deploymentId`), so that the change is written.
pub fn remember_success(obj: &mut GitDeployment, observed: &Observed) {
    if let Observed::Found(d) = observed
        && d.status == Remote::Success
    {
        let status = obj.status.get_or_insert_default();
        status.last_successful = last_successful(status, observed);
    }
}

/// The current deployment when it is seen succeeding; otherwise what was recorded before, so
/// that a failure, a cancel, a new spec or pruned history never loses the last good one.
pub(super) fn last_successful(
    previous: &GitDeploymentStatus,
    observed: &Observed,
) -> Option<LastSuccessful> {
    match observed {
        Observed::Found(d) if d.status == Remote::Success => {
            // A listing reports success before a GET gives the completion time: keep one
            // already read for the same deployment.
            let completed_at = d.completed_at.map(Time).or_else(|| {
                previous
                    .last_successful
                    .as_ref()
                    .filter(|l| l.deployment_id == d.id)
                    .and_then(|l| l.completed_at.clone())
            });
            Some(LastSuccessful {
                deployment_id: d.id.clone(),
                commit_sha: d.commit_sha.clone(),
                url: d.deploy_url.clone(),
                completed_at,
            })
        }
        _ => previous.last_successful.clone(),
    }
}

/// History entries for the ids in `state.history`, with what is known of each.
fn history(previous: &GitDeploymentStatus, state: &State) -> Vec<HistoryEntry> {
    state
        .history
        .iter()
        .map(|id| {
            if let Some(h) = previous.history.iter().find(|h| &h.deployment_id == id) {
                return h.clone();
            }
            if previous.deployment_id.as_deref() == Some(id) {
                return HistoryEntry {
                    deployment_id: id.clone(),
                    commit_sha: previous.commit_sha.clone(),
                    status: previous.status.clone(),
                    created_at: previous.created_at.clone(),
                };
            }
            HistoryEntry {
                deployment_id: id.clone(),
                commit_sha: None,
                status: None,
                created_at: None,
            }
        })
        .collect()
}

/// The reason of the object's `Ready` condition, if it has one.
pub fn ready_reason(status: &GitDeploymentStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}
