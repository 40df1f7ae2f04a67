//! The Secrets objects refer to, kept between reconciles.
//!
//! The operator watches the metadata of the Secrets in its namespaces (name and
//! resourceVersion: no values cross the wire for Secrets no object uses). The values of the
//! Secrets a reconcile actually read are kept here, each valid exactly while the watch still
//! shows the resourceVersion it was read at: an edited, replaced or deleted Secret is read
//! again (or found gone) on the next reconcile, which its change wakes. So a reconcile reads
//! its token and environment from memory, and the API server sees a Secret GET only when a
//! Secret changed or was never read.
//!
//! Reconciles that need a Secret nobody has kept yet while another reconcile reads it (a burst
//! of objects sharing one token, just after the operator starts) wait for that read and share
//! its answer: one GET, not one per object.
//!
//! The kept values are bounded: a Secret over [`ENTRY_LIMIT_BYTES`] is never kept (it is read
//! each time; such Secrets are rare and their objects are usually stalled on `EnvTooLarge`),
//! and past [`CACHE_LIMIT_BYTES`] the least recently used values are dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use super::context::{ObjectKey, lock};

/// The largest Secret whose value is kept (keys and values, in bytes).
pub const ENTRY_LIMIT_BYTES: usize = 256 * 1024;
/// The most Secret data kept in all.
pub const CACHE_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// Secret values read before, each with the resourceVersion it was read at.
#[derive(Default)]
pub struct SecretCache {
    /// The watched Secrets' metadata; `None` where no watch runs (then nothing is kept).
    versions: Option<Store<PartialObjectMeta<Secret>>>,
    values: Mutex<Values>,
    /// Reads under way, by Secret: a reconcile that needs one joins it.
    flights: Mutex<HashMap<ObjectKey, Flight>>,
}

/// One GET of a Secret, shared by every reconcile that asked for it before it was answered.
type Flight = Arc<tokio::sync::OnceCell<Option<Arc<Secret>>>>;

#[derive(Default)]
struct Values {
    entries: HashMap<ObjectKey, Entry>,
    bytes: usize,
    /// Counts lookups, to find the least recently used entry.
    clock: u64,
}

struct Entry {
    secret: Arc<Secret>,
    version: String,
    bytes: usize,
    used: u64,
}

/// What the cache knows of one Secret.
#[derive(Debug)]
pub enum Cached {
    /// The value at the version the watch shows.
    Fresh(Arc<Secret>),
    /// Unknown, changed since it was read, or not (yet) seen by the watch: read it.
    Read,
}

impl SecretCache {
    /// A cache over the watched Secrets' metadata.
    pub fn watching(versions: Store<PartialObjectMeta<Secret>>) -> Self {
        SecretCache {
            versions: Some(versions),
            values: Mutex::default(),
            flights: Mutex::default(),
        }
    }

