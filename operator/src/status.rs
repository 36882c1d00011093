//! What a `SkyFunction`'s status should say, as pure functions of what the operator observed:
//! whether the source can be deployed, and how far its Deployment has rolled out.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use skython_crds::{Signature, SkyFunction, SkyFunctionStatus};
use skython_runner::SourceError;

use crate::desired::child_name;

/// The outcome of reading a function's source without running it.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceCheck {
    Valid(Signature),
    Invalid(SourceError),
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

/// Ready means the latest version serves: the Deployment has seen its newest spec and every
/// replica runs it and is ready (what `kubectl rollout status` waits for).
pub fn readiness(check: &SourceCheck, deployment: Option<&Deployment>) -> Readiness {
    if let SourceCheck::Invalid(e) = check {
        let kept = if deployment.is_some() {
            "; the previous version keeps serving"
        } else {
            ""
        };
        return Readiness {
            ready: false,
            reason: "InvalidSource",
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
    if observed && updated >= desired && total == updated && ready >= desired {
        return Readiness {
            ready: true,
            reason: "Available",
            message: format!("{ready} of {desired} replicas ready"),
        };
    }
    if let Some(c) = stalled {
        return Readiness {
            ready: false,
            reason: "ProgressDeadlineExceeded",
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
/// the same, so an unchanged world yields an unchanged status and no write.
pub fn next_status(
    f: &SkyFunction,
    check: &SourceCheck,
    deployment: Option<&Deployment>,
    now: jiff::Timestamp,
) -> SkyFunctionStatus {
    let previous = f.status.clone().unwrap_or_default();
    let r = readiness(check, deployment);
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
    let (signature, url) = match check {
        // The signature and address describe what serves, so a broken source keeps the old ones.
        SourceCheck::Invalid(_) => (previous.signature.clone(), previous.url.clone()),
        SourceCheck::Valid(sig) => (Some(sig.clone()), service_url(f)),
    };
    SkyFunctionStatus {
        conditions: vec![condition],
        ready_replicas: deployment
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .map_or(0, |n| n.max(0) as u32),
        url,
        observed_generation: f.metadata.generation,
        signature,
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

    /// A Deployment at `generation` whose controller has seen `observed`.
    fn deployment(
        generation: i64,
        observed: i64,
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
                replicas: Some(1),
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
            let r = readiness(&valid(), d.as_ref());
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
        let r = readiness(&valid(), Some(&stalled));
        assert_eq!((r.ready, r.reason), (false, "ProgressDeadlineExceeded"));
    }

    #[test]
    fn a_syntax_error_names_its_line_and_keeps_what_serves() {
        let r = readiness(&syntax_error(), None);
        assert_eq!(r.reason, "InvalidSource");
        assert_eq!(r.message, "line 2, column 12: invalid syntax: `return a +`");
        let r = readiness(&syntax_error(), Some(&deployment(1, 1, 1, 1, 1)));
        assert!(!r.ready);
        assert!(
            r.message.ends_with("the previous version keeps serving"),
            "{}",
            r.message
        );

        let mut f = function();
        let now = jiff::Timestamp::now();
        f.status = Some(next_status(
            &f,
            &valid(),
            Some(&deployment(1, 1, 1, 1, 1)),
            now,
        ));
        let broken = next_status(&f, &syntax_error(), Some(&deployment(1, 1, 1, 1, 1)), now);
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
        let first = next_status(&f, &valid(), Some(&d), t0);
        assert_eq!(first.ready_replicas, 1);
        f.status = Some(first.clone());
        let later = t0 + jiff::SignedDuration::from_secs(3600);
        assert_eq!(next_status(&f, &valid(), Some(&d), later), first);
        // A flip moves the transition time; a new message alone does not.
        let flipped = next_status(&f, &valid(), Some(&deployment(2, 2, 1, 1, 0)), later);
        assert_eq!(flipped.conditions[0].last_transition_time, Time(later));
        f.status = Some(flipped.clone());
        let still_rolling = next_status(&f, &valid(), Some(&deployment(2, 2, 2, 1, 1)), t0);
        assert_eq!(
            still_rolling.conditions[0].last_transition_time,
            Time(later)
        );
    }
}
