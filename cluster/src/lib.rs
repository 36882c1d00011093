//! The gateway on Kubernetes (`skython gateway`): the same API as `skython up`, with
//! `SkyFunction` resources as the registry and runner pods doing the work.
//!
//! - `registry`: SkyFunctions as function records; deploys through the API write them;
//! - `pods`: which runner pods serve which function, from the Pod watch and the pods' own
//!   announcements (checked before any call goes to them);
//! - `router`: a call goes to the ready pod with the fewest calls in flight, or waits for one in
//!   a bounded queue (and wakes the autoscaler when the function is at zero);
//! - `pool`: a function at zero claims a warm pool pod and specialises it (tens of ms), while
//!   its Deployment scales up;
//! - `autoscaler`: in-flight and queued calls per function → replicas, written through the
//!   SkyFunction's scale subresource;
//! - `internal`: the routes runner pods call (announce, state), authenticated by their tokens;
//! - `peers`: with several gateway replicas, the others' counts reach the one that decides.

#![forbid(unsafe_code)]

pub mod autoscaler;
pub mod internal;
pub mod metrics;
pub mod peers;
pub mod platform;
pub mod pods;
pub mod pool;
pub mod registry;
pub mod router;

/// A `SkyFunction` object by namespace and name (what the autoscaler scales and pods belong to).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FunctionRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A function's demand at one instant, as this gateway sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Calls sent to pods and not answered yet.
    pub in_flight: u32,
    /// Calls waiting for a pod (none ready, or all at `concurrency`).
    pub queued: u32,
    /// Calls that arrived, ever: a change between two samples means calls came and went
    /// in between (short calls are in flight for less than a sampling interval).
    pub started: u64,
    /// Pool pods being claimed for it, their claims not yet recorded on the pods: the operator
    /// will count them as its replicas, so a scale-up they cover waits for them.
    pub claiming: u32,
}
