//! The reconciler of `gitdeployments.git.dev`: a kube-runtime `Controller` woken by the
//! objects and by the Secrets they refer to.
//!
//! - `decision`: pure "spec + observed remote state → next action", and conditions.
//! - `state`: what the operator remembers on the object (annotation), spec fingerprints.
//! - `secrets`: the API token and `envFrom` values.
//! - `reconcile`: the IO around the decisions.

pub mod decision;
pub mod observer;
pub mod reconcile;
pub mod secrets;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::{ApiError, ApiToken, DeploymentsApi};
use crate::metrics::Metrics;
use crate::resource::GitDeployment;
use state::{ANNOTATION_STATE, State};

/// Errors of one reconciliation, by the step that failed. Problems a human must fix (a
/// missing Secret, a 401) are not errors: they become conditions and events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object has no namespace")]
    MissingNamespace,
    #[error("reading Secrets in namespace {namespace}: {source}")]
    ReadSecrets {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("recording state annotation on {namespace}/{name}: {source}")]
    WriteState {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status of {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Deployments API, trying to {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: ApiError,
    },
    /// Cleanup cannot finish yet (blocked credentials, rate limit): keep the finalizer, retry.
    #[error(
        "deletion of {namespace}/{name} waits to clean up remote deployments; retrying in {retry_after:?}"
    )]
    CleanupPending {
        namespace: String,
        name: String,
        retry_after: Duration,
    },
    #[error("finalizer {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Stable label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "invalid_object",
            Error::ReadSecrets { .. } => "kubernetes_read",
            Error::WriteState { .. } | Error::WriteStatus { .. } => "kubernetes_write",
            Error::Api { source, .. } => source.category(),
            Error::CleanupPending { .. } => "cleanup_pending",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "finalizer",
            },
        }
    }
}

type ObjectKey = (String, String);

/// Serializes the create requests (and lost-create searches) of one token and branch.
type CreateGate = Arc<tokio::sync::Mutex<()>>;

/// Shared by every reconciliation.
pub struct Context<A: DeploymentsApi> {
    pub client: Client,
    pub api: A,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Key of the spec fingerprints; see `state::fingerprint`.
    pub fingerprint_key: Option<Vec<u8>>,
    /// Token Secret of objects that name none (`--default-credentials-secret`).
    pub default_credentials: String,
    /// How often a finished deployment is checked for existence (`--recheck-finished-seconds`).
    pub existence_check: Duration,
    /// How long a deletion waits for credentials before orphaning remote deployments.
    pub cleanup_grace: Duration,
    /// Shared, batched observation of in-flight deployments, per token.
    pub observer: observer::Observer,
    /// How old a listing may be and still answer for an in-flight deployment.
    pub observe_max_age: Duration,
    /// Every object, to know which remote deployments other objects already claim.
    pub store: Option<Store<GitDeployment>>,
    failures: Mutex<HashMap<ObjectKey, u32>>,
    /// Creates under way or about to be, per token: observation yields to them.
    creates_pending: Mutex<HashMap<ApiToken, usize>>,
    create_gates: Mutex<HashMap<(ApiToken, String), CreateGate>>,
    /// Deployments this process created, by id, with the creating object's uid: claimed
    /// before the object's own record of them reaches the store.
    created_here: Mutex<HashMap<String, (String, std::time::Instant)>>,
}

impl<A: DeploymentsApi> Context<A> {
    pub fn new(client: Client, api: A, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Context {
            client,
            api,
            recorder,
            metrics,
            fingerprint_key: None,
            default_credentials: crate::resource::DEFAULT_CREDENTIALS_SECRET.to_string(),
            cleanup_grace: Duration::from_secs(300),
            existence_check: decision::EXISTENCE_CHECK,
            store: None,
            observer: observer::Observer::default(),
            observe_max_age: Duration::from_secs(1),
            failures: Mutex::default(),
            creates_pending: Mutex::default(),
            create_gates: Mutex::default(),
            created_here: Mutex::default(),
        }
    }

