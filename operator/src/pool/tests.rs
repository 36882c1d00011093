//! The pool's plan over observed pods, functions and Deployments.

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use skython_crds::{Runtime, SkyFunction, SkyFunctionSpec};
use skython_runner_pod::wire;

use super::*;
use crate::desired::{CHECKSUM_ANNOTATION, FUNCTION_LABEL, POOL_TEMPLATE_ANNOTATION, checksum};

const NOW: i64 = 1_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn settings(standard: u32, full: u32) -> PlanSettings {
    PlanSettings {
        targets: vec![
            Target {
                runtime: Runtime::Standard,
                size: standard,
                template: "t-std".into(),
            },
            Target {
                runtime: Runtime::Full,
                size: full,
                template: "t-full".into(),
            },
        ],
        refill_interval: SignedDuration::from_secs(1),
        refill_yield: SignedDuration::from_secs(5),
    }
}

/// An unclaimed standard pod of `template`, made `age` seconds ago.
fn pod(name: &str, template: &str, ready: bool, age: i64) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(wire::POOL_LABEL.to_string(), "standard".to_string())].into()),
            annotations: Some(
                [(POOL_TEMPLATE_ANNOTATION.to_string(), template.to_string())].into(),
            ),
            creation_timestamp: Some(Time(at(NOW - age))),
            ..Default::default()
        },
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn function(name: &str, uid: &str) -> SkyFunction {
    let mut f = SkyFunction::new(
        name,
        SkyFunctionSpec::new("alice", name, "def f():\n    return 1\n"),
    );
    f.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("fns".into()),
        uid: Some(uid.into()),
        ..Default::default()
    };
    f
}

/// `pod` as a gateway leaves it after claiming it for `f`, `claimed_ago` seconds ago.
fn claimed(name: &str, f: &SkyFunction, claimed_ago: i64) -> Pod {
    let mut p = pod(name, "t-std", true, claimed_ago + 60);
    let name_of_f = f.metadata.name.clone().unwrap();
    p.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(FUNCTION_LABEL.into(), name_of_f.clone());
    let annotations = p.metadata.annotations.as_mut().unwrap();
    annotations.insert(CHECKSUM_ANNOTATION.into(), checksum(f));
    annotations.insert(
        wire::CLAIMED_AT_ANNOTATION.into(),
        at(NOW - claimed_ago).to_string(),
    );
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "skython.io/v1alpha1".into(),
        kind: "SkyFunction".into(),
        name: name_of_f,
        uid: f.metadata.uid.clone().unwrap(),
        controller: Some(true),
        ..Default::default()
    }]);
    p
}

fn deployment(function: &str, desired: i32, ready: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([(
                FUNCTION_LABEL.to_string(),
                function.to_string(),
            )])),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(desired),
            ..Default::default()
        },
        status: Some(DeploymentStatus {
            ready_replicas: Some(ready),
            ..Default::default()
        }),
    }
}

fn plan_for(
    s: &PlanSettings,
    pods: &[Pod],
    functions: &[SkyFunction],
    deployments: &[Deployment],
) -> Vec<PoolAction> {
    let observed = Observed {
        pods: pods.iter().collect(),
        functions: functions.iter().collect(),
        deployments: deployments.iter().collect(),
    };
    plan(at(NOW), s, &observed, &mut Refills::default())
}

/// The deletions, as `<pod> <reason>`.
fn deleted(actions: &[PoolAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            PoolAction::Delete { pod, reason, .. } => Some(format!("{pod} {}", reason.as_str())),
            PoolAction::Create(_) => None,
        })
        .collect()
}

#[test]
fn an_empty_pool_creates_one_pod_of_each_runtime_with_a_size() {
    assert_eq!(
        plan_for(&settings(3, 1), &[], &[], &[]),
        [
            PoolAction::Create(Runtime::Standard),
            PoolAction::Create(Runtime::Full)
        ]
    );
    assert_eq!(
        plan_for(&settings(3, 0), &[], &[], &[]),
        [PoolAction::Create(Runtime::Standard)]
    );
}

#[test]
fn the_next_pod_waits_for_the_refill_interval_since_the_last_creation() {
    let s = settings(3, 0);
    let observed = Observed::default();
    let mut refills = Refills {
        last_created: HashMap::from([(Runtime::Standard, at(NOW))]),
        ..Refills::default()
    };
    let later = |ms| at(NOW) + SignedDuration::from_millis(ms);
    assert_eq!(plan(later(999), &s, &observed, &mut refills), []);
    assert_eq!(
        plan(later(1000), &s, &observed, &mut refills),
        [PoolAction::Create(Runtime::Standard)]
    );
    assert_eq!(refills.last_created[&Runtime::Standard], later(1000));
    assert_eq!(plan(later(1999), &s, &observed, &mut refills), []);
}

