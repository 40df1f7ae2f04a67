//! "Spec + observed remote state → next action": the operator's decisions as pure functions,
//! so that every case is a row of a table test. IO lives in `reconcile.rs`.

use std::time::Duration;

use crate::api::{ApiError, DeploymentDetails, DeploymentStatus as Remote, ErrorClass};
use crate::resource::DeletionPolicy;

/// What the object wants, reduced to what decisions need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Fingerprint of the deployment spec (project, branch, commit, env values, redeploy).
    pub fingerprint: String,
    /// `spec.cancel`.
    pub cancel: bool,
    pub deletion_policy: DeletionPolicy,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

/// The remote deployment the object tracks, as read from the API in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// The object tracks no remote deployment.
    Untracked,
    /// The API returned the tracked deployment.
    Found(Box<DeploymentDetails>),
    /// The API answered 404 for the tracked id: deleted behind our back.
    Missing { id: String },
}

/// What the object remembers of its current remote deployment (annotation `git.dev/state`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Fingerprint the tracked deployment was made (or adopted) for.
    pub fingerprint: Option<String>,
    /// The operator asked the API to cancel the tracked deployment because of `spec.cancel`.
    pub cancel_requested: bool,
    /// Earlier deployments of this object, newest first.
    pub history: Vec<String>,
}

/// Why a deployment is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// `spec.cancel: true`.
    Requested,
    /// The deployment spec changed while it was in progress.
    Superseded,
}

/// The next remote step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make a remote deployment of the current spec. `supersede` is the in-progress deployment
    /// to cancel first; the tracked deployment (if any) goes to history.
    Create { supersede: Option<String> },
    /// Cancel the tracked deployment.
    Cancel { id: String, reason: CancelReason },
    /// Deletion with `Delete`: cancel those in progress, then delete every listed deployment.
    Cleanup { ids: Vec<String> },
    /// Deletion is free to complete: nothing (more) remote to do.
    Release,
    /// Nothing remote to do; observe again after the given delay, or only on a change.
    Wait { recheck: Option<Duration> },
}

/// How often an in-progress deployment is looked at again, by phase: a queued deployment
/// changes less often than a deploying one is about to finish.
pub fn poll_interval(status: Remote) -> Duration {
    match status {
        Remote::Queued => Duration::from_secs(2),
        Remote::Building => Duration::from_secs(2),
        Remote::Deploying => Duration::from_secs(1),
        Remote::Success | Remote::Failed | Remote::Cancelled => EXISTENCE_CHECK,
    }
}

/// A finished deployment is only checked for existence, rarely (jitter is added by the caller).
pub const EXISTENCE_CHECK: Duration = Duration::from_secs(600);

/// The decision. Pure: same inputs, same answer.
pub fn decide(desired: &Desired, memory: &Memory, observed: &Observed) -> Action {
    if desired.deleting {
        return decide_deletion(desired, memory, observed);
    }
    // An unknown fingerprint (a deployment adopted by id) counts as the current spec: replacing
    // it would be a deployment nobody asked for.
    let spec_changed =
        |fp: &Option<String>| fp.as_deref().is_some_and(|fp| fp != desired.fingerprint);
    match observed {
        Observed::Untracked if desired.cancel => Action::Wait { recheck: None },
        Observed::Untracked => Action::Create { supersede: None },
        Observed::Missing { .. } if desired.cancel => Action::Wait { recheck: None },
        // A new spec deserves a new deployment even if the old one vanished.
        Observed::Missing { .. } if spec_changed(&memory.fingerprint) => {
            Action::Create { supersede: None }
        }
        // Deleted behind our back: reported, never silently recreated (a human decides, e.g. by
        // changing `redeploy`).
        Observed::Missing { .. } => Action::Wait { recheck: None },
        Observed::Found(d) => {
            let in_progress = !d.status.is_terminal();
            if desired.cancel {
                return if in_progress {
                    Action::Cancel {
                        id: d.id.clone(),
                        reason: CancelReason::Requested,
                    }
                } else {
                    Action::Wait { recheck: None }
                };
            }
            if spec_changed(&memory.fingerprint) {
                return Action::Create {
                    supersede: in_progress.then(|| d.id.clone()),
                };
            }
            match d.status {
                s if !s.is_terminal() => Action::Wait {
                    recheck: Some(poll_interval(s)),
                },
                Remote::Success => Action::Wait {
                    recheck: Some(EXISTENCE_CHECK),
                },
                // The user lifted `cancel: true`: deploy again.
                Remote::Cancelled if memory.cancel_requested => Action::Create { supersede: None },
                // Failed, or cancelled by someone else: a human decides.
                _ => Action::Wait { recheck: None },
            }
        }
    }
}

