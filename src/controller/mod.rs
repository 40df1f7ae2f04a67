//! The reconciler of `gitdeployments.git.dev`. Read in this order:
//!
//! - `run`: the kube-runtime `Controller` loop, what wakes an object, error backoff.
//! - `reconcile`: the driver, a table of contents of the steps below.
//! - `round`: one reconcile of one object; every Kubernetes write (state, status, events).
//! - `secrets`, `desired`: the token, and the one `DesiredDeployment` the spec asks for.
//! - `secret_cache`: Secret values kept between reconciles while the watch shows them unchanged.
//! - `verify`: a state the operator did not sign names no deployment another object holds.
//! - `recover`: a create whose answer was lost is found, never made twice.
//! - `observe`: the tracked deployment as it is now, through shared listings.
//! - `decision`: pure "spec + observed remote state → next step", and health.
//! - `act`: create, cancel, prune history, delete or orphan.
//! - `export`: `spec.exportTo`, the last success in a ConfigMap the object owns.
//! - `failure`: why a failed deployment failed, from its build log, read once; secrets masked.
//! - `status`: pure; the status to mirror.
//! - `state`: what the operator remembers on the object (`git.dev/state`).
//! - `events`: Kubernetes events about objects, repeated ones as series.
//! - `context`: configuration fixed at start, and the coordination between reconciles.
//! - `fence`: API writes only while this replica holds the leader Lease.
//! - `keys`: the operator's own key (a Secret it reads or creates), for signatures and fingerprints.
//! - `error`: the errors of a reconcile, by step.
//!
//! `docs/architecture.md` draws the same pipeline and says which files do IO.

mod act;
pub mod cached;
pub mod context;
pub mod decision;
pub mod desired;
pub mod details;
mod error;
pub mod events;
pub mod export;
pub mod failure;
pub mod fence;
pub mod keys;
pub mod observe;
pub mod reconcile;
pub mod recover;
mod round;
mod run;
pub mod secret_cache;
pub mod secrets;
pub mod state;
pub mod status;
#[cfg(test)]
mod tests;
mod verify;

pub use context::{Config, Context};
pub use error::Error;
pub use round::MANAGER;
pub use run::{RunOptions, error_policy, recorder, run};