/// A function pod of `f`: `scheduled` on a node or not, Ready or not.
fn function_pod(f: &str, scheduled: bool, ready: bool) -> Pod {
    let condition = |type_: &str, ok: bool| PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{f}-pod")),
            labels: Some([(FUNCTION_LABEL.to_string(), f.to_string())].into()),
            ..Default::default()
        },
        status: Some(PodStatus {
            phase: Some(if scheduled { "Running" } else { "Pending" }.into()),
            conditions: Some(vec![
                condition("PodScheduled", scheduled),
                condition("Ready", ready),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `deployment` with `made` pods existing.
fn deployment_with(function: &str, desired: i32, made: i32) -> Deployment {
    let mut d = deployment(function, desired, 0);
    if let Some(s) = d.status.as_mut() {
        s.replicas = Some(made);
    }
    d
}

#[test]
fn functions_start_while_their_pods_are_to_be_made_or_placed_and_not_ready() {
    let starting = |pods: &[Pod], deployments: &[Deployment]| {
        functions_starting(&Observed {
            pods: pods.iter().collect(),
            functions: vec![],
            deployments: deployments.iter().collect(),
        })
    };
    assert!(
        starting(&[], &[deployment_with("f", 1, 0)]),
        "scaled up, no pod made yet"
    );
    assert!(!starting(&[], &[deployment_with("f", 1, 1)]));
    assert!(
        !starting(&[], &[deployment_with("f", 0, 0)]),
        "at zero (claimed pods serve it, or nothing calls it)"
    );
    assert!(starting(&[function_pod("f", true, false)], &[]));
    assert!(!starting(&[function_pod("f", true, true)], &[]));
    assert!(
        !starting(&[function_pod("f", false, false)], &[]),
        "no node takes it: it loads nothing"
    );
    assert!(
        !starting(&[pod("p", "t-std", false, 1)], &[]),
        "the pool's own pods are not functions'"
    );
}

#[test]
fn claimed_pods_serving_the_current_version_count_for_their_function() {
    let f = function("alice-f", "u1");
    let serving = claimed("c", &f, 1);
    assert_eq!(serving_claims(&f, [&serving]), 1);
    let mut not_ready = serving.clone();
    not_ready.status = pod("c", "t-std", false, 1).status;
    let mut failed = serving.clone();
    failed
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(wire::LOAD_FAILED_ANNOTATION.into(), "no module".into());
    let mut deleting = serving.clone();
    deleting.metadata.deletion_timestamp = Some(Time(at(NOW)));
    let mut newer = f.clone();
    newer.spec.source = "def f():\n    return 2\n".into();
    let other = function("alice-g", "u2");
    let cases = [
        (&not_ready, &f, "not ready"),
        (&failed, &f, "its function failed to load"),
        (&deleting, &f, "being deleted"),
        (&serving, &newer, "of an older version"),
        (
            &serving,
            &function("alice-f", "u3"),
            "of a function deleted and made again",
        ),
        (&claimed("d", &other, 1), &f, "another function's"),
        (&function_pod("alice-f", true, true), &f, "the Deployment's"),
    ];
    for (pod, f, why) in cases {
        assert_eq!(serving_claims(f, [pod]), 0, "{why}");
    }
}

#[test]
fn a_short_pool_yields_to_starting_function_pods_for_the_refill_yield() {
    let s = settings(1, 0);
    let pods = [function_pod("f", true, false)];
    let observed = Observed {
        pods: pods.iter().collect(),
        ..Observed::default()
    };
    let mut refills = Refills::default();
    let later = |secs| at(NOW) + SignedDuration::from_secs(secs);
    assert_eq!(plan(at(NOW), &s, &observed, &mut refills), []);
    assert_eq!(plan(later(4), &s, &observed, &mut refills), []);
    assert_eq!(
        plan(later(5), &s, &observed, &mut refills),
        [PoolAction::Create(Runtime::Standard)],
        "yielded long enough"
    );
}

#[test]
fn a_short_pool_waits_a_moment_after_a_claim_for_the_bursts_deployments() {
    let s = settings(1, 0);
    let f = function("alice-f", "u1");
    let pods = [claimed("c", &f, 0)];
    let just_claimed = Observed {
        pods: pods.iter().collect(),
        functions: vec![&f],
        ..Observed::default()
    };
    let mut refills = Refills::default();
    assert_eq!(plan(at(NOW), &s, &just_claimed, &mut refills), []);
    assert_eq!(
        plan(at(NOW) + CLAIM_SETTLE, &s, &just_claimed, &mut refills),
        [PoolAction::Create(Runtime::Standard)],
        "no Deployment scaled meanwhile"
    );
}

#[test]
fn a_short_pool_refills_as_soon_as_no_function_pod_starts() {
    let s = settings(1, 0);
    let mut refills = Refills::default();
    let pods = [function_pod("f", true, false)];
    let starting = Observed {
        pods: pods.iter().collect(),
        ..Observed::default()
    };
    assert_eq!(plan(at(NOW), &s, &starting, &mut refills), []);
    let later = at(NOW) + SignedDuration::from_secs(1);
    assert_eq!(
        plan(later, &s, &Observed::default(), &mut refills),
        [PoolAction::Create(Runtime::Standard)]
    );
}

#[test]
fn a_full_pool_forgets_how_long_it_was_short() {
    let s = settings(1, 0);
    let mut refills = Refills {
        short_since: HashMap::from([(Runtime::Standard, at(NOW - 60))]),
        ..Refills::default()
    };
    let pods = [pod("a", "t-std", true, 9)];
    let full = Observed {
        pods: pods.iter().collect(),
        ..Observed::default()
    };
    assert_eq!(plan(at(NOW), &s, &full, &mut refills), []);
    assert!(refills.short_since.is_empty());
}

#[test]
fn starting_pods_count_toward_the_size() {
    let pods = [pod("a", "t-std", true, 9), pod("b", "t-std", false, 1)];
    assert_eq!(plan_for(&settings(2, 0), &pods, &[], &[]), []);
}

#[test]
fn pods_being_deleted_do_not_count_toward_the_size() {
    let mut going = pod("a", "t-std", true, 9);
    going.metadata.deletion_timestamp = Some(Time(at(NOW)));
    assert_eq!(
        plan_for(&settings(1, 0), &[going], &[], &[]),
        [PoolAction::Create(Runtime::Standard)]
    );
}

#[test]
fn the_excess_goes_pods_not_ready_first_then_the_newest() {
    let pods = [
        pod("old-ready", "t-std", true, 30),
        pod("new-ready", "t-std", true, 10),
        pod("starting", "t-std", false, 20),
        pod("mid-ready", "t-std", true, 20),
    ];
    assert_eq!(
        deleted(&plan_for(&settings(2, 0), &pods, &[], &[])),
        ["starting excess", "new-ready excess"]
    );
}

#[test]
fn pods_of_an_old_template_wait_until_enough_new_ones_are_ready() {
    let old = pod("old", "t-before", true, 99);
    let starting = pod("new", "t-std", false, 1);
    assert_eq!(
        plan_for(&settings(1, 0), &[old.clone(), starting], &[], &[]),
        []
    );
    let ready = pod("new", "t-std", true, 1);
    assert_eq!(
        deleted(&plan_for(&settings(1, 0), &[old.clone(), ready], &[], &[])),
        ["old stale_template"]
    );
    // With no pool of that runtime at all, they go at once.
    assert_eq!(
        deleted(&plan_for(&settings(0, 0), &[old], &[], &[])),
        ["old stale_template"]
    );
}

#[test]
fn old_template_pods_do_not_count_toward_the_size() {
    let pods = [pod("old", "t-before", true, 99)];
    assert_eq!(
        plan_for(&settings(1, 0), &pods, &[], &[]),
        [PoolAction::Create(Runtime::Standard)]
    );
}

#[test]
fn a_pod_of_a_runtime_no_target_names_is_deleted() {
    let mut odd = pod("odd", "t-std", true, 9);
    odd.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(wire::POOL_LABEL.into(), "gpu".into());
    let actions = plan_for(&settings(0, 0), &[odd], &[], &[]);
    assert_eq!(deleted(&actions), ["odd stale_template"]);
    assert!(matches!(&actions[0], PoolAction::Delete { runtime, .. } if runtime == "gpu"));
}

#[test]
fn exited_pods_are_deleted_claimed_or_not() {
    let f = function("alice-f", "u1");
    let mut failed = pod("failed", "t-std", false, 9);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    let mut done = claimed("done", &f, 1);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let actions = plan_for(&settings(0, 0), &[failed, done], &[f], &[]);
    assert_eq!(deleted(&actions), ["failed exited", "done exited"]);
}

#[test]
fn a_claimed_pod_serving_its_function_stays_and_does_not_count_toward_the_size() {
    let f = function("alice-f", "u1");
    let pods = [claimed("c", &f, 1)];
    assert_eq!(
        plan_for(
            &settings(1, 0),
            &pods,
            std::slice::from_ref(&f),
            &[deployment_with("alice-f", 1, 1)]
        ),
        [PoolAction::Create(Runtime::Standard)]
    );
}

#[test]
fn a_claimed_pod_of_a_deleted_or_remade_function_is_retired() {
    let f = function("alice-f", "u1");
    let pods = [claimed("c", &f, 1)];
    assert_eq!(
        deleted(&plan_for(&settings(0, 0), &pods, &[], &[])),
        ["c function_gone"]
    );
    let remade = function("alice-f", "u2");
    assert_eq!(
        deleted(&plan_for(&settings(0, 0), &pods, &[remade], &[])),
        ["c function_gone"]
    );
}

#[test]
fn a_claimed_pod_of_an_older_version_is_retired() {
    let f = function("alice-f", "u1");
    let pods = [claimed("c", &f, 1)];
    let mut newer = f.clone();
    newer.spec.source = "def f():\n    return 2\n".into();
    let actions = plan_for(&settings(0, 0), &pods, &[newer], &[]);
    assert_eq!(deleted(&actions), ["c outdated"]);
    assert!(matches!(&actions[0], PoolAction::Delete { function: Some(f), .. } if f == "alice-f"));
}

#[test]
fn a_claimed_pod_is_retired_once_the_deployment_has_its_replicas_ready() {
    let f = function("alice-f", "u1");
    let pods = [claimed("c", &f, 1)];
    let retired = |d: Deployment| {
        deleted(&plan_for(
            &settings(0, 0),
            &pods,
            std::slice::from_ref(&f),
            &[d],
        ))
        .len()
    };
    assert_eq!(retired(deployment("alice-f", 1, 1)), 1);
    assert_eq!(retired(deployment("alice-f", 2, 1)), 0, "one of two ready");
    assert_eq!(retired(deployment("alice-f", 0, 0)), 0, "at zero");
    assert_eq!(
        retired(deployment("alice-f", 0, 1)),
        0,
        "asked for none (the claimed pods serve), one still leaving"
    );
    assert_eq!(retired(deployment("bob-g", 1, 1)), 0, "another function's");
}

#[test]
fn a_claimed_pod_its_function_failed_to_load_in_is_retired() {
    let f = function("alice-f", "u1");
    let mut pod = claimed("c", &f, 1);
    pod.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(wire::LOAD_FAILED_ANNOTATION.into(), "no module".into());
    assert_eq!(
        deleted(&plan_for(&settings(0, 0), &[pod], &[f], &[])),
        ["c load_failed"]
    );
}

#[test]
fn a_claimed_pod_of_a_function_at_zero_is_retired_after_idle_seconds_to_zero() {
    let mut f = function("alice-f", "u1");
    f.spec.replicas = Some(0);
    f.spec.scaling.idle_seconds_to_zero = 300;
    let retired = |f: &SkyFunction, pod: Pod| {
        deleted(&plan_for(
            &settings(0, 0),
            &[pod],
            std::slice::from_ref(f),
            &[],
        ))
    };
    assert_eq!(retired(&f, claimed("c", &f, 301)), ["c idle"]);
    assert_eq!(retired(&f, claimed("c", &f, 299)), Vec::<String>::new());
    // Without the claim's time, the pod's age (61 s here).
    let mut quick = f.clone();
    quick.spec.scaling.idle_seconds_to_zero = 60;
    let mut unmarked = claimed("c", &quick, 1);
    assert_eq!(
        retired(&quick, unmarked.clone()),
        Vec::<String>::new(),
        "claimed 1 s ago"
    );
    unmarked
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(wire::CLAIMED_AT_ANNOTATION);
    assert_eq!(retired(&quick, unmarked), ["c idle"]);
    // Replicas wanted: not idle, however old the claim.
    let mut busy = f.clone();
    busy.spec.replicas = None;
    assert_eq!(
        retired(&busy, claimed("c", &busy, 3000)),
        Vec::<String>::new()
    );
}

#[test]
fn a_pod_states_follow_its_claim_and_readiness() {
    let f = function("alice-f", "u1");
    assert_eq!(state(&pod("a", "t", false, 1)), Some(PodState::Starting));
    assert_eq!(state(&pod("a", "t", true, 1)), Some(PodState::Available));
    assert_eq!(state(&claimed("c", &f, 1)), Some(PodState::Claimed));
    let mut going = pod("a", "t", true, 1);
    going.metadata.deletion_timestamp = Some(Time(at(NOW)));
    assert_eq!(state(&going), None);
}