fn decide_deletion(desired: &Desired, memory: &Memory, observed: &Observed) -> Action {
    if desired.deletion_policy == DeletionPolicy::Orphan {
        return Action::Release;
    }
    let mut ids: Vec<String> = match observed {
        Observed::Found(d) => vec![d.id.clone()],
        // Already gone: nothing to delete for the current one.
        Observed::Missing { .. } | Observed::Untracked => Vec::new(),
    };
    for h in &memory.history {
        if !ids.contains(h) {
            ids.push(h.clone());
        }
    }
    if ids.is_empty() {
        Action::Release
    } else {
        Action::Cleanup { ids }
    }
}

/// A condition as the decision sees it; `reconcile` stamps times and generations on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

/// kstatus-style summary of where the object stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Desired state reached.
    Ready { reason: String, message: String },
    /// Work under way (including waiting out a rate limit or a transient fault).
    Progressing { reason: String, message: String },
    /// Only a human can unblock it.
    Stalled { reason: String, message: String },
}

impl Health {
    pub fn progressing(reason: &str, message: impl Into<String>) -> Self {
        Health::Progressing {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Health::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Health::Ready {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Health::Ready { reason, .. }
            | Health::Progressing { reason, .. }
            | Health::Stalled { reason, .. } => reason,
        }
    }

    /// The three conditions, always all present so that kstatus and Argo CD never guess.
    pub fn conditions(&self) -> [Cond; 3] {
        let c = |type_, status: bool, reason: &str, message: &str| Cond {
            type_,
            status: if status { "True" } else { "False" },
            reason: reason.to_string(),
            message: message.to_string(),
        };
        match self {
            Health::Ready { reason, message } => [
                c("Ready", true, reason, message),
                c("Reconciling", false, reason, message),
                c("Stalled", false, reason, message),
            ],
            Health::Progressing { reason, message } => [
                c("Ready", false, reason, message),
                c("Reconciling", true, reason, message),
                c("Stalled", false, reason, message),
            ],
            Health::Stalled { reason, message } => [
                c("Ready", false, reason, message),
                c("Reconciling", false, reason, message),
                c("Stalled", true, reason, message),
            ],
        }
    }
}

/// Where the object stands once the action of this reconcile is done, from what the API
/// says of its current deployment.
pub fn health(desired: &Desired, memory: &Memory, observed: &Observed) -> Health {
    if desired.deleting {
        return Health::progressing("Deleting", "cleaning up remote deployments before deletion");
    }
    match observed {
        Observed::Untracked if desired.cancel => Health::ready(
            "Cancelled",
            "spec.cancel is true: no deployment is made until it is set to false",
        ),
        Observed::Untracked => Health::progressing("Creating", "creating the remote deployment"),
        Observed::Missing { id } => Health::stalled(
            "RemoteDeleted",
            format!(
                "remote deployment {id} was deleted outside this operator (the API answers 404); change spec.redeploy to deploy again"
            ),
        ),
        Observed::Found(d) => match d.status {
            Remote::Queued | Remote::Building | Remote::Deploying => Health::progressing(
                match d.status {
                    Remote::Queued => "Queued",
                    Remote::Building => "Building",
                    _ => "Deploying",
                },
                format!("deployment {} is {}", d.id, d.status),
            ),
            Remote::Success if desired.cancel => Health::ready(
                "Succeeded",
                format!(
                    "deployment {} had already succeeded when cancel was requested; it is live at {}",
                    d.id, d.deploy_url
                ),
            ),
            Remote::Success => Health::ready(
                "Succeeded",
                format!(
                    "deployment {} succeeded and is live at {}",
                    d.id, d.deploy_url
                ),
            ),
            Remote::Failed => Health::stalled(
                "DeploymentFailed",
                format!(
                    "deployment {} failed; {}; fix the branch and change spec.commitSha or spec.redeploy to deploy again",
                    d.id,
                    if d.logs_url.is_empty() {
                        "its build log will be linked in status.logsUrl".to_string()
                    } else {
                        format!("see its build log at {}", d.logs_url)
                    }
                ),
            ),
            Remote::Cancelled if desired.cancel || memory.cancel_requested => Health::ready(
                "Cancelled",
                format!("deployment {} was cancelled as spec.cancel requested", d.id),
            ),
            Remote::Cancelled => Health::stalled(
                "CancelledExternally",
                format!(
                    "deployment {} was cancelled outside this operator (by {}); change spec.redeploy to deploy again",
                    d.id,
                    d.cancelled_by.as_deref().unwrap_or("unknown")
                ),
            ),
        },
    }
}

/// How the reconciler answers an API error: stop and tell a human, or retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Permanent: condition and event; retried only when the spec or a Secret changes.
    Stall(Health),
    /// Transient: condition, then per-object exponential backoff.
    Backoff(Health),
    /// Over the rate limit: not an error; come back when the budget allows.
    RetryAfter(Health, Duration),
    /// A create may have reached the server: look for it before creating again.
    Reconcile(Health),
}

