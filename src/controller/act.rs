//! Acting on the remote deployments: create, cancel, prune history, delete on deletion. Each
//! runs the step `decision::decide` chose and records what it did on the object.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::events::EventType;

use super::decision::{CancelReason, Observed};
use super::desired::DesiredDeployment;
use super::round::Round;
use super::state::Intent;
use crate::api::{
    ApiError, ApiToken, DeploymentDetails, DeploymentStatus as Remote, DeploymentsApi, Endpoint,
    ErrorClass,
};

impl<A: DeploymentsApi> Round<'_, A> {
    /// Record the intent, send the create, record the id: in that order, each durable before
    /// the next, so that no crash can leave a deployment the object does not know to look for.
    /// The create's rate budget is taken first: an object waiting for it writes nothing (with
    /// hundreds waiting on a Starter token, recording and withdrawing intents each time the
    /// wait ran out cost eight writes per deployment and conflicts with the other writes).
    pub async fn create(
        &mut self,
        token: &ApiToken,
        desired: &DesiredDeployment,
        fingerprint: &str,
    ) -> Result<Observed, ApiError> {
        let slot = self.ctx.api.reserve_create(token).await?;
        let intent_at = Timestamp::now();
        self.state.intent = Some(Intent {
            fingerprint: fingerprint.to_string(),
            at: intent_at,
        });
        if let Err(e) = self.save_state().await {
            // Nothing was sent: the next reconcile starts over.
            return Err(ApiError::Transport {
                endpoint: Endpoint::Create,
                message: format!("not sent: recording the intent failed: {e}"),
            });
        }
        let request = desired.request();
        let answer = {
            let coordination = &self.ctx.coordination;
            let _in_flight = coordination.create_gate(token, &request.branch).await;
            let sent = self.ctx.api.create_with(token, &request, slot).await;
            sent.map(|created| {
                let made = Arc::new(DeploymentDetails {
                    logs_url: String::new(),
                    deploy_url: created.url,
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
                });
                let uid = self.obj.metadata.uid.as_deref().unwrap_or_default();
                coordination.note_created(uid, intent_at, made.clone());
                made
            })
        };
        match answer {
            Ok(created) => {
                self.state
                    .replace_current(created.id.clone(), fingerprint.to_string());
                // The deployment exists whatever happens next; the intent left in place on a
                // failed write is resolved on the next reconcile from what `note_created` kept
                // (or by `find_created` once this process has forgotten it).
                if let Err(e) = self.save_state().await {
                    tracing::warn!(id = %created.id, error = %e, "recording a created deployment failed; the next reconcile takes it from memory, or finds it again through its intent");
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
                Ok(Observed::Found(Box::new((*created).clone())))
            }
            Err(e) if e.class() == ErrorClass::OutcomeUnknown => Err(e),
            Err(e) => {
                // The API refused (or never received) the request: no deployment was made.
                self.state.intent = None;
                let _ = self.save_state().await;
                Err(e)
            }
        }
    }

    pub async fn cancel(
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
                        endpoint: Endpoint::Cancel,
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

    /// Deletes, remotely, the oldest history beyond `historyLimit`.
    pub async fn prune_history(&mut self, token: &ApiToken) {
        // A pause holds back every write to the API: the oldest wait until it is lifted.
        if self.obj.paused() {
            return;
        }
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

    /// Deletion with policy `Delete`: cancel each deployment still in progress (a cancel of
    /// one that finished or vanished meanwhile is harmless), then delete it.
    pub async fn delete_remote(
        &mut self,
        token: &ApiToken,
        ids: &[String],
        observed: &Observed,
    ) -> Result<(), ApiError> {
        let in_progress = |id: &str| match observed {
            Observed::Found(d) if d.id == id => !d.status.is_terminal(),
            // Unknown: a cancel is cheap and a 409 or 404 is harmless.
            _ => self.history_status(id).is_none_or(|s| !s.is_terminal()),
        };
        for id in ids {
            if in_progress(id) {
                match self.ctx.api.cancel(token, id).await {
                    Ok(_) => {}
                    Err(e) if matches!(e.status(), Some(404 | 409)) => {}
                    Err(err) => return Err(err),
                }
            }
            match self.ctx.api.delete(token, id).await {
                Ok(()) => {
                    self.event(
                        EventType::Normal,
                        "Deleted",
                        &format!("deleted remote deployment {id}"),
                    )
                    .await
                }
                Err(e) if e.is_not_found() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Deletion with policy `Orphan`: nothing remote is touched; the user is told what stays.
    pub async fn orphan(&self, ids: &[String]) {
        self.event(
            EventType::Normal,
            "Orphaned",
            &format!(
                "deletionPolicy is Orphan: left remote deployments {} in place",
                ids.join(", ")
            ),
        )
        .await;
    }
}
