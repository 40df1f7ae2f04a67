//! What the object cache keeps of an object, and what wakes it.
//!
//! The controller's cache holds every watched object for as long as it exists. Kept as a
//! `GitDeployment`, an object is some 40 small allocations (every string, map and condition of
//! it): at 10,000 objects the cache was 37.5 MB of a 68 MB heap, and its small allocations,
//! interleaved with what reconciles free, kept freed pages resident. A [`Cached`] object is the
//! object as compact JSON in one allocation, with what is read of every object without a
//! reconcile worked out once when it arrives: its name, what wakes it, the Secrets it refers to
//! and where it stands for the object gauges. A reconcile decodes the whole object (a few
//! microseconds), as do the rare paths that look at other objects' states (claims).
//!
//! The JSON is kept LZ4-compressed against a dictionary of typical objects ([`DICTIONARY`]).
//! Most of an object is field names, our own condition messages and the same deployment id,
//! timestamps and fingerprint several times over: at 10,000 objects the cache's copies were
//! 15.6 MB of the 56 MB live at the end of a run, about 1.5 kB of JSON an object. Compressing
//! one object (microseconds) happens once per watch event; decompressing is faster than
//! decoding the JSON it gives.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use kube::api::ObjectMeta;
use kube::core::NamespaceResourceScope;
use kube::runtime::predicates;
use kube::{Resource, ResourceExt};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::decision;
use super::state::{ANNOTATION_STATE, State};
use crate::metrics::objects::{Standing, standing};
use crate::resource::{FINALIZER, GitDeployment};

/// One object as the cache keeps it.
#[derive(Clone)]
pub struct Cached {
    /// Name, namespace, uid and resourceVersion only: what the controller's queue and the
    /// reflector key objects by.
    meta: ObjectMeta,
    /// The object without managed fields nor kubectl's last-applied copy ([`slim`]), as
    /// compact JSON compressed against [`dictionary`] ([`pack`]).
    packed: Box<[u8]>,
    wake: u64,
    /// `spec.credentialsSecretRef.name`, when the spec names one.
    credentials: Option<String>,
    /// The Secrets of `spec.envFrom`.
    env_from: Box<[String]>,
    /// The remote deployments the object names, signed or not ([`State::named_by`]).
    names: Box<[String]>,
    standing: Standing,
}

impl Cached {
    /// `obj` as the cache keeps it.
    pub fn of(mut obj: GitDeployment) -> Result<Cached, serde_json::Error> {
        slim(&mut obj);
        let meta = ObjectMeta {
            name: obj.metadata.name.clone(),
            namespace: obj.metadata.namespace.clone(),
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        };
        Ok(Cached {
            wake: wake_hash(&obj),
            credentials: obj
                .spec
                .credentials_secret_ref
                .as_ref()
                .map(|r| r.name.clone()),
            env_from: obj
                .spec
                .env_from
                .iter()
                .map(|e| e.secret_ref.name.clone())
                .collect(),
            standing: standing(&obj),
            names: State::named_by(&obj).into_boxed_slice(),
            packed: pack(&serde_json::to_vec(&obj)?),
            meta,
        })
    }

    /// The whole object (as slimmed).
    pub fn object(&self) -> Result<GitDeployment, serde_json::Error> {
        serde_json::from_slice(&unpack(&self.packed)?)
    }

    /// What wakes the object: see [`wake_hash`].
    pub fn wake(&self) -> u64 {
        self.wake
    }

    /// Whether the object reads Secret `name` of its namespace (its token, with
    /// `default_credentials` when the spec names none, or an `envFrom` Secret).
    pub fn refers_to(&self, name: &str, default_credentials: &str) -> bool {
        self.credentials.as_deref().unwrap_or(default_credentials) == name
            || self.env_from.iter().any(|s| s == name)
    }

    /// The remote deployments the object names, signed or not: whether its state must be
    /// read to tell who holds one of them.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Where the object stands, for the object gauges.
    pub fn standing(&self) -> Standing {
        self.standing
    }
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("namespace", &self.meta.namespace)
            .field("name", &self.meta.name)
            .field("resource_version", &self.meta.resource_version)
            .field("packed_bytes", &self.packed.len())
            .finish()
    }
}

