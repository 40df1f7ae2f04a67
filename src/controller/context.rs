//! What every reconcile shares: its dependencies, the configuration fixed at start from the
//! flags, and the coordination state between concurrent reconciles (per-object backoff,
//! per-token create gates, deployments claimed in flight, batched observation). Coordination
//! state is pruned when an object goes away, so that it stays as large as the live workload.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::cached::Cached;
use super::details::DetailsReader;
use super::events::Recorder;
use super::keys::{Key, KeyRing};
use super::observe::Observer;
use super::secret_cache::SecretCache;
use super::state::{State, Trust};
use crate::api::{ApiToken, DeploymentDetails, DeploymentsApi};
use crate::metrics::Metrics;
use crate::resource::{DEFAULT_CREDENTIALS_SECRET, GitDeployment};

/// Settings of the reconciler, fixed at start (from the operator's flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// The operator's key: signs `git.dev/state`, keys fingerprints (see `keys`).
    pub key: Key,
    /// Keys the operator signed with before, still accepted for its signatures (never used
    /// to make one).
    pub older_keys: Vec<Key>,
    /// What may have keyed the fingerprints of versions before v2 (`--fingerprint-key`, the
    /// chart's key Secret; each object's UID is always tried too), to recognise them once and
    /// re-stamp them instead of redeploying.
    pub legacy_fingerprint_keys: Vec<Vec<u8>>,
    /// Token Secret of objects that name none (`--default-credentials-secret`).
    pub default_credentials: String,
    /// How often a finished deployment is checked for existence (`--recheck-finished-seconds`).
    pub existence_check: Duration,
    /// How long a deletion waits for credentials before orphaning remote deployments.
    pub cleanup_grace: Duration,
    /// A cap on how old a listing may be and still answer for an in-flight deployment; none
    /// by default, where the deployment's cadence decides (`decision::poll_interval`). The
    /// unit tests set zero: every look lists.
    pub observe_max_age: Duration,
}

impl Config {
    /// Every key the operator's signatures may have been made with.
    pub fn keys(&self) -> KeyRing<'_> {
        KeyRing {
            current: &self.key,
            older: &self.older_keys,
        }
    }

    /// The defaults of every flag, with the operator's key.
    pub fn new(key: Key) -> Self {
        Config {
            key,
            older_keys: Vec::new(),
            legacy_fingerprint_keys: Vec::new(),
            default_credentials: DEFAULT_CREDENTIALS_SECRET.to_string(),
            existence_check: Duration::from_secs(600),
            cleanup_grace: Duration::from_secs(300),
            observe_max_age: Duration::MAX,
        }
    }
}

/// Shared by every reconciliation.
pub struct Context<A: DeploymentsApi> {
    pub client: Client,
    pub api: A,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    /// Every object, to know which remote deployments other objects already claim (`None`
    /// where no watch runs: the reconciler's unit tests).
    store: Option<Store<Cached>>,
    /// Secret values read before, valid while the Secret watch shows their version.
    pub(super) secrets: SecretCache,
    pub(super) coordination: Coordination,
}

impl<A: DeploymentsApi> Context<A> {
    pub fn new(
        client: Client,
        api: A,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        config: Config,
        store: Option<Store<Cached>>,
    ) -> Self {
        Context {
            client,
            api,
            recorder,
            metrics,
            config,
            store,
            secrets: SecretCache::default(),
            coordination: Coordination::default(),
        }
    }

    /// Reads Secrets through a cache over the watch of their metadata (see `secret_cache`).
    pub fn watching_secrets(mut self, versions: Store<PartialObjectMeta<Secret>>) -> Self {
        self.secrets = SecretCache::watching(versions);
        self
    }

