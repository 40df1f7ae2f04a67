//! The reconcile, as a pipeline of steps. Each step lives in its own file:
//!
//! 1. `round`: read the object and its state once (`Round`); every Kubernetes write.
//! 2. `secrets` + `desired`: resolve the spec and its Secrets into the token and one
//!    `DesiredDeployment` (fingerprint, request body, "could it be ours").
//! 3. `recover`: settle a create whose answer was lost.
//! 4. `observe`: the tracked deployment as it is now (batched listings, GETs).
//! 5. `decision`: pure; the one step to take and when to look again.
//! 6. `act`: create, cancel, prune history, delete or orphan on deletion.
//! 7. `failure`: a failed deployment's build log, read once, for the message and an event.
//! 8. `status`: pure; the status to mirror, written by the round only when it changed.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};

use super::decision::{self, Goal, Health, Observed, Recheck, Step};
use super::desired::DesiredDeployment;
use super::recover::Settled;
use super::round::Round;
use super::{Context, Error};
use super::{export, status, verify};
use crate::api::{DeploymentsApi, ErrorClass};
use crate::resource::{FINALIZER, GitDeployment};

/// One reconcile of one object. A panic inside it (a bug that some tenant's object reaches)
/// stays an error of that object: it is reported on the object and retried with backoff,
/// and every other object goes on being served.
pub async fn reconcile<A: DeploymentsApi>(
    obj: Arc<GitDeployment>,
    ctx: Arc<Context<A>>,
) -> Result<Requeue, Error> {
    let started = Instant::now();
    let result = match AssertUnwindSafe(reconcile_object(obj.clone(), ctx.clone()))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => Err(contain_panic(&obj, &ctx, panic).await),
    };
    ctx.metrics.reconcile_finished(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    result
}

/// Tells the object's users what happened (a Stalled condition and a Warning event), as far
/// as that is possible: a second panic while doing so is contained too.
async fn contain_panic<A: DeploymentsApi>(
    obj: &GitDeployment,
    ctx: &Context<A>,
    panic: Box<dyn std::any::Any + Send>,
) -> Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    tracing::error!(object = %name, %namespace, %message, "reconcile panicked; contained to this object");
    let report = async {
        let mut round = Round::new(obj, ctx)?;
        let health = Health::stalled(
            "InternalError",
            format!(
                "gitdev-operator failed on this object ({message}); it retries with backoff; please report this with the operator's log"
            ),
        );
        round
            .finish(&Observed::Unread, health, Requeue::await_change())
            .await
    };
    if AssertUnwindSafe(report).catch_unwind().await.is_err() {
        tracing::error!(object = %name, %namespace, "reporting a contained panic panicked too");
    }
    Error::Panicked {
        namespace,
        name,
        message,
    }
}

