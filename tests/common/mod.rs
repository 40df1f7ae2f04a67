//! Helpers shared by the integration tests (`mod common;` in a test file).
//!
//! Every test binary compiles this module on its own and uses only part of it, hence the
//! `allow(dead_code)`. Nothing here depends on the operator's own types: it is about getting a
//! real Kubernetes API server to test against. See docs/control-plane.md.
#![allow(dead_code)]

pub mod cluster;
pub mod stack;

#[allow(unused_imports)] // each test binary uses some of these
pub use cluster::{Cluster, Kubectl, KubectlOutput, LocalControlPlane, TestNamespace, cluster};