/// The answer to an API error met while taking `action` (`"create"`, `"cancel"`, …).
pub fn recovery(err: &ApiError, action: &str) -> Recovery {
    let quoted = match (err.status(), err.code()) {
        (Some(status), Some(code)) => {
            format!("the API answered {status} {code}: {}", api_message(err))
        }
        _ => err.to_string(),
    };
    match err.class() {
        ErrorClass::RateLimited { retry_after } => Recovery::RetryAfter(
            Health::progressing(
                "RateLimited",
                format!(
                    "waiting {}s for the API token's rate limit before {action}",
                    retry_after.as_secs().max(1)
                ),
            ),
            retry_after,
        ),
        ErrorClass::Transient => Recovery::Backoff(Health::progressing(
            "ApiUnavailable",
            format!("{action} failed and will be retried with backoff: {quoted}"),
        )),
        ErrorClass::OutcomeUnknown => Recovery::Reconcile(Health::progressing(
            "CreationUnconfirmed",
            format!(
                "the create request's outcome is unknown ({err}); looking for the deployment before creating again"
            ),
        )),
        ErrorClass::Permanent => {
            let (reason, fix) = match (err.status(), err.code()) {
                (Some(401), _) => (
                    "Unauthorized",
                    "put a valid, unexpired API token in the credentials Secret",
                ),
                (Some(403), _) => (
                    "InsufficientScope",
                    "use a token with the deploy:write or deploy:admin scope in the credentials Secret",
                ),
                (Some(400), Some("invalid_branch")) => (
                    "InvalidBranch",
                    "set spec.branch to a branch that exists in the project",
                ),
                (Some(400), Some("invalid_commit")) => (
                    "InvalidCommit",
                    "set spec.commitSha to a commit of the branch",
                ),
                (Some(404), Some("project_not_found")) => (
                    "ProjectNotFound",
                    "check spec.projectId, and that the token belongs to that project",
                ),
                (Some(400), _) => ("InvalidRequest", "fix the spec field the API names"),
                (Some(409), _) => (
                    "Conflict",
                    "the remote deployment is in a state that refuses this action",
                ),
                _ => ("ApiError", "see the message"),
            };
            Recovery::Stall(Health::stalled(
                reason,
                format!("{action} failed: {quoted}; {fix}"),
            ))
        }
    }
}