    /// Every object of the cache but `me`.
    fn others(&self, me: &GitDeployment) -> Vec<Arc<Cached>> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let mut all = store.state();
        all.retain(|o| o.meta().uid != me.metadata.uid);
        all
    }

    /// Remote ids that objects other than `me` name (current or history, trusted or not),
    /// including those created in this process and not yet visible in the store.
    pub(super) fn claimed_ids(&self, me: &GitDeployment) -> HashSet<String> {
        let my_uid = me.metadata.uid.as_deref().unwrap_or_default();
        let mut claimed = self.coordination.created_by_others(my_uid);
        claimed.extend(
            self.others(me)
                .iter()
                .flat_map(|o| o.names().iter().cloned()),
        );
        claimed
    }

    /// The object other than `me` that holds deployment `id`, as `namespace/name`: one whose
    /// signed state names it, or one created here that made it; when neither side's state is
    /// signed, the older object. `None`: `me` may act on it.
    pub(super) fn holder_of(
        &self,
        me: &GitDeployment,
        my_trust: Trust,
        id: &str,
    ) -> Option<String> {
        let my_uid = me.metadata.uid.as_deref().unwrap_or_default();
        let others = self.others(me);
        let name = |meta: &ObjectMeta| {
            format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            )
        };
        if let Some(maker) = self.coordination.maker_of(id).filter(|uid| *uid != my_uid) {
            let holder = others
                .iter()
                .find(|o| o.meta().uid.as_deref() == Some(maker.as_str()))
                .map(|o| name(o.meta()));
            return Some(holder.unwrap_or_else(|| "another object".to_string()));
        }
        // Only the objects that name it at all are decoded.
        let store: Vec<GitDeployment> = others
            .iter()
            .filter(|o| o.names().iter().any(|x| x == id))
            .filter_map(|o| o.object().ok())
            .collect();
        let age = |x: &GitDeployment| {
            (
                x.metadata.creation_timestamp.as_ref().map(|t| t.0),
                name(&x.metadata),
            )
        };
        let keys = self.config.keys();
        let mut claimants: Vec<(bool, _, String)> = store
            .iter()
            .filter_map(|o| {
                let (state, trust) = State::read(o, &keys);
                state
                    .ids()
                    .iter()
                    .any(|x| x == id)
                    .then(|| (trust == Trust::Signed, age(o), name(&o.metadata)))
            })
            .collect();
        // Signed claims first, then the oldest: the holder a message names is the real one.
        claimants.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let (signed, other_age, other) = claimants.into_iter().next()?;
        match (signed, my_trust) {
            // Two signed claims only come from a bug or a hand-copied state: the older holds.
            (true, Trust::Signed) => (other_age < age(me)).then_some(other),
            (true, Trust::Hint) => Some(other),
            (false, Trust::Signed) => None,
            // Neither claim is the operator's (a restore into another cluster, forgeries):
            // neither side may act on it until a person removes one claim.
            (false, Trust::Hint) => Some(format!(
                "{other}, which names it too, and neither object's state is signed by this operator"
            )),
        }
    }
}

/// Identifies an object across reconciles: namespace and name.
pub type ObjectKey = (String, String);

/// One gate per token and branch: see `Coordination::create_gate`.
type Gates = Mutex<HashMap<(ApiToken, String), Arc<RwLock<()>>>>;

/// How long a deployment created here stays claimed in memory: by then the store has long
/// shown every object's own record of its deployments.
const CLAIM_MEMORY: Duration = Duration::from_secs(600);

/// `created_here` is not pruned below this many entries.
const CREATED_PRUNE_FLOOR: usize = 64;
/// The longest a refused create holds observation back (a `Retry-After` is the API's word,
/// not trusted to be short).
const MAX_OWED: Duration = Duration::from_secs(60);
/// Past a refused create's retry time, for its reconcile to come round.
const OWED_MARGIN: Duration = Duration::from_secs(1);

/// Coordination between concurrent reconciles of one process.
#[derive(Default)]
pub struct Coordination {
    failures: Mutex<HashMap<ObjectKey, u32>>,
    /// Creates under way or about to be, per token: observation yields to them.
    creates_pending: Mutex<HashMap<ApiToken, usize>>,
    /// Per token, until when creates refused for want of budget are owed: their objects come
    /// back then, and observation keeps yielding to them meanwhile.
    creates_owed: Mutex<HashMap<ApiToken, Instant>>,
    create_gates: Gates,
    /// Deployments this process created, by id: claimed before the object's own record of
    /// them reaches the store.
    created_here: Mutex<HashMap<String, Made>>,
    /// How large `created_here` may grow before it is pruned again (written under its lock).
    created_prune_at: AtomicUsize,
    /// The last token that worked for each object (by uid): a namespace's teardown deletes
    /// its token Secret before its objects, and their cleanup still needs it.
    tokens: Mutex<HashMap<String, ApiToken>>,
    /// Shared, batched observation of in-flight deployments, per token.
    pub observer: Observer,
    /// Details of finished deployments, read off the reconcile path.
    pub details: DetailsReader,
}