impl<'de> Deserialize<'de> for Cached {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Cached::of(GitDeployment::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl Resource for Cached {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        GitDeployment::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        GitDeployment::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        GitDeployment::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        GitDeployment::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// What wakes an object: its own spec, finalizers and annotations (not its status or the
/// operator's own state annotation, which would make every write wake it again), and the loss
/// of its status (a restore, a wipe), which must be rebuilt at once.
///
/// The operator's own finalizer counts only where it is missing from an object whose state
/// says it made something remote: it rides on the intent of a first create, and waking every
/// object for that write cost a reconcile per create; someone removing it from an object that
/// needs it still wakes it. Not "disagrees with the state" either way: a create refused (403)
/// drops its intent and keeps the finalizer, and the next attempt writes the intent again, so
/// every write would have woken the object for the next, a hot loop against the API.
pub fn wake_hash(obj: &GitDeployment) -> u64 {
    let mut h = DefaultHasher::new();
    // A lost status, or the schema's default `observedGeneration: 0`, means "not observed".
    obj.status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| g > 0)
        .hash(&mut h);
    predicates::generation(obj).hash(&mut h);
    let own = obj.finalizers().iter().any(|f| f == FINALIZER);
    for f in obj.finalizers().iter().filter(|f| *f != FINALIZER) {
        f.hash(&mut h);
    }
    let made = State::unverified(obj).is_some_and(|s| decision::made_anything(&s));
    (made && !own).hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    for (k, v) in obj.annotations() {
        if k != ANNOTATION_STATE {
            (k, v).hash(&mut h);
        }
    }
    h.finish()
}

/// What the object cache keeps of an object: not its managed fields, nor `kubectl apply`'s
/// copy of the last applied manifest. They are most of an object's size, nothing here reads
/// them, and at ten thousand objects they would be most of the operator's memory.
fn slim(obj: &mut GitDeployment) {
    obj.metadata.managed_fields = None;
    if let Some(annotations) = &mut obj.metadata.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Typical objects (queued, succeeded; the fields, messages and shapes of values the operator
/// writes), from which [`dictionary`] is made.
const DICTIONARY: &str = include_str!("cache_dictionary.json");

/// The compression dictionary: [`DICTIONARY`]'s objects as the cache serializes objects, so
/// that field order and spacing match. Empty (plain LZ4) if they did not read as objects, which
/// a unit test rules out.
fn dictionary() -> &'static [u8] {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT.get_or_init(|| {
        serde_json::from_str::<Vec<GitDeployment>>(DICTIONARY)
            .ok()
            .and_then(|objects| {
                objects
                    .iter()
                    .map(serde_json::to_vec)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()
            })
            .map(|each| each.concat())
            .unwrap_or_default()
    })
}

/// `json` compressed against the dictionary, its length in front.
fn pack(json: &[u8]) -> Box<[u8]> {
    lz4_flex::block::compress_prepend_size_with_dict(json, dictionary()).into_boxed_slice()
}

/// What [`pack`] made, as it was. Only corrupt memory could fail: it is told, not panicked on.
fn unpack(packed: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    lz4_flex::block::decompress_size_prepended_with_dict(packed, dictionary())
        .map_err(|e| serde_json::Error::custom(format!("cached object does not decompress: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_cache_keeps_every_annotation_but_kubectls_copy_and_no_managed_fields() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let spec = serde_json::from_value(serde_json::json!({"projectId": "p", "branch": "main"}))
            .unwrap();
        let mut o = GitDeployment::new("web", spec);
        o.metadata.annotations = Some(
            [
                (LAST_APPLIED, "{...}"),
                (ANNOTATION_STATE, "{}"),
                ("team", "a"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        o.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        slim(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        let kept: Vec<&String> = o.annotations().keys().collect();
        assert_eq!(kept, [ANNOTATION_STATE, "team"]);
    }

    #[test]
    fn the_operators_finalizer_riding_on_a_first_create_does_not_wake_the_object_but_losing_it_does()
     {
        let spec: crate::resource::GitDeploymentSpec =
            serde_json::from_value(serde_json::json!({"projectId": "proj_a", "branch": "main"}))
                .unwrap();
        let with = |state: Option<&str>, finalizers: &[&str]| {
            let mut o = GitDeployment::new("web", spec.clone());
            o.metadata.annotations = state.map(|s| {
                [(ANNOTATION_STATE.to_string(), s.to_string())]
                    .into_iter()
                    .collect()
            });
            o.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
            Some(wake_hash(&o))
        };
        let intent = r#"{"intent":{"fingerprint":"f","at":"2026-12-03T20:00:00Z"}}"#;
        let recorded = r#"{"id":"dep_1","fingerprint":"f"}"#;
        let fresh = with(None, &[]);
        assert_eq!(
            fresh,
            with(Some(intent), &[FINALIZER]),
            "the first create's write"
        );
        assert_eq!(fresh, with(Some(recorded), &[FINALIZER]), "its id recorded");
        assert_ne!(
            fresh,
            with(Some(recorded), &[]),
            "someone removed the finalizer from an object that made a deployment"
        );
        assert_eq!(
            fresh,
            with(None, &[FINALIZER]),
            "a create refused: its intent dropped, the finalizer kept"
        );
        assert_eq!(
            with(None, &[FINALIZER]),
            with(Some(intent), &[FINALIZER]),
            "the next attempt's intent"
        );
        assert_ne!(
            with(Some(recorded), &[FINALIZER]),
            with(Some(recorded), &[FINALIZER, "example.com/other"]),
            "anyone else's finalizer"
        );
    }

    #[test]
    fn putting_or_lifting_a_pause_wakes_the_object_and_a_state_write_does_not() {
        use crate::resource::{ANNOTATION_PAUSED, GitDeploymentSpec};
        let spec: GitDeploymentSpec =
            serde_json::from_value(serde_json::json!({"projectId": "proj_a", "branch": "main"}))
                .unwrap();
        let with = |annotations: &[(&str, &str)]| {
            let mut o = GitDeployment::new("web", spec.clone());
            o.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            o.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
            Some(wake_hash(&o))
        };
        let running = with(&[(ANNOTATION_STATE, r#"{"id":"dep_1"}"#)]);
        let paused = with(&[
            (ANNOTATION_STATE, r#"{"id":"dep_1"}"#),
            (ANNOTATION_PAUSED, "true"),
        ]);
        assert_ne!(running, paused);
        assert_eq!(
            running,
            with(&[(ANNOTATION_STATE, r#"{"id":"dep_2","history":["dep_1"]}"#)])
        );
    }

    #[test]
    fn a_cached_object_decodes_to_the_slimmed_object_and_knows_the_secrets_it_reads() {
        let spec = serde_json::from_value(serde_json::json!({
            "projectId": "p",
            "branch": "main",
            "credentialsSecretRef": {"name": "team-token"},
            "envFrom": [{"secretRef": {"name": "app-env"}}],
        }))
        .unwrap();
        let mut o = GitDeployment::new("web", spec);
        o.metadata.namespace = Some("team-a".into());
        o.metadata.uid = Some("u1".into());
        o.metadata.resource_version = Some("7".into());
        o.metadata.annotations = Some(
            [(LAST_APPLIED, "{...}"), ("team", "a")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let raw = serde_json::to_vec(&o).unwrap();
        let cached: Cached = serde_json::from_slice(&raw).unwrap();

        let mut slimmed = o.clone();
        slim(&mut slimmed);
        assert_eq!(cached.object().unwrap(), slimmed);
        assert_eq!(cached.name_any(), "web");
        assert_eq!(cached.namespace().as_deref(), Some("team-a"));
        assert_eq!(cached.resource_version().as_deref(), Some("7"));
        assert_eq!(cached.wake(), wake_hash(&slimmed));
        assert!(cached.refers_to("team-token", "gitdev-credentials"));
        assert!(cached.refers_to("app-env", "gitdev-credentials"));
        assert!(!cached.refers_to("gitdev-credentials", "gitdev-credentials"));
        assert_eq!(cached.standing(), standing(&slimmed));

        let plain: Cached = serde_json::from_value(serde_json::json!({
            "apiVersion": "git.dev/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": "plain"},
            "spec": {"projectId": "p", "branch": "main"},
        }))
        .unwrap();
        assert!(plain.refers_to("gitdev-credentials", "gitdev-credentials"));
        assert!(!plain.refers_to("team-token", "gitdev-credentials"));
    }

    #[test]
    fn the_compression_dictionary_is_made_of_objects_as_the_cache_writes_them() {
        let objects: Vec<GitDeployment> = serde_json::from_str(DICTIONARY).unwrap();
        assert!(objects.len() >= 2);
        let written: Vec<u8> = objects
            .iter()
            .flat_map(|o| serde_json::to_vec(o).unwrap())
            .collect();
        assert_eq!(dictionary(), written.as_slice());
    }

    #[test]
    fn a_typical_object_is_kept_in_well_under_half_its_json_and_comes_back_whole() {
        // Another object than the dictionary's: its own name, uid, ids, times and digests.
        let o: GitDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "git.dev/v1alpha1",
            "kind": "Deployment",
            "metadata": {
                "annotations": {ANNOTATION_STATE: "{\"fingerprint\":\"v2.77c1e0d2.93ab41f07c2d58e6a1b4f0c9d3e27a85.4c1f9e2ab7d06385e1f4a92cb07d3e61\",\"id\":\"dep_7hq2v0lxke\",\"sig\":\"77c1e0d2:b41f07c2d58e6a1b4f0c9d3e27a8593a\"}"},
                "creationTimestamp": "2026-12-09T11:42:07Z",
                "finalizers": [FINALIZER],
                "generation": 3,
                "name": "checkout-api-4817",
                "namespace": "shop",
                "resourceVersion": "9917342",
                "uid": "c4e1a2b7-5d90-4f3e-9a61-7b2c8d0e4f13",
            },
            "spec": {"projectId": "proj_a71mq0", "branch": "release", "envVars": {"INDEX": "4817"}},
            "status": {
                "commitSha": "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432",
                "completedAt": "2026-12-09T11:42:15Z",
                "conditions": [
                    {"lastTransitionTime": "2026-12-09T11:42:15Z", "message": "deployment dep_7hq2v0lxke succeeded and is live at https://dep_7hq2v0lxke.git.dev", "observedGeneration": 3, "reason": "Succeeded", "status": "True", "type": "Ready"},
                    {"lastTransitionTime": "2026-12-09T11:42:15Z", "message": "deployment dep_7hq2v0lxke succeeded and is live at https://dep_7hq2v0lxke.git.dev", "observedGeneration": 3, "reason": "Succeeded", "status": "False", "type": "Reconciling"},
                    {"lastTransitionTime": "2026-12-09T11:42:07Z", "message": "deployment dep_7hq2v0lxke succeeded and is live at https://dep_7hq2v0lxke.git.dev", "observedGeneration": 3, "reason": "Succeeded", "status": "False", "type": "Stalled"},
                ],
                "createdAt": "2026-12-09T11:42:08Z",
                "deployUrl": "https://dep_7hq2v0lxke.git.dev",
                "deploymentId": "dep_7hq2v0lxke",
                "observedGeneration": 3,
                "shortCommit": "9f8e7d6",
                "specFingerprint": "v2.77c1e0d2.93ab41f07c2d58e6a1b4f0c9d3e27a85.4c1f9e2ab7d06385e1f4a92cb07d3e61",
                "status": "success",
                "url": "https://dep_7hq2v0lxke.git.dev",
            },
        }))
        .unwrap();
        let json = serde_json::to_vec(&o).unwrap();
        let cached = Cached::of(o.clone()).unwrap();
        assert_eq!(cached.object().unwrap(), o);
        assert!(
            cached.packed.len() * 100 <= json.len() * 35,
            "{} bytes kept for {} of JSON",
            cached.packed.len(),
            json.len()
        );
    }

    #[test]
    fn a_corrupt_cache_entry_is_an_error_not_a_panic() {
        let mut packed = pack(br#"{"apiVersion":"git.dev/v1alpha1"}"#).into_vec();
        packed.truncate(packed.len() / 2);
        assert!(unpack(&packed).is_err());
    }

    #[test]
    fn an_object_the_schema_would_refuse_is_refused_by_the_cache_too() {
        let refused = serde_json::from_value::<Cached>(serde_json::json!({
            "apiVersion": "git.dev/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": "bad"},
            "spec": {"projectId": 7},
        }));
        assert!(refused.is_err());
    }
}
