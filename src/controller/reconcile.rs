//! The IO around the decisions: read Secrets, observe the remote deployment, take the one
//! action `decision::decide` chose, record state and mirror status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::decision::{self, Action, CancelReason, Desired, Health, Observed, Recovery};
use super::observer::{Seen, list_newest_back_to};
use super::secrets::{self, SecretProblem};
use super::state::{self, DeploymentInputs, Intent, State};
use super::{Context, Error};
use crate::api::{
    ApiError, ApiToken, CreateDeploymentRequest, DeploymentDetails, DeploymentStatus as Remote,
    DeploymentsApi,
};
use crate::resource::{
    ANNOTATION_DEPLOYMENT_ID, DeletionPolicy, FINALIZER, GitDeployment, GitDeploymentStatus,
    HistoryEntry,
};

/// Field manager of every write the operator makes.
pub const MANAGER: &str = "gitdev-operator";

/// How far before the recorded intent a deployment's `created_at` may be and still be ours:
/// the intent is stamped by the operator's clock, `created_at` by the API's.
const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long the details of a finished deployment (completion time, build duration) may wait
/// for other deployments of the same token still in flight.
const DETAILS_DEFERRAL: Duration = Duration::from_secs(30);

pub async fn reconcile<A: DeploymentsApi>(
    obj: Arc<GitDeployment>,
    ctx: Arc<Context<A>>,
) -> Result<Requeue, Error> {
    let started = Instant::now();
    let namespace = obj.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<GitDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = (namespace.clone(), obj.name_any());
    // The very first reconcile of a new object (the one that adds the finalizer) already gives
    // it conditions, so that no GitOps tool takes a status-less object for a finished one
    // (kstatus calls that Current), even while it waits for a worker or for rate budget.
    let obj = if is_new(&obj) {
        let mut round = Round::new(&obj, &ctx)?;
        let health = Health::progressing("Pending", "accepted by gitdev-operator; reconciling");
        round.finish(None, health, Requeue::await_change()).await?;
        Arc::new(round.obj)
    } else {
        obj
    };
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(&obj, &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(&obj, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.forget_failures(&key);
    }
    ctx.metrics.reconcile_finished(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    result
}

fn is_new(obj: &GitDeployment) -> bool {
    obj.metadata.deletion_timestamp.is_none()
        && !obj.finalizers().iter().any(|f| f == FINALIZER)
        && obj.status.as_ref().is_none_or(|s| s.conditions.is_empty())
}

/// Everything one reconcile of a live object needs, read once.
struct Round<'a, A: DeploymentsApi> {
    ctx: &'a Context<A>,
    obj: GitDeployment,
    namespace: String,
    api: Api<GitDeployment>,
    state: State,
}

async fn apply<A: DeploymentsApi>(obj: &GitDeployment, ctx: &Context<A>) -> Result<Requeue, Error> {
    let mut round = Round::new(obj, ctx)?;
    let secrets = round.read_secrets().await?;
    let creds = obj.spec.credentials_or(&ctx.default_credentials);
    let token = match secrets::token_from(secrets.get(&creds.name), &creds) {
        Ok(token) => token,
        Err(problem) => return round.blocked(problem).await,
    };
    let env = match secrets::env_from(&obj.spec, |name| secrets.get(name)) {
        Ok(env) => env,
        Err(problem) => return round.blocked(problem).await,
    };
    let desired = Desired {
        fingerprint: round.fingerprint(&env),
        cancel: obj.spec.cancel,
        deletion_policy: obj.spec.deletion_policy,
        deleting: false,
    };

    // A create whose answer never reached the object: find it before anything else.
    match round.settle_intent(&token).await? {
        Settled::Done => {}
        Settled::Uncertain(health) => {
            return round.finish(None, health, Requeue::await_change()).await;
        }
        Settled::Api(err) => {
            return round
                .api_failed(err, "look for a deployment whose create answer was lost")
                .await;
        }
    }

    let observed = match round.observe(&token).await {
        Ok(observed) => observed,
        Err(err) => return round.api_failed(err, "read the deployment").await,
    };
    // A deployment taken over through `git.dev/deployment-id`: it stands for the spec as it
    // is now, so that a later change of spec supersedes it like any other.
    if let Observed::Found(d) = &observed
        && round.state.fingerprint.is_none()
    {
        round.state.fingerprint = Some(desired.fingerprint.clone());
        round.save_state().await?;
        round
            .event(
                EventType::Normal,
                "Adopted",
                &format!("adopted existing deployment {} ({})", d.id, d.status),
            )
            .await;
    }
    let action = decision::decide(&desired, &round.state.memory(), &observed);
    tracing::debug!(object = %round.name(), namespace = %round.namespace, ?action, "decided");
    let observed = match action {
        Action::Create { supersede } => {
            if let Some(id) = supersede
                && let Err(err) = round.cancel(&token, &id, CancelReason::Superseded).await
            {
                return round
                    .api_failed(err, "cancel the superseded deployment")
                    .await;
            }
            let _pending = ctx.create_pending(&token);
            match round.create(&token, &env, &desired.fingerprint).await {
                Ok(observed) => observed,
                Err(err) => return round.api_failed(err, "create the deployment").await,
            }
        }
        Action::Cancel { id, reason } => match round.cancel(&token, &id, reason).await {
            Ok(observed) => observed,
            Err(err) => return round.api_failed(err, "cancel the deployment").await,
        },
        Action::Wait { .. } | Action::Cleanup { .. } | Action::Release => observed,
    };
    round.prune_history(&token).await;
    let health = decision::health(&desired, &round.state.memory(), &observed);
    let requeue = match decision::decide(&desired, &round.state.memory(), &observed) {
        // Finished according to the listing: fetch what only a GET tells, soon but after
        // creates and cancels (the client serves observation last).
        Action::Wait { .. } if details_pending(&observed) => {
            Requeue::requeue(jitter(Duration::from_secs(2)))
        }
        Action::Wait {
            recheck: Some(decision::EXISTENCE_CHECK),
        } => Requeue::requeue(jitter(ctx.existence_check)),
        Action::Wait {
            recheck: Some(after),
        } => Requeue::requeue(jitter(after)),
        Action::Wait { recheck: None } => Requeue::await_change(),
        // Something is still due (e.g. a create after a cancel); come back soon.
        _ => Requeue::requeue(Duration::from_secs(1)),
    };
    round.finish(Some(&observed), health, requeue).await
}

async fn cleanup<A: DeploymentsApi>(
    obj: &GitDeployment,
    ctx: &Context<A>,
) -> Result<Requeue, Error> {
    let mut round = Round::new(obj, ctx)?;
    tracing::info!(object = %round.name(), namespace = %round.namespace, state = ?round.state, policy = ?obj.spec.deletion_policy, "cleaning up before deletion");
    let desired = Desired {
        fingerprint: String::new(),
        cancel: obj.spec.cancel,
        deletion_policy: obj.spec.deletion_policy,
        deleting: true,
    };
    let nothing_made =
        round.state.id.is_none() && round.state.history.is_empty() && round.state.intent.is_none();
    if nothing_made {
        return Ok(Requeue::await_change());
    }
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        let ids: Vec<_> = round
            .state
            .id
            .iter()
            .chain(&round.state.history)
            .cloned()
            .collect();
        round
            .event(
                EventType::Normal,
                "Orphaned",
                &format!(
                    "deletionPolicy is Orphan: left remote deployments {} in place",
                    ids.join(", ")
                ),
            )
            .await;
        return Ok(Requeue::await_change());
    }
    let secrets = round.read_secrets().await?;
    let creds = obj.spec.credentials_or(&ctx.default_credentials);
    let token = match secrets::token_from(secrets.get(&creds.name), &creds) {
        Ok(token) => token,
        Err(problem) => {
            return round
                .cleanup_blocked(problem.health(&round.namespace))
                .await;
        }
    };
    // A create in flight may have made a deployment: it must be found to be deleted.
    match round.settle_intent(&token).await? {
        Settled::Done => {}
        Settled::Uncertain(health) => return round.cleanup_blocked(health).await,
        Settled::Api(err) => return round.cleanup_failed(err).await,
    }
    let observed = match round.observe(&token).await {
        Ok(observed) => observed,
        Err(err) => return round.cleanup_failed(err).await,
    };
    let Action::Cleanup { ids } = decision::decide(&desired, &round.state.memory(), &observed)
    else {
        return Ok(Requeue::await_change());
    };
    let in_progress = |id: &str| match &observed {
        Observed::Found(d) if d.id == id => !d.status.is_terminal(),
        // Unknown: a cancel is cheap and a 409 or 404 is harmless.
        _ => round.history_status(id).is_none_or(|s| !s.is_terminal()),
    };
    for id in &ids {
        if in_progress(id) {
            match ctx.api.cancel(&token, id).await {
                Ok(_) => {}
                Err(e) if matches!(e.status(), Some(404 | 409)) => {}
                Err(err) => return round.cleanup_failed(err).await,
            }
        }
        match ctx.api.delete(&token, id).await {
            Ok(()) => {
                round
                    .event(
                        EventType::Normal,
                        "Deleted",
                        &format!("deleted remote deployment {id}"),
                    )
                    .await
            }
            Err(e) if e.is_not_found() => {}
            Err(err) => return round.cleanup_failed(err).await,
        }
    }
    Ok(Requeue::await_change())
}

