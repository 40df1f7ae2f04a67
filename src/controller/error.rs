//! The errors of one reconciliation, by the step that failed.

use std::time::Duration;

use crate::api::ApiError;

/// Errors of one reconciliation, by the step that failed. Problems a human must fix (a
/// missing Secret, a 401) are not errors: they become conditions and events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object has no namespace")]
    MissingNamespace,
    /// The object cache's copy of the object did not decode: a bug (the cache wrote it).
    #[error("decoding the cached copy of {namespace}/{name}: {source}")]
    ReadCachedObject {
        namespace: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
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
    #[error("adding the cleanup finalizer to {namespace}/{name}: {source}")]
    AddFinalizer {
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
    #[error("writing ConfigMap {namespace}/{config_map} of spec.exportTo: {source}")]
    Export {
        namespace: String,
        config_map: String,
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
    /// A bug met while reconciling this object: contained to it, reported on it, retried
    /// with backoff.
    #[error("reconciling {namespace}/{name} panicked: {message}")]
    Panicked {
        namespace: String,
        name: String,
        message: String,
    },
    /// This replica lost the leader Lease: it writes nothing more (the new leader does).
    #[error(
        "not writing the {write} of {namespace}/{name}: this replica does not hold the leader Lease"
    )]
    NotLeading {
        namespace: String,
        name: String,
        write: &'static str,
    },
    #[error("finalizer {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Stable label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "invalid_object",
            Error::ReadCachedObject { .. } => "object_cache",
            Error::ReadSecrets { .. } => "kubernetes_read",
            Error::WriteState { .. }
            | Error::WriteStatus { .. }
            | Error::AddFinalizer { .. }
            | Error::Export { .. } => "kubernetes_write",
            Error::Api { source, .. } => source.category(),
            Error::CleanupPending { .. } => "cleanup_pending",
            Error::Panicked { .. } => "panic",
            Error::NotLeading { .. } => "not_leading",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "finalizer",
            },
        }
    }
}
