//! The details only a GET gives (completion time, build duration) of deployments a listing
//! found finished, read off the reconcile path.
//!
//! A reconcile that waits for a GET's rate budget holds one of the controller's reconcile
//! slots meanwhile. With a thousand finished deployments waiting behind a token's creates,
//! every slot ended up waiting for budget, and objects whose deployment had just succeeded
//! could not even be looked at: their `Ready` came a minute late, in one run of three. Here a
//! reconcile only asks for the details and returns; a few readers per token GET them in the
//! order asked, at observation priority and after the token's creates, and wake each object
//! when its details are there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;

use super::context::{Context, lock};
use crate::api::{ApiToken, DeploymentDetails, DeploymentsApi, ErrorClass};
use crate::resource::GitDeployment;

/// Readers per token: enough to keep a fast token's budget busy over a slow network (one
/// GET in flight at a time would cap a token at one GET per round trip).
const READERS_PER_TOKEN: usize = 4;

/// How often a reader looks again while the token's creates are pending.
const CREATES_FIRST_POLL: Duration = Duration::from_millis(250);

/// Longest sleep of a reader refused for lack of budget before it asks again.
const MAX_BUDGET_SLEEP: Duration = Duration::from_secs(10);

/// The outcome of a read, kept until the object's reconcile takes it.
#[derive(Clone, Debug)]
pub enum Read {
    Details(Arc<DeploymentDetails>),
    /// Not read (404, a fault): the reconcile reads for itself, and reports what it finds.
    Failed,
}

type Waiter = ObjectRef<GitDeployment>;

/// Who runs readers (set once by the controller; unset in the reconciler's unit tests, where
/// reconciles read details themselves).
type Spawn = Box<dyn Fn(ApiToken) + Send + Sync>;

#[derive(Default)]
pub struct DetailsReader {
    state: Mutex<ReaderState>,
    spawn: OnceLock<Spawn>,
    wake: OnceLock<UnboundedSender<Waiter>>,
}

#[derive(Default)]
struct ReaderState {
    tokens: HashMap<ApiToken, TokenQueue>,
    /// Reads not yet taken by their object's reconcile, by deployment id.
    read: HashMap<String, Read>,
}

#[derive(Default)]
struct TokenQueue {
    waiting: VecDeque<(String, Waiter)>,
    /// Ids in `waiting` or being read.
    queued: HashSet<String>,
    readers: usize,
}

impl DetailsReader {
    /// Readers are started through `spawn` (one call per reader to start), and objects whose
    /// details were read are sent to `wake`.
    pub fn start(&self, spawn: Spawn, wake: UnboundedSender<Waiter>) {
        let _ = self.spawn.set(spawn);
        let _ = self.wake.set(wake);
    }

    /// Whether readers run: if not, a reconcile reads the details itself.
    pub fn runs(&self) -> bool {
        self.spawn.get().is_some()
    }

    /// The read of `id`'s details, if one finished since it was asked for; taken once.
    pub fn take(&self, id: &str) -> Option<Read> {
        lock(&self.state).read.remove(id)
    }

    /// Asks for the details of deployment `id`; `waiter` is reconciled once they are read.
    /// Asking again while it is queued changes nothing.
    pub fn want(&self, token: &ApiToken, id: &str, waiter: Waiter) {
        let start = {
            let mut st = lock(&self.state);
            let q = st.tokens.entry(token.clone()).or_default();
            if !q.queued.insert(id.to_string()) {
                return;
            }
            q.waiting.push_back((id.to_string(), waiter));
            let start = q.readers < READERS_PER_TOKEN;
            if start {
                q.readers += 1;
            }
            start
        };
        if start && let Some(spawn) = self.spawn.get() {
            spawn(token.clone());
        }
    }

    /// The next deployment for a reader of `token`; `None` ends that reader.
    fn next(&self, token: &ApiToken) -> Option<(String, Waiter)> {
        let mut st = lock(&self.state);
        let q = st.tokens.get_mut(token)?;
        if let Some(item) = q.waiting.pop_front() {
            return Some(item);
        }
        q.readers = q.readers.saturating_sub(1);
        if q.readers == 0 && q.queued.is_empty() {
            st.tokens.remove(token);
        }
        None
    }

    /// Refused for lack of budget: first in line again.
    fn again(&self, token: &ApiToken, item: (String, Waiter)) {
        let mut st = lock(&self.state);
        if let Some(q) = st.tokens.get_mut(token)
            && q.queued.contains(&item.0)
        {
            q.waiting.push_front(item);
        }
    }

    fn done(&self, token: &ApiToken, id: &str, read: Read, waiter: Waiter) {
        {
            let mut st = lock(&self.state);
            let Some(q) = st.tokens.get_mut(token) else {
                return;
            };
            if !q.queued.remove(id) {
                // Forgotten meanwhile: its object is gone.
                return;
            }
            st.read.insert(id.to_string(), read);
        }
        if let Some(wake) = self.wake.get() {
            // The controller may be shutting down; its next start reads again.
            let _ = wake.unbounded_send(waiter);
        }
    }

    /// Nobody needs these deployments' details any more (their object went away).
    pub fn forget(&self, ids: &[String]) {
        let mut st = lock(&self.state);
        for id in ids {
            st.read.remove(id);
        }
        for q in st.tokens.values_mut() {
            if ids.iter().any(|id| q.queued.remove(id)) {
                q.waiting.retain(|(id, _)| q.queued.contains(id));
            }
        }
    }

    /// Reads asked for and not yet read, for every token.
    pub fn waiting(&self) -> usize {
        lock(&self.state)
            .tokens
            .values()
            .map(|q| q.queued.len())
            .sum()
    }
}

/// One reader of `token`'s queue: GETs the details asked for, one after another, until the
/// queue is empty.
pub async fn read_details<A: DeploymentsApi>(ctx: Arc<Context<A>>, token: ApiToken) {
    let reader = &ctx.coordination.details;
    while let Some((id, waiter)) = reader.next(&token) {
        // A burst's floor is set by its creates: details wait for them.
        while ctx.coordination.creates_pending(&token) {
            tokio::time::sleep(CREATES_FIRST_POLL).await;
        }
        match ctx.api.get(&token, &id).await {
            Ok(d) => reader.done(&token, &id, Read::Details(Arc::new(d)), waiter),
            Err(e) => match e.class() {
                ErrorClass::RateLimited { retry_after } => {
                    reader.again(&token, (id, waiter));
                    tokio::time::sleep(retry_after.min(MAX_BUDGET_SLEEP)).await;
                }
                _ => {
                    tracing::debug!(%id, error = %e, "reading a finished deployment's details failed; its reconcile reads them");
                    reader.done(&token, &id, Read::Failed, waiter);
                }
            },
        }
    }
}
