//! What a `SkyFunction`'s status should say, as pure functions of what the operator observed:
//! whether it holds its endpoint, whether the source can be deployed, and how far its
//! Deployment has rolled out.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use skython_crds::{Signature, SkyFunction, SkyFunctionStatus, endpoint_holder, reason};
use skython_runner::SourceError;

use crate::desired::{child_name, selector_string};

/// The outcome of reading a function's source without running it.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceCheck {
    Valid(Signature),
    Invalid(SourceError),
}

/// Whether a function holds its owner/endpoint among the `SkyFunction`s the operator sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Holds,
    /// Another function (`namespace/name`) holds it: this one gets no pods.
    TakenBy(String),
}

/// The oldest claim keeps an endpoint ([`endpoint_holder`]); a function missing from `functions`
/// (a store that has not caught up) holds its own.
pub fn claim<'a>(f: &SkyFunction, functions: impl IntoIterator<Item = &'a SkyFunction>) -> Claim {
    match endpoint_holder(functions, &f.spec.owner, &f.spec.endpoint) {
        Some(h) if (h.namespace(), h.name_any()) != (f.namespace(), f.name_any()) => {
            Claim::TakenBy(format!(
                "{}/{}",
                h.namespace().unwrap_or_default(),
                h.name_any()
            ))
        }
        _ => Claim::Holds,
    }
}

/// Everything the status is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<'a> {
    pub claim: &'a Claim,
    pub check: &'a SourceCheck,
    pub deployment: Option<&'a Deployment>,
    /// Claimed pool pods serving the function: replicas too.
    pub claimed: usize,
}

/// The `Ready` condition's substance.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Says where a source error is, the way an editor would.
pub fn source_error_message(e: &SourceError) -> String {
    let mut msg = match (e.line, e.column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: {}", e.message),
        (Some(l), None) => format!("line {l}: {}", e.message),
        _ => e.message.clone(),
    };
    if let Some(text) = e.text.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        msg.push_str(&format!(": `{text}`"));
    }
    msg
}

impl Readiness {
    /// Worth a Warning event: something only a person can fix.
    pub fn is_warning(&self) -> bool {
        matches!(
            self.reason,
            reason::INVALID_SOURCE | reason::PROGRESS_DEADLINE_EXCEEDED | reason::ENDPOINT_TAKEN
        )
    }
}

/// Ready means the latest version serves: the function holds its endpoint, the Deployment has
/// seen its newest spec, no replica of an older version is left, and one replica is ready, or
/// none is wanted (scaled to zero: a call starts one). Scaling up a serving function keeps it
/// Ready.
pub fn readiness(o: &Observed) -> Readiness {
    if let Claim::TakenBy(holder) = o.claim {
        return Readiness {
            ready: false,
            reason: reason::ENDPOINT_TAKEN,
            message: format!(
                "SkyFunction {holder} claimed this owner/endpoint first and serves it; this one \
                 runs no pods until that one is deleted or changes its endpoint"
            ),
        };
    }
    let (check, deployment) = (o.check, o.deployment);
    if let SourceCheck::Invalid(e) = check {
        let kept = if deployment.is_some() {
            "; the previous version keeps serving"
        } else {
            ""
        };
        return Readiness {
            ready: false,
            reason: reason::INVALID_SOURCE,
            message: format!("{}{kept}", source_error_message(e)),
        };
    }
    let Some(d) = deployment else {
        return Readiness {
            ready: false,
            reason: "Deploying",
            message: "the Deployment is being created".into(),
        };
    };
    let desired = d.spec.replicas.unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let stalled = st.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let observed = matches!(
        (st.observed_generation, d.metadata.generation),
        (Some(seen), Some(latest)) if seen >= latest
    );
    let updated = st.updated_replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    if observed && desired == 0 && o.claimed > 0 {
        return Readiness {
            ready: true,
            reason: "Available",
            message: format!(
                "{} ready: claimed pool pods serve, the Deployment runs none",
                o.claimed
            ),
        };
    }
    if observed && desired == 0 {
        return Readiness {
            ready: true,
            reason: "Available",
            message: "scaled to zero: the next call starts a replica".into(),
        };
    }
    if observed && total == updated && ready >= 1 {
        return Readiness {
            ready: true,
            reason: "Available",
            message: format!("{ready} of {desired} replicas ready"),
        };
    }
    if let Some(c) = stalled {
        return Readiness {
            ready: false,
            reason: reason::PROGRESS_DEADLINE_EXCEEDED,
            message: c
                .message
                .clone()
                .unwrap_or_else(|| "the rollout stalled".into()),
        };
    }
    Readiness {
        ready: false,
        reason: "RollingOut",
        message: format!(
            "{updated} of {desired} replicas run the latest version, {ready} ready in all"
        ),
    }
}

