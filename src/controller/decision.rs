//! "Spec + observed remote state → next step": the operator's decisions as pure functions, so
//! that every case is a row of a table test. IO lives in the steps around them (`reconcile.rs`).

use std::time::Duration;

use super::failure::BuildLog;
use super::state::State;
use crate::api::{ApiError, DeploymentDetails, DeploymentStatus as Remote, ErrorClass};
use crate::resource::{ANNOTATION_PAUSED, DeletionPolicy};

/// What the object wants, reduced to what decisions need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goal {
    /// Fingerprint of the desired deployment (see `desired::DesiredDeployment::fingerprint`).
    pub fingerprint: String,
    /// `spec.cancel`.
    pub cancel: bool,
    pub deletion_policy: DeletionPolicy,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `git.dev/paused: "true"`: no create or cancel (observation goes on). Deletion ignores
    /// it: a pause that held the finalizer would hang namespace deletion (Crossplane's trap).
    pub paused: bool,
}

/// The remote deployment the object tracks, as seen in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Not looked at in this reconcile (a deletion that needs no API, a Secret problem): what
    /// `.status` mirrors of it stands.
    Unread,
    /// The object tracks no remote deployment.
    Untracked,
    /// The API returned the tracked deployment.
    Found(Box<DeploymentDetails>),
    /// The API answered 404 for the tracked id: deleted behind our back.
    Missing { id: String },
}

/// Why a deployment is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// `spec.cancel: true`.
    Requested,
    /// The deployment spec changed while it was in progress.
    Superseded,
}

/// The one remote step of this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make a remote deployment of the current spec. `supersede` is the in-progress deployment
    /// to cancel first; the tracked deployment (if any) goes to history.
    Create { supersede: Option<String> },
    /// Cancel the tracked deployment.
    Cancel { id: String, reason: CancelReason },
    /// Deletion with policy `Delete`: cancel those in progress, then delete every one listed.
    Delete { ids: Vec<String> },
    /// Deletion with policy `Orphan`: leave these remote deployments in place, and say so.
    Orphan { ids: Vec<String> },
    /// Deletion is free to complete: nothing remote was ever made, or nothing is left.
    Release,
    /// Nothing remote to do now.
    Wait,
}

/// When to look at the object again once the step is done (a failed step has its own
/// answer: see `recovery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recheck {
    /// In progress, in this phase: observe again at its cadence ([`poll_interval`], which
    /// also weighs how long it has been in the phase and the token's budget).
    Track(Remote),
    /// Observe again after this long (jitter is added by the caller).
    Poll(Duration),
    /// Finished: only check, rarely, that it still exists (`--recheck-finished-seconds`).
    Existence,
    /// Only a change of the object or its Secrets can change anything.
    OnChange,
}

/// The decision: one step, and when to come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Next {
    pub step: Step,
    pub recheck: Recheck,
}

impl Next {
    fn wait(recheck: Recheck) -> Self {
        Next {
            step: Step::Wait,
            recheck,
        }
    }

    fn only(step: Step) -> Self {
        Next {
            step,
            recheck: Recheck::OnChange,
        }
    }
}

/// What an in-flight deployment's cadence weighs besides its phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// How long listings have shown the deployment in its current phase (zero when none has).
    pub in_phase: Duration,
    /// The token's budget has plenty to spare (`Room::Ample`): nothing waits for it, nor
    /// will soon.
    pub ample_budget: bool,
    /// Not observed this time: the token's creates go first, and a listing wakes the object
    /// if it finds the deployment finished.
    pub deferred: bool,
}

/// The longest wait between two looks at an in-flight deployment.
const LONGEST_POLL: Duration = Duration::from_secs(30);

/// How soon an in-flight deployment whose observation waited for its token's creates is
/// looked at again. Nothing is learnt by looking sooner (the creates go first, and a listing
/// wakes the object if it finds the deployment finished), and at 10,000 objects looking every
/// second or two was most of the reconciles, each taking a slot a create was waiting for.
const DEFERRED_POLL: Duration = Duration::from_secs(5);

