//! Leader election on a `coordination.k8s.io/v1` Lease, so that several operator replicas can
//! run and only one reconciles. The decision is a pure function of the Lease; writes use the
//! Lease's resourceVersion, so two candidates can never both win the same term.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who this replica is (its pod name in a cluster).
    pub identity: String,
    /// How long a leader holds the Lease without renewing it.
    pub duration: Duration,
}

/// What a candidate should do, given the Lease as it is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Free or expired: claim it.
    Take,
    /// Ours: renew it.
    Renew,
    /// Someone else holds it until it expires.
    Wait { holder: String },
}

pub fn decide(lease: Option<&Lease>, identity: &str, now: jiff::Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Take;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Take;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let expires = spec.renew_time.as_ref().map(|t| {
        t.0.saturating_add(jiff::SignedDuration::from_secs(
            spec.lease_duration_seconds.unwrap_or(0).into(),
        ))
        .unwrap_or(t.0)
    });
    match expires {
        Some(at) if at > now => Decision::Wait { holder },
        _ => Decision::Take,
    }
}

/// The Lease after this candidate takes or renews it.
pub fn claimed(
    current: Option<&Lease>,
    cfg: &LeaseConfig,
    now: jiff::Timestamp,
    decision: &Decision,
) -> Lease {
    let old = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    let taking = *decision == Decision::Take;
    let transitions = old.lease_transitions.unwrap_or(0);
    let changed_hands = taking
        && old
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
            // A Lease made by an installer (the Helm chart's) keeps the labels and annotations
            // that say whose it is.
            labels: current.and_then(|l| l.metadata.labels.clone()),
            annotations: current.and_then(|l| l.metadata.annotations.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(cfg.duration.as_secs().max(1) as i32),
            acquire_time: if taking {
                Some(MicroTime(now))
            } else {
                old.acquire_time
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions + i32::from(changed_hands)),
            ..Default::default()
        }),
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    /// One attempt to take or renew the Lease; `Ok(false)` when someone else holds it or won a
    /// race for it.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.cfg.name).await?;
        let now = jiff::Timestamp::now();
        let decision = decide(current.as_ref(), &self.cfg.identity, now);
        if let Decision::Wait { holder } = &decision {
            tracing::debug!(%holder, "another replica leads");
            return Ok(false);
        }
        let lease = claimed(current.as_ref(), &self.cfg, now, &decision);
        let written = match current {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Another candidate wrote first (create or replace raced).
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        let mut said = false;
        loop {
            match self.try_lead().await {
                Ok(true) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "leading");
                    return;
                }
                Ok(false) if !said => {
                    tracing::info!(lease = %self.cfg.name, "another replica leads; standing by");
                    said = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.cfg.duration / 4).await;
        }
    }

    /// Renews the Lease until a renewal has not succeeded for a whole lease duration; returns
    /// then, when another replica may already lead.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.duration / 3).await;
            match self.try_lead().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lost the lease to another replica");
                    return;
                }
                Err(e) => tracing::warn!("renewing the lease failed: {e}"),
            }
            if last_ok.elapsed() >= self.cfg.duration {
                tracing::error!("could not renew the lease for {:?}", self.cfg.duration);
                return;
            }
        }
    }

    /// Gives the Lease up at shutdown so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the lease"),
            Err(e) => tracing::warn!("releasing the lease failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "skython".into(),
            name: "skython-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
        }
    }

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn an_installers_empty_lease_is_taken_and_keeps_its_labels() {
        let made = Lease {
            metadata: ObjectMeta {
                name: Some("skython-operator".into()),
                labels: Some([("app.kubernetes.io/managed-by".into(), "Helm".into())].into()),
                annotations: Some([("meta.helm.sh/release-name".into(), "sky".into())].into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec::default()),
        };
        assert_eq!(decide(Some(&made), "a", at(0)), Decision::Take);
        let taken = claimed(Some(&made), &cfg("a"), at(0), &Decision::Take);
        assert_eq!(taken.metadata.labels, made.metadata.labels);
        assert_eq!(taken.metadata.annotations, made.metadata.annotations);
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("a"));
    }

    #[test]
    fn a_lease_is_taken_when_free_or_expired_and_only_then() {
        assert_eq!(decide(None, "a", at(0)), Decision::Take);
        let a = claimed(None, &cfg("a"), at(0), &Decision::Take);
        assert_eq!(decide(Some(&a), "a", at(5)), Decision::Renew);
        assert_eq!(
            decide(Some(&a), "b", at(14)),
            Decision::Wait { holder: "a".into() }
        );
        assert_eq!(decide(Some(&a), "b", at(15)), Decision::Take);
        let mut released = a.clone();
        released.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(decide(Some(&released), "b", at(1)), Decision::Take);
    }

    #[test]
    fn claiming_counts_transitions_and_keeps_the_acquire_time_on_renewal() {
        let a = claimed(None, &cfg("a"), at(0), &Decision::Take);
        let spec = a.spec.clone().unwrap();
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let renewed = claimed(Some(&a), &cfg("a"), at(5), &Decision::Renew);
        let r = renewed.spec.unwrap();
        assert_eq!(r.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(r.renew_time, Some(MicroTime(at(5))));
        let mut held = a.clone();
        held.metadata.resource_version = Some("42".into());
        let b = claimed(Some(&held), &cfg("b"), at(20), &Decision::Take);
        assert_eq!(
            b.metadata.resource_version.as_deref(),
            Some("42"),
            "optimistic write"
        );
        let s = b.spec.unwrap();
        assert_eq!(s.holder_identity.as_deref(), Some("b"));
        assert_eq!(s.lease_transitions, Some(1));
        assert_eq!(s.acquire_time, Some(MicroTime(at(20))));
    }
}