/// The status to write. The `Ready` condition keeps its transition time while its value stays
/// the same, so an unchanged world yields an unchanged status and no write. `gateway_url`: where
/// calls enter (`status.url`); without it, the function's Service.
pub fn next_status(
    f: &SkyFunction,
    o: &Observed,
    gateway_url: Option<&str>,
    now: jiff::Timestamp,
) -> SkyFunctionStatus {
    let previous = f.status.clone().unwrap_or_default();
    let r = readiness(o);
    let status = if r.ready { "True" } else { "False" };
    let last_transition_time = previous
        .ready_condition()
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: r.reason.into(),
        message: r.message,
        last_transition_time,
        observed_generation: f.metadata.generation,
    };
    let (signature, url) = match (o.claim, o.check) {
        // Another function answers at this endpoint.
        (Claim::TakenBy(_), check) => (signature_of(check), None),
        // The signature and address describe what serves, so a broken source keeps the old ones.
        (Claim::Holds, SourceCheck::Invalid(_)) => {
            (previous.signature.clone(), previous.url.clone())
        }
        (Claim::Holds, SourceCheck::Valid(sig)) => (Some(sig.clone()), url(f, gateway_url)),
    };
    let counts = o.deployment.and_then(|d| d.status.as_ref());
    let claimed = u32::try_from(o.claimed).unwrap_or(u32::MAX);
    let count = |n: Option<i32>| n.map_or(0, |n| u32::try_from(n).unwrap_or(0)) + claimed;
    SkyFunctionStatus {
        conditions: vec![condition],
        ready_replicas: count(counts.and_then(|s| s.ready_replicas)),
        replicas: count(counts.and_then(|s| s.replicas)),
        selector: f.metadata.name.as_deref().map(selector_string),
        url,
        observed_generation: f.metadata.generation,
        signature,
    }
}

fn signature_of(check: &SourceCheck) -> Option<Signature> {
    match check {
        SourceCheck::Valid(sig) => Some(sig.clone()),
        SourceCheck::Invalid(_) => None,
    }
}

/// Where the function is called: through the gateway when there is one, else its Service.
pub fn url(f: &SkyFunction, gateway_url: Option<&str>) -> Option<String> {
    match gateway_url {
        Some(g) => Some(format!(
            "{}/fn/{}/{}",
            g.trim_end_matches('/'),
            f.spec.owner,
            f.spec.endpoint
        )),
        None => service_url(f),
    }
}