enum Found {
    None,
    One(String),
    Several(Vec<String>),
}

/// Outcome of settling a create whose answer was lost.
enum Settled {
    /// Adopted, or provably never made: go on.
    Done,
    /// Several deployments could be it: a human chooses.
    Uncertain(Health),
    Api(ApiError),
}

impl<'a, A: DeploymentsApi> Round<'a, A> {
    fn new(obj: &GitDeployment, ctx: &'a Context<A>) -> Result<Self, Error> {
        let namespace = obj.namespace().ok_or(Error::MissingNamespace)?;
        Ok(Round {
            ctx,
            api: Api::namespaced(ctx.client.clone(), &namespace),
            namespace,
            state: State::of(obj),
            obj: obj.clone(),
        })
    }

    fn name(&self) -> String {
        self.obj.name_any()
    }

    async fn read_secrets(&self) -> Result<BTreeMap<String, Secret>, Error> {
        let api = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        secrets::read_all(&api, &self.obj.spec, &self.ctx.default_credentials)
            .await
            .map_err(|source| Error::ReadSecrets {
                namespace: self.namespace.clone(),
                source,
            })
    }

    fn fingerprint(&self, env: &BTreeMap<String, String>) -> String {
        let spec = &self.obj.spec;
        let inputs = DeploymentInputs {
            project_id: &spec.project_id,
            branch: &spec.branch,
            commit_sha: spec.commit_sha.as_deref(),
            env,
            redeploy: spec.redeploy.as_deref(),
        };
        // Without an operator-wide key, the object's UID keys the hash: still no secret value
        // on the object in clear, but a guessable value could be checked by a reader of it.
        let uid = self.obj.metadata.uid.clone().unwrap_or_default();
        let key = self
            .ctx
            .fingerprint_key
            .as_deref()
            .unwrap_or(uid.as_bytes());
        state::fingerprint(key, &inputs)
    }

