//! Applying a function's children (ConfigMap, Service, NetworkPolicy, Deployment) with
//! server-side apply, only those that need it.
//!
//! A function is reconciled on every change of its children (a Deployment's status changes a
//! few times per pod started). A child is applied only when what the operator wants of it
//! changed, or the child did since the operator applied it ([`Applied`]): on a busy node the
//! API server's time goes to the pods that calls wait for, not to applies that change nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest;
use skython_crds::SkyFunction;

use crate::controller::{Error, MANAGER};
use crate::desired::{Children, child_name};

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Kube {
        action: format!("applying {} {name}", K::kind(&K::DynamicType::default())),
        source,
    })
}

/// A child as the operator last applied it: a hash of what it applied, and the child's version
/// the API server answered with.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    wanted: String,
    version: Option<String>,
}

/// A child: its kind, namespace and name.
type ChildKey = (String, String, String);

/// What the operator applied to each child (in memory: a new operator applies everything once).
#[derive(Default)]
pub struct Applied(Mutex<HashMap<ChildKey, Record>>);

/// The version of a child that tells whether someone else changed it: a Deployment's
/// `generation` (its spec; its status changes with every pod), any other child's
/// `resourceVersion`.
fn version<K: Resource<DynamicType = ()>>(obj: &K) -> Option<String> {
    if K::kind(&()) == "Deployment" {
        obj.meta().generation.map(|g| g.to_string())
    } else {
        obj.meta().resource_version.clone()
    }
}

/// Whether a child needs applying: nothing recorded, something else wanted, or the child
/// changed since the operator applied it.
fn needs_apply(record: Option<&Record>, wanted: &str, live: Option<&str>) -> bool {
    record.is_none_or(|r| r.wanted != wanted || live.is_none() || r.version.as_deref() != live)
}

fn hash_of<K: Serialize>(obj: &K) -> String {
    hex::encode(sha2::Sha256::digest(
        serde_json::to_vec(obj).unwrap_or_default(),
    ))
}

impl Applied {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<ChildKey, Record>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `obj` unless the watch's copy of the child (in `store`) is as the operator left
    /// it and the operator still wants the same of it; returns the child as it is now.
    async fn apply<K>(&self, client: &Client, obj: &K, store: &Store<K>) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let key = (K::kind(&()).to_string(), ns.clone(), name);
        let wanted = hash_of(obj);
        if let Some(live) = store.get(&ObjectRef::from_obj(obj))
            && !needs_apply(
                self.records().get(&key),
                &wanted,
                version(live.as_ref()).as_deref(),
            )
        {
            return Ok((*live).clone());
        }
        let applied = apply(&Api::<K>::namespaced(client.clone(), &ns), obj).await?;
        self.records().insert(
            key,
            Record {
                wanted,
                version: version(&applied),
            },
        );
        Ok(applied)
    }

    /// Forgets the children of deleted functions, once they are many.
    pub fn prune(&self, functions: &Store<SkyFunction>) {
        let functions = functions.state();
        let mut records = self.records();
        // Four children per function; prune rarely.
        if records.len() <= 8 * functions.len() + 64 {
            return;
        }
        let children: HashSet<(String, String)> = functions
            .iter()
            .filter_map(|f| Some((f.namespace()?, child_name(&f.name_any()))))
            .collect();
        records.retain(|(_, ns, name), _| children.contains(&(ns.clone(), name.clone())));
    }
}

/// The watched children of the functions, the store of each kind.
#[derive(Clone)]
pub struct ChildStores {
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub network_policies: Store<NetworkPolicy>,
    pub deployments: Store<Deployment>,
}

/// Applies the children that need it (see [`Applied`]); returns the Deployment as it is now.
pub async fn apply_children(
    client: &Client,
    stores: &ChildStores,
    applied: &Applied,
    c: &Children,
) -> Result<Deployment, Error> {
    applied
        .apply(client, &c.config_map, &stores.config_maps)
        .await?;
    applied.apply(client, &c.service, &stores.services).await?;
    applied
        .apply(client, &c.network_policy, &stores.network_policies)
        .await?;
    // Last, so that the pods find their ConfigMap.
    applied
        .apply(client, &c.deployment, &stores.deployments)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(wanted: &str, version: &str) -> Record {
        Record {
            wanted: wanted.into(),
            version: Some(version.into()),
        }
    }

    #[test]
    fn a_child_as_the_operator_left_it_and_still_wanted_so_is_not_applied_again() {
        assert!(!needs_apply(Some(&record("h1", "7")), "h1", Some("7")));
    }

    #[test]
    fn a_child_is_applied_when_the_operator_wants_something_else_of_it() {
        assert!(needs_apply(Some(&record("h1", "7")), "h2", Some("7")));
    }

    #[test]
    fn a_child_someone_else_changed_is_applied_again() {
        assert!(needs_apply(Some(&record("h1", "7")), "h1", Some("8")));
        assert!(needs_apply(Some(&record("h1", "7")), "h1", None));
    }

    #[test]
    fn a_child_the_operator_has_no_record_of_is_applied() {
        assert!(needs_apply(None, "h1", Some("7")));
    }

    #[test]
    fn a_deployments_version_is_its_generation_and_other_childrens_their_resource_version() {
        let mut d = Deployment::default();
        d.metadata.generation = Some(3);
        d.metadata.resource_version = Some("991".into());
        assert_eq!(
            version(&d).as_deref(),
            Some("3"),
            "its status changes often"
        );
        let mut c = ConfigMap::default();
        c.metadata.resource_version = Some("992".into());
        assert_eq!(version(&c).as_deref(), Some("992"));
    }
}