/// A deployment this process created.
struct Made {
    /// The creating object's uid.
    by: String,
    at: Instant,
    /// The time of the intent the create was sent for.
    intent_at: Timestamp,
    /// When the object's state annotation was written with this deployment.
    recorded: Option<Instant>,
    /// What the create answered: the deployment as it is until a listing says otherwise, for
    /// reconciles that read the object before its status mirrors it. Let go once the state
    /// records the deployment and the status mirrors it ([`Coordination::note_mirrored`]):
    /// at 10,000 creates, kept for the claim's ten minutes, answers were 6 MB.
    answer: Option<Arc<DeploymentDetails>>,
}

/// A create this process sent and was answered.
#[derive(Debug)]
pub enum CreateOfIntent {
    /// Its deployment was written into the object's state annotation at `since`.
    Recorded { since: Instant },
    /// Writing it into the state annotation failed; this is what the create answered.
    Unrecorded(Arc<DeploymentDetails>),
}

/// A poisoned lock only means another reconcile panicked while holding it; the maps it guards
/// stay consistent (every update is a single insert or remove), so carry on.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Coordination {
    /// Per-object exponential backoff for transient errors: 1 s, 2 s, 4 s … 5 min, plus up to
    /// a quarter of jitter.
    pub fn next_backoff(&self, key: ObjectKey) -> Duration {
        let mut failures = lock(&self.failures);
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        let exponent = n.saturating_sub(1).min(9);
        let base = Duration::from_secs(1u64 << exponent).min(Duration::from_secs(300));
        let spread = u64::try_from(base.as_millis() / 4).unwrap_or(0);
        base + Duration::from_millis(rand::random_range(0..=spread))
    }

    pub fn forget_failures(&self, key: &ObjectKey) {
        lock(&self.failures).remove(key);
    }

    /// `token` worked for the object `uid`.
    pub fn remember_token(&self, uid: &str, token: &ApiToken) {
        let mut tokens = lock(&self.tokens);
        if tokens.get(uid) != Some(token) {
            // The objects of a namespace mostly share one token: keep one copy of it, not one
            // per object (each reconcile reads its own from the Secret).
            let shared = tokens.values().next().filter(|t| *t == token);
            let token = shared.unwrap_or(token).clone();
            tokens.insert(uid.to_string(), token);
        }
    }

    /// The last token that worked for the object `uid`, if this process saw one.
    pub fn remembered_token(&self, uid: &str) -> Option<ApiToken> {
        lock(&self.tokens).get(uid).cloned()
    }

    /// The object is gone (its finalizer released): drop everything kept on its account.
    pub fn forget_object(&self, key: &ObjectKey, uid: &str, ids: &[String]) {
        self.forget_failures(key);
        lock(&self.tokens).remove(uid);
        lock(&self.created_here).retain(|_, made| made.by != uid);
        self.observer.forget(ids);
        self.details.forget(ids);
    }

    /// Shared by the create requests of one token and branch while each is in flight (and
    /// until its answer is claimed in-process); see [`Coordination::search_gate`]. Creates
    /// of many objects overlap: the API's budget, not this gate, sets their pace.
    pub async fn create_gate(&self, token: &ApiToken, branch: &str) -> CreateGate<'_> {
        let (key, gate) = self.gate(token, branch);
        let held = Held::Shared {
            _guard: gate.clone().read_owned().await,
        };
        CreateGate {
            gates: &self.create_gates,
            key,
            gate,
            _held: held,
        }
    }

    /// Held alone around a search for a lost create of one token and branch: no create of
    /// it is in flight meanwhile, so every deployment another create of this process made is
    /// claimed by then, and a fresh one is never taken for the lost one.
    pub async fn search_gate(&self, token: &ApiToken, branch: &str) -> CreateGate<'_> {
        let (key, gate) = self.gate(token, branch);
        let held = Held::Alone {
            _guard: gate.clone().write_owned().await,
        };
        CreateGate {
            gates: &self.create_gates,
            key,
            gate,
            _held: held,
        }
    }

    fn gate(&self, token: &ApiToken, branch: &str) -> ((ApiToken, String), Arc<RwLock<()>>) {
        let key = (token.clone(), branch.to_string());
        let gate = lock(&self.create_gates)
            .entry(key.clone())
            .or_default()
            .clone();
        (key, gate)
    }

    /// Claims `answer.id` for the object `uid` the moment its create (sent for the intent of
    /// `intent_at`) was answered.
    pub fn note_created(&self, uid: &str, intent_at: Timestamp, answer: Arc<DeploymentDetails>) {
        let mut created = lock(&self.created_here);
        // Pruned when it has doubled since the last pruning, not on every create: a burst of
        // 10,000 creates scanned the whole map each time, 50 million looks at the clock.
        let prune_at = self.created_prune_at.load(Ordering::Relaxed);
        if created.len() >= prune_at {
            let now = Instant::now();
            created.retain(|_, made| now.duration_since(made.at) < CLAIM_MEMORY);
            let next = created.len().saturating_mul(2).max(CREATED_PRUNE_FLOOR);
            self.created_prune_at.store(next, Ordering::Relaxed);
        }
        created.insert(
            answer.id.clone(),
            Made {
                by: uid.to_string(),
                at: Instant::now(),
                intent_at,
                recorded: None,
                answer: Some(answer),
            },
        );
    }

    /// The object's state annotation now names deployment `id`.
    pub fn note_recorded(&self, id: &str) {
        if let Some(made) = lock(&self.created_here).get_mut(id) {
            made.recorded = Some(Instant::now());
        }
    }

    /// What this process knows of the create object `uid` sent for its intent of `intent_at`.
    pub fn create_of_intent(&self, uid: &str, intent_at: Timestamp) -> Option<CreateOfIntent> {
        lock(&self.created_here)
            .values()
            .find(|made| made.by == uid && made.intent_at == intent_at)
            .and_then(|made| match made.recorded {
                Some(at) => Some(CreateOfIntent::Recorded { since: at }),
                // Only a recorded create lets go of its answer.
                None => made.answer.clone().map(CreateOfIntent::Unrecorded),
            })
    }

    /// The object (by uid) that created `id` in this process, while that is remembered.
    fn maker_of(&self, id: &str) -> Option<String> {
        lock(&self.created_here).get(id).map(|made| made.by.clone())
    }

    /// The object's status now mirrors deployment `id`: a reconcile reads it from there, so
    /// the create's answer is no longer needed once the state records it too.
    pub fn note_mirrored(&self, id: &str) {
        if let Some(made) = lock(&self.created_here).get_mut(id)
            && made.recorded.is_some()
        {
            made.answer = None;
        }
    }

    /// What the create of `id` by object `uid` answered, while that is remembered.
    pub fn create_answer(&self, id: &str, uid: &str) -> Option<Arc<DeploymentDetails>> {
        lock(&self.created_here)
            .get(id)
            .filter(|made| made.by == uid)
            .and_then(|made| made.answer.clone())
    }

    fn created_by_others(&self, my_uid: &str) -> HashSet<String> {
        lock(&self.created_here)
            .iter()
            .filter(|(_, made)| made.by != my_uid)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Counts a create as pending for `token` until the guard is dropped.
    pub fn create_pending(&self, token: &ApiToken) -> PendingCreate<'_> {
        let key = token.clone();
        let mut counts = lock(&self.creates_pending);
        let n = counts.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        PendingCreate {
            counts: &self.creates_pending,
            key,
        }
    }

    /// A create for `token` was refused for want of budget; its object tries again `after`
    /// from now (and a moment more for its reconcile to come round).
    pub fn owe_create(&self, token: &ApiToken, after: Duration) {
        let now = Instant::now();
        let until = now + after.min(MAX_OWED) + OWED_MARGIN;
        let mut owed = lock(&self.creates_owed);
        // Tokens nobody asks about any more (their objects gone) are not kept for ever.
        owed.retain(|_, at| *at > now);
        let at = owed.entry(token.clone()).or_insert(until);
        *at = (*at).max(until);
    }

    /// Whether creates are waiting for `token`'s budget, or were refused it and will be back:
    /// the priority queue of the client only orders calls already waiting, and between two
    /// creates an observation would take the next token. Observation of what is already
    /// mirrored waits for the creates instead. On a budget-bound token most waiting objects
    /// are between two tries, not in the queue: counted too, else every gap in the queue let
    /// a listing take a create's turn.
    pub fn creates_pending(&self, token: &ApiToken) -> bool {
        if lock(&self.creates_pending)
            .get(token)
            .is_some_and(|n| *n > 0)
        {
            return true;
        }
        let mut owed = lock(&self.creates_owed);
        match owed.get(token) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                owed.remove(token);
                false
            }
            None => false,
        }
    }
}