    /// The tracked deployment as it is now. An in-flight one whose details are already mirrored
    /// is observed through the token's shared listing (one call covers up to 100 objects). When
    /// the listing says it finished, that is mirrored at once (the object is Ready without
    /// waiting for budget), and the details only a GET gives (completion time, build duration)
    /// follow at observation priority: see `details_pending`.
    async fn observe(&self, token: &ApiToken) -> Result<Observed, ApiError> {
        if let Some(mirrored) = self.mirrored() {
            let observed = Observed::Found(Box::new(mirrored));
            // Creates first: what is mirrored stands until they are done. Then the listing that
            // makes the other objects Ready, before the details of finished ones.
            let defer_details = details_pending(&observed)
                && self.ctx.observer.in_flight(token)
                && self.finished_for() < DETAILS_DEFERRAL;
            if self.ctx.creates_pending(token) || defer_details {
                return Ok(observed);
            }
        }
        if let Some(mirrored) = self.mirrored().filter(|m| !m.status.is_terminal()) {
            let max_age = decision::poll_interval(mirrored.status).min(self.ctx.observe_max_age);
            let seen = self
                .ctx
                .observer
                .status(
                    &self.ctx.api,
                    token,
                    &mirrored.id,
                    mirrored.created_at,
                    max_age,
                )
                .await?;
            if let Some(Seen::Status(status)) = seen {
                return Ok(Observed::Found(Box::new(DeploymentDetails {
                    status,
                    ..mirrored
                })));
            }
        }
        self.read(token).await
    }

    /// The tracked deployment, read with a GET.
    async fn read(&self, token: &ApiToken) -> Result<Observed, ApiError> {
        let Some(id) = self.state.id.clone() else {
            return Ok(Observed::Untracked);
        };
        match self.ctx.api.get(token, &id).await {
            Ok(d) => Ok(Observed::Found(Box::new(d))),
            Err(e) if e.is_not_found() => Ok(Observed::Missing { id }),
            Err(e) => Err(e),
        }
    }