/// How often an in-progress deployment is looked at again (and how old a listing may be to
/// answer for it). By phase: a queued one changes less often than a building one, and a
/// deploying one is about to finish; the token's listing is shared, so the most pressing
/// of its deployments sets the pace for all. Deploying is looked at twice as often while
/// the token's budget has plenty to spare: a success is Ready within a second, and a budget
/// that creates or reads need is left to them. A phase that has gone on for long is not about to
/// end any moment: looked at a tenth of its age later (at most every 30 s), so that a build of
/// ten minutes costs tens of listings, not hundreds, and is still seen finished within a
/// tenth of its time. One whose observation waited for creates is looked at again later
/// ([`DEFERRED_POLL`]).
pub fn poll_interval(status: Remote, pace: Pace) -> Option<Duration> {
    let base = match status {
        Remote::Queued => Duration::from_secs(2),
        Remote::Building => Duration::from_secs(1),
        Remote::Deploying if pace.ample_budget => Duration::from_millis(500),
        Remote::Deploying => Duration::from_secs(1),
        Remote::Success | Remote::Failed | Remote::Cancelled => return None,
    };
    let base = if pace.deferred {
        base.max(DEFERRED_POLL)
    } else {
        base
    };
    Some(base.max((pace.in_phase / 10).min(LONGEST_POLL)))
}

/// How soon an object whose deployment a listing said finished is looked at again for the
/// details only a GET gives (completion time, build duration). The details reader wakes it
/// when they are read (`details`); this is the net under that. A reconcile that reads them
/// itself (no reader: the unit tests) comes back this soon too.
pub const DETAILS_RECHECK: Duration = Duration::from_secs(30);

/// Whether anything remote may exist for the object: a deployment, history, or a create
/// whose answer was never recorded.
pub fn made_anything(state: &State) -> bool {
    state.id.is_some() || !state.history.is_empty() || state.intent.is_some()
}

/// Whether the remote deployment must be looked at before deciding. Only a deletion that
/// leaves the remote alone (policy `Orphan`, or nothing ever made) decides without the API,
/// so that it completes even when the token is gone.
pub fn must_observe(goal: &Goal, state: &State) -> bool {
    !goal.deleting || (goal.deletion_policy == DeletionPolicy::Delete && made_anything(state))
}

/// The decision. Pure: same inputs, same answer.
pub fn decide(goal: &Goal, state: &State, observed: &Observed) -> Next {
    if goal.deleting {
        return Next::only(decide_deletion(goal, state, observed));
    }
    let next = decide_live(goal, state, observed);
    if goal.paused && held_back(&next.step) {
        // Only the write is held back: the deployment is still watched as it would be.
        return Next::wait(watch_only(observed));
    }
    next
}

/// A step that writes to the Deployments API, which a pause holds back.
fn held_back(step: &Step) -> bool {
    matches!(step, Step::Create { .. } | Step::Cancel { .. })
}

/// How a paused object keeps watching its deployment: as often as an unpaused one would.
fn watch_only(observed: &Observed) -> Recheck {
    match observed {
        Observed::Found(d) if details_pending(d) => Recheck::Poll(DETAILS_RECHECK),
        Observed::Found(d) if !d.status.is_terminal() => Recheck::Track(d.status),
        Observed::Found(d) if d.status == Remote::Success => Recheck::Existence,
        Observed::Found(_) => Recheck::OnChange,
        // Removing the annotation wakes the object (`run::wake_hash`).
        _ => Recheck::OnChange,
    }
}

