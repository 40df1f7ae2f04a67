//! The controller loop: a kube-runtime `Controller` over every `gitdeployments.git.dev`
//! object of the watched namespaces, woken by the objects themselves and by the Secrets they
//! refer to.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use super::cached::Cached;
use super::context::{Config, Context};
use super::events::Recorder;
use super::{Error, details, reconcile, secret_cache};
use crate::api::DeploymentsApi;
use crate::metrics::Metrics;

/// Transient failures come back after a per-object exponential backoff.
pub fn error_policy<A: DeploymentsApi, K: Resource>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context<A>>,
) -> Requeue {
    // Waiting out a blocked cleanup is not a failure to back off from.
    if let Error::Finalizer(e) = error
        && let kube::runtime::finalizer::Error::CleanupFailed(Error::CleanupPending {
            retry_after,
            ..
        }) = e.as_ref()
    {
        return Requeue::requeue(*retry_after);
    }
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    let delay = ctx.coordination.next_backoff(key);
    tracing::warn!(object = %obj.name_any(), namespace = ?obj.namespace(), %error, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

/// Options of the controller loop.
pub struct RunOptions {
    /// Watch these namespaces only (`--namespaces`); every namespace when empty.
    pub namespaces: Vec<String>,
    pub concurrency: u16,
}

type Events<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// The watch events of `K` in the watched namespaces, for one reflector `store`: a single
/// watcher cluster-wide or on one namespace, else one per namespace, merged by [`Merge`].
fn watch_events<K>(client: &Client, namespaces: &[String], store: &Store<K>) -> Events<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let config = watcher::Config::default();
    match namespaces {
        [] => watcher(Api::<K>::all(client.clone()), config)
            .default_backoff()
            .boxed(),
        [one] => watcher(Api::<K>::namespaced(client.clone(), one), config)
            .default_backoff()
            .boxed(),
        several => {
            let each = several.iter().enumerate().map(|(i, ns)| {
                watcher(Api::<K>::namespaced(client.clone(), ns), config.clone())
                    .default_backoff()
                    .map_ok(move |event| (i, event))
                    .boxed()
            });
            let mut merge = Merge::new(several.to_vec(), store.clone());
            futures::stream::select_all(each)
                .map_ok(move |(i, event)| futures::stream::iter(merge.next(i, event)).map(Ok))
                .try_flatten()
                .boxed()
        }
    }
}

/// Several namespaces' watchers feeding one reflector store. A watcher's `Init` … `InitDone`
/// means "this is everything", and the store replaces its whole content with it: the objects of
/// the other namespaces would vanish (and the store would call itself ready after the first
/// namespace's list). So the first lists of all namespaces are gathered and given to the store
/// as one list once every namespace has been listed; after that, a namespace's relist (its
/// watch fell too far behind) becomes applies of what it lists and deletes of its objects that
/// it no longer lists.
struct Merge<K: Resource<DynamicType = ()> + 'static> {
    namespaces: Vec<String>,
    /// Until every namespace is listed once: each one's objects, and whether its list is done.
    first: Option<Vec<(BTreeMap<String, K>, bool)>>,
    /// Per namespace: the names seen by a relist under way.
    relisting: Vec<Option<HashSet<String>>>,
    store: Store<K>,
}

