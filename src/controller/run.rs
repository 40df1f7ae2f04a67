//! The controller loop: a kube-runtime `Controller` over every `gitdeployments.git.dev`
//! object, woken by the objects themselves and by the Secrets they refer to.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, ResourceExt};

use super::context::{Config, Context};
use super::state::ANNOTATION_STATE;
use super::{Error, reconcile, secrets};
use crate::api::DeploymentsApi;
use crate::metrics::Metrics;
use crate::resource::GitDeployment;

/// Transient failures come back after a per-object exponential backoff.
pub fn error_policy<A: DeploymentsApi>(
    obj: Arc<GitDeployment>,
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
    /// Watch one namespace only (`--namespace`); every namespace when `None`.
    pub namespace: Option<String>,
    pub concurrency: u16,
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
    let default_credentials = config.default_credentials.clone();
    let ctx = Context::new(
        client.clone(),
        api,
        recorder(client),
        metrics,
        config,
        Some(reader.clone()),
    );
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