fn decide_live(goal: &Goal, state: &State, observed: &Observed) -> Next {
    // An unknown fingerprint (a deployment adopted by id) counts as the current spec: replacing
    // it would be a deployment nobody asked for.
    let spec_changed = spec_changed(goal, state);
    let create = |supersede| Next {
        step: Step::Create { supersede },
        // A new deployment starts queued.
        recheck: Recheck::Track(Remote::Queued),
    };
    match observed {
        Observed::Unread => Next::wait(Recheck::OnChange),
        Observed::Untracked if goal.cancel => Next::wait(Recheck::OnChange),
        Observed::Untracked => create(None),
        Observed::Missing { .. } if goal.cancel => Next::wait(Recheck::OnChange),
        // A new spec deserves a new deployment even if the old one vanished.
        Observed::Missing { .. } if spec_changed => create(None),
        // Deleted behind our back: reported, never silently recreated (a human decides, e.g. by
        // changing `redeploy`).
        Observed::Missing { .. } => Next::wait(Recheck::OnChange),
        Observed::Found(d) => {
            let in_progress = !d.status.is_terminal();
            if goal.cancel {
                return if in_progress {
                    Next::only(Step::Cancel {
                        id: d.id.clone(),
                        reason: CancelReason::Requested,
                    })
                } else if details_pending(d) {
                    Next::wait(Recheck::Poll(DETAILS_RECHECK))
                } else {
                    Next::wait(Recheck::OnChange)
                };
            }
            if spec_changed {
                return create(in_progress.then(|| d.id.clone()));
            }
            // The user lifted `cancel: true`: deploy again.
            if d.status == Remote::Cancelled && state.cancel_requested {
                return create(None);
            }
            if details_pending(d) {
                return Next::wait(Recheck::Poll(DETAILS_RECHECK));
            }
            if in_progress {
                Next::wait(Recheck::Track(d.status))
            } else if d.status == Remote::Success {
                Next::wait(Recheck::Existence)
            } else {
                // Failed, or cancelled by someone else: a human decides.
                Next::wait(Recheck::OnChange)
            }
        }
    }
}

fn decide_deletion(goal: &Goal, state: &State, observed: &Observed) -> Step {
    if !made_anything(state) {
        return Step::Release;
    }
    if goal.deletion_policy == DeletionPolicy::Orphan {
        return Step::Orphan { ids: state.ids() };
    }
    let current = match observed {
        Observed::Found(d) => Some(&d.id),
        // Not looked at: it may exist; a delete of one already gone is harmless.
        Observed::Unread => state.id.as_ref(),
        // Already gone: nothing to delete for the current one.
        Observed::Missing { .. } | Observed::Untracked => None,
    };
    let ids = State {
        id: current.cloned(),
        ..state.clone()
    }
    .ids();
    if ids.is_empty() {
        Step::Release
    } else {
        Step::Delete { ids }
    }
}

