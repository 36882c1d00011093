//! The runner pod: one function per pod, what the operator's Deployments run (`skython runner`).
//!
//! - [`wire`]: what a runner pod and the gateway say to each other (announcements, identity
//!   proofs, state requests), shared by both sides.

#![forbid(unsafe_code)]

pub mod wire;
