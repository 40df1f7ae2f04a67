//! git.dev Deployments operator: resource types, API client, reconciler, metrics, memory and the
//! simulator.

pub mod api;
pub mod controller;
pub mod memory;
pub mod metrics;
pub mod plugin;
pub mod resource;
pub mod sim;