    /// How long ago the object's conditions last changed (when it turned Ready or Stalled).
    fn finished_for(&self) -> Duration {
        let since = self
            .obj
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.last_transition_time.0);
        since.map_or(Duration::ZERO, |t| {
            Timestamp::now().duration_since(t).unsigned_abs()
        })
    }

    /// What `.status` already mirrors of the tracked deployment.
    fn mirrored(&self) -> Option<DeploymentDetails> {
        let id = self.state.id.as_deref()?;
        let s = self.obj.status.as_ref()?;
        if s.deployment_id.as_deref() != Some(id) {
            return None;
        }
        let status: Remote = s.status.as_deref()?.parse().ok()?;
        Some(DeploymentDetails {
            id: id.to_string(),
            status,
            project_id: self.obj.spec.project_id.clone(),
            branch: self.obj.spec.branch.clone(),
            commit_sha: s.commit_sha.clone()?,
            build_duration: s.build_duration.clone(),
            deploy_url: s.url.clone()?,
            logs_url: s.logs_url.clone().unwrap_or_default(),
            created_at: s.created_at.as_ref()?.0,
            completed_at: s.completed_at.as_ref().map(|t| t.0),
            cancelled_by: s.cancelled_by.clone(),
            cancelled_at: s.cancelled_at.as_ref().map(|t| t.0),
        })
    }

    /// Record the intent, send the create, record the id: in that order, each durable before
    /// the next, so that no crash can leave a deployment the object does not know to look for.
    async fn create(
        &mut self,
        token: &ApiToken,
        env: &BTreeMap<String, String>,
        fingerprint: &str,
    ) -> Result<Observed, ApiError> {
        let gate = self.ctx.create_gate(token, &self.obj.spec.branch);
        self.state.intent = Some(Intent {
            fingerprint: fingerprint.to_string(),
            at: Timestamp::now(),
        });
        if let Err(e) = self.save_state().await {
            // Nothing was sent: the next reconcile starts over.
            return Err(ApiError::Transport {
                endpoint: crate::api::Endpoint::Create,
                message: format!("not sent: recording the intent failed: {e}"),
            });
        }
        let spec = &self.obj.spec;
        let request = CreateDeploymentRequest {
            project_id: spec.project_id.clone(),
            branch: spec.branch.clone(),
            commit_sha: spec.commit_sha.clone(),
            env_vars: (!env.is_empty()).then(|| env.clone()),
        };
        let answer = {
            let _one_at_a_time = gate.lock().await;
            let answer = self.ctx.api.create(token, &request).await;
            if let Ok(created) = &answer {
                let uid = self.obj.metadata.uid.clone().unwrap_or_default();
                self.ctx.note_created(&created.id, &uid);
            }
            answer
        };
        match answer {
            Ok(created) => {
                self.state
                    .replace_current(created.id.clone(), fingerprint.to_string());
                // The deployment exists whatever happens next; the intent left in place on a
                // failed write is resolved by `find_created` on the next reconcile.
                if let Err(e) = self.save_state().await {
                    tracing::warn!(id = %created.id, error = %e, "recording a created deployment failed; it will be found again through its intent");
                }
                self.event(
                    EventType::Normal,
                    "Created",
                    &format!(
                        "created deployment {} of {}@{}",
                        created.id, created.branch, created.commit_sha
                    ),
                )
                .await;
                Ok(Observed::Found(Box::new(DeploymentDetails {
                    logs_url: String::new(),
                    deploy_url: created.url.clone(),
                    id: created.id,
                    status: created.status,
                    project_id: created.project_id,
                    branch: created.branch,
                    commit_sha: created.commit_sha,
                    build_duration: None,
                    created_at: created.created_at,
                    completed_at: None,
                    cancelled_by: None,
                    cancelled_at: None,
                })))
            }
            Err(e) if e.class() == crate::api::ErrorClass::OutcomeUnknown => Err(e),
            Err(e) => {
                // The API refused (or never received) the request: no deployment was made.
                self.state.intent = None;
                let _ = self.save_state().await;
                Err(e)
            }
        }
    }

    async fn cancel(
        &mut self,
        token: &ApiToken,
        id: &str,
        reason: CancelReason,
    ) -> Result<Observed, ApiError> {
        match self.ctx.api.cancel(token, id).await {
            Ok(_) => {
                if reason == CancelReason::Requested {
                    self.state.cancel_requested = true;
                    self.save_state().await.map_err(|e| ApiError::Transport {
                        endpoint: crate::api::Endpoint::Cancel,
                        message: format!("cancelled, but recording it failed: {e}"),
                    })?;
                }
                let (event_reason, why) = match reason {
                    CancelReason::Requested => ("Cancelled", "spec.cancel is true"),
                    CancelReason::Superseded => ("Superseded", "the deployment spec changed"),
                };
                self.event(
                    EventType::Normal,
                    event_reason,
                    &format!("cancelled deployment {id}: {why}"),
                )
                .await;
                // The cancel answer lacks urls and times: read the whole deployment back.
                self.read(token).await
            }
            // Finished in the meantime, or gone: read what it is now.
            Err(e) if matches!(e.status(), Some(404 | 409)) => self.read(token).await,
            Err(e) => Err(e),
        }
    }

    /// Settles a create whose answer never reached the object: a human's choice (the
    /// `git.dev/deployment-id` annotation naming a deployment this object does not know yet),
    /// else the one deployment it can only be, else provably none.
    async fn settle_intent(&mut self, token: &ApiToken) -> Result<Settled, Error> {
        let Some(intent) = self.state.intent.clone() else {
            return Ok(Settled::Done);
        };
        let chosen = self
            .obj
            .annotations()
            .get(ANNOTATION_DEPLOYMENT_ID)
            .map(|id| id.trim().to_string())
            .filter(|id| {
                !id.is_empty()
                    && self.state.id.as_ref() != Some(id)
                    && !self.state.history.contains(id)
            });
        if let Some(id) = chosen {
            self.state
                .replace_current(id.clone(), intent.fingerprint.clone());
            self.save_state().await?;
            self.event(
                EventType::Normal,
                "Adopted",
                &format!("adopted deployment {id} named by annotation {ANNOTATION_DEPLOYMENT_ID}"),
            )
            .await;
            return Ok(Settled::Done);
        }
        // Not while a create of the same token and branch is in flight: its deployment could
        // exist remotely and be claimed by no one yet.
        let gate = self.ctx.create_gate(token, &self.obj.spec.branch);
        let _alone = gate.lock().await;
        match self.find_created(token, &intent).await {
            Ok(Found::One(id)) => {
                self.state
                    .replace_current(id.clone(), intent.fingerprint.clone());
                self.save_state().await?;
                self.event(
                    EventType::Normal,
                    "Adopted",
                    &format!("found deployment {id} whose create answer was lost; adopted it instead of creating another"),
                )
                .await;
                Ok(Settled::Done)
            }
            Ok(Found::None) => {
                self.state.intent = None;
                self.save_state().await?;
                Ok(Settled::Done)
            }
            Ok(Found::Several(ids)) => Ok(Settled::Uncertain(Health::stalled(
                "CreationUncertain",
                format!(
                    "a create's answer was lost and several deployments could be it ({}): set annotation {ANNOTATION_DEPLOYMENT_ID} to the one to keep and delete the others remotely",
                    ids.join(", ")
                ),
            ))),
            Err(err) => Ok(Settled::Api(err)),
        }
    }

    /// Looks for the deployment a lost create may have made: newest first, same branch,
    /// created after the intent, right commit, claimed by no other object.
    async fn find_created(&self, token: &ApiToken, intent: &Intent) -> Result<Found, ApiError> {
        let since = intent.at - CLOCK_SKEW;
        let claimed = self.ctx.claimed_ids(&self.obj);
        // The current and earlier deployments of this object are known not to be it (the
        // current one is being superseded when a create is in flight).
        let ours =
            |id: &String| self.state.id.as_ref() == Some(id) || self.state.history.contains(id);
        let candidates: Vec<String> = list_newest_back_to(&self.ctx.api, token, since)
            .await?
            .into_iter()
            .filter(|d| d.created_at >= since && d.branch == self.obj.spec.branch)
            .map(|d| d.id)
            .filter(|id| !claimed.contains(id) && !ours(id))
            .collect();
        let mut matching = Vec::new();
        for id in candidates {
            let d = self.ctx.api.get(token, &id).await?;
            let commit_ok = self
                .obj
                .spec
                .commit_sha
                .as_deref()
                .is_none_or(|c| d.commit_sha.starts_with(c));
            if commit_ok && d.project_id == self.obj.spec.project_id {
                matching.push(id);
            }
        }
        Ok(match matching.len() {
            0 => Found::None,
            1 => Found::One(matching.remove(0)),
            _ => Found::Several(matching),
        })
    }

    /// Deletes, remotely, the oldest history beyond `historyLimit`.
    async fn prune_history(&mut self, token: &ApiToken) {
        let limit = self.obj.spec.history_limit();
        while self.state.history.len() > limit {
            let Some(oldest) = self.state.history.last().cloned() else {
                break;
            };
            match self.ctx.api.delete(token, &oldest).await {
                Ok(()) => {
                    self.event(
                        EventType::Normal,
                        "Pruned",
                        &format!("deleted remote deployment {oldest}: beyond historyLimit {limit}"),
                    )
                    .await
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::info!(id = %oldest, error = %e, "pruning history failed; will retry");
                    break;
                }
            }
            self.state.history.pop();
        }
        if let Err(e) = self.save_state().await {
            tracing::info!(error = %e, "recording pruned history failed; will retry");
        }
    }

    fn history_status(&self, id: &str) -> Option<Remote> {
        let status = self.obj.status.as_ref()?;
        let s = status
            .history
            .iter()
            .find(|h| h.deployment_id == id)?
            .status
            .as_deref()?;
        s.parse().ok()
    }

    /// Writes `git.dev/state` when it changed, with the object's resourceVersion as a
    /// precondition: a concurrent change makes this fail rather than be overwritten.
    async fn save_state(&mut self) -> Result<(), Error> {
        if self.state.is_recorded_on(&self.obj) {
            return Ok(());
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": self.obj.resource_version(),
                "annotations": { state::ANNOTATION_STATE: self.state.to_annotation() }
            }
        });
        let updated = self
            .api
            .patch(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::WriteState {
                namespace: self.namespace.clone(),
                name: self.name(),
                source,
            })?;
        self.ctx.metrics.kubernetes_write("state");
        self.obj = updated;
        Ok(())
    }

    /// A Secret problem: tell the user, then wait for the Secret or the spec to change.
    async fn blocked(&mut self, problem: SecretProblem) -> Result<Requeue, Error> {
        let health = problem.health(&self.namespace);
        self.finish(None, health, Requeue::await_change()).await
    }

    async fn api_failed(&mut self, err: ApiError, action: &str) -> Result<Requeue, Error> {
        self.ctx.metrics.api_failure(err.category());
        match decision::recovery(&err, action) {
            Recovery::Stall(health) => self.finish(None, health, Requeue::await_change()).await,
            Recovery::RetryAfter(health, after) => {
                self.finish(None, health, Requeue::requeue(after)).await
            }
            Recovery::Reconcile(health) => {
                self.finish(None, health, Requeue::requeue(Duration::from_secs(1)))
                    .await
            }
            Recovery::Backoff(health) => {
                self.finish(None, health, Requeue::await_change()).await?;
                Err(Error::Api {
                    action: action.to_string(),
                    source: err,
                })
            }
        }
    }

    async fn cleanup_blocked(&mut self, health: Health) -> Result<Requeue, Error> {
        let grace = self.ctx.cleanup_grace;
        let deleting_for = self
            .obj
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs())
            .unwrap_or_default();
        if deleting_for >= grace {
            let ids: Vec<_> = self
                .state
                .id
                .iter()
                .chain(&self.state.history)
                .cloned()
                .collect();
            self.event(
                EventType::Warning,
                "CleanupAbandoned",
                &format!(
                    "could not delete remote deployments {} for {}s ({}): orphaned them so that deletion can complete; delete them in the git.dev dashboard",
                    ids.join(", "),
                    grace.as_secs(),
                    health_message(&health)
                ),
            )
            .await;
            return Ok(Requeue::await_change());
        }
        let message = format!(
            "deletion is waiting to delete remote deployments: {}; the remote deployments are orphaned after {}s",
            health_message(&health),
            grace.as_secs()
        );
        let blocked = Health::stalled("CleanupBlocked", message);
        self.finish(None, blocked, Requeue::await_change()).await?;
        // Not Ok: the finalizer helper removes the finalizer on any Ok from cleanup.
        Err(Error::CleanupPending {
            namespace: self.namespace.clone(),
            name: self.name(),
            retry_after: Duration::from_secs(10).min(grace),
        })
    }

    async fn cleanup_failed(&mut self, err: ApiError) -> Result<Requeue, Error> {
        self.ctx.metrics.api_failure(err.category());
        match decision::recovery(&err, "delete remote deployments") {
            Recovery::Stall(health) => self.cleanup_blocked(health).await,
            Recovery::RetryAfter(health, after) => {
                self.finish(None, health, Requeue::await_change()).await?;
                Err(Error::CleanupPending {
                    namespace: self.namespace.clone(),
                    name: self.name(),
                    retry_after: after,
                })
            }
            Recovery::Backoff(health) | Recovery::Reconcile(health) => {
                self.finish(None, health, Requeue::await_change()).await?;
                Err(Error::Api {
                    action: "delete remote deployments".into(),
                    source: err,
                })
            }
        }
    }

    /// Mirrors status (only when it changed) and tells the user about a new problem once.
    async fn finish(
        &mut self,
        observed: Option<&Observed>,
        health: Health,
        requeue: Requeue,
    ) -> Result<Requeue, Error> {
        let previous = self.obj.status.clone().unwrap_or_default();
        let status = build_status(&self.obj, &self.state, observed, &health, Timestamp::now());
        let previous_reason = ready_reason(&previous);
        if previous_reason.as_deref() != Some(health.reason()) {
            self.announce(&health).await;
        }
        if status != previous {
            let patch = json!({
                "apiVersion": "git.dev/v1alpha1",
                "kind": "Deployment",
                "status": status,
            });
            // Later writes of this reconcile carry the new resourceVersion.
            self.obj = self
                .api
                .patch_status(
                    &self.name(),
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map_err(|source| Error::WriteStatus {
                    namespace: self.namespace.clone(),
                    name: self.name(),
                    source,
                })?;
            self.ctx.metrics.kubernetes_write("status");
        }
        Ok(requeue)
    }

    async fn announce(&self, health: &Health) {
        match health {
            Health::Stalled { reason, message } => {
                self.event(EventType::Warning, reason, message).await
            }
            Health::Progressing { reason, message }
                if reason == "RateLimited" || reason == "ApiUnavailable" =>
            {
                self.event(EventType::Warning, reason, message).await
            }
            Health::Ready { reason, message } if reason == "Succeeded" => {
                self.event(EventType::Normal, "DeploymentSucceeded", message)
                    .await
            }
            _ => {}
        }
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&event, &self.obj.object_ref(&()))
            .await
        {
            tracing::warn!(reason, error = %e, "publishing an event failed");
        }
    }
}

