//! Observation: the tracked deployment as it is now.
//!
//! In-flight deployments of one token are observed through the list endpoint, one call
//! covering up to 100 of them, instead of one GET per object per tick.
//!
//! Every reconcile of an in-flight deployment asks for its status no older than some age;
//! the first to find the token's view too old refreshes it for everyone (single flight), the
//! others read the result. The rate budget is the product's hard limit, so this is what lets a
//! thousand objects converge without polling each one.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use super::decision::{self, Observed, Pace};
use super::details::Read;
use super::round::Round;
use crate::api::{
    ApiError, ApiToken, DeploymentDetails, DeploymentStatus, DeploymentsApi, ErrorClass, Room,
    list_newest_back_to,
};
use crate::resource::{GitDeployment, GitDeploymentStatus};

/// How long the details of a finished deployment (completion time, build duration) may wait
/// for other deployments of the same token still in flight.
const DETAILS_DEFERRAL: Duration = Duration::from_secs(30);

impl<A: DeploymentsApi> Round<'_, A> {
    /// The tracked deployment as it is now. An in-flight one whose details are already mirrored
    /// is observed through the token's shared listing (one call covers up to 100 objects). When
    /// the listing says it finished, that is mirrored at once (the object is Ready without
    /// waiting for budget), and the details only a GET gives (completion time, build duration)
    /// follow at observation priority: see `decision::details_pending`.
    pub async fn observe(&self, token: &ApiToken) -> Result<Observed, ApiError> {
        let coordination = &self.ctx.coordination;
        if let Some(mirrored) = self.mirrored()
            && decision::details_pending(&mirrored)
            && coordination.details.runs()
        {
            // Finished: its details are read off the reconcile path (`details`), which wakes
            // the object when they are there. Meanwhile the status stands.
            return match coordination.details.take(&mirrored.id) {
                Some(Read::Details(d)) => Ok(Observed::Found(Box::new((*d).clone()))),
                Some(Read::Failed) => self.read(token).await,
                None => {
                    let waiter = ObjectRef::from_obj(&self.obj);
                    coordination.details.want(token, &mirrored.id, waiter);
                    Ok(Observed::Found(Box::new(mirrored)))
                }
            };
        }
        if let Some(mirrored) = self.mirrored() {
            // Creates first: what is mirrored stands until they are sent, even when the budget
            // has room (creates bound by Kubernetes writes, as at 10,000 objects): observing
            // then cost 1.7 list pages and one more status write per deployment, and the
            // creates took twice as long. Then the listing that makes the other objects Ready,
            // before the details of finished ones.
            let defer_details = decision::details_pending(&mirrored)
                && coordination.observer.in_flight(token)
                && self.finished_for() < DETAILS_DEFERRAL;
            if coordination.creates_pending(token) || defer_details {
                if !mirrored.status.is_terminal() {
                    // A listing made since found it finished (and woke this object): that is
                    // the answer, at no cost. Else it is waited on without a listing now: the
                    // first listing after the creates reaches back to it and answers every
                    // object at once.
                    let observer = &coordination.observer;
                    match observer.finished(token, &mirrored.id) {
                        Some(Seen::Status(status)) => {
                            return Ok(Observed::Found(Box::new(DeploymentDetails {
                                status,
                                ..mirrored
                            })));
                        }
                        Some(Seen::Absent) => return self.read(token).await,
                        Some(Seen::NotYet) | None => {
                            let waiter = ObjectRef::from_obj(&self.obj);
                            observer.want(token, &mirrored.id, mirrored.created_at, waiter);
                            self.observation_deferred.store(true, Ordering::Relaxed);
                        }
                    }
                }
                return Ok(Observed::Found(Box::new(mirrored)));
            }
        }
        if let Some(mirrored) = self.mirrored().filter(|m| !m.status.is_terminal()) {
            let pace = self.pace(token, &mirrored.id);
            let max_age = decision::poll_interval(mirrored.status, pace)
                .map_or(self.ctx.config.observe_max_age, |every| {
                    every.min(self.ctx.config.observe_max_age)
                });
            let seen = coordination
                .observer
                .status(
                    &self.ctx.api,
                    token,
                    &mirrored.id,
                    mirrored.created_at,
                    max_age,
                    Some(ObjectRef::from_obj(&self.obj)),
                )
                .await?;
            if seen == Some(Seen::NotYet) {
                return Ok(Observed::Found(Box::new(mirrored)));
            }
            if let Some(Seen::Status(status)) = seen {
                if status.is_terminal()
                    && let Some(details) = self.details_if_idle(token, &mirrored.id).await
                {
                    return Ok(Observed::Found(Box::new(details)));
                }
                // Ready at once; the details only a GET gives follow at observation priority
                // (`details_pending`).
                return Ok(Observed::Found(Box::new(DeploymentDetails {
                    status,
                    ..mirrored
                })));
            }
        }
        self.read(token).await
    }

    /// The details of a deployment a listing found finished, if the token's budget has room to
    /// spare for their GET right now (`room`: nobody waiting, creates included, and more
    /// than the odd token): then Ready and the details are one status write, not two. Never a
    /// wait for budget: with 1,000 finished deployments behind a token's creates, reading
    /// details before Ready held every Ready back by a minute. Any failure leaves the details
    /// to be read later, as when there is no room.
    async fn details_if_idle(&self, token: &ApiToken, id: &str) -> Option<DeploymentDetails> {
        if self.ctx.api.room(token) == Room::None {
            return None;
        }
        match self.ctx.api.get_if_idle(token, id).await {
            Ok(details) if details.id == id && details.status.is_terminal() => Some(details),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(object = %self.name(), %id, error = %e, "details not read with the listing's answer");
                None
            }
        }
    }

    /// How long to wait before reading again, when a read found no rate budget soon enough
    /// and the status already mirrors the deployment: the user has nothing to learn from it.
    /// A Ready object whose completion details wait for budget stays Ready (a `RateLimited`
    /// condition would flip it to Reconciling and back, two writes and a flap in Argo CD);
    /// one in flight keeps saying what its deployment is doing.
    pub fn waits_for_budget(&self, err: &ApiError) -> Option<Duration> {
        let ErrorClass::RateLimited { retry_after } = err.class() else {
            return None;
        };
        self.mirrored().map(|_| retry_after)
    }

    /// The tracked deployment, read with a GET.
    pub async fn read(&self, token: &ApiToken) -> Result<Observed, ApiError> {
        let Some(id) = self.state.id.clone() else {
            return Ok(Observed::Untracked);
        };
        let mirrors = self.obj.status.as_ref().and_then(|s| s.status.as_deref());
        tracing::debug!(object = %self.name(), %id, ?mirrors, "reading the deployment with a GET");
        match self.ctx.api.get(token, &id).await {
            Ok(d) => Ok(Observed::Found(Box::new(d))),
            Err(e) if e.is_not_found() => Ok(Observed::Missing { id }),
            Err(e) => Err(e),
        }
    }

    /// What the cadence of looking at in-flight deployment `id` weighs besides its phase.
    pub fn pace(&self, token: &ApiToken, id: &str) -> Pace {
        Pace {
            in_phase: self.ctx.coordination.observer.in_phase(token, id),
            ample_budget: self.ctx.api.room(token) == Room::Ample,
            deferred: self.observation_deferred.load(Ordering::Relaxed),
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

    /// What `.status` already mirrors of the tracked deployment; for one this process has just
    /// created, what its create answered until the status mirrors it (a reconcile may read the
    /// object before its own status write is back through the watch: no GET for that).
    fn mirrored(&self) -> Option<DeploymentDetails> {
        let id = self.state.id.as_deref()?;
        let mirrors = |s: &&GitDeploymentStatus| s.deployment_id.as_deref() == Some(id);
        let Some(s) = self.obj.status.as_ref().filter(mirrors) else {
            let uid = self.obj.metadata.uid.as_deref()?;
            let answer = self.ctx.coordination.create_answer(id, uid)?;
            return Some((*answer).clone());
        };
        let status: DeploymentStatus = s.status.as_deref()?.parse().ok()?;
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
}

/// What the last listing said of one deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Status(DeploymentStatus),
    /// The listing covered its creation time and it was not there: deleted.
    Absent,
    /// Not placed yet: made after the listing was taken (newer than anything it showed), or
    /// a listing is under way. A later listing tells (and wakes its object if it finished);
    /// not a reason to GET it.
    NotYet,
}

impl Seen {
    /// Finished or gone: nothing later listings can add.
    fn is_done(self) -> bool {
        match self {
            Seen::Status(s) => s.is_terminal(),
            Seen::Absent => true,
            Seen::NotYet => false,
        }
    }
}

/// The token's shared view of its in-flight deployments.
#[derive(Default)]
pub struct Observer {
    tokens: Mutex<HashMap<ApiToken, Arc<TokenView>>>,
    /// Objects whose deployment a listing found finished (or gone) are sent here, to be
    /// reconciled at once: the listing that one object's poll paid for tells the others, and
    /// none waits for its own next poll to turn Ready.
    wake: OnceLock<UnboundedSender<ObjectRef<GitDeployment>>>,
}

#[derive(Default)]
struct TokenView {
    /// Held while refreshing, so that one listing serves every waiter.
    refresh: tokio::sync::Mutex<()>,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    refreshed: Option<Instant>,
    /// The creation times the last listing vouches for.
    coverage: Option<Coverage>,
    seen: HashMap<String, DeploymentStatus>,
    /// Deployments someone waits on: how far back a listing must go, and whom to wake.
    wanted: HashMap<String, Wanted>,
    /// Deployments waited on that a listing found finished or gone, until their object takes
    /// the answer ([`Observer::finished`]). Without it, an object woken while its token's
    /// creates go on found nothing it could use once the next listing had replaced `seen`,
    /// waited on its deployment again, and every later listing paged back to it: at 10,000
    /// objects, more list pages than deployments.
    finished: HashMap<String, (Seen, Instant)>,
    /// Deployments waited on in flight: the phase listings show each in, and since when (the
    /// first listing that showed it there), for [`Observer::in_phase`].
    phases: HashMap<String, (DeploymentStatus, Instant)>,
}

/// How long a finished deployment's answer waits for its object ([`View::finished`]); one
/// never taken (the object went another way) is dropped after this.
const FINISHED_KEPT: Duration = Duration::from_secs(600);

struct Wanted {
    created_at: Timestamp,
    waiter: Option<ObjectRef<GitDeployment>>,
}

impl View {
    /// The answer for `id` from this view; one that says it is finished (or gone) also ends
    /// the wait on it, so that no later listing wakes its object again.
    fn answer_once(&mut self, id: &str, created_at: Timestamp) -> Option<Seen> {
        let seen = self.answer(id, created_at)?;
        if seen.is_done() {
            self.wanted.remove(id);
        }
        Some(seen)
    }

    fn answer(&self, id: &str, created_at: Timestamp) -> Option<Seen> {
        place(&self.seen, self.coverage, id, created_at)
    }
}

/// What a listing (`seen`, vouching for `coverage`) says of deployment `id`; `None` when it
/// did not reach back to its creation.
fn place(
    seen: &HashMap<String, DeploymentStatus>,
    coverage: Option<Coverage>,
    id: &str,
    created_at: Timestamp,
) -> Option<Seen> {
    if let Some(s) = seen.get(id) {
        return Some(Seen::Status(*s));
    }
    let c = coverage.filter(|c| c.since <= created_at)?;
    Some(if created_at < c.until {
        Seen::Absent
    } else {
        Seen::NotYet
    })
}

/// The creation times for which a listing shows every deployment there is: from the oldest
/// it reached back to, up to (not including) the newest it showed. A deployment made after
/// the listing was taken is newer than anything it showed, and not gone for being missing;
/// one missing that is older than a minute before the listing is, even if nothing newer was
/// made since (the operator's and the API's clocks may differ by that much).
#[derive(Clone, Copy, Debug)]
struct Coverage {
    since: Timestamp,
    until: Timestamp,
}

/// How much older than a listing (by the operator's clock) a deployment's creation time must
/// be for the listing to vouch for it when nothing newer was listed.
const LISTING_CLOCK_SKEW: Duration = Duration::from_secs(60);

impl Observer {
    fn view(&self, token: &ApiToken) -> Arc<TokenView> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.entry(token.clone()).or_default().clone()
    }

    /// Where objects to reconcile at once are sent (the controller's trigger); set once.
    pub fn wake_into(&self, sender: UnboundedSender<ObjectRef<GitDeployment>>) {
        let _ = self.wake.set(sender);
    }

    /// The status of deployment `id` (created at `created_at`) as listed at most `max_age` ago.
    /// `Ok(None)` when no listing could place it (then a GET decides). `waiter` is woken when
    /// a later listing, made for anyone, finds the deployment finished or gone.
    pub async fn status<A: DeploymentsApi>(
        &self,
        api: &A,
        token: &ApiToken,
        id: &str,
        created_at: Timestamp,
        max_age: Duration,
        waiter: Option<ObjectRef<GitDeployment>>,
    ) -> Result<Option<Seen>, ApiError> {
        let tv = self.view(token);
        let fresh = |v: &View| v.refreshed.is_some_and(|t| t.elapsed() <= max_age);
        {
            let mut v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((seen, _)) = v.finished.remove(id) {
                return Ok(Some(seen));
            }
            v.wanted
                .insert(id.to_string(), Wanted { created_at, waiter });
            if fresh(&v)
                && let Some(seen) = v.answer_once(id, created_at)
            {
                return Ok(Some(seen));
            }
        }
        let Ok(_flight) = tv.refresh.try_lock() else {
            // A listing is under way: it wakes this object if it finds the deployment
            // finished. Waiting for it would hold a reconcile slot for as long as the listing
            // waits for budget, seconds behind a burst of creates; with every slot so held,
            // objects went unpolled for minutes.
            return Ok(Some(Seen::NotYet));
        };
        {
            let mut v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
            // Someone else refreshed just before.
            if fresh(&v)
                && let Some(seen) = v.answer_once(id, created_at)
            {
                return Ok(Some(seen));
            }
            // The listing this caller makes answers it; waking it as well would only run its
            // reconcile again at once, on an object its own writes have not reached yet.
            if let Some(w) = v.wanted.get_mut(id) {
                w.waiter = None;
            }
        }
        let oldest = {
            let v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
            v.wanted
                .values()
                .map(|w| w.created_at)
                .min()
                .unwrap_or(created_at)
        };
        let (seen, coverage) = list_back_to(api, token, oldest).await?;
        let mut v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
        tracing::debug!(
            listed = seen.len(),
            waited_on = v.wanted.len(),
            back_to = %oldest,
            "listed deployments for the objects waiting on them"
        );
        v.refreshed = Some(Instant::now());
        v.coverage = Some(coverage);
        v.seen = seen;
        // Finished and vanished deployments need no more listing on their account; their
        // objects (but those waiting for this listing, who have their answer) are reconciled
        // now rather than at their next poll.
        let View {
            seen,
            wanted,
            coverage,
            finished,
            phases,
            ..
        } = &mut *v;
        let wake = self.wake.get();
        let now = Instant::now();
        finished.retain(|_, (_, at)| now.duration_since(*at) < FINISHED_KEPT);
        wanted.retain(|wid, w| {
            let found = place(seen, *coverage, wid, w.created_at);
            let Some(done) = found.filter(|f| f.is_done()) else {
                return true;
            };
            if let (Some(wake), Some(waiter)) = (wake, w.waiter.take()) {
                finished.insert(wid.clone(), (done, now));
                // The controller may be shutting down; its next start polls anyway.
                let _ = wake.unbounded_send(waiter);
            }
            false
        });
        phases.retain(|id, _| wanted.contains_key(id));
        shrink_if_sparse(wanted);
        shrink_if_sparse(finished);
        shrink_if_sparse(phases);
        for wid in wanted.keys() {
            if let Some(&status) = seen.get(wid) {
                match phases.get(wid) {
                    Some((phase, _)) if *phase == status => {}
                    _ => {
                        phases.insert(wid.clone(), (status, now));
                    }
                }
            }
        }
        Ok(v.answer(id, created_at))
    }

    /// Registers deployment `id` as waited on, without listing: the next listing of the token,
    /// made for anyone, reaches back to it and wakes `waiter` if it finished. Without this,
    /// the objects of a burst, not observed while its creates are sent, would each find the
    /// listing made for another not reaching back far enough and page back again themselves:
    /// at 10,000 objects, 1.1 list pages per deployment.
    pub fn want(
        &self,
        token: &ApiToken,
        id: &str,
        created_at: Timestamp,
        waiter: ObjectRef<GitDeployment>,
    ) {
        let tv = self.view(token);
        let mut v = lock(&tv.view);
        v.wanted
            .entry(id.to_string())
            .or_insert(Wanted {
                created_at,
                waiter: None,
            })
            .waiter = Some(waiter);
    }

    /// What a listing found of deployment `id` that its object, woken for it, has not taken
    /// yet: finished (its status) or gone. Taken once.
    pub fn finished(&self, token: &ApiToken, id: &str) -> Option<Seen> {
        let tokens = lock(&self.tokens);
        let tv = tokens.get(token)?;
        lock(&tv.view).finished.remove(id).map(|(seen, _)| seen)
    }

    /// How long listings have shown deployment `id` in the phase it is in now: zero until a
    /// listing has shown it while it was waited on.
    pub fn in_phase(&self, token: &ApiToken, id: &str) -> Duration {
        let tokens = lock(&self.tokens);
        let Some(tv) = tokens.get(token) else {
            return Duration::ZERO;
        };
        lock(&tv.view)
            .phases
            .get(id)
            .map_or(Duration::ZERO, |(_, since)| since.elapsed())
    }

    /// Whether deployments of `token` are still being waited on: reading details of finished
    /// ones can wait until the listing that tells the others they finished has run.
    pub fn in_flight(&self, token: &ApiToken) -> bool {
        let tokens = lock(&self.tokens);
        tokens
            .get(token)
            .is_some_and(|tv| !lock(&tv.view).wanted.is_empty())
    }

    /// Nobody waits on these deployments any more (their object went away). A token nobody
    /// waits on is dropped; a reconcile still holding its view finishes with it undisturbed.
    pub fn forget(&self, ids: &[String]) {
        let mut tokens = lock(&self.tokens);
        for tv in tokens.values() {
            let mut v = lock(&tv.view);
            for id in ids {
                v.wanted.remove(id);
                v.finished.remove(id);
                v.phases.remove(id);
            }
        }
        tokens.retain(|_, tv| {
            let v = lock(&tv.view);
            !v.wanted.is_empty() || !v.finished.is_empty()
        });
    }
}

