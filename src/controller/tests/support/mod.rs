//! Test support of the reconciler's scenario tests: an in-memory Deployments API
//! (`fake_api`), a mocked Kubernetes API server that verifies every request (`api_server`),
//! the harness that runs one reconcile against both (`harness`), and object fixtures.

mod api_server;
mod fake_api;
mod fixtures;
mod harness;

pub use api_server::*;
pub use fake_api::*;
pub use fixtures::*;
pub use harness::*;

pub use std::collections::{BTreeMap, HashMap, VecDeque};
pub use std::future::Future;
pub use std::sync::{Arc, Mutex};
pub use std::time::Duration;

pub use crate::controller::events::Recorder;
pub use http::{Method, Request, Response};
pub use jiff::Timestamp;
pub use k8s_openapi::ByteString;
pub use k8s_openapi::api::core::v1::Secret;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
pub use kube::Client;
pub use kube::client::Body;
pub use kube::runtime::controller::Action;
pub use serde_json::{Value, json};
pub use tower_test::mock::Handle;

pub use crate::api::{
    ApiError, ApiToken, CancelledDeployment, CreateDeploymentRequest, CreateSlot,
    CreatedDeployment, DeploymentDetails, DeploymentList, DeploymentStatus as Remote,
    DeploymentSummary, DeploymentsApi, Endpoint, ListMeta, ListQuery, Room,
};
pub use crate::controller::desired::DesiredDeployment;
pub use crate::controller::keys::Key;
pub use crate::controller::reconcile::reconcile;
pub use crate::controller::state::{ANNOTATION_STATE, State};
pub use crate::controller::{Config, Context, Error, error_policy};
pub use crate::metrics::Metrics;
pub use crate::resource::{
    ANNOTATION_DEPLOYMENT_ID, DeletionPolicy, FINALIZER, GitDeployment, GitDeploymentSpec,
    GitDeploymentStatus,
};

pub const NS: &str = "ns";
pub const NAME: &str = "web";
pub const PROJECT: &str = "proj_8f3k29";
pub const TOKEN: &str = "sk_test_write";
pub const CREDENTIALS: &str = "gitdev-credentials";
pub const FINGERPRINT_KEY: &[u8] = b"test-fingerprint-key";
/// The commit the fake API deploys when the request names none (the branch HEAD).
pub const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";
/// No test may hang: every reconcile must finish within this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Kubernetes requests and Deployments API calls, in the order they happened.
pub type Timeline = Arc<Mutex<Vec<String>>>;
