//! The gateway on Kubernetes (`skython gateway`): the same API as `skython up`, with
//! `SkyFunction` resources as the registry and runner pods doing the work.
//!
//! - `registry`: SkyFunctions as function records; deploys through the API write them;
//! - `pods`: which runner pods serve which function, from the Pod watch and the pods' own
//!   announcements (checked before any call goes to them);
//! - `router`: a call goes to the ready pod with the fewest calls in flight, or waits for one in
//!   a bounded queue (and wakes the autoscaler when the function is at zero);
//! - `autoscaler`: in-flight and queued calls per function → replicas, written through the
//!   SkyFunction's scale subresource;
//! - `internal`: the routes runner pods call (announce, state), authenticated by their tokens.

#![forbid(unsafe_code)]
