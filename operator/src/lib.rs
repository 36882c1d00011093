//! The Kubernetes side of Skython: every `SkyFunction` becomes runner pods.
//!
//! [`desired`] computes the children of a function (ConfigMap, Deployment, Service,
//! NetworkPolicy) as plain values; the controller loop (next step of issue 3) only applies them
//! with server-side apply and reports status.

#![forbid(unsafe_code)]

pub mod desired;

pub use desired::{Children, DesiredError, OperatorConfig, child_name, desired};

#[cfg(test)]
mod tests;
