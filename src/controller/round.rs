//! One reconcile of one object: what it read once (the object, its state), and every write it
//! makes to Kubernetes: the state annotation, the status, events. The other steps act through
//! it, so that each write carries the resourceVersion of the one before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::decision::{self, Health, Observed, Recovery};
use super::desired::{DesiredDeployment, Stamp};
use super::events::{Event, EventType};
use super::failure::fit_note;
use super::secrets::{self, SecretProblem};
use super::state::{self, State, Trust};
use super::status::{build_status, ready_reason};
use super::{Context, Error};
use crate::api::{ApiError, ApiToken, DeploymentsApi};
use crate::resource::{DeploymentFailure, Exported, FINALIZER, GitDeployment};

/// Field manager of every write the operator makes.
pub const MANAGER: &str = "gitdev-operator";

/// Everything one reconcile of an object needs, read once.
pub(super) struct Round<'a, A: DeploymentsApi> {
    pub ctx: &'a Context<A>,
    pub obj: GitDeployment,
    pub namespace: String,
    api: Api<GitDeployment>,
    pub state: State,
    /// Whether `state` is the operator's own, signed for this object.
    pub trust: Trust,
    /// The build log of a failed deployment, read in this round (`failure.rs`): news for the
    /// status and for an event.
    pub failure: Option<DeploymentFailure>,
    /// A live object without the cleanup finalizer yet: it goes in with the first write of
    /// `git.dev/state` (the intent of the first create, an adoption), so that it is in place
    /// before anything exists remotely, at no cost of its own; or at the end of a round whose
    /// state names something remote.
    finalizer_due: bool,
    /// What `export.rs` exported in this round (`Some(None)`: no longer exports), for the
    /// status written at the end.
    pub exported: Option<Option<Exported>>,
    /// The tracked deployment was not observed in this round: its token's creates go first
    /// (`observe`). A listing wakes the object if it finds the deployment finished.
    pub observation_deferred: AtomicBool,
}

