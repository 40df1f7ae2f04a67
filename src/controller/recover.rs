//! Recovery of a lost create: a create was recorded as intended (`git.dev/state` intent) but
//! its answer never reached the object (a crash, a timeout, an unknown outcome). Before
//! anything else happens, the deployment it may have made is found and adopted, or proven
//! never made: never a second deployment for one intent.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::Error;
use super::context::CreateOfIntent;
use super::decision::Health;
use super::desired::Target;
use super::round::Round;
use super::state::{Intent, Trust};
use super::verify::{Taken, already_managed};
use crate::api::{ApiError, ApiToken, DeploymentsApi, list_newest_back_to};
use crate::resource::ANNOTATION_DEPLOYMENT_ID;

/// How far before the recorded intent a deployment's `created_at` may be and still be ours:
/// the intent is stamped by the operator's clock, `created_at` by the API's.
const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long after a create whose outcome is unknown the operator keeps looking for what it may
/// have made before it concludes that nothing was: a gateway may answer before the API has
/// committed, and the API's listing may lag. No create is sent again inside this window.
pub const SETTLE_WINDOW: Duration = Duration::from_secs(60);

/// The wait between two looks inside the window: doubling with the intent's age, 2 s to 20 s.
fn next_look(age: Duration) -> Duration {
    age.clamp(Duration::from_secs(2), Duration::from_secs(20))
}

/// Outcome of settling a create whose answer was lost.
pub(super) enum Settled {
    /// Adopted, or provably never made: go on.
    Done,
    /// A human must act: several deployments could be it, or the one named is another
    /// object's.
    Stalled(Health),
    /// Nothing found yet, inside the settle window: look again after the wait.
    Looking(Health, Duration),
    /// The object as read is older than this process's own record of the create's answer
    /// (the watch has not delivered that write yet): nothing to settle, read it again after
    /// the wait.
    Behind(Duration),
    Api(ApiError),
}

/// How long after this process recorded a create's answer an object still showing only the
/// intent is taken for a copy the watch has not caught up on (under load the object cache
/// lagged seconds behind the operator's own writes). Past it, the state was rewritten since
/// (a restore, an edit) and the create is looked for as any lost one.
const CATCH_UP_WINDOW: Duration = Duration::from_secs(30);

/// The wait before reading again an object the watch has not caught up on.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

enum Found {
    None,
    One(String),
    Several(Vec<String>),
}

impl<A: DeploymentsApi> Round<'_, A> {
    /// Settles a create whose answer never reached the object: a human's choice (the
    /// `git.dev/deployment-id` annotation naming a deployment this object does not know yet),
    /// else the one deployment it can only be, else provably none.
    pub async fn settle_intent(&mut self, token: &ApiToken) -> Result<Settled, Error> {
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
            if let Some(holder) = self.ctx.holder_of(&self.obj, Trust::Hint, &id) {
                let taken = [Taken { id, holder }];
                return Ok(Settled::Stalled(already_managed(&taken)));
            }
            let why =
                format!("adopted deployment {id} named by annotation {ANNOTATION_DEPLOYMENT_ID}");
            self.adopt(&id, &intent.fingerprint, &why).await?;
            return Ok(Settled::Done);
        }
        // A create this process answered is not lost. Searching for it instead (the list
        // paged back over every deployment of the token, alone on the token and branch, so
        // holding every create off) made a Pro 1,000 run 1.46 x the floor: 51 objects woken
        // by their own intent write were read from a cache that had not seen their id yet.
        let uid = self.obj.metadata.uid.as_deref().unwrap_or_default();
        match self.ctx.coordination.create_of_intent(uid, intent.at) {
            Some(CreateOfIntent::Recorded { since }) if since.elapsed() < CATCH_UP_WINDOW => {
                return Ok(Settled::Behind(CATCH_UP_WAIT));
            }
            Some(CreateOfIntent::Unrecorded(answer)) => {
                let why = format!(
                    "recorded deployment {} whose create answer could not be written at first",
                    answer.id
                );
                self.adopt(&answer.id, &intent.fingerprint, &why).await?;
                return Ok(Settled::Done);
            }
            Some(CreateOfIntent::Recorded { .. }) | None => {}
        }
        // Not while a create of the same token and branch is in flight: its deployment could
        // exist remotely and be claimed by no one yet.
        let target = Target::of(&self.obj.spec);
        let found = {
            let _alone = self
                .ctx
                .coordination
                .search_gate(token, &target.branch)
                .await;
            self.find_created(token, &target, &intent).await
        };
        match found {
            Ok(Found::One(id)) => {
                let why = format!(
                    "found deployment {id} whose create answer was lost; adopted it instead of creating another"
                );
                self.adopt(&id, &intent.fingerprint, &why).await?;
                Ok(Settled::Done)
            }
            Ok(Found::None) => {
                // The intent's time is the operator's clock, or a tenant's: one in the future
                // counts as expired, so that no value keeps the object waiting forever.
                let age = Timestamp::now().duration_since(intent.at);
                let age = Duration::try_from(age).unwrap_or(SETTLE_WINDOW);
                if age < SETTLE_WINDOW {
                    let wait = next_look(age);
                    let health = Health::progressing(
                        "CreationUnconfirmed",
                        format!(
                            "the create request's outcome is unknown and no deployment it made is listed yet; looking again in {}s, for up to {}s after the request, before creating again",
                            wait.as_secs(),
                            SETTLE_WINDOW.as_secs()
                        ),
                    );
                    return Ok(Settled::Looking(health, wait));
                }
                self.state.intent = None;
                self.save_state().await?;
                Ok(Settled::Done)
            }
            Ok(Found::Several(ids)) => Ok(Settled::Stalled(Health::stalled(
                "CreationUncertain",
                format!(
                    "a create's answer was lost and several deployments could be it ({}): set annotation {ANNOTATION_DEPLOYMENT_ID} to the one to keep and delete the others remotely",
                    ids.join(", ")
                ),
            ))),
            Err(err) => Ok(Settled::Api(err)),
        }
    }

    /// Looks for the deployment a lost create may have made: newest first, created after the
    /// intent, of the target, claimed by no other object.
    async fn find_created(
        &self,
        token: &ApiToken,
        target: &Target,
        intent: &Intent,
    ) -> Result<Found, ApiError> {
        // The intent comes from an annotation a tenant can write: any time at all, even one
        // the skew would take out of range.
        let since = intent
            .at
            .checked_sub(CLOCK_SKEW)
            .unwrap_or(jiff::Timestamp::MIN);
        let claimed = self.ctx.claimed_ids(&self.obj);
        // The current and earlier deployments of this object are known not to be it (the
        // current one is being superseded when a create is in flight).
        let ours =
            |id: &String| self.state.id.as_ref() == Some(id) || self.state.history.contains(id);
        let candidates: Vec<String> = list_newest_back_to(&self.ctx.api, token, since)
            .await?
            .into_iter()
            .filter(|d| d.created_at >= since && target.could_be_listed(d))
            .map(|d| d.id)
            .filter(|id| !claimed.contains(id) && !ours(id))
            .collect();
        let mut matching = Vec::new();
        for id in candidates {
            let d = self.ctx.api.get(token, &id).await?;
            if target.could_be(&d) {
                matching.push(id);
            }
        }
        Ok(match matching.len() {
            0 => Found::None,
            1 => Found::One(matching.remove(0)),
            _ => Found::Several(matching),
        })
    }
}