    /// Per-object exponential backoff for transient errors: 1 s, 2 s, 4 s … 5 min.
    fn next_backoff(&self, key: ObjectKey) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        let base = Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300));
        base + Duration::from_millis(rand::random_range(0..=base.as_millis() as u64 / 4))
    }

    fn forget_failures(&self, key: &ObjectKey) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Held around each create request of one token and branch (and its in-process claim),
    /// and around looking for a lost create: creates of one token and branch never run
    /// concurrently, and a search never runs while another object's fresh deployment exists
    /// remotely unclaimed. The Kubernetes writes around a create stay outside, so creates of
    /// many objects still overlap in everything but the request itself.
    fn create_gate(&self, token: &ApiToken, branch: &str) -> CreateGate {
        let mut gates = self.create_gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry((token.clone(), branch.to_string()))
            .or_default()
            .clone()
    }

    /// Claims `id` for the object `uid` the moment its create was answered.
    fn note_created(&self, id: &str, uid: &str) {
        let mut created = self.created_here.lock().unwrap_or_else(|e| e.into_inner());
        // By then the store has long shown every object's own record of its deployments.
        created.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(600));
        created.insert(id.to_string(), (uid.to_string(), std::time::Instant::now()));
    }

    /// Counts a create as pending for `token` until the guard is dropped.
    fn create_pending(&self, token: &ApiToken) -> PendingCreate<'_> {
        let key = token.clone();
        *self
            .creates_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert(0) += 1;
        PendingCreate {
            counts: &self.creates_pending,
            key,
        }
    }

    /// Whether creates are waiting for `token`'s budget: the priority queue of the client only
    /// orders calls already waiting, and between two creates an observation would take the
    /// next token. Observation of what is already mirrored waits for the creates instead.
    fn creates_pending(&self, token: &ApiToken) -> bool {
        let counts = self
            .creates_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.get(token).is_some_and(|n| *n > 0)
    }

    /// Remote ids that objects other than `me` own (current or history).
    fn claimed_ids(&self, me: &GitDeployment) -> HashSet<String> {
        let my_uid = me.metadata.uid.clone().unwrap_or_default();
        let mut claimed: HashSet<String> = self
            .created_here
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (uid, _))| *uid != my_uid)
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(store) = &self.store {
            claimed.extend(
                store
                    .state()
                    .iter()
                    .filter(|o| o.metadata.uid != me.metadata.uid)
                    .flat_map(|o| {
                        let s = State::of(o);
                        s.id.into_iter().chain(s.history)
                    }),
            );
        }
        claimed
    }
}

struct PendingCreate<'a> {
    counts: &'a Mutex<HashMap<ApiToken, usize>>,
    key: ApiToken,
}

impl Drop for PendingCreate<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Transient failures come back after a per-object exponential backoff.
pub fn error_policy<A: DeploymentsApi>(
    obj: Arc<GitDeployment>,
    error: &Error,
    ctx: Arc<Context<A>>,
) -> Action {
    // Waiting out a blocked cleanup is not a failure to back off from.
    if let Error::Finalizer(e) = error
        && let kube::runtime::finalizer::Error::CleanupFailed(Error::CleanupPending {
            retry_after,
            ..
        }) = e.as_ref()
    {
        return Action::requeue(*retry_after);
    }
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    let delay = ctx.next_backoff(key);
    tracing::warn!(object = %obj.name_any(), namespace = ?obj.namespace(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// What wakes an object: its own spec, finalizers and annotations (not its status or the
/// operator's own state annotation, which would make every write wake it again), and the loss
/// of its status (a restore, a wipe), which must be rebuilt at once.
fn wake_hash(obj: &GitDeployment) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // A lost status, or the schema's default `observedGeneration: 0`, means "not observed".
    obj.status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| g > 0)
        .hash(&mut h);
    predicates::generation(obj).hash(&mut h);
    predicates::finalizers(obj).hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    for (k, v) in obj.annotations() {
        if k != ANNOTATION_STATE {
            (k, v).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// Options of the controller loop.
pub struct RunOptions {
    pub namespace: Option<String>,
    pub concurrency: u16,
}

/// Runs the controller until `shutdown` resolves. `ready` is told once the object cache is
/// filled.
pub async fn run<A: DeploymentsApi>(
    client: Client,
    mut ctx: Context<A>,
    options: RunOptions,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (objects, secrets): (Api<GitDeployment>, Api<PartialObjectMeta<Secret>>) =
        match &options.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let (reader, writer) = reflector::store();
    let trigger = watcher(objects, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(wake_hash, Default::default());
    ctx.store = Some(reader.clone());
    let ready_reader = reader.clone();
    // Store readiness sits behind a oneshot receiver that wakes only its latest poller, and
    // the controller itself waits on it too: check it on a short timer instead of awaiting it.
    tokio::spawn(async move {
        loop {
            if ready_reader.wait_until_ready().now_or_never().is_some() {
                tracing::info!("object cache filled; ready");
                ready();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let index = reader.clone();
    let default_credentials = ctx.default_credentials.clone();
    // Only Secret metadata is watched: a change of data changes resourceVersion, and the
    // operator never keeps every Secret of the cluster in memory.
    let secret_changes = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .touched_objects();
    Controller::for_stream(trigger, reader)
        .with_config(ControllerConfig::default().concurrency(options.concurrency))
        .watches_stream(secret_changes, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            index
                .state()
                .into_iter()
                .filter(|o| {
                    o.namespace() == ns
                        && secrets::referenced(&o.spec, &default_credentials).any(|r| r == name)
                })
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, Arc::new(ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// The recorder every event goes through.
pub fn recorder(client: Client) -> Recorder {
    let reporter = Reporter {
        controller: "gitdev-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Recorder::new(client, reporter)
}