impl<K> Merge<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn new(namespaces: Vec<String>, store: Store<K>) -> Self {
        let n = namespaces.len();
        Merge {
            namespaces,
            first: Some((0..n).map(|_| (BTreeMap::new(), false)).collect()),
            relisting: vec![None; n],
            store,
        }
    }

    /// The events for the store, given the next `event` of namespace number `i`.
    fn next(&mut self, i: usize, event: watcher::Event<K>) -> Vec<watcher::Event<K>> {
        use watcher::Event::*;
        if let Some(first) = &mut self.first {
            let Some((objects, listed)) = first.get_mut(i) else {
                return Vec::new();
            };
            match event {
                Init => {
                    objects.clear();
                    *listed = false;
                }
                InitApply(o) | Apply(o) => {
                    objects.insert(o.name_any(), o);
                }
                Delete(o) => {
                    objects.remove(&o.name_any());
                }
                InitDone => *listed = true,
            }
            if !first.iter().all(|(_, listed)| *listed) {
                return Vec::new();
            }
            let all = self.first.take().unwrap_or_default();
            let mut events = vec![Init];
            events.extend(
                all.into_iter()
                    .flat_map(|(objects, _)| objects.into_values().map(InitApply)),
            );
            events.push(InitDone);
            return events;
        }
        let Some(relisting) = self.relisting.get_mut(i) else {
            return Vec::new();
        };
        match event {
            Init => {
                *relisting = Some(HashSet::new());
                Vec::new()
            }
            InitApply(o) => {
                if let Some(seen) = relisting {
                    seen.insert(o.name_any());
                }
                vec![Apply(o)]
            }
            InitDone => {
                let seen = relisting.take().unwrap_or_default();
                let ns = self.namespaces.get(i).map(String::as_str);
                self.store
                    .state()
                    .into_iter()
                    .filter(|o| o.namespace().as_deref() == ns && !seen.contains(&o.name_any()))
                    .map(|o| Delete(o.as_ref().clone()))
                    .collect()
            }
            event @ (Apply(_) | Delete(_)) => vec![event],
        }
    }
}

