//! The Helm chart `charts/gitdev-operator`: lint, rendering, schema, server-side validation, a
//! real install/upgrade/uninstall, and the operator running with nothing but the chart's RBAC.
//!
//! Helm is the cached v3.17.2 of `tests/cluster/build.sh`; the cluster is the harness's real
//! kube-apiserver (tests/common). See docs/helm.md.
//!
//! Modules by topic: `helm` (running Helm, rendering, shared expectations), `values` (lint,
//! values, schema), `render` (what each value renders), `rbac` (server-side validation and
//! `kubectl auth can-i`), `operator` (the real operator with only the chart's RBAC), `install`
//! (a real install, upgrade and uninstall; the Argo CD snippet).

#[path = "../common/mod.rs"]
mod common;

mod helm;
mod install;
mod monitoring;
mod operator;
mod rbac;
mod render;
mod values;
