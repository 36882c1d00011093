//! The warm pool's decisions, as a pure function of what the cluster shows: which pool pods to
//! create and which to delete. [`crate::pool_manager`] observes and applies.
//!
//! A pool pod is a runner pod with no function (label [`wire::POOL_LABEL`] = its runtime),
//! created by the operator and owned by the pool's anchor ConfigMap. A gateway claims one for a
//! function with no ready pod: it specialises the pod, then labels it with the function
//! ([`FUNCTION_LABEL`]) and makes the SkyFunction its owner. From then on the pod is the
//! function's for its life; it is never returned to the pool, only retired:
//!
//! ```text
//! created ─▶ starting ─▶ available ─claim─▶ claimed ─▶ retired (deleted; it drains first)
//!                 └────────────┴─▶ deleted when in excess, of an old template, or exited
//! ```

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use skython_crds::{Runtime, SkyFunction};
use skython_runner_pod::wire;

use crate::desired::{CHECKSUM_ANNOTATION, FUNCTION_LABEL, POOL_TEMPLATE_ANNOTATION, checksum};

pub const RUNTIMES: [Runtime; 2] = [Runtime::Standard, Runtime::Full];

/// How long a short pool waits after a claim before it refills: claims come with the burst that
/// made them, whose misses scale their functions' Deployments a moment later; the pool then
/// yields to those pods ([`functions_starting`]) instead of starting a pod beside them.
pub const CLAIM_SETTLE: SignedDuration = SignedDuration::from_secs(1);

/// What the pool holds for one runtime: `size` unclaimed pods made from the `template` whose
/// hash is this ([`POOL_TEMPLATE_ANNOTATION`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub runtime: Runtime,
    pub size: u32,
    pub template: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    /// One per runtime.
    pub targets: Vec<Target>,
    /// At least this long between two creations of one runtime's pods (the capped refill).
    pub refill_interval: SignedDuration,
    /// How long a short pool waits while functions' own pods start ([`functions_starting`]):
    /// a refilling pool pod would compete with them for the node and the API server, and
    /// those are calls waiting. Past it, the pool refills at its rate until full.
    pub refill_yield: SignedDuration,
}

/// What the plan remembers between runs, per runtime: its last creation (the rate), and since
/// when the pool has been short of its size (how long it has yielded).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Refills {
    pub last_created: HashMap<Runtime, Timestamp>,
    pub short_since: HashMap<Runtime, Timestamp>,
}

/// What the plan sees: the runner pods (the pool's, label [`wire::POOL_LABEL`], and the
/// functions'), and the SkyFunctions and their Deployments of the pool's namespace.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub pods: Vec<&'a Pod>,
    pub functions: Vec<&'a SkyFunction>,
    pub deployments: Vec<&'a Deployment>,
}

/// Why a pool pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// More unclaimed pods than the pool's size.
    Excess,
    /// Unclaimed and made from an older template (another image, key or size).
    StaleTemplate,
    /// Its container exited (`Failed` or `Succeeded`).
    Exited,
    /// Claimed by a function that no longer exists (or was deleted and made again).
    FunctionGone,
    /// Claimed by an older version of its function.
    Outdated,
    /// Its function failed to load in it: it serves nothing.
    LoadFailed,
    /// Its function's Deployment has all its replicas ready.
    TookOver,
    /// Its function was scaled to zero and the claim is older than `idleSecondsToZero`.
    Idle,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Excess => "excess",
            Reason::StaleTemplate => "stale_template",
            Reason::Exited => "exited",
            Reason::FunctionGone => "function_gone",
            Reason::Outdated => "outdated",
            Reason::LoadFailed => "load_failed",
            Reason::TookOver => "took_over",
            Reason::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PoolAction {
    Create(Runtime),
    Delete {
        pod: String,
        /// The pod's runtime label (as written, for metrics).
        runtime: String,
        /// The function of a claimed pod.
        function: Option<String>,
        reason: Reason,
    },
}

/// Where a pool pod stands, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodState {
    /// Unclaimed, not Ready yet.
    Starting,
    /// Unclaimed and Ready: a gateway may claim it.
    Available,
    Claimed,
}

impl PodState {
    pub const ALL: [PodState; 3] = [PodState::Starting, PodState::Available, PodState::Claimed];

    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Starting => "starting",
            PodState::Available => "available",
            PodState::Claimed => "claimed",
        }
    }
}