    /// Secret `namespace/name`: the kept value if it is fresh, else what `fetch` reads (and
    /// is kept), or what a read of it already under way answers. The flag says whether this
    /// call sent the read.
    pub async fn read<E, F, Fut>(
        &self,
        namespace: &str,
        name: &str,
        fetch: F,
    ) -> Result<(Option<Arc<Secret>>, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Secret>, E>>,
    {
        if let Cached::Fresh(secret) = self.get(namespace, name) {
            return Ok((Some(secret), false));
        }
        let key = key(namespace, name);
        let flight = lock(&self.flights).entry(key.clone()).or_default().clone();
        let sent = AtomicBool::new(false);
        let answer = flight
            .get_or_try_init(|| async {
                sent.store(true, Ordering::Relaxed);
                // Landed when the read ends, answered, failed or dropped: whoever asks later
                // finds the kept value, or reads anew. Nobody is served an answer older than
                // their question from a flight left behind.
                let _landing = Landing {
                    flights: &self.flights,
                    key: &key,
                    flight: &flight,
                };
                let read = fetch().await?;
                self.keep(namespace, name, read.as_ref());
                Ok(read.map(Arc::new))
            })
            .await?;
        Ok((answer.clone(), sent.load(Ordering::Relaxed)))
    }

    /// The kept value of Secret `namespace/name`, if it is still the version the watch shows.
    pub fn get(&self, namespace: &str, name: &str) -> Cached {
        let Some(watched) = self.watched_version(namespace, name) else {
            // Absent from the watch: absent, or created an instant ago and not seen yet. A
            // missing Secret is a misconfiguration worth one GET to be sure of.
            return Cached::Read;
        };
        let mut values = lock(&self.values);
        values.clock = values.clock.wrapping_add(1);
        let now = values.clock;
        match values.entries.get_mut(&key(namespace, name)) {
            Some(e) if e.version == watched => {
                e.used = now;
                Cached::Fresh(e.secret.clone())
            }
            _ => Cached::Read,
        }
    }

    /// Keeps what a GET of `namespace/name` returned (`None`: not found).
    pub fn keep(&self, namespace: &str, name: &str, secret: Option<&Secret>) {
        if self.versions.is_none() {
            return;
        }
        let mut values = lock(&self.values);
        values.remove(&key(namespace, name));
        let Some(secret) = secret else { return };
        let Some(version) = secret.metadata.resource_version.clone() else {
            return;
        };
        let bytes = data_bytes(secret);
        if bytes > ENTRY_LIMIT_BYTES {
            return;
        }
        // Only what reconciles read: the data and its version. Labels, annotations (a
        // `kubectl apply` copy of the whole Secret among them) and managed fields are not kept.
        let kept = Secret {
            data: secret.data.clone(),
            string_data: secret.string_data.clone(),
            ..Secret::default()
        };
        values.clock = values.clock.wrapping_add(1);
        let used = values.clock;
        values.bytes = values.bytes.saturating_add(bytes);
        values.entries.insert(
            key(namespace, name),
            Entry {
                secret: Arc::new(kept),
                version,
                bytes,
                used,
            },
        );
        while values.bytes > CACHE_LIMIT_BYTES {
            let Some(oldest) = values
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            values.remove(&oldest);
        }
    }

    /// Drops the value of a Secret the watch no longer shows (deleted): no copy of a
    /// deleted Secret outlives it here.
    pub fn forget_if_gone(&self, namespace: &str, name: &str) {
        if self.versions.is_some() && self.watched_version(namespace, name).is_none() {
            lock(&self.values).remove(&key(namespace, name));
        }
    }

    /// How many Secret values are kept, and their size in bytes.
    pub fn size(&self) -> (usize, usize) {
        let values = lock(&self.values);
        (values.entries.len(), values.bytes)
    }

    fn watched_version(&self, namespace: &str, name: &str) -> Option<String> {
        let store = self.versions.as_ref()?;
        let meta = store.get(&ObjectRef::new(name).within(namespace))?;
        meta.metadata.resource_version.clone()
    }
}

/// Takes a finished flight off the board (only that one: a later flight for the same Secret
/// may have replaced it).
struct Landing<'a> {
    flights: &'a Mutex<HashMap<ObjectKey, Flight>>,
    key: &'a ObjectKey,
    flight: &'a Flight,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut flights = lock(self.flights);
        if flights
            .get(self.key)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight))
        {
            flights.remove(self.key);
        }
    }
}

impl Values {
    fn remove(&mut self, key: &ObjectKey) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(e.bytes);
        }
    }
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    (namespace.to_string(), name.to_string())
}

/// Keys and values of a Secret's data, in bytes.
fn data_bytes(secret: &Secret) -> usize {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| k.len().saturating_add(v.0.len()));
    let string_data = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| k.len().saturating_add(v.len()));
    data.chain(string_data)
        .fold(0usize, |sum, n| sum.saturating_add(n))
}