async fn reconcile_object<A: DeploymentsApi>(
    obj: Arc<GitDeployment>,
    ctx: Arc<Context<A>>,
) -> Result<Requeue, Error> {
    let namespace = obj.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<GitDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = (namespace.clone(), obj.name_any());
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    let result = if obj.metadata.deletion_timestamp.is_none() && !has_finalizer {
        // A new object goes straight to work: its finalizer rides on its first state write
        // (the intent recorded before the first create), so that the create is not held back
        // by a write and a watch round trip of its own. Until its first status, the schema's
        // default `observedGeneration: 0` keeps kstatus from calling it Current.
        apply(&obj, &ctx).await
    } else {
        finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                Finalizer::Apply(obj) => apply(&obj, &ctx).await,
                Finalizer::Cleanup(obj) => cleanup(&obj, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    };
    if result.is_ok() {
        ctx.coordination.forget_failures(&key);
    }
    result
}

/// What the decisions need of the object.
fn goal(obj: &GitDeployment, fingerprint: String) -> Goal {
    Goal {
        fingerprint,
        cancel: obj.spec.cancel,
        deletion_policy: obj.spec.deletion_policy,
        deleting: obj.metadata.deletion_timestamp.is_some(),
        paused: obj.paused(),
    }
}

/// A live object: make the remote deployment match the spec, and mirror it.
async fn apply<A: DeploymentsApi>(obj: &GitDeployment, ctx: &Context<A>) -> Result<Requeue, Error> {
    let mut round = Round::new(obj, ctx)?;

    let secrets = round.read_secrets().await?;
    let token = match round.token(&secrets) {
        Ok(token) => token,
        Err(problem) => return round.blocked(problem).await,
    };
    let desired =
        match DesiredDeployment::resolve(&obj.spec, |name| secrets.get(name).map(Arc::as_ref)) {
            Ok(desired) => desired,
            Err(problem) => return round.blocked(problem).await,
        };
    let goal = goal(obj, desired.fingerprint(&ctx.config.key));

    let taken = round.taken();
    if !taken.is_empty() {
        let health = verify::already_managed(&taken);
        return round
            .finish(&Observed::Unread, health, Requeue::await_change())
            .await;
    }

    match round.settle_intent(&token).await? {
        Settled::Done => {}
        Settled::Stalled(health) => {
            return round
                .finish(&Observed::Unread, health, Requeue::await_change())
                .await;
        }
        Settled::Looking(health, wait) => {
            return round
                .finish(&Observed::Unread, health, Requeue::requeue(wait))
                .await;
        }
        Settled::Behind(wait) => {
            tracing::debug!(object = %round.name(), namespace = %round.namespace, "the object cache has not seen this create's recorded answer yet; reading the object again shortly");
            return Ok(Requeue::requeue(wait));
        }
        Settled::Api(err) => {
            return round
                .api_failed(err, "look for a deployment whose create answer was lost")
                .await;
        }
    }

    let observed = match round.observe(&token).await {
        Ok(observed) => observed,
        Err(err) => {
            if let Some(after) = round.waits_for_budget(&err) {
                tracing::debug!(object = %round.name(), namespace = %round.namespace, wait_ms = after.as_millis(), "reading the deployment waits for rate budget; the status stands");
                return Ok(Requeue::requeue(after));
            }
            return round.api_failed(err, "read the deployment").await;
        }
    };
    ctx.coordination.remember_token(uid(obj), &token);
    // A deployment taken over through `git.dev/deployment-id`: it stands for the spec as it
    // is now, so that a later change of spec supersedes it like any other.
    if let Observed::Found(d) = &observed
        && round.state.fingerprint.is_none()
    {
        let why = format!("adopted existing deployment {} ({})", d.id, d.status);
        round.adopt(&d.id, &goal.fingerprint, &why).await?;
    }

    round.restamp(&desired, &goal.fingerprint).await?;

    let next = decision::decide(&goal, &round.state, &observed);
    tracing::debug!(object = %round.name(), namespace = %round.namespace, ?next, "decided");

    // The status written at the end mirrors a new deployment: a success seen just before it
    // was made must still become the last good one.
    let replaced = matches!(next.step, Step::Create { .. }).then(|| observed.clone());
    let observed = match next.step {
        Step::Create { supersede } => {
            if let Some(id) = supersede
                && let Err(err) = round
                    .cancel(&token, &id, decision::CancelReason::Superseded)
                    .await
            {
                return round
                    .api_failed(err, "cancel the superseded deployment")
                    .await;
            }
            let _pending = ctx.coordination.create_pending(&token);
            match round.create(&token, &desired, &goal.fingerprint).await {
                Ok(observed) => observed,
                Err(err) => {
                    if let ErrorClass::RateLimited { retry_after } = err.class() {
                        ctx.coordination.owe_create(&token, retry_after);
                    }
                    return round.api_failed(err, "create the deployment").await;
                }
            }
        }
        Step::Cancel { id, reason } => match round.cancel(&token, &id, reason).await {
            Ok(observed) => observed,
            Err(err) => return round.api_failed(err, "cancel the deployment").await,
        },
        Step::Wait | Step::Delete { .. } | Step::Orphan { .. } | Step::Release => observed,
    };
    round.prune_history(&token).await;
    let log = round.build_log(&token, &observed, &desired).await;
    if let Some(replaced) = &replaced {
        status::remember_success(&mut round.obj, replaced);
    }

    let health = decision::health_with_log(&goal, &round.state, &observed, &log);
    let recheck = log.recheck(next.recheck);
    let poll_every = match recheck {
        Recheck::Track(phase) => {
            let id = match &observed {
                Observed::Found(d) => d.id.as_str(),
                _ => "",
            };
            // Only made for a phase in progress, which always has a cadence.
            Some(
                decision::poll_interval(phase, round.pace(&token, id))
                    .unwrap_or(decision::DETAILS_RECHECK),
            )
        }
        Recheck::Poll(every) => Some(every),
        Recheck::Existence | Recheck::OnChange => None,
    };
    let requeue = match (poll_every, recheck) {
        (Some(every), _) => Requeue::requeue(jitter(every)),
        (None, Recheck::Existence) => Requeue::requeue(jitter(ctx.config.existence_check)),
        (None, _) => Requeue::await_change(),
    };
    let polling = poll_every.is_some();
    match round.export(&observed, polling).await {
        Ok(None) => round.finish(&observed, health, requeue).await,
        // Nothing watches ConfigMaps: a blocked export is looked at again on a timer.
        Ok(Some(blocked)) => {
            let again = poll_every.map_or(export::CONFLICT_RETRY, |every| {
                every.min(export::CONFLICT_RETRY)
            });
            let requeue = Requeue::requeue(jitter(again));
            round.finish(&observed, blocked, requeue).await
        }
        // The deployment's own status is still mirrored; the export is retried with backoff.
        Err(err) => {
            round.finish(&observed, health, requeue).await?;
            Err(err)
        }
    }
}

/// An object being deleted: clean up remotely as `deletionPolicy` says, then release the
/// finalizer (by returning `Ok`). An `Err` keeps the finalizer and comes back.
async fn cleanup<A: DeploymentsApi>(
    obj: &GitDeployment,
    ctx: &Context<A>,
) -> Result<Requeue, Error> {
    let mut round = Round::new(obj, ctx)?;
    tracing::info!(object = %round.name(), namespace = %round.namespace, state = ?round.state, policy = ?obj.spec.deletion_policy, "cleaning up before deletion");
    // What this object made does not depend on the spec as it is now.
    let goal = goal(obj, String::new());
    let taken = round.taken();
    round.let_go_of(&taken).await;

    let mut token = None;
    let observed = if decision::must_observe(&goal, &round.state) {
        let secrets = round.read_secrets().await?;
        let t = match (
            round.token(&secrets),
            ctx.coordination.remembered_token(uid(obj)),
        ) {
            (Ok(t), _) => t,
            // The Secret went first (a namespace's teardown, a GitOps prune): the token that
            // last worked for this object still deletes what it made.
            (Err(problem), Some(t)) => {
                tracing::info!(object = %round.name(), namespace = %round.namespace, problem = %problem.health(&round.namespace).message(), "cleaning up with the last token that worked for this object");
                t
            }
            (Err(problem), None) => {
                return round
                    .cleanup_blocked(problem.health(&round.namespace))
                    .await;
            }
        };
        // A create in flight may have made a deployment: it must be found to be deleted.
        match round.settle_intent(&t).await? {
            Settled::Done => {}
            Settled::Stalled(health) => return round.cleanup_blocked(health).await,
            Settled::Looking(health, wait) => {
                round
                    .finish(&Observed::Unread, health, Requeue::await_change())
                    .await?;
                return Err(round.cleanup_pending(wait));
            }
            // The deletion waits for the copy that names the deployment it must delete.
            Settled::Behind(wait) => return Err(round.cleanup_pending(wait)),
            Settled::Api(err) => return round.cleanup_failed(err).await,
        }
        let observed = match round.observe(&t).await {
            Ok(observed) => observed,
            Err(err) => return round.cleanup_failed(err).await,
        };
        token = Some(t);
        observed
    } else {
        Observed::Unread
    };

    let next = decision::decide(&goal, &round.state, &observed);
    match (next.step, token) {
        (Step::Delete { ids }, Some(token)) => {
            if let Err(err) = round.delete_remote(&token, &ids, &observed).await {
                return round.cleanup_failed(err).await;
            }
        }
        (Step::Orphan { ids }, _) => round.orphan(&ids).await,
        _ => {}
    }
    round.unexport().await;
    ctx.coordination.forget_object(
        &(round.namespace.clone(), round.name()),
        uid(obj),
        &round.state.ids(),
    );
    Ok(Requeue::await_change())
}

fn uid(obj: &GitDeployment) -> &str {
    obj.metadata.uid.as_deref().unwrap_or_default()
}

/// Small random spread so that many objects created together do not poll in lockstep.
fn jitter(d: Duration) -> Duration {
    let spread = u64::try_from(d.as_millis() / 10).unwrap_or(0);
    if spread == 0 {
        return d;
    }
    d + Duration::from_millis(rand::random_range(0..=spread))
}
