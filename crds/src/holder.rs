//! Which `SkyFunction` holds an owner's endpoint when several claim it: the oldest, so that
//! applying a second object never takes traffic away from one that serves.

use kube::ResourceExt;

use crate::SkyFunction;

/// The holder of `owner/endpoint` among `functions`: the oldest by creation time, then by
/// namespace and name (objects created in the same second). Objects being deleted hold nothing.
pub fn endpoint_holder<'a>(
    functions: impl IntoIterator<Item = &'a SkyFunction>,
    owner: &str,
    endpoint: &str,
) -> Option<&'a SkyFunction> {
    functions
        .into_iter()
        .filter(|f| f.spec.owner == owner && f.spec.endpoint == endpoint)
        .filter(|f| f.metadata.deletion_timestamp.is_none())
        .min_by(|a, b| {
            let key = |f: &'a SkyFunction| {
                (
                    f.metadata.creation_timestamp.clone().map(|t| t.0),
                    f.namespace(),
                    f.name_any(),
                )
            };
            key(a).cmp(&key(b))
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::SkyFunctionSpec;

    fn function(ns: &str, name: &str, endpoint: &str, created: i64) -> SkyFunction {
        let mut f = SkyFunction::new(
            name,
            SkyFunctionSpec::new("alice", endpoint, "def f(): pass"),
        );
        f.metadata.namespace = Some(ns.into());
        f.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        f
    }

    #[test]
    fn the_oldest_claim_holds_the_endpoint() {
        let fs = [function("b", "new", "f", 20), function("a", "old", "f", 10)];
        assert_eq!(
            endpoint_holder(&fs, "alice", "f").unwrap().name_any(),
            "old"
        );
    }

    #[test]
    fn claims_of_the_same_second_go_by_namespace_then_name() {
        let fs = [function("b", "x", "f", 10), function("a", "y", "f", 10)];
        assert_eq!(endpoint_holder(&fs, "alice", "f").unwrap().name_any(), "y");
    }

    #[test]
    fn a_function_being_deleted_holds_nothing() {
        let mut old = function("a", "old", "f", 10);
        old.metadata.deletion_timestamp = old.metadata.creation_timestamp.clone();
        let fs = [old, function("a", "new", "f", 20)];
        assert_eq!(
            endpoint_holder(&fs, "alice", "f").unwrap().name_any(),
            "new"
        );
    }

    #[test]
    fn other_endpoints_and_owners_do_not_count() {
        let fs = [function("a", "g", "g", 1)];
        assert!(endpoint_holder(&fs, "alice", "f").is_none());
        assert!(endpoint_holder(&fs, "bob", "g").is_none());
    }
}