/// The metadata a watched Secret keeps in the version store: what finds it and its version.
pub fn strip(meta: &mut PartialObjectMeta<Secret>) {
    let m = &mut meta.metadata;
    m.annotations = None;
    m.labels = None;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;

    fn meta(ns: &str, name: &str, version: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    fn secret(version: &str, token: &[u8]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                annotations: Some([("note".to_string(), "x".repeat(100))].into()),
                ..ObjectMeta::default()
            },
            data: Some([("token".to_string(), ByteString(token.to_vec()))].into()),
            ..Secret::default()
        }
    }

    fn watched(
        objects: &[PartialObjectMeta<Secret>],
    ) -> (
        SecretCache,
        reflector::store::Writer<PartialObjectMeta<Secret>>,
    ) {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            writer.apply_watcher_event(&Event::InitApply(o.clone()));
        }
        writer.apply_watcher_event(&Event::InitDone);
        (SecretCache::watching(store), writer)
    }

    fn token(c: Cached) -> Option<Vec<u8>> {
        match c {
            Cached::Fresh(s) => Some(s.data.as_ref()?.get("token")?.0.clone()),
            Cached::Read => None,
        }
    }

    #[test]
    fn a_secret_read_at_the_watched_version_is_served_from_memory_without_its_metadata() {
        let (cache, _w) = watched(&[meta("a", "creds", "5")]);
        assert!(matches!(cache.get("a", "creds"), Cached::Read));
        cache.keep("a", "creds", Some(&secret("5", b"sk_1")));
        let Cached::Fresh(kept) = cache.get("a", "creds") else {
            panic!("kept")
        };
        assert_eq!(token(Cached::Fresh(kept.clone())), Some(b"sk_1".to_vec()));
        assert!(kept.metadata.annotations.is_none());
        // The same name in another namespace is another Secret.
        assert!(matches!(cache.get("b", "creds"), Cached::Read));
    }

    #[test]
    fn a_changed_or_deleted_secret_is_read_again_and_a_deleted_ones_value_is_dropped() {
        let (cache, mut w) = watched(&[meta("a", "creds", "5")]);
        cache.keep("a", "creds", Some(&secret("5", b"sk_1")));
        w.apply_watcher_event(&Event::Apply(meta("a", "creds", "6")));
        assert!(matches!(cache.get("a", "creds"), Cached::Read));
        cache.keep("a", "creds", Some(&secret("6", b"sk_2")));
        assert_eq!(token(cache.get("a", "creds")), Some(b"sk_2".to_vec()));

        w.apply_watcher_event(&Event::Delete(meta("a", "creds", "6")));
        assert!(matches!(cache.get("a", "creds"), Cached::Read));
        cache.forget_if_gone("a", "creds");
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn a_read_that_raced_ahead_of_the_watch_is_not_served_until_the_watch_shows_its_version() {
        let (cache, mut w) = watched(&[meta("a", "creds", "5")]);
        cache.keep("a", "creds", Some(&secret("6", b"sk_2")));
        assert!(matches!(cache.get("a", "creds"), Cached::Read));
        w.apply_watcher_event(&Event::Apply(meta("a", "creds", "6")));
        assert_eq!(token(cache.get("a", "creds")), Some(b"sk_2".to_vec()));
    }

    #[test]
    fn a_secret_not_found_drops_what_was_kept_of_it() {
        let (cache, _w) = watched(&[meta("a", "creds", "5")]);
        cache.keep("a", "creds", Some(&secret("5", b"sk_1")));
        cache.keep("a", "creds", None);
        assert!(matches!(cache.get("a", "creds"), Cached::Read));
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn large_secrets_are_never_kept_and_the_least_recently_used_go_first_past_the_limit() {
        let per = ENTRY_LIMIT_BYTES - 16;
        let count = CACHE_LIMIT_BYTES / per + 1;
        let names: Vec<String> = (0..=count).map(|i| format!("s{i}")).collect();
        let metas: Vec<_> = names.iter().map(|n| meta("a", n, "1")).collect();
        let (cache, _w) = watched(&metas);

        cache.keep(
            "a",
            "s0",
            Some(&secret("1", &vec![b'x'; ENTRY_LIMIT_BYTES])),
        );
        assert_eq!(cache.size(), (0, 0), "over the entry limit");

        for n in &names[1..] {
            cache.keep("a", n, Some(&secret("1", &vec![b'x'; per])));
            // s1 stays the most recently used.
            let _ = cache.get("a", "s1");
        }
        let (entries, bytes) = cache.size();
        assert!(bytes <= CACHE_LIMIT_BYTES, "{bytes}");
        assert_eq!(entries, count - 1);
        assert!(matches!(cache.get("a", "s1"), Cached::Fresh(_)));
        assert!(
            matches!(cache.get("a", "s2"), Cached::Read),
            "the oldest went first"
        );
    }

    #[tokio::test]
    async fn reconciles_asking_for_a_secret_while_it_is_read_share_that_one_read() {
        let (cache, _w) = watched(&[meta("a", "creds", "5")]);
        let gets = std::sync::atomic::AtomicUsize::new(0);
        let (release, released) = tokio::sync::watch::channel(false);
        let fetch = || {
            gets.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                released.wait_for(|r| *r).await.unwrap();
                Ok::<_, ()>(Some(secret("5", b"sk_1")))
            }
        };
        let readers = futures::future::join_all((0..3).map(|_| cache.read("a", "creds", fetch)));
        let release_after_all_asked = async {
            tokio::task::yield_now().await;
            release.send(true).unwrap();
        };
        let (answers, ()) = tokio::join!(readers, release_after_all_asked);
        assert_eq!(
            gets.load(Ordering::SeqCst),
            1,
            "one GET for three reconciles"
        );
        let sent: Vec<bool> = answers.iter().map(|a| a.as_ref().unwrap().1).collect();
        assert_eq!(sent.iter().filter(|s| **s).count(), 1, "{sent:?}");
        for answer in answers {
            let (secret, _) = answer.unwrap();
            assert_eq!(
                token(Cached::Fresh(secret.unwrap())),
                Some(b"sk_1".to_vec())
            );
        }
        // Landed and kept: the next reconcile reads memory.
        assert!(lock(&cache.flights).is_empty());
        let (_, sent) = cache.read("a", "creds", fetch).await.unwrap();
        assert!(!sent);
        assert_eq!(gets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_or_dropped_read_is_not_shared_and_a_read_after_one_landed_reads_anew() {
        // No watch: nothing is kept, so every read that does not join a flight sends its own.
        let cache = SecretCache::default();
        let failed = cache
            .read("a", "creds", || async {
                Err::<Option<Secret>, _>("refused")
            })
            .await;
        assert_eq!(failed.unwrap_err(), "refused");
        assert!(lock(&cache.flights).is_empty(), "a failed read lands too");
        let dropped = tokio::time::timeout(
            std::time::Duration::from_millis(5),
            cache.read(
                "a",
                "creds",
                std::future::pending::<Result<Option<Secret>, ()>>,
            ),
        )
        .await;
        assert!(dropped.is_err());
        assert!(lock(&cache.flights).is_empty(), "so does a dropped one");
        for value in [&b"sk_1"[..], b"sk_2"] {
            let (secret, sent) = cache
                .read("a", "creds", || async {
                    Ok::<_, ()>(Some(secret("5", value)))
                })
                .await
                .unwrap();
            assert!(sent);
            assert_eq!(token(Cached::Fresh(secret.unwrap())), Some(value.to_vec()));
        }
    }

    #[test]
    fn without_a_watch_nothing_is_kept() {
        let cache = SecretCache::default();
        cache.keep("a", "creds", Some(&secret("5", b"sk_1")));
        assert!(matches!(cache.get("a", "creds"), Cached::Read));
        assert_eq!(cache.size(), (0, 0));
    }
}