/// A finished deployment whose completion details were not read yet (a listing told it
/// finished; only a GET gives the times).
pub fn details_pending(d: &DeploymentDetails) -> bool {
    match d.status {
        Remote::Success | Remote::Failed => d.completed_at.is_none(),
        Remote::Cancelled => d.cancelled_at.is_none(),
        _ => false,
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

    pub fn message(&self) -> &str {
        match self {
            Health::Ready { message, .. }
            | Health::Progressing { message, .. }
            | Health::Stalled { message, .. } => message,
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
pub fn health(goal: &Goal, state: &State, observed: &Observed) -> Health {
    health_with_log(goal, state, observed, &BuildLog::NotRead)
}

/// `health`, with what the build log of a failed deployment says (`failure.rs`).
pub fn health_with_log(goal: &Goal, state: &State, observed: &Observed, log: &BuildLog) -> Health {
    if goal.deleting {
        return Health::progressing("Deleting", "cleaning up remote deployments before deletion");
    }
    let normal = remote_health(goal, state, observed, log);
    if !goal.paused {
        return normal;
    }
    match decide_live(goal, state, observed).step {
        // Reconciling=True: the desired state is not reached, and will be once the pause is
        // lifted. kstatus knows no "suspended"; InProgress is its honest verdict (Current
        // would claim the spec is deployed, Failed would alarm about a deliberate choice).
        // Argo CD's health check shows reason Paused as Suspended.
        Step::Create { supersede } => Health::progressing(
            "Paused",
            format!(
                "{ANNOTATION_PAUSED} is \"true\": {} is due and not made; remove {ANNOTATION_PAUSED} to deploy{}",
                match observed {
                    Observed::Untracked => "a first deployment",
                    _ if spec_changed(goal, state) => "a new deployment of the changed spec",
                    _ => "a new deployment (spec.cancel was lifted)",
                },
                match &supersede {
                    Some(id) => format!(" (it supersedes {id}, which is still in progress)"),
                    None => String::new(),
                }
            ),
        ),
        Step::Cancel { id, .. } => Health::progressing(
            "Paused",
            format!(
                "{ANNOTATION_PAUSED} is \"true\": spec.cancel asks to cancel deployment {id}, which is not cancelled; remove {ANNOTATION_PAUSED} to cancel it"
            ),
        ),
        // Nothing is held back: where it stands, and that the next change would wait.
        _ => {
            let note = format!(
                " ({ANNOTATION_PAUSED} is \"true\": no deployment is created or cancelled until it is removed)"
            );
            match normal {
                Health::Ready { reason, message } => Health::Ready {
                    reason,
                    message: message + &note,
                },
                Health::Progressing { reason, message } => Health::Progressing {
                    reason,
                    message: message + &note,
                },
                Health::Stalled { reason, message } => Health::Stalled {
                    reason,
                    message: message + &note,
                },
            }
        }
    }
}

/// The spec's fingerprint is not the one the tracked deployment was made from.
fn spec_changed(goal: &Goal, state: &State) -> bool {
    state
        .fingerprint
        .as_deref()
        .is_some_and(|fp| fp != goal.fingerprint)
}

/// Where the object stands from what the API says of its current deployment alone.
fn remote_health(goal: &Goal, state: &State, observed: &Observed, log: &BuildLog) -> Health {
    match observed {
        Observed::Unread => {
            Health::progressing("Pending", "accepted by gitdev-operator; reconciling")
        }
        Observed::Untracked if goal.cancel => Health::ready(
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
            Remote::Success if goal.cancel => Health::ready(
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
            Remote::Failed => failed(d, log),
            Remote::Cancelled if goal.cancel || state.cancel_requested => Health::ready(
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

/// A failed deployment: what to do about it, then what its build log says. The excerpt comes
/// last, on lines of its own, as a terminal showed them; the first line alone says it all.
fn failed(d: &DeploymentDetails, log: &BuildLog) -> Health {
    let fix = "fix the branch and change spec.commitSha or spec.redeploy to deploy again";
    let at = if d.logs_url.is_empty() {
        "status.logsUrl".to_string()
    } else {
        cut(&d.logs_url, QUOTE_LIMIT)
    };
    let message = match log {
        BuildLog::NotRead if d.logs_url.is_empty() => format!(
            "deployment {} failed; its build log will be linked in status.logsUrl; {fix}",
            d.id
        ),
        BuildLog::NotRead => format!(
            "deployment {} failed; see its build log at {at}; {fix}",
            d.id
        ),
        BuildLog::Excerpt(e) if e.is_empty() => format!(
            "deployment {} failed; its build log ({at}) has no lines to show; {fix}",
            d.id
        ),
        BuildLog::Excerpt(e) => format!(
            "deployment {} failed; {fix}; the end of its build log ({at}):\n{e}",
            d.id
        ),
        BuildLog::Unreadable(why) => format!(
            "deployment {} failed; the build log could not be read: {why}; it is read again later, or see it at {at}; {fix}",
            d.id
        ),
    };
    Health::stalled("DeploymentFailed", message)
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
    // What the API (or a gateway in front of it) says is quoted, never trusted to be short.
    let quoted = match (err.status(), err.code()) {
        (Some(status), Some(code)) => format!(
            "the API answered {status} {}: {}",
            cut(code, 64),
            cut(api_message(err), QUOTE_LIMIT)
        ),
        _ => cut(&err.to_string(), QUOTE_LIMIT),
    };
    let err_text = cut(&err.to_string(), QUOTE_LIMIT);
    match err.class() {
        // No figure in the message: the wait is estimated afresh at every try, and a message
        // that changed each time would rewrite the status of every waiting object each time.
        ErrorClass::RateLimited { retry_after } => Recovery::RetryAfter(
            Health::progressing(
                "RateLimited",
                format!(
                    "waiting for the API token's rate limit before {action}; the operator tries again as soon as the budget allows"
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
                "the create request's outcome is unknown ({err_text}); looking for the deployment before creating again"
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

/// How much of an API error's text a condition or event quotes.
pub const QUOTE_LIMIT: usize = 300;

/// `text` cut to at most `max` characters, with an ellipsis when something was cut.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
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
            // As a GET returns it: finished ones carry their times.
            completed_at: matches!(status, Remote::Success | Remote::Failed)
                .then_some(Timestamp::UNIX_EPOCH),
            cancelled_by: (status == Remote::Cancelled).then(|| "user_x".into()),
            cancelled_at: (status == Remote::Cancelled).then_some(Timestamp::UNIX_EPOCH),
        }))
    }

    fn want(fp: &str) -> Goal {
        Goal {
            fingerprint: fp.into(),
            cancel: false,
            deletion_policy: DeletionPolicy::Delete,
            deleting: false,
            paused: false,
        }
    }

    fn paused(fp: &str) -> Goal {
        Goal {
            paused: true,
            ..want(fp)
        }
    }

    /// Tracking deployment `d1`, made for the spec whose fingerprint is `fp`.
    fn made_for(fp: &str) -> State {
        State {
            id: Some("d1".into()),
            fingerprint: Some(fp.into()),
            ..State::default()
        }
    }

    fn wait(d: Duration) -> Next {
        Next::wait(Recheck::Poll(d))
    }
    fn poll(status: Remote) -> Next {
        Next::wait(Recheck::Track(status))
    }
    const HOLD: Next = Next {
        step: Step::Wait,
        recheck: Recheck::OnChange,
    };
    const EXISTENCE: Next = Next {
        step: Step::Wait,
        recheck: Recheck::Existence,
    };
    fn create(supersede: Option<&str>) -> Next {
        Next {
            step: Step::Create {
                supersede: supersede.map(str::to_string),
            },
            recheck: Recheck::Track(Remote::Queued),
        }
    }
    fn cancel_d1() -> Next {
        Next::only(Step::Cancel {
            id: "d1".into(),
            reason: CancelReason::Requested,
        })
    }

    #[test]
    fn an_in_flight_deployment_is_looked_at_by_phase_faster_with_budget_to_spare_slower_the_longer_a_phase_lasts_or_while_creates_go_first()
     {
        use Remote::*;
        let s = Duration::from_secs_f64;
        let pace = |in_phase: f64, ample_budget: bool| Pace {
            in_phase: s(in_phase),
            ample_budget,
            deferred: false,
        };
        let deferred = |in_phase: f64| Pace {
            deferred: true,
            ..pace(in_phase, false)
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Remote, Pace, Option<Duration>)> = vec![
            ("queued, just seen", Queued, pace(0.0, true), Some(s(2.0))),
            ("building, just seen", Building, pace(0.0, true), Some(s(1.0))),
            ("deploying, budget to spare", Deploying, pace(0.0, true), Some(s(0.5))),
            ("deploying, budget scarce", Deploying, pace(0.0, false), Some(s(1.0))),
            ("deploying for 4 s: the phase's own cadence still", Deploying, pace(4.0, true), Some(s(0.5))),
            ("building for 40 s: a tenth of that", Building, pace(40.0, false), Some(s(4.0))),
            ("queued for 15 s: never faster than the phase's cadence", Queued, pace(15.0, true), Some(s(2.0))),
            ("building for an hour: every 30 s", Building, pace(3600.0, true), Some(s(30.0))),
            ("deploying, waiting for the creates", Deploying, deferred(0.0), Some(s(5.0))),
            ("queued, waiting for the creates", Queued, deferred(0.0), Some(s(5.0))),
            ("building for an hour, waiting for the creates", Building, deferred(3600.0), Some(s(30.0))),
            ("finished: not polled", Success, pace(0.0, true), None),
            ("failed: not polled", Failed, pace(10.0, true), None),
            ("cancelled: not polled", Cancelled, pace(0.0, false), None),
        ];
        for (name, phase, pace, expected) in table {
            assert_eq!(poll_interval(phase, pace), expected, "{name}");
        }
    }

    #[test]
    fn the_next_action_follows_from_spec_and_remote_state() {
        use Remote::*;
        let cancel = Goal {
            cancel: true,
            ..want("A")
        };
        let cancelled_by_us = State {
            cancel_requested: true,
            ..made_for("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Goal, State, Observed, Next)> = vec![
            ("a new object creates", want("A"), State::default(), Observed::Untracked, create(None)),
            ("a queued deployment is polled", want("A"), made_for("A"), details("d1", Queued), poll(Queued)),
            ("a building deployment is polled", want("A"), made_for("A"), details("d1", Building), poll(Building)),
            ("a deploying deployment is polled", want("A"), made_for("A"), details("d1", Deploying), poll(Deploying)),
            ("a success is only checked for existence", want("A"), made_for("A"), details("d1", Success), EXISTENCE),
            ("a failure waits for a human", want("A"), made_for("A"), details("d1", Failed), HOLD),
            ("an external cancel waits for a human", want("A"), made_for("A"), details("d1", Cancelled), HOLD),
            ("an external delete waits for a human", want("A"), made_for("A"), Observed::Missing { id: "d1".into() }, HOLD),
            ("a new spec after an external delete creates", want("B"), made_for("A"), Observed::Missing { id: "d1".into() }, create(None)),
            ("a new spec supersedes a deployment in progress", want("B"), made_for("A"), details("d1", Building), create(Some("d1"))),
            ("a new spec after success creates", want("B"), made_for("A"), details("d1", Success), create(None)),
            ("a new spec after failure creates", want("B"), made_for("A"), details("d1", Failed), create(None)),
            ("an adopted deployment of unknown spec is kept", want("A"), State::default(), details("d1", Success), EXISTENCE),
            ("cancel stops a queued deployment", cancel.clone(), made_for("A"), details("d1", Queued), cancel_d1()),
            ("cancel stops a building deployment", cancel.clone(), made_for("A"), details("d1", Building), cancel_d1()),
            ("cancel stops a deploying deployment", cancel.clone(), made_for("A"), details("d1", Deploying), cancel_d1()),
            ("cancel leaves a success alone", cancel.clone(), made_for("A"), details("d1", Success), HOLD),
            ("cancel holds off a first deployment", cancel.clone(), State::default(), Observed::Untracked, HOLD),
            ("cancel holds off a new spec", Goal { fingerprint: "B".into(), ..cancel.clone() }, made_for("A"), details("d1", Cancelled), HOLD),
            ("lifting cancel deploys again", want("A"), cancelled_by_us.clone(), details("d1", Cancelled), create(None)),
        ];
        for (name, desired, memory, observed, expected) in table {
            assert_eq!(decide(&desired, &memory, &observed), expected, "{name}");
        }
    }

    #[test]
    fn a_pause_holds_back_creates_and_cancels_and_keeps_watching_the_deployment() {
        use Remote::*;
        let cancel = Goal {
            cancel: true,
            ..paused("A")
        };
        let cancelled_by_us = State {
            cancel_requested: true,
            ..made_for("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Goal, State, Observed, Next)> = vec![
            ("a paused new object creates nothing", paused("A"), State::default(), Observed::Untracked, HOLD),
            ("a paused new spec creates nothing after success", paused("B"), made_for("A"), details("d1", Success), EXISTENCE),
            ("a paused new spec supersedes nothing and polls the build", paused("B"), made_for("A"), details("d1", Building), poll(Building)),
            ("a paused new spec after failure creates nothing", paused("B"), made_for("A"), details("d1", Failed), HOLD),
            ("a paused new spec after an external delete creates nothing", paused("B"), made_for("A"), Observed::Missing { id: "d1".into() }, HOLD),
            ("a paused cancel cancels nothing and polls the build", cancel.clone(), made_for("A"), details("d1", Queued), poll(Queued)),
            ("a paused lift of cancel deploys nothing", paused("A"), cancelled_by_us, details("d1", Cancelled), HOLD),
            ("a paused deployment in progress is polled as usual", paused("A"), made_for("A"), details("d1", Deploying), poll(Deploying)),
            ("a paused success is checked for existence as usual", paused("A"), made_for("A"), details("d1", Success), EXISTENCE),
            ("paused deletion with policy Delete still deletes", Goal { deleting: true, ..paused("A") }, made_for("A"), details("d1", Success), Next::only(Step::Delete { ids: vec!["d1".into()] })),
            ("paused deletion with policy Orphan still orphans", Goal { deleting: true, deletion_policy: DeletionPolicy::Orphan, ..paused("A") }, made_for("A"), Observed::Unread, Next::only(Step::Orphan { ids: vec!["d1".into()] })),
        ];
        for (name, desired, memory, observed, expected) in table {
            assert_eq!(decide(&desired, &memory, &observed), expected, "{name}");
        }
    }

    #[test]
    fn a_pause_says_what_it_holds_back_or_keeps_the_normal_health_with_a_note() {
        use Remote::*;
        let cancel = Goal {
            cancel: true,
            ..paused("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Goal, State, Observed, &str, &str, &str)> = vec![
            ("first deployment held back", paused("A"), State::default(), Observed::Untracked, "Reconciling", "Paused", "a first deployment is due"),
            ("new spec held back", paused("B"), made_for("A"), details("d1", Success), "Reconciling", "Paused", "a new deployment of the changed spec is due"),
            ("supersede held back", paused("B"), made_for("A"), details("d1", Building), "Reconciling", "Paused", "it supersedes d1"),
            ("cancel held back", cancel, made_for("A"), details("d1", Building), "Reconciling", "Paused", "remove git.dev/paused to cancel it"),
            ("nothing due, live", paused("A"), made_for("A"), details("d1", Success), "Ready", "Succeeded", "no deployment is created or cancelled until it is removed"),
            ("nothing due, building", paused("A"), made_for("A"), details("d1", Building), "Reconciling", "Building", "git.dev/paused is \"true\""),
            ("nothing due, failed", paused("A"), made_for("A"), details("d1", Failed), "Stalled", "DeploymentFailed", "git.dev/paused"),
            ("deleting ignores the pause", Goal { deleting: true, ..paused("A") }, made_for("A"), details("d1", Success), "Reconciling", "Deleting", "cleaning up"),
        ];
        for (name, desired, memory, observed, true_type, reason, says) in table {
            let h = health(&desired, &memory, &observed);
            assert_eq!(h.reason(), reason, "{name}");
            assert!(h.message().contains(says), "{name}: {}", h.message());
            let trues: Vec<_> = h
                .conditions()
                .iter()
                .filter(|c| c.status == "True")
                .map(|c| c.type_)
                .collect();
            assert_eq!(trues, vec![true_type], "{name}");
        }
    }

    #[test]
    fn deletion_follows_the_deletion_policy() {
        use Remote::*;
        let deleting = |policy| Goal {
            deleting: true,
            deletion_policy: policy,
            ..want("A")
        };
        let with_history = State {
            history: vec!["d0".into(), "d1".into()],
            ..made_for("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Goal, State, Observed, Next)> = vec![
            ("orphan touches nothing remote and names what it leaves", deleting(DeletionPolicy::Orphan), made_for("A"), Observed::Unread, Next::only(Step::Orphan { ids: vec!["d1".into()] })),
            ("orphan names history too", deleting(DeletionPolicy::Orphan), with_history.clone(), Observed::Unread, Next::only(Step::Orphan { ids: vec!["d1".into(), "d0".into()] })),
            ("orphan of an object that never deployed releases", deleting(DeletionPolicy::Orphan), State::default(), Observed::Unread, Next::only(Step::Release)),
            ("delete removes the current deployment", deleting(DeletionPolicy::Delete), made_for("A"), details("d1", Success), Next::only(Step::Delete { ids: vec!["d1".into()] })),
            ("delete cancels and removes one in progress", deleting(DeletionPolicy::Delete), made_for("A"), details("d1", Building), Next::only(Step::Delete { ids: vec!["d1".into()] })),
            ("delete removes history too, once each", deleting(DeletionPolicy::Delete), with_history, details("d1", Success), Next::only(Step::Delete { ids: vec!["d1".into(), "d0".into()] })),
            ("delete of an object that never deployed releases", deleting(DeletionPolicy::Delete), State::default(), Observed::Untracked, Next::only(Step::Release)),
            ("delete of a remote already gone releases", deleting(DeletionPolicy::Delete), made_for("A"), Observed::Missing { id: "d1".into() }, Next::only(Step::Release)),
            ("delete of an object that never deployed needs no look", deleting(DeletionPolicy::Delete), State::default(), Observed::Unread, Next::only(Step::Release)),
        ];
        for (name, desired, memory, observed, expected) in table {
            assert_eq!(decide(&desired, &memory, &observed), expected, "{name}");
        }
    }

    #[test]
    fn only_a_deletion_that_leaves_the_remote_alone_decides_without_looking_at_it() {
        let deleting = |policy| Goal {
            deleting: true,
            deletion_policy: policy,
            ..want("A")
        };
        let intent_only = State {
            intent: Some(crate::controller::state::Intent {
                fingerprint: "A".into(),
                at: Timestamp::UNIX_EPOCH,
            }),
            ..State::default()
        };
        assert!(must_observe(&want("A"), &State::default()));
        assert!(must_observe(
            &deleting(DeletionPolicy::Delete),
            &made_for("A")
        ));
        assert!(must_observe(
            &deleting(DeletionPolicy::Delete),
            &intent_only
        ));
        assert!(!must_observe(
            &deleting(DeletionPolicy::Delete),
            &State::default()
        ));
        assert!(!must_observe(
            &deleting(DeletionPolicy::Orphan),
            &made_for("A")
        ));
    }

    #[test]
    fn a_finished_deployment_whose_details_are_missing_is_read_again_soon() {
        // A listing says it finished; the times come with the next GET.
        let listed = |status| {
            let Observed::Found(mut d) = details("d1", status) else {
                unreachable!()
            };
            d.completed_at = None;
            d.cancelled_at = None;
            Observed::Found(d)
        };
        let soon = wait(DETAILS_RECHECK);
        assert_eq!(
            decide(&want("A"), &made_for("A"), &listed(Remote::Success)),
            soon
        );
        assert_eq!(
            decide(&want("A"), &made_for("A"), &listed(Remote::Failed)),
            soon
        );
        assert_eq!(
            decide(&want("A"), &made_for("A"), &details("d1", Remote::Success)),
            EXISTENCE
        );
        let cancel = Goal {
            cancel: true,
            ..want("A")
        };
        assert_eq!(
            decide(&cancel, &made_for("A"), &listed(Remote::Cancelled)),
            soon
        );
        assert_eq!(
            decide(&cancel, &made_for("A"), &details("d1", Remote::Cancelled)),
            HOLD
        );
    }

    #[test]
    fn health_follows_kstatus_for_every_state() {
        use Remote::*;
        let cancel = Goal {
            cancel: true,
            ..want("A")
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Goal, State, Observed, &str, &str)> = vec![
            ("new", want("A"), State::default(), Observed::Untracked, "Reconciling", "Creating"),
            ("queued", want("A"), made_for("A"), details("d1", Queued), "Reconciling", "Queued"),
            ("building", want("A"), made_for("A"), details("d1", Building), "Reconciling", "Building"),
            ("deploying", want("A"), made_for("A"), details("d1", Deploying), "Reconciling", "Deploying"),
            ("success", want("A"), made_for("A"), details("d1", Success), "Ready", "Succeeded"),
            ("failed", want("A"), made_for("A"), details("d1", Failed), "Stalled", "DeploymentFailed"),
            ("honoured cancel", cancel.clone(), made_for("A"), details("d1", Cancelled), "Ready", "Cancelled"),
            ("held off by cancel", cancel.clone(), State::default(), Observed::Untracked, "Ready", "Cancelled"),
            ("external cancel", want("A"), made_for("A"), details("d1", Cancelled), "Stalled", "CancelledExternally"),
            ("external delete", want("A"), made_for("A"), Observed::Missing { id: "d1".into() }, "Stalled", "RemoteDeleted"),
            ("deleting", Goal { deleting: true, ..want("A") }, made_for("A"), details("d1", Success), "Reconciling", "Deleting"),
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
    fn api_error_text_is_cut_before_it_reaches_a_condition() {
        let mut huge = api_error(400, "invalid_request");
        if let ApiError::Status { message, .. } = &mut huge {
            *message = "é".repeat(100_000);
        }
        let Recovery::Stall(h) = recovery(&huge, "create") else {
            panic!("a 400 stalls")
        };
        assert!(
            h.message().chars().count() < QUOTE_LIMIT + 200,
            "{}",
            h.message().len()
        );
        assert!(h.message().contains("…"));
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 2), "éé…");
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
                    "waiting for the API token's rate limit before create; the operator tries again as soon as the budget allows"
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