/// Runs the controller until `shutdown` resolves. `ready` is told once the object cache is
/// filled.
pub async fn run<A: DeploymentsApi>(
    client: Client,
    api: A,
    metrics: Arc<Metrics>,
    config: Config,
    options: RunOptions,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, writer) = reflector::store();
    // Secrets: metadata only (`PartialObjectMeta` requests carry no values), kept in a store
    // so that the values a reconcile reads can be reused while their version stands.
    let (secret_versions, secret_writer) = reflector::store();
    let secret_changes = watch_events(&client, &options.namespaces, &secret_versions)
        .modify(secret_cache::strip)
        .reflect(secret_writer)
        .touched_objects();
    // Slimmed and made compact as each object arrives (`Cached`'s deserializer).
    let trigger = watch_events(&client, &options.namespaces, &reader)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(|o: &Cached| Some(o.wake()), Default::default());
    let default_credentials = config.default_credentials.clone();
    let counting = metrics.clone();
    let ctx = Context::new(
        client.clone(),
        api,
        recorder(client),
        metrics,
        config,
        Some(reader.clone()),
    )
    .watching_secrets(secret_versions);
    let (wake, woken) = futures::channel::mpsc::unbounded();
    ctx.coordination.observer.wake_into(wake.clone());
    let ctx = Arc::new(ctx);
    // Weak: the readers' spawner lives in the context it would otherwise keep alive.
    let for_readers = Arc::downgrade(&ctx);
    ctx.coordination.details.start(
        Box::new(move |token| {
            if let Some(ctx) = for_readers.upgrade() {
                tokio::spawn(details::read_details(ctx, token));
            }
        }),
        wake,
    );
    let mapper_ctx = ctx.clone();
    let ready_reader = reader.clone();
    // Store readiness sits behind a oneshot receiver that wakes only its latest poller, and
    // the controller itself waits on it too: check it on a short timer instead of awaiting it.
    tokio::spawn(async move {
        loop {
            if ready_reader.wait_until_ready().now_or_never().is_some() {
                tracing::info!("object cache filled; ready");
                counting.count_objects(ready_reader);
                ready();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let index = reader.clone();
    Controller::for_stream(trigger, reader)
        .with_config(ControllerConfig::default().concurrency(options.concurrency))
        .watches_stream(secret_changes, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            mapper_ctx
                .secrets
                .forget_if_gone(ns.as_deref().unwrap_or_default(), &name);
            index
                .state()
                .into_iter()
                .filter(|o| o.namespace() == ns && o.refers_to(&name, &default_credentials))
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
        .reconcile_on(woken.map(|o| {
            let to = ObjectRef::<Cached>::new(&o.name);
            match &o.namespace {
                Some(ns) => to.within(ns),
                None => to,
            }
        }))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_cached, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// Reconciles the object a cache entry holds, decoded.
async fn reconcile_cached<A: DeploymentsApi>(
    cached: Arc<Cached>,
    ctx: Arc<Context<A>>,
) -> Result<Requeue, Error> {
    let obj = cached.object().map_err(|source| Error::ReadCachedObject {
        namespace: cached.namespace().unwrap_or_default(),
        name: cached.name_any(),
        source,
    })?;
    reconcile::reconcile(Arc::new(obj), ctx).await
}

/// The recorder every event goes through.
pub fn recorder(client: Client) -> Recorder {
    Recorder::new(client, "gitdev-operator", std::env::var("POD_NAME").ok())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event::{self, *};

    use super::*;

    fn cm(ns: &str, name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// Two namespaces' events through `Merge` into a real reflector store.
    struct Merged {
        merge: Merge<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
        store: Store<ConfigMap>,
    }

    impl Merged {
        fn new() -> Merged {
            let (store, writer) = reflector::store();
            Merged {
                merge: Merge::new(vec!["a".into(), "b".into()], store.clone()),
                writer,
                store,
            }
        }

        fn feed(&mut self, ns: usize, events: Vec<Event<ConfigMap>>) {
            for event in events {
                for out in self.merge.next(ns, event) {
                    self.writer.apply_watcher_event(&out);
                }
            }
        }

        /// A whole list of namespace `ns` (`a` or `b`): `(name, resourceVersion)` of each object.
        fn list(&mut self, ns: usize, objects: &[(&str, &str)]) {
            let namespace = ["a", "b"][ns];
            let mut events = vec![Init];
            events.extend(
                objects
                    .iter()
                    .map(|(name, version)| InitApply(cm(namespace, name, version))),
            );
            events.push(InitDone);
            self.feed(ns, events);
        }

        /// `ns/name@resourceVersion` of every object in the store, sorted.
        fn objects(&self) -> Vec<String> {
            let mut all: Vec<String> = self
                .store
                .state()
                .iter()
                .map(|o| {
                    format!(
                        "{}/{}@{}",
                        o.namespace().unwrap_or_default(),
                        o.name_any(),
                        o.resource_version().unwrap_or_default()
                    )
                })
                .collect();
            all.sort();
            all
        }

        fn ready(&self) -> bool {
            self.store.wait_until_ready().now_or_never().is_some()
        }
    }

    #[test]
    fn the_store_of_several_namespaces_is_ready_only_once_every_namespace_is_listed() {
        let mut m = Merged::new();
        m.list(0, &[("one", "1")]);
        assert!(!m.ready());
        assert!(
            m.objects().is_empty(),
            "nothing before every namespace is listed"
        );
        // Namespace a moves on while b is still listing: nothing of it is lost.
        m.feed(
            0,
            vec![
                Apply(cm("a", "two", "2")),
                Apply(cm("a", "one", "3")),
                Delete(cm("a", "two", "4")),
            ],
        );
        m.feed(1, vec![Init, InitApply(cm("b", "one", "5"))]);
        assert!(!m.ready());
        m.feed(1, vec![InitDone]);
        assert!(m.ready());
        assert_eq!(m.objects(), ["a/one@3", "b/one@5"]);
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_other_namespaces_objects_and_drops_only_its_own_vanished_ones()
     {
        let mut m = Merged::new();
        m.list(0, &[("stays", "1"), ("goes", "2")]);
        m.list(1, &[("goes", "3")]);
        // A relist of a restarted watch: one object changed, one gone, one new.
        m.list(0, &[("stays", "6"), ("new", "7")]);
        assert_eq!(m.objects(), ["a/new@7", "a/stays@6", "b/goes@3"]);
        // Live events of either namespace apply as they come.
        m.feed(1, vec![Delete(cm("b", "goes", "8"))]);
        m.feed(0, vec![Apply(cm("a", "new", "9"))]);
        assert_eq!(m.objects(), ["a/new@9", "a/stays@6"]);
        assert!(m.ready());
    }

    #[test]
    fn a_namespace_whose_first_list_restarts_lists_only_what_its_last_list_held() {
        let mut m = Merged::new();
        m.feed(0, vec![Init, InitApply(cm("a", "old", "1"))]);
        m.list(0, &[("new", "2")]);
        m.list(1, &[]);
        assert_eq!(m.objects(), ["a/new@2"]);
    }
}
