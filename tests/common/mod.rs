//! Helpers shared by the integration tests (`mod common;` in a test file).
//!
//! Every test binary compiles this module on its own and uses only part of it, hence the
//! `allow(dead_code)`. Nothing here depends on the operator's own types: `cluster` gets a real
//! Kubernetes API server to test against (docs/control-plane.md), `stack` runs the product's
//! binaries, `world` gives one end-to-end test its namespace, simulator and operator,
//! `replicas` two leader-elected operators, `cluster_wide` an operator that watches every
//! namespace of a second control plane, and `argocd_lua` runs Argo CD's Lua scripts.
#![allow(dead_code)]

pub mod argocd_lua;
pub mod cluster;
pub mod cluster_wide;
pub mod replicas;
pub mod service_account;
pub mod stack;
pub mod world;

#[allow(unused_imports)] // each test binary uses some of these
pub use cluster::{Cluster, Kubectl, KubectlOutput, LocalControlPlane, TestNamespace, cluster};
