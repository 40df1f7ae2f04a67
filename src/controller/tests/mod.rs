//! Scenario tests of `reconcile()`: an in-memory Deployments API (`FakeApi`) with scripted
//! answers, and a mocked Kubernetes API server (a `tower_test` mock behind a real
//! `kube::Client`) that verifies every request the reconciler makes, in order, and answers
//! like an API server would (merge patches, JSON patches, server-side apply of status).
//!
//! Both sides write to one timeline, so that a test can assert the order of Kubernetes writes
//! and Deployments API calls (e.g. "intent recorded before the create is sent").

//!
//! `support/` holds the fakes, the harness and the fixtures; each other file is one topic.

mod claims;
mod create;
mod deletion;
mod details;
mod errors;
mod failure;
mod fencing;
mod last_successful;
mod lost_create;
mod observation;
mod pause;
mod spec_changes;
mod support;
mod verifier;