impl<'a, A: DeploymentsApi> Round<'a, A> {
    pub fn new(obj: &GitDeployment, ctx: &'a Context<A>) -> Result<Self, Error> {
        let namespace = obj.namespace().ok_or(Error::MissingNamespace)?;
        let (state, trust) = State::read(obj, &ctx.config.keys());
        Ok(Round {
            ctx,
            api: Api::namespaced(ctx.client.clone(), &namespace),
            namespace,
            state,
            trust,
            finalizer_due: obj.metadata.deletion_timestamp.is_none()
                && !obj.finalizers().iter().any(|f| f == FINALIZER),
            obj: obj.clone(),
            failure: None,
            exported: None,
            observation_deferred: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> String {
        self.obj.name_any()
    }

    /// Every Secret the object refers to, by name.
    pub async fn read_secrets(&self) -> Result<BTreeMap<String, Arc<Secret>>, Error> {
        let api = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let cache = &self.ctx.secrets;
        let metrics = &self.ctx.metrics;
        let default = &self.ctx.config.default_credentials;
        secrets::read_all(
            &api,
            cache,
            metrics,
            &self.namespace,
            &self.obj.spec,
            default,
        )
        .await
        .map_err(|source| Error::ReadSecrets {
            namespace: self.namespace.clone(),
            source,
        })
    }

    /// The API token, or the Secret problem that keeps the object from having one.
    pub fn token(
        &self,
        secrets: &BTreeMap<String, Arc<Secret>>,
    ) -> Result<ApiToken, SecretProblem> {
        let creds = self
            .obj
            .spec
            .credentials_or(&self.ctx.config.default_credentials);
        secrets::token_from(secrets.get(&creds.name).map(Arc::as_ref), &creds)
    }

    /// A fingerprint stamped under another key or an older format, for the spec as it still
    /// is, is renewed: the deployment stands; nothing is redeployed.
    pub async fn restamp(
        &mut self,
        desired: &DesiredDeployment,
        fingerprint: &str,
    ) -> Result<(), Error> {
        let Some(stored) = self.state.fingerprint.as_deref() else {
            return Ok(());
        };
        let uid = self.obj.metadata.uid.as_deref().unwrap_or_default();
        let legacy: Vec<&[u8]> = (self.ctx.config.legacy_fingerprint_keys.iter())
            .map(Vec::as_slice)
            .chain([uid.as_bytes()])
            .collect();
        let stamp = desired.compare(stored, &self.ctx.config.key, &legacy);
        if stamp == Stamp::Restamp {
            tracing::info!(object = %self.name(), namespace = %self.namespace, "re-stamping a fingerprint made under another key or format");
            self.state.fingerprint = Some(fingerprint.to_string());
            self.save_state().await?;
        }
        Ok(())
    }

    /// Takes `id` as the object's deployment, made for the spec of `fingerprint`: a deployment
    /// named by the adoption annotation, found after a lost create answer, or tracked already
    /// but of unknown spec.
    pub async fn adopt(&mut self, id: &str, fingerprint: &str, why: &str) -> Result<(), Error> {
        if self.state.id.as_deref() == Some(id) {
            self.state.fingerprint = Some(fingerprint.to_string());
        } else {
            self.state
                .replace_current(id.to_string(), fingerprint.to_string());
        }
        self.save_state().await?;
        self.event(EventType::Normal, "Adopted", why).await;
        Ok(())
    }

    /// Writes `git.dev/state` when it changed, with the object's resourceVersion as a
    /// precondition: a concurrent change makes this fail rather than be overwritten.
    pub async fn save_state(&mut self) -> Result<(), Error> {
        let key = &self.ctx.config.key;
        if self.state.is_recorded_on(&self.obj, key) {
            return Ok(());
        }
        self.may_write("state annotation")?;
        let mut patch = json!({
            "metadata": {
                "resourceVersion": self.obj.resource_version(),
                "annotations": { state::ANNOTATION_STATE: self.state.to_annotation(&self.obj, key) }
            }
        });
        if self.finalizer_due {
            // A merge patch replaces the whole list: the resourceVersion precondition keeps
            // it from dropping a finalizer someone else added meanwhile.
            let mut finalizers = self.obj.finalizers().to_vec();
            finalizers.push(FINALIZER.to_string());
            patch["metadata"]["finalizers"] = json!(finalizers);
        }
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
        if let Some(id) = &self.state.id {
            self.ctx.coordination.note_recorded(id);
        }
        self.obj = updated;
        self.trust = Trust::Signed;
        self.finalizer_due = false;
        Ok(())
    }

    /// Refuses a Kubernetes write once this replica no longer holds the leader Lease.
    fn may_write(&self, write: &'static str) -> Result<(), Error> {
        if self.ctx.api.may_write() {
            Ok(())
        } else {
            Err(Error::NotLeading {
                namespace: self.namespace.clone(),
                name: self.name(),
                write,
            })
        }
    }

    /// Adds the cleanup finalizer, if no state write of this round carried it (a JSON patch
    /// guarded by a test of the list as read, as kube-runtime's finalizer helper makes it).
    /// Not while the object has made nothing remote: there is nothing to clean up, and on a
    /// Starter token hundreds of objects waiting for budget to create would each spend a
    /// write of their own on it (it rides on the intent of their first create instead).
    async fn ensure_finalizer(&mut self) -> Result<(), Error> {
        if !self.finalizer_due || !decision::made_anything(&self.state) {
            return Ok(());
        }
        self.may_write("finalizer")?;
        let ops = match self.obj.metadata.finalizers.as_deref() {
            None | Some([]) => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ]),
            Some(current) => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ]),
        };
        let ops: json_patch::Patch =
            serde_json::from_value(ops).map_err(|e| Error::AddFinalizer {
                namespace: self.namespace.clone(),
                name: self.name(),
                source: kube::Error::SerdeError(e),
            })?;
        let updated = self
            .api
            .patch(
                &self.name(),
                &PatchParams::default(),
                &Patch::<()>::Json(ops),
            )
            .await
            .map_err(|source| Error::AddFinalizer {
                namespace: self.namespace.clone(),
                name: self.name(),
                source,
            })?;
        self.ctx.metrics.kubernetes_write("finalizer");
        self.obj = updated;
        self.finalizer_due = false;
        Ok(())
    }

    /// A Secret problem: tell the user, then wait for the Secret or the spec to change.
    pub async fn blocked(&mut self, problem: SecretProblem) -> Result<Requeue, Error> {
        let health = problem.health(&self.namespace);
        self.finish(&Observed::Unread, health, Requeue::await_change())
            .await
    }

    /// An API call of a live object failed while trying to `action`: a condition, and the
    /// retry `decision::recovery` chose.
    pub async fn api_failed(&mut self, err: ApiError, action: &str) -> Result<Requeue, Error> {
        self.ctx.metrics.api_failure(err.category());
        let unread = &Observed::Unread;
        match decision::recovery(&err, action) {
            Recovery::Stall(health) => self.finish(unread, health, Requeue::await_change()).await,
            Recovery::RetryAfter(health, after) => {
                self.finish(unread, health, Requeue::requeue(after)).await
            }
            Recovery::Reconcile(health) => {
                self.finish(unread, health, Requeue::requeue(Duration::from_secs(1)))
                    .await
            }
            Recovery::Backoff(health) => {
                self.finish(unread, health, Requeue::await_change()).await?;
                Err(Error::Api {
                    action: action.to_string(),
                    source: err,
                })
            }
        }
    }

    /// Cleanup cannot go on: keep the finalizer and say why, until the grace period is over;
    /// then orphan what is left, with a Warning naming it, so that deletion can complete.
    pub async fn cleanup_blocked(&mut self, health: Health) -> Result<Requeue, Error> {
        let grace = self.ctx.config.cleanup_grace;
        let deleting_for = self
            .obj
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs())
            .unwrap_or_default();
        if deleting_for >= grace {
            let ids = self.state.ids();
            tracing::warn!(object = %self.name(), namespace = %self.namespace, left_behind = ?ids, reason = %health.message(), "cleanup abandoned after the grace period: these remote deployments stay");
            self.event(
                EventType::Warning,
                "CleanupAbandoned",
                &format!(
                    "could not delete remote deployments {} for {}s ({}): orphaned them so that deletion can complete; delete them in the git.dev dashboard",
                    ids.join(", "),
                    grace.as_secs(),
                    health.message()
                ),
            )
            .await;
            return Ok(Requeue::await_change());
        }
        let message = format!(
            "deletion is waiting to delete remote deployments: {}; the remote deployments are orphaned after {}s",
            health.message(),
            grace.as_secs()
        );
        let blocked = Health::stalled("CleanupBlocked", message);
        self.finish(&Observed::Unread, blocked, Requeue::await_change())
            .await?;
        // Not Ok: the finalizer helper removes the finalizer on any Ok from cleanup.
        Err(self.cleanup_pending(Duration::from_secs(10).min(grace)))
    }

    /// An API call of the cleanup failed.
    pub async fn cleanup_failed(&mut self, err: ApiError) -> Result<Requeue, Error> {
        self.ctx.metrics.api_failure(err.category());
        match decision::recovery(&err, "delete remote deployments") {
            Recovery::Stall(health) => self.cleanup_blocked(health).await,
            Recovery::RetryAfter(health, after) => {
                self.finish(&Observed::Unread, health, Requeue::await_change())
                    .await?;
                Err(self.cleanup_pending(after))
            }
            Recovery::Backoff(health) | Recovery::Reconcile(health) => {
                self.finish(&Observed::Unread, health, Requeue::await_change())
                    .await?;
                Err(Error::Api {
                    action: "delete remote deployments".into(),
                    source: err,
                })
            }
        }
    }

    /// Keeps the finalizer and comes back after `retry_after`, without counting as a failure.
    pub fn cleanup_pending(&self, retry_after: Duration) -> Error {
        Error::CleanupPending {
            namespace: self.namespace.clone(),
            name: self.name(),
            retry_after,
        }
    }

    /// Mirrors status (only when it changed) and tells the user about a new problem once.
    pub async fn finish(
        &mut self,
        observed: &Observed,
        health: Health,
        requeue: Requeue,
    ) -> Result<Requeue, Error> {
        self.ensure_finalizer().await?;
        let previous = self.obj.status.clone().unwrap_or_default();
        let read = self.failure.take();
        let mut status = build_status(
            &self.obj,
            &self.state,
            observed,
            &health,
            read.as_ref(),
            Timestamp::now(),
        );
        if let Some(exported) = self.exported.take() {
            status.exported = exported;
        }
        match &read {
            // A build log read now is news even when the object was already DeploymentFailed
            // (an earlier read failed). Its own action per deployment: the recorder would fold
            // it into an earlier deployment's series, which keeps that one's note.
            Some(f) if health.reason() == "DeploymentFailed" => {
                let action = format!("ReadBuildLog {}", decision::cut(&f.deployment_id, 100));
                self.event_of(
                    EventType::Warning,
                    health.reason(),
                    &action,
                    health.message(),
                )
                .await;
            }
            _ if ready_reason(&previous) != Some(health.reason()) => self.announce(&health).await,
            _ => {}
        }
        if status != previous {
            self.may_write("status")?;
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
            // `note_mirrored` keeps the answer unless this process saw the id's state write land.
            if let Some(id) = status.deployment_id.as_deref()
                && self.state.id.as_deref() == Some(id)
            {
                self.ctx.coordination.note_mirrored(id);
            }
            if status.status.is_some() && status.status != previous.status {
                self.ctx.metrics.remote_transition();
            }
            self.ctx.metrics.status_written(&previous, &status);
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

    pub async fn event(&self, type_: EventType, reason: &str, note: &str) {
        self.event_of(type_, reason, reason, note).await
    }

    /// An event whose action differs from its reason: the recorder folds events of the same
    /// type, reason and action on an object into one series that keeps the first note, so
    /// an event that says something new needs an action of its own.
    pub async fn event_of(&self, type_: EventType, reason: &str, action: &str, note: &str) {
        // The API server refuses a note over 1 kB (bytes): the first line and the last ones
        // are kept (a build log excerpt ends with its cause).
        let note = fit_note(note, 1000);
        let event = Event {
            type_,
            reason,
            action,
            note: &note,
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