/// The pod's runtime label, for a pool pod.
pub fn runtime_label(pod: &Pod) -> Option<&str> {
    pod.labels().get(wire::POOL_LABEL).map(String::as_str)
}

fn function_label(pod: &Pod) -> Option<&str> {
    pod.labels().get(FUNCTION_LABEL).map(String::as_str)
}

fn has_condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn is_ready(pod: &Pod) -> bool {
    has_condition(pod, "Ready")
}

fn has_exited(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Failed" | "Succeeded"))
}

fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// A live pool pod's state; `None` for one that is being deleted or has exited.
pub fn state(pod: &Pod) -> Option<PodState> {
    if is_deleting(pod) || has_exited(pod) {
        return None;
    }
    Some(match (function_label(pod), is_ready(pod)) {
        (Some(_), _) => PodState::Claimed,
        (None, true) => PodState::Available,
        (None, false) => PodState::Starting,
    })
}

/// Whether functions' own pods are starting: a Deployment with fewer pods than it asks for
/// (they are about to be made), or a function's pod placed on a node and not Ready yet. Pods no
/// node can take (Pending, unscheduled) do not count: they load nothing.
pub fn functions_starting(observed: &Observed) -> bool {
    let to_be_made = observed.deployments.iter().any(|d| {
        let asked = d.spec.replicas.unwrap_or(1);
        let made = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        asked > made
    });
    let loading = observed.pods.iter().any(|p| {
        runtime_label(p).is_none()
            && function_label(p).is_some()
            && !is_deleting(p)
            && !has_exited(p)
            && !is_ready(p)
            && has_condition(p, "PodScheduled")
    });
    to_be_made || loading
}

/// Whether a pool pod was claimed within `span` before `now`.
pub fn claimed_within(now: Timestamp, span: SignedDuration, observed: &Observed) -> bool {
    observed.pods.iter().any(|p| {
        runtime_label(p).is_some()
            && p.annotations()
                .get(wire::CLAIMED_AT_ANNOTATION)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|at| !elapsed(now, at, span))
    })
}

/// How many claimed pool pods serve the current version of `f` (they count toward its
/// replicas: [`crate::desired::deployment_replicas`]).
pub fn serving_claims<'a>(f: &SkyFunction, pods: impl IntoIterator<Item = &'a Pod>) -> usize {
    pods.into_iter()
        .filter(|p| {
            runtime_label(p).is_some()
                && function_label(p).is_some_and(|n| f.metadata.name.as_deref() == Some(n))
                && claimed_by(p, f)
                && serves_version_of(p, f)
                && !p.annotations().contains_key(wire::LOAD_FAILED_ANNOTATION)
                && !is_deleting(p)
                && !has_exited(p)
                && is_ready(p)
        })
        .count()
}

/// Whether a pod claimed for a function named as `f` was claimed for `f` itself (not for a
/// deleted function of the same name).
fn claimed_by(pod: &Pod, f: &SkyFunction) -> bool {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "SkyFunction" && o.controller == Some(true));
    owner.map(|o| o.uid.as_str()) == f.metadata.uid.as_deref()
}

/// Whether a claimed pod serves the current version of `f`.
fn serves_version_of(pod: &Pod, f: &SkyFunction) -> bool {
    pod.annotations().get(CHECKSUM_ANNOTATION) == Some(&checksum(f))
}