/// A map a burst filled and that has mostly drained: its table stays as large as it ever was
/// unless shrunk (at 10,000 objects, 2.2 MB of empty slots for the deployments waited on).
fn shrink_if_sparse<V>(map: &mut HashMap<String, V>) {
    if map.capacity() > map.len().saturating_mul(4).max(64) {
        map.shrink_to_fit();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lists newest first until the page reaches back before `oldest` (or the list ends).
async fn list_back_to<A: DeploymentsApi>(
    api: &A,
    token: &ApiToken,
    oldest: Timestamp,
) -> Result<(HashMap<String, DeploymentStatus>, Coverage), ApiError> {
    let listed_at = Timestamp::now();
    let rows = list_newest_back_to(api, token, oldest).await?;
    // Creation times are whole seconds: a deployment created in the same second as the last
    // row may be on the next page, so coverage starts one second later; one created in the
    // same second as the first may have been made after the listing. `checked_*`: the API's
    // timestamps are input too.
    let since = match rows.last() {
        Some(last) if last.created_at < oldest => last
            .created_at
            .checked_add(Duration::from_secs(1))
            .unwrap_or(last.created_at),
        _ => Timestamp::MIN,
    };
    let vouched = listed_at
        .checked_sub(LISTING_CLOCK_SKEW)
        .unwrap_or(Timestamp::MIN);
    let until = rows
        .first()
        .map_or(vouched, |newest| newest.created_at.max(vouched));
    Ok((
        rows.into_iter().map(|d| (d.id, d.status)).collect(),
        Coverage { since, until },
    ))
}