/// The in-cluster address of the function's Service.
pub fn service_url(f: &SkyFunction) -> Option<String> {
    let name = f.metadata.name.as_deref()?;
    let ns = f.metadata.namespace.as_deref()?;
    Some(format!("http://{}.{ns}.svc", child_name(name)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use skython_crds::SkyFunctionSpec;

    use super::*;

    fn function() -> SkyFunction {
        let mut f = SkyFunction::new(
            "alice-add",
            SkyFunctionSpec::new("alice", "add", "def add(a, b):\n    return a + b\n"),
        );
        f.metadata.namespace = Some("fns".into());
        f.metadata.generation = Some(3);
        f
    }

    fn valid() -> SourceCheck {
        SourceCheck::Valid(Signature {
            entrypoint: "add".into(),
            ..Default::default()
        })
    }

    fn syntax_error() -> SourceCheck {
        SourceCheck::Invalid(SourceError {
            code: "syntax_error".into(),
            message: "invalid syntax".into(),
            line: Some(2),
            column: Some(12),
            text: Some("    return a +\n".into()),
            candidates: None,
        })
    }

    fn seen<'a>(check: &'a SourceCheck, d: Option<&'a Deployment>) -> Observed<'a> {
        Observed {
            claim: &Claim::Holds,
            check,
            deployment: d,
            claimed: 0,
        }
    }

    /// A Deployment at `generation` whose controller has seen `observed`.
    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        ready: i32,
    ) -> Deployment {
        scaled(generation, observed, 1, replicas, updated, ready)
    }

    /// The same, wanting `desired` replicas.
    fn scaled(
        generation: i64,
        observed: i64,
        desired: i32,
        replicas: i32,
        updated: i32,
        ready: i32,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(desired),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn readiness_follows_the_rollout() {
        let cases = [
            (None, false, "Deploying"),
            (Some(deployment(1, 1, 1, 1, 1)), true, "Available"),
            (Some(deployment(2, 1, 1, 1, 1)), false, "RollingOut"),
            (Some(deployment(2, 2, 2, 1, 2)), false, "RollingOut"),
            (Some(deployment(2, 2, 1, 1, 0)), false, "RollingOut"),
            (Some(deployment(2, 2, 1, 1, 1)), true, "Available"),
        ];
        for (d, ready, reason) in cases {
            let r = readiness(&seen(&valid(), d.as_ref()));
            assert_eq!((r.ready, r.reason), (ready, reason), "{d:?}");
        }
        let mut stalled = deployment(2, 2, 1, 1, 0);
        stalled.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some("False".into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet has timed out progressing.".into()),
            ..Default::default()
        }]);
        let r = readiness(&seen(&valid(), Some(&stalled)));
        assert_eq!((r.ready, r.reason), (false, "ProgressDeadlineExceeded"));
    }

    #[test]
    fn a_syntax_error_names_its_line_and_keeps_what_serves() {
        let r = readiness(&seen(&syntax_error(), None));
        assert_eq!(r.reason, "InvalidSource");
        assert_eq!(r.message, "line 2, column 12: invalid syntax: `return a +`");
        let r = readiness(&seen(&syntax_error(), Some(&deployment(1, 1, 1, 1, 1))));
        assert!(!r.ready);
        assert!(
            r.message.ends_with("the previous version keeps serving"),
            "{}",
            r.message
        );

        let mut f = function();
        let now = jiff::Timestamp::now();
        let d = deployment(1, 1, 1, 1, 1);
        f.status = Some(next_status(&f, &seen(&valid(), Some(&d)), None, now));
        let broken = next_status(&f, &seen(&syntax_error(), Some(&d)), None, now);
        assert_eq!(broken.signature.unwrap().entrypoint, "add");
        assert_eq!(
            broken.url.as_deref(),
            Some("http://skyfn-alice-add.fns.svc")
        );
        assert_eq!(broken.conditions[0].status, "False");
        assert_eq!(broken.observed_generation, Some(3));
    }

    #[test]
    fn an_unchanged_world_gives_an_unchanged_status() {
        let mut f = function();
        let d = deployment(1, 1, 1, 1, 1);
        let t0 = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let check = valid();
        let first = next_status(&f, &seen(&check, Some(&d)), None, t0);
        assert_eq!(first.ready_replicas, 1);
        f.status = Some(first.clone());
        let later = t0 + jiff::SignedDuration::from_secs(3600);
        assert_eq!(next_status(&f, &seen(&check, Some(&d)), None, later), first);
        // A flip moves the transition time; a new message alone does not.
        let rolling = deployment(2, 2, 1, 1, 0);
        let flipped = next_status(&f, &seen(&check, Some(&rolling)), None, later);
        assert_eq!(flipped.conditions[0].last_transition_time, Time(later));
        f.status = Some(flipped.clone());
        let rolling = deployment(2, 2, 2, 1, 1);
        let still_rolling = next_status(&f, &seen(&check, Some(&rolling)), None, t0);
        assert_eq!(
            still_rolling.conditions[0].last_transition_time,
            Time(later)
        );
    }

    #[test]
    fn the_status_counts_replicas_and_names_the_selector() {
        let f = function();
        let d = scaled(2, 2, 3, 3, 3, 2);
        let s = next_status(&f, &seen(&valid(), Some(&d)), None, jiff::Timestamp::now());
        assert_eq!((s.replicas, s.ready_replicas), (3, 2));
        assert_eq!(s.selector.as_deref(), Some("skython.io/function=alice-add"));
    }

    #[test]
    fn claimed_pool_pods_count_as_ready_replicas() {
        let f = function();
        let (d, check) = (scaled(2, 2, 0, 0, 0, 0), valid());
        let o = Observed {
            claimed: 2,
            ..seen(&check, Some(&d))
        };
        let s = next_status(&f, &o, None, jiff::Timestamp::now());
        assert_eq!((s.replicas, s.ready_replicas), (2, 2));
        let r = readiness(&o);
        assert!(r.ready, "{r:?}");
        assert!(r.message.contains("claimed pool pods"), "{}", r.message);
    }

    #[test]
    fn a_function_scaled_to_zero_is_ready() {
        // Still one pod, terminating: it does not count against zero.
        for d in [scaled(2, 2, 0, 0, 0, 0), scaled(2, 2, 0, 1, 1, 1)] {
            let r = readiness(&seen(&valid(), Some(&d)));
            assert_eq!((r.ready, r.reason), (true, "Available"), "{d:?}");
            assert_eq!(r.message, "scaled to zero: the next call starts a replica");
        }
        // Not before the Deployment has seen the new count.
        let r = readiness(&seen(&valid(), Some(&scaled(3, 2, 0, 1, 1, 1))));
        assert_eq!(r.reason, "RollingOut");
    }

    #[test]
    fn scaling_up_a_serving_function_keeps_it_ready() {
        let r = readiness(&seen(&valid(), Some(&scaled(3, 3, 3, 3, 3, 1))));
        assert_eq!(
            (r.ready, r.message.as_str()),
            (true, "1 of 3 replicas ready")
        );
        // A new version's first pod is not ready yet: not Ready.
        let r = readiness(&seen(&valid(), Some(&scaled(3, 3, 1, 1, 1, 0))));
        assert_eq!((r.ready, r.reason), (false, "RollingOut"));
    }

    #[test]
    fn the_url_is_the_gateways_when_there_is_one() {
        let f = function();
        let d = deployment(1, 1, 1, 1, 1);
        let now = jiff::Timestamp::now();
        let s = next_status(
            &f,
            &seen(&valid(), Some(&d)),
            Some("http://10.88.0.1:8080/"),
            now,
        );
        assert_eq!(s.url.as_deref(), Some("http://10.88.0.1:8080/fn/alice/add"));
        let s = next_status(&f, &seen(&valid(), Some(&d)), None, now);
        assert_eq!(s.url.as_deref(), Some("http://skyfn-alice-add.fns.svc"));
    }

    fn created(ns: &str, name: &str, second: i64) -> SkyFunction {
        let mut f = function();
        f.metadata.namespace = Some(ns.into());
        f.metadata.name = Some(name.into());
        f.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(second).unwrap()));
        f
    }

    #[test]
    fn the_newer_claim_of_an_endpoint_is_taken_by_the_older() {
        let (old, new) = (created("a", "first", 10), created("b", "second", 20));
        let all = [old.clone(), new.clone()];
        assert_eq!(claim(&old, &all), Claim::Holds);
        assert_eq!(claim(&new, &all), Claim::TakenBy("a/first".into()));
        // The holder deleted: the other takes over.
        assert_eq!(claim(&new, [&new]), Claim::Holds);
        // A store that has not seen the function yet decides nothing against it.
        assert_eq!(claim(&new, []), Claim::Holds);
    }

    #[test]
    fn a_taken_endpoint_is_not_ready_names_its_holder_and_has_no_url() {
        let f = created("b", "second", 20);
        let taken = Claim::TakenBy("a/first".into());
        let o = Observed {
            claim: &taken,
            check: &valid(),
            deployment: None,
            claimed: 0,
        };
        let r = readiness(&o);
        assert_eq!((r.ready, r.reason), (false, "EndpointTaken"));
        assert!(r.message.contains("SkyFunction a/first"), "{}", r.message);
        assert!(r.is_warning());
        let s = next_status(&f, &o, Some("http://gw"), jiff::Timestamp::now());
        assert_eq!(s.conditions[0].reason, "EndpointTaken");
        assert_eq!((s.url, s.replicas), (None, 0));
        // Even with a broken source, what blocks it first is the endpoint.
        let broken = syntax_error();
        let o = Observed {
            claim: &taken,
            check: &broken,
            deployment: None,
            claimed: 0,
        };
        assert_eq!(readiness(&o).reason, "EndpointTaken");
    }
}
