//! The runner pod: one function per pod, what the operator's Deployments run (`skython runner`).
//!
//! - [`server`]: the pod's HTTP server (`POST /` calls the function; health, readiness, metrics),
//!   on the gateway's call path and JSON rules;
//! - [`pool`]: pool mode, a pod started with no function that a gateway specialises (signed
//!   request), after which it is a [`server::RunnerPod`] like the others;
//! - [`announce`]: tells the gateway where the pod listens, and that it drains when it stops;
//! - [`identity`]: proves to the gateway that the announced address is this pod's;
//! - [`state`]: the workers' `store`/`load`, through the gateway's state service;
//! - [`gateway`]: the client, token and error reading these share;
//! - [`wire`]: what a runner pod and the gateway say to each other (announcements, identity
//!   proofs, state requests, specialise requests), shared by both sides.

#![forbid(unsafe_code)]

pub mod announce;
pub mod gateway;
pub mod identity;
pub mod pool;
pub mod preload;
pub mod server;
pub mod state;
pub mod wire;