/// A finished deployment whose completion details were not read yet.
fn details_pending(observed: &Observed) -> bool {
    match observed {
        Observed::Found(d) => match d.status {
            Remote::Success | Remote::Failed => d.completed_at.is_none(),
            Remote::Cancelled => d.cancelled_at.is_none(),
            _ => false,
        },
        _ => false,
    }
}

fn health_message(h: &Health) -> &str {
    match h {
        Health::Ready { message, .. }
        | Health::Progressing { message, .. }
        | Health::Stalled { message, .. } => message,
    }
}

fn ready_reason(status: &GitDeploymentStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

/// Small random spread so that many objects created together do not poll in lockstep.
fn jitter(d: Duration) -> Duration {
    let spread = d.as_millis() as u64 / 10;
    if spread == 0 {
        return d;
    }
    d + Duration::from_millis(rand::random_range(0..=spread))
}

/// The whole status, from what was observed in this reconcile. `observed == None` means the
/// remote deployment was not looked at this time: its mirrored fields are kept as they were.
pub fn build_status(
    obj: &GitDeployment,
    state: &State,
    observed: Option<&Observed>,
    health: &Health,
    now: Timestamp,
) -> GitDeploymentStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let mut status = GitDeploymentStatus {
        observed_generation: obj.metadata.generation,
        history: history(&previous, state),
        spec_fingerprint: state.fingerprint.clone(),
        deployment_id: state.id.clone(),
        ..GitDeploymentStatus::default()
    };
    match observed {
        None => {
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
        Some(Observed::Missing { id }) => {
            status.deployment_id = Some(id.clone());
            status.status = Some("deleted".into());
        }
        Some(Observed::Untracked) => {}
        Some(Observed::Found(d)) => {
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
                message: c.message.clone(),
                observed_generation: obj.metadata.generation,
                last_transition_time,
            }
        })
        .collect();
    status
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