/// What to do now. Unclaimed pods of the current template count toward each runtime's size:
/// below it, one more is created once the refill interval since the last creation has passed,
/// unless functions' pods are starting (or a pod was claimed in the last [`CLAIM_SETTLE`]) and
/// the pool has not yielded to them for `refill_yield` yet; above it, the excess goes (pods not Ready first, then the newest). Pods of an older
/// template go once the current ones are Ready and enough, so the pool never runs dry for a
/// change.
/// Claimed pods are retired when their function is gone or changed, failed to load in them,
/// its Deployment took over, or it idled at zero replicas; exited pods are deleted.
pub fn plan(
    now: Timestamp,
    settings: &PlanSettings,
    observed: &Observed,
    refills: &mut Refills,
) -> Vec<PoolAction> {
    let busy = functions_starting(observed) || claimed_within(now, CLAIM_SETTLE, observed);
    let mut actions = Vec::new();
    let delete = |pod: &Pod, function: Option<&str>, reason| PoolAction::Delete {
        pod: pod.name_any(),
        runtime: runtime_label(pod).unwrap_or_default().to_string(),
        function: function.map(String::from),
        reason,
    };
    let mut unclaimed: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for &pod in &observed.pods {
        let Some(runtime) = runtime_label(pod) else {
            continue;
        };
        if is_deleting(pod) {
            continue;
        }
        if has_exited(pod) {
            actions.push(delete(pod, function_label(pod), Reason::Exited));
            continue;
        }
        match function_label(pod) {
            Some(function) => {
                if let Some(reason) = retirement(now, pod, function, observed) {
                    actions.push(delete(pod, Some(function), reason));
                }
            }
            None => unclaimed.entry(runtime).or_default().push(pod),
        }
    }
    for target in &settings.targets {
        let pods = unclaimed
            .remove(target.runtime.as_str())
            .unwrap_or_default();
        let (mut fresh, stale): (Vec<&Pod>, Vec<&Pod>) = pods
            .into_iter()
            .partition(|p| p.annotations().get(POOL_TEMPLATE_ANNOTATION) == Some(&target.template));
        let size = usize::try_from(target.size).unwrap_or(usize::MAX);
        if fresh.len() < size {
            let short_since = *refills.short_since.entry(target.runtime).or_insert(now);
            let due = refills
                .last_created
                .get(&target.runtime)
                .is_none_or(|last| elapsed(now, *last, settings.refill_interval));
            let yields = busy && !elapsed(now, short_since, settings.refill_yield);
            if due && !yields {
                refills.last_created.insert(target.runtime, now);
                actions.push(PoolAction::Create(target.runtime));
            }
        } else {
            refills.short_since.remove(&target.runtime);
        }
        if fresh.len() > size {
            fresh.sort_by_key(|p| {
                (
                    is_ready(p),
                    std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
                )
            });
            let excess = fresh.len() - size;
            for pod in fresh.drain(..excess) {
                actions.push(delete(pod, None, Reason::Excess));
            }
        }
        if fresh.iter().filter(|p| is_ready(p)).count() >= size {
            for pod in stale {
                actions.push(delete(pod, None, Reason::StaleTemplate));
            }
        }
    }
    // A runtime no target names: nothing would ever replace them, so nothing waits.
    for pod in unclaimed.into_values().flatten() {
        actions.push(delete(pod, None, Reason::StaleTemplate));
    }
    actions
}

/// Whether `span` has passed between `since` and `now`.
fn elapsed(now: Timestamp, since: Timestamp, span: SignedDuration) -> bool {
    since.saturating_add(span).is_ok_and(|end| end <= now)
}

/// Why a claimed pod should go now, if it should.
fn retirement(now: Timestamp, pod: &Pod, function: &str, observed: &Observed) -> Option<Reason> {
    let Some(f) = observed
        .functions
        .iter()
        .find(|f| f.metadata.name.as_deref() == Some(function))
    else {
        return Some(Reason::FunctionGone);
    };
    if !claimed_by(pod, f) {
        return Some(Reason::FunctionGone);
    }
    if !serves_version_of(pod, f) {
        return Some(Reason::Outdated);
    }
    if pod.annotations().contains_key(wire::LOAD_FAILED_ANNOTATION) {
        return Some(Reason::LoadFailed);
    }
    let deployment = observed
        .deployments
        .iter()
        .find(|d| d.labels().get(FUNCTION_LABEL).map(String::as_str) == Some(function));
    if let Some(d) = deployment {
        let desired = d.spec.replicas.unwrap_or(1);
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        // Zero asked: the claimed pods are all the function wants.
        if desired >= 1 && ready >= desired {
            return Some(Reason::TookOver);
        }
    }
    if f.spec.replicas == Some(0) {
        let claimed_at = pod
            .annotations()
            .get(wire::CLAIMED_AT_ANNOTATION)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let idle = SignedDuration::from_secs(f.spec.scaling.idle_seconds_to_zero.into());
        if claimed_at.is_some_and(|at| now.duration_since(at) > idle) {
            return Some(Reason::Idle);
        }
    }
    None
}

#[cfg(test)]
mod tests;