fn api_message(err: &ApiError) -> &str {
    match err {
        ApiError::Status { message, .. } => message,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn details(id: &str, status: Remote) -> Observed {
        Observed::Found(Box::new(DeploymentDetails {
            id: id.into(),
            status,
            project_id: "proj_8f3k29".into(),
            branch: "main".into(),
            commit_sha: "a".repeat(40),
            build_duration: None,
            deploy_url: format!("https://{id}.git.dev"),
            logs_url: format!("http://sim/v1/deployments/{id}/logs"),
            created_at: Timestamp::UNIX_EPOCH,
            completed_at: None,
            cancelled_by: (status == Remote::Cancelled).then(|| "user_x".into()),
            cancelled_at: None,
        }))
    }

    fn want(fp: &str) -> Desired {
        Desired {
            fingerprint: fp.into(),
            cancel: false,
            deletion_policy: DeletionPolicy::Delete,
            deleting: false,
        }
    }

    fn made_for(fp: &str) -> Memory {
        Memory {
            fingerprint: Some(fp.into()),
            ..Memory::default()
        }
    }

    fn wait(d: Duration) -> Action {
        Action::Wait { recheck: Some(d) }
    }
    const HOLD: Action = Action::Wait { recheck: None };

    #[test]
    fn the_next_action_follows_from_spec_and_remote_state() {
        use Remote::*;
        let cancel = Desired {
            cancel: true,
            ..want("A")
        };
        let cancelled_by_us = Memory {
            cancel_requested: true,
            ..made_for("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Desired, Memory, Observed, Action)> = vec![
            ("a new object creates", want("A"), Memory::default(), Observed::Untracked, Action::Create { supersede: None }),
            ("a queued deployment is polled", want("A"), made_for("A"), details("d1", Queued), wait(poll_interval(Queued))),
            ("a building deployment is polled", want("A"), made_for("A"), details("d1", Building), wait(poll_interval(Building))),
            ("a deploying deployment is polled", want("A"), made_for("A"), details("d1", Deploying), wait(poll_interval(Deploying))),
            ("a success is only checked for existence", want("A"), made_for("A"), details("d1", Success), wait(EXISTENCE_CHECK)),
            ("a failure waits for a human", want("A"), made_for("A"), details("d1", Failed), HOLD),
            ("an external cancel waits for a human", want("A"), made_for("A"), details("d1", Cancelled), HOLD),
            ("an external delete waits for a human", want("A"), made_for("A"), Observed::Missing { id: "d1".into() }, HOLD),
            ("a new spec after an external delete creates", want("B"), made_for("A"), Observed::Missing { id: "d1".into() }, Action::Create { supersede: None }),
            ("a new spec supersedes a deployment in progress", want("B"), made_for("A"), details("d1", Building), Action::Create { supersede: Some("d1".into()) }),
            ("a new spec after success creates", want("B"), made_for("A"), details("d1", Success), Action::Create { supersede: None }),
            ("a new spec after failure creates", want("B"), made_for("A"), details("d1", Failed), Action::Create { supersede: None }),
            ("an adopted deployment of unknown spec is kept", want("A"), Memory::default(), details("d1", Success), wait(EXISTENCE_CHECK)),
            ("cancel stops a queued deployment", cancel.clone(), made_for("A"), details("d1", Queued), Action::Cancel { id: "d1".into(), reason: CancelReason::Requested }),
            ("cancel stops a building deployment", cancel.clone(), made_for("A"), details("d1", Building), Action::Cancel { id: "d1".into(), reason: CancelReason::Requested }),
            ("cancel stops a deploying deployment", cancel.clone(), made_for("A"), details("d1", Deploying), Action::Cancel { id: "d1".into(), reason: CancelReason::Requested }),
            ("cancel leaves a success alone", cancel.clone(), made_for("A"), details("d1", Success), HOLD),
            ("cancel holds off a first deployment", cancel.clone(), Memory::default(), Observed::Untracked, HOLD),
            ("cancel holds off a new spec", Desired { fingerprint: "B".into(), ..cancel.clone() }, made_for("A"), details("d1", Cancelled), HOLD),
            ("lifting cancel deploys again", want("A"), cancelled_by_us.clone(), details("d1", Cancelled), Action::Create { supersede: None }),
        ];
        for (name, desired, memory, observed, expected) in table {
            assert_eq!(decide(&desired, &memory, &observed), expected, "{name}");
        }
    }

    #[test]
    fn deletion_follows_the_deletion_policy() {
        use Remote::*;
        let deleting = |policy| Desired {
            deleting: true,
            deletion_policy: policy,
            ..want("A")
        };
        let with_history = Memory {
            history: vec!["d0".into(), "d1".into()],
            ..made_for("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Desired, Memory, Observed, Action)> = vec![
            ("orphan touches nothing remote", deleting(DeletionPolicy::Orphan), made_for("A"), details("d1", Building), Action::Release),
            ("delete removes the current deployment", deleting(DeletionPolicy::Delete), made_for("A"), details("d1", Success), Action::Cleanup { ids: vec!["d1".into()] }),
            ("delete cancels and removes one in progress", deleting(DeletionPolicy::Delete), made_for("A"), details("d1", Building), Action::Cleanup { ids: vec!["d1".into()] }),
            ("delete removes history too, once each", deleting(DeletionPolicy::Delete), with_history, details("d1", Success), Action::Cleanup { ids: vec!["d1".into(), "d0".into()] }),
            ("delete of an object that never deployed releases", deleting(DeletionPolicy::Delete), Memory::default(), Observed::Untracked, Action::Release),
            ("delete of a remote already gone releases", deleting(DeletionPolicy::Delete), made_for("A"), Observed::Missing { id: "d1".into() }, Action::Release),
        ];
        for (name, desired, memory, observed, expected) in table {
            assert_eq!(decide(&desired, &memory, &observed), expected, "{name}");
        }
    }

    #[test]
    fn health_follows_kstatus_for_every_state() {
        use Remote::*;
        let cancel = Desired {
            cancel: true,
            ..want("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Desired, Memory, Observed, &str, &str)> = vec![
            ("new", want("A"), Memory::default(), Observed::Untracked, "Reconciling", "Creating"),
            ("queued", want("A"), made_for("A"), details("d1", Queued), "Reconciling", "Queued"),
            ("building", want("A"), made_for("A"), details("d1", Building), "Reconciling", "Building"),
            ("deploying", want("A"), made_for("A"), details("d1", Deploying), "Reconciling", "Deploying"),
            ("success", want("A"), made_for("A"), details("d1", Success), "Ready", "Succeeded"),
            ("failed", want("A"), made_for("A"), details("d1", Failed), "Stalled", "DeploymentFailed"),
            ("honoured cancel", cancel.clone(), made_for("A"), details("d1", Cancelled), "Ready", "Cancelled"),
            ("held off by cancel", cancel.clone(), Memory::default(), Observed::Untracked, "Ready", "Cancelled"),
            ("external cancel", want("A"), made_for("A"), details("d1", Cancelled), "Stalled", "CancelledExternally"),
            ("external delete", want("A"), made_for("A"), Observed::Missing { id: "d1".into() }, "Stalled", "RemoteDeleted"),
            ("deleting", Desired { deleting: true, ..want("A") }, made_for("A"), details("d1", Success), "Reconciling", "Deleting"),
        ];
        for (name, desired, memory, observed, true_type, reason) in table {
            let h = health(&desired, &memory, &observed);
            assert_eq!(h.reason(), reason, "{name}");
            let conds = h.conditions();
            let trues: Vec<_> = conds
                .iter()
                .filter(|c| c.status == "True")
                .map(|c| c.type_)
                .collect();
            assert_eq!(trues, vec![true_type], "{name}");
            assert!(
                conds.iter().any(|c| c.type_ == "Ready"),
                "{name}: Ready is always present"
            );
        }
    }

    fn api_error(status: u16, code: &str) -> ApiError {
        ApiError::Status {
            endpoint: crate::api::Endpoint::Create,
            status,
            code: code.into(),
            message: "the API said so".into(),
            details: Default::default(),
            retry_after: (status == 429).then_some(Duration::from_secs(3)),
        }
    }

    #[test]
    fn each_error_class_gets_its_own_recovery() {
        #[rustfmt::skip]
        let stalls = [
            (401, "unauthorized", "Unauthorized"),
            (403, "insufficient_scope", "InsufficientScope"),
            (400, "invalid_branch", "InvalidBranch"),
            (400, "invalid_commit", "InvalidCommit"),
            (400, "invalid_request", "InvalidRequest"),
            (404, "project_not_found", "ProjectNotFound"),
        ];
        for (status, code, reason) in stalls {
            match recovery(&api_error(status, code), "create") {
                Recovery::Stall(h) => {
                    assert_eq!(h.reason(), reason);
                    let Health::Stalled { message, .. } = h else {
                        unreachable!()
                    };
                    assert!(
                        message.contains(code) && message.contains("the API said so"),
                        "{message}"
                    );
                }
                other => panic!("{status} {code}: {other:?}"),
            }
        }
        assert!(
            matches!(recovery(&api_error(500, "internal_error"), "get"), Recovery::Backoff(h) if h.reason() == "ApiUnavailable")
        );
        let transport = ApiError::Transport {
            endpoint: crate::api::Endpoint::Get,
            message: "reset".into(),
        };
        assert!(matches!(recovery(&transport, "get"), Recovery::Backoff(_)));
        assert_eq!(
            recovery(&api_error(429, "rate_limited"), "create"),
            Recovery::RetryAfter(
                Health::progressing(
                    "RateLimited",
                    "waiting 3s for the API token's rate limit before create"
                ),
                Duration::from_secs(3)
            )
        );
        let unknown = ApiError::OutcomeUnknown {
            message: "connection closed".into(),
        };
        assert!(
            matches!(recovery(&unknown, "create"), Recovery::Reconcile(h) if h.reason() == "CreationUnconfirmed")
        );
    }
}