/// The create gate of one token and branch, held; the gate is dropped from the map when its
/// last holder lets go, so that the map holds only gates in use.
pub struct CreateGate<'a> {
    gates: &'a Gates,
    key: (ApiToken, String),
    gate: Arc<RwLock<()>>,
    _held: Held,
}

/// How a gate is held: by one of the creates in flight, or by a search alone.
enum Held {
    Shared { _guard: OwnedRwLockReadGuard<()> },
    Alone { _guard: OwnedRwLockWriteGuard<()> },
}

impl Drop for CreateGate<'_> {
    fn drop(&mut self) {
        let mut gates = lock(self.gates);
        // Clones are only taken under this lock: the map's, ours and our guard's are all
        // that remain when nobody else holds or waits for the gate.
        if Arc::strong_count(&self.gate) <= 3 {
            gates.remove(&self.key);
        }
    }
}

pub struct PendingCreate<'a> {
    counts: &'a Mutex<HashMap<ApiToken, usize>>,
    key: ApiToken,
}

impl Drop for PendingCreate<'_> {
    fn drop(&mut self) {
        let mut counts = lock(self.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_create_gate_is_dropped_from_the_map_when_its_last_holder_lets_go() {
        let c = Coordination::default();
        let token = ApiToken::new("sk_test_write");
        {
            let _held = c.create_gate(&token, "main").await;
            assert_eq!(lock(&c.create_gates).len(), 1);
        }
        assert!(lock(&c.create_gates).is_empty());
    }

    #[tokio::test]
    async fn a_create_gate_waited_for_stays_until_the_waiter_is_done() {
        let c = Arc::new(Coordination::default());
        let token = ApiToken::new("sk_test_write");
        let first = c.create_gate(&token, "main").await;
        let waiter = {
            let (c, token) = (c.clone(), token.clone());
            tokio::spawn(async move {
                let _held = c.search_gate(&token, "main").await;
                lock(&c.create_gates).len()
            })
        };
        // Let the waiter take its clone of the gate before the first holder lets go.
        while Arc::strong_count(&first.gate) < 4 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert_eq!(waiter.await.unwrap(), 1, "the waiter still finds its gate");
        assert!(lock(&c.create_gates).is_empty());
    }

    #[tokio::test]
    async fn creates_of_one_branch_overlap_and_a_search_waits_until_none_is_in_flight() {
        let c = Arc::new(Coordination::default());
        let token = ApiToken::new("sk_test_write");
        let one = c.create_gate(&token, "main").await;
        let two = c.create_gate(&token, "main").await;
        let search = {
            let (c, token) = (c.clone(), token.clone());
            tokio::spawn(async move {
                let _alone = c.search_gate(&token, "main").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!search.is_finished(), "a search never overlaps a create");
        drop(one);
        tokio::task::yield_now().await;
        assert!(!search.is_finished());
        drop(two);
        search.await.unwrap();
        assert!(lock(&c.create_gates).is_empty());
    }

    #[test]
    fn creates_refused_for_budget_are_owed_until_their_objects_come_back() {
        let c = Coordination::default();
        let token = ApiToken::new("sk_test_write");
        let other = ApiToken::new("sk_test_other");
        c.owe_create(&token, Duration::from_secs(60));
        // A shorter wait owed later does not cut the longer one short.
        c.owe_create(&token, Duration::ZERO);
        assert!(c.creates_pending(&token));
        assert!(!c.creates_pending(&other));

        let c = Coordination::default();
        c.owe_create(&token, Duration::ZERO);
        lock(&c.creates_owed).insert(token.clone(), Instant::now());
        assert!(
            !c.creates_pending(&token),
            "owed no longer once the time is past"
        );
        assert!(lock(&c.creates_owed).is_empty(), "and forgotten");
        lock(&c.creates_owed).insert(token.clone(), Instant::now());
        c.owe_create(&other, Duration::from_secs(1));
        assert_eq!(
            lock(&c.creates_owed).keys().collect::<Vec<_>>(),
            [&other],
            "a token past its time is dropped when another owes"
        );
    }

    #[test]
    fn pending_creates_are_counted_per_token_and_forgotten_at_zero() {
        let c = Coordination::default();
        let token = ApiToken::new("sk_test_write");
        let one = c.create_pending(&token);
        let two = c.create_pending(&token);
        drop(one);
        assert!(c.creates_pending(&token));
        drop(two);
        assert!(!c.creates_pending(&token));
        assert!(lock(&c.creates_pending).is_empty());
    }

    fn made(id: &str) -> Arc<DeploymentDetails> {
        Arc::new(DeploymentDetails {
            id: id.to_string(),
            status: crate::api::DeploymentStatus::Queued,
            project_id: "proj_8f3k29".into(),
            branch: "main".into(),
            commit_sha: "a1b2c3d".into(),
            build_duration: None,
            deploy_url: format!("https://{id}.git.dev"),
            logs_url: String::new(),
            created_at: jiff::Timestamp::now(),
            completed_at: None,
            cancelled_by: None,
            cancelled_at: None,
        })
    }

    #[test]
    fn the_create_answer_is_kept_for_the_object_that_made_it_only() {
        let c = Coordination::default();
        c.note_created("uid-1", Timestamp::now(), made("dep_1"));
        assert_eq!(c.create_answer("dep_1", "uid-1").unwrap().id, "dep_1");
        assert!(c.create_answer("dep_1", "uid-2").is_none());
        assert!(c.create_answer("dep_2", "uid-1").is_none());
    }

    #[test]
    fn a_create_lets_go_of_its_answer_once_recorded_and_mirrored_but_keeps_its_claim() {
        let c = Coordination::default();
        let intent_at = Timestamp::now();
        c.note_created("uid-1", intent_at, made("dep_1"));
        c.note_mirrored("dep_1");
        assert!(
            c.create_answer("dep_1", "uid-1").is_some(),
            "not recorded yet: a failed state write is resolved from the answer"
        );
        assert!(matches!(
            c.create_of_intent("uid-1", intent_at),
            Some(CreateOfIntent::Unrecorded(_))
        ));
        c.note_recorded("dep_1");
        c.note_mirrored("dep_1");
        assert!(c.create_answer("dep_1", "uid-1").is_none());
        assert!(matches!(
            c.create_of_intent("uid-1", intent_at),
            Some(CreateOfIntent::Recorded { .. })
        ));
        assert_eq!(c.maker_of("dep_1").as_deref(), Some("uid-1"));
    }

    #[test]
    fn forgetting_an_object_drops_its_backoff_and_its_claims() {
        let c = Coordination::default();
        let key = ("ns".to_string(), "web".to_string());
        c.next_backoff(key.clone());
        c.note_created("uid-1", Timestamp::now(), made("dep_1"));
        c.note_created("uid-2", Timestamp::now(), made("dep_2"));
        c.remember_token("uid-1", &ApiToken::new("sk_test_write"));
        c.forget_object(&key, "uid-1", &["dep_1".to_string()]);
        assert!(lock(&c.failures).is_empty());
        assert_eq!(c.remembered_token("uid-1"), None);
        assert_eq!(
            c.created_by_others("uid-3"),
            HashSet::from(["dep_2".to_string()])
        );
    }
}
