//! The simulator over real HTTP: every error code of the contract, headers, lifecycle,
//! pagination, the `/_sim/` hooks and fault injection, the OpenAPI document, and the binary.
//!
//! One module per topic, so a test is found in one guess; `support` holds what they share.

mod auth;
mod binary;
mod cancel_delete;
mod errors;
mod faults;
mod hooks;
mod lifecycle;
mod list;
mod openapi;
mod rate_limits;
mod support;
mod throughput;
