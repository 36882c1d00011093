//! `Registry`: `SkyFunction` resources as the gateway's function records.
//!
//! A reflector keeps every watched SkyFunction in memory; reads (the API's, the router's, the
//! autoscaler's) come from it and cost no API-server request. An endpoint belongs to its
//! holder (`skython_crds::endpoint_holder`: the oldest claim), wherever it lives and whoever
//! applied it. Writes go to the API server, then wait (bounded) until the reflector has seen
//! them, so that a read right after a deploy sees the deploy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DeleteParams, DynamicObject, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use skython_crds::{SkyFunction, SkyFunctionSpec, Visibility, endpoint_holder};
use skython_gateway::error::{ApiError, ApiResult, ErrorCode};
use skython_store::{FunctionFilter, FunctionRecord};

/// The field manager of the gateway's writes (`kubectl get -o yaml --show-managed-fields`).
pub const FIELD_MANAGER: &str = "skython-gateway";

/// How long a write waits for the watch to show it. The watch is normally milliseconds
/// behind; past this the write still succeeded, and reads catch up when the watch does.
const SEEN_WITHIN: Duration = Duration::from_secs(5);

pub struct Registry {
    client: Client,
    /// Where functions created through the API go.
    namespace: String,
    /// What the watch covers, for messages.
    scope: String,
    store: Store<SkyFunction>,
    /// Whether the first full list has reached the store.
    synced: Arc<AtomicBool>,
    /// Why the watch failed last, while it has not synced (for `ready`).
    watch_error: Arc<std::sync::Mutex<Option<String>>>,
    reflector: tokio::task::JoinHandle<()>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.reflector.abort();
    }
}

impl Registry {
    /// Starts watching the SkyFunctions of `watch` (all namespaces when `None`); functions
    /// created through the API go to `namespace`. Must run inside a Tokio runtime.
    pub fn start(client: Client, watch: Option<&str>, namespace: &str) -> Self {
        let api: Api<SkyFunction> = match watch {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let scope = match watch {
            Some(ns) => format!("namespace {ns}"),
            None => "all namespaces".to_string(),
        };
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let watch_error = Arc::new(std::sync::Mutex::new(None));
        let events = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let reflector = tokio::spawn({
            let (synced, watch_error, scope) = (synced.clone(), watch_error.clone(), scope.clone());
            async move {
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::InitDone) => {
                            synced.store(true, Ordering::Release);
                            *lock(&watch_error) = None;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let why = watch_failure(&e, &scope);
                            tracing::warn!("{why}");
                            *lock(&watch_error) = Some(why);
                        }
                    }
                }
            }
        });
        Registry {
            client,
            namespace: namespace.to_string(),
            scope,
            store,
            synced,
            watch_error,
            reflector,
        }
    }

    /// The reflector's store of every watched SkyFunction (the router and the autoscaler read
    /// it; it is empty until `ready`).
    pub fn store(&self) -> Store<SkyFunction> {
        self.store.clone()
    }

    /// `Err(why)` until the first list of SkyFunctions has arrived.
    pub fn ready(&self) -> Result<(), String> {
        if self.synced.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(match lock(&self.watch_error).clone() {
            Some(why) => why,
            None => format!("SkyFunctions in {} are not listed yet", self.scope),
        })
    }

    /// Waits (at most `within`) for the first list; 503 `platform_unavailable` past it. A
    /// gateway that just started answers its first calls once it knows the functions, rather
    /// than 404 for all of them.
    pub async fn synced_within(&self, within: Duration) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.ready().is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.synced()
    }

    /// The SkyFunction that serves `owner/endpoint`, if any claims it.
    pub fn holder(&self, owner: &str, endpoint: &str) -> Option<Arc<SkyFunction>> {
        let claims = self
            .store
            .state_filter(|f| f.spec.owner == owner && f.spec.endpoint == endpoint);
        let holder = endpoint_holder(claims.iter().map(AsRef::as_ref), owner, endpoint)?;
        claims
            .iter()
            .find(|f| std::ptr::eq(f.as_ref(), holder))
            .cloned()
    }

    pub fn get(&self, owner: &str, endpoint: &str) -> ApiResult<Option<FunctionRecord>> {
        self.synced()?;
        Ok(self.holder(owner, endpoint).map(|f| record(&f)))
    }

    /// The functions `filter` selects (their holders only), by owner then endpoint.
    pub fn list(&self, filter: &FunctionFilter) -> ApiResult<Vec<FunctionRecord>> {
        self.synced()?;
        let functions = self.store.state_filter(|f| selects(filter, &f.spec));
        Ok(holders(functions.iter().map(AsRef::as_ref))
            .into_iter()
            .map(record)
            .collect())
    }

    /// Creates the SkyFunction `<owner>.<endpoint>` in the registry's namespace (409 when any
    /// SkyFunction already claims the endpoint).
    pub async fn create(&self, function: &FunctionRecord) -> ApiResult<FunctionRecord> {
        self.synced()?;
        let spec = &function.spec;
        if let Some(holder) = self.holder(&spec.owner, &spec.endpoint) {
            return Err(taken(&spec.owner, &spec.endpoint, &holder));
        }
        let name = object_name(spec);
        let mut object = SkyFunction::new(&name, spec.clone());
        object.metadata.namespace = Some(self.namespace.clone());
        let created = self
            .dynamic_api(&self.namespace)
            .create(&post_params(), &wire_form(&object)?)
            .await
            .map_err(|e| match api_status(&e) {
                Some(409) => ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{}/{} cannot be created: the SkyFunction {}/{name} already exists",
                        spec.owner, spec.endpoint, self.namespace
                    ),
                ),
                _ => kube_error(e, "create", &self.namespace),
            })
            .and_then(typed)?;
        self.until_seen(&created, |seen| seen.is_some()).await;
        Ok(record(&created))
    }

    /// Writes a new spec into the holder of the record's endpoint, wherever it lives, if its
    /// generation is still `current_generation` (409 otherwise, or if it changes meanwhile).
    pub async fn replace(
        &self,
        function: &FunctionRecord,
        current_generation: i64,
    ) -> ApiResult<FunctionRecord> {
        self.synced()?;
        let (owner, endpoint) = (&function.spec.owner, &function.spec.endpoint);
        let holder = self
            .holder(owner, endpoint)
            .ok_or_else(|| ApiError::function_not_found(owner, endpoint))?;
        let generation = holder.metadata.generation.unwrap_or_default();
        if generation != current_generation {
            return Err(changed(owner, endpoint, &holder));
        }
        let mut object = (*holder).clone();
        object.spec = SkyFunctionSpec {
            // The autoscaler's (or kubectl scale's), not the deployer's.
            replicas: holder.spec.replicas,
            ..function.spec.clone()
        };
        // Not ours to write: the server keeps managed fields a request leaves out, and the
        // status belongs to the operator (a subresource: a replace ignores it anyway).
        object.metadata.managed_fields = None;
        object.status = None;
        let namespace = holder.namespace().unwrap_or_default();
        let replaced = self
            .dynamic_api(&namespace)
            .replace(&holder.name_any(), &post_params(), &wire_form(&object)?)
            .await
            .map_err(|e| match api_status(&e) {
                // Changed (409) or deleted (404) since the watch showed it.
                Some(409 | 404) => changed(owner, endpoint, &holder),
                _ => kube_error(e, "update", &namespace),
            })
            .and_then(typed)?;
        let before = holder.resource_version();
        self.until_seen(&replaced, |seen| {
            seen.is_some_and(|f| f.resource_version() != before)
        })
        .await;
        Ok(record(&replaced))
    }

    /// Deletes the holder of `owner/endpoint`; false when none claims it.
    pub async fn delete(&self, owner: &str, endpoint: &str) -> ApiResult<bool> {
        self.synced()?;
        let Some(holder) = self.holder(owner, endpoint) else {
            return Ok(false);
        };
        let namespace = holder.namespace().unwrap_or_default();
        let params = DeleteParams {
            // This object, not one made again under its name meanwhile.
            preconditions: Some(Preconditions {
                uid: holder.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self
            .api(&namespace)
            .delete(&holder.name_any(), &params)
            .await
        {
            Ok(_) => {}
            Err(e) if api_status(&e) == Some(404) => return Ok(false),
            Err(e) if api_status(&e) == Some(409) => return Err(changed(owner, endpoint, &holder)),
            Err(e) => return Err(kube_error(e, "delete", &namespace)),
        }
        let uid = holder.uid();
        self.until_seen(&holder, |seen| {
            seen.is_none_or(|f| f.uid() != uid || f.metadata.deletion_timestamp.is_some())
        })
        .await;
        Ok(true)
    }

    fn api(&self, namespace: &str) -> Api<SkyFunction> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Writes go through untyped objects: see [`wire_form`].
    fn dynamic_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<SkyFunction>(&()),
        )
    }

    /// 503 until the first list has arrived: an empty store then means nothing.
    fn synced(&self) -> ApiResult<()> {
        self.ready()
            .map_err(|why| ApiError::new(ErrorCode::PlatformUnavailable, why))
    }

    /// Waits until the store's copy of `object` passes `seen` (bounded by `SEEN_WITHIN`).
    async fn until_seen(&self, object: &SkyFunction, seen: impl Fn(Option<&SkyFunction>) -> bool) {
        let key = ObjectRef::from_obj(object);
        let waited = tokio::time::timeout(SEEN_WITHIN, async {
            while !seen(self.store.get(&key).as_deref()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                function = %key,
                "the SkyFunction watch has not shown a write after {SEEN_WITHIN:?}"
            );
        }
    }
}

/// A SkyFunction as written to the API server: its spec without empty strings (they are the
/// defaults anyway). Some API servers (the test cluster's 1.20 build) read `""` in a custom
/// resource as null and refuse it, and `description` is empty unless the user wrote one.
pub fn wire_form(f: &SkyFunction) -> ApiResult<DynamicObject> {
    let mut value = serde_json::to_value(f).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(spec) = value.get_mut("spec") {
        drop_empty_strings(spec);
    }
    serde_json::from_value(value).map_err(|e| ApiError::internal(e.to_string()))
}

fn drop_empty_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| v.as_str() != Some(""));
            map.values_mut().for_each(drop_empty_strings);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_empty_strings),
        _ => {}
    }
}

/// The API server's answer as a SkyFunction.
fn typed(d: DynamicObject) -> ApiResult<SkyFunction> {
    serde_json::to_value(d)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            ApiError::new(
                ErrorCode::PlatformUnavailable,
                format!("the API server answered with an unreadable SkyFunction: {e}"),
            )
        })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// The name of a SkyFunction created through the API: owner and endpoint are DNS labels, so
/// `<owner>.<endpoint>` is a valid object name and unique per endpoint.
pub fn object_name(spec: &SkyFunctionSpec) -> String {
    format!("{}.{}", spec.owner, spec.endpoint)
}

/// A SkyFunction as the API's record: its spec and status as they are, its generation, and
/// when it was created and last written.
pub fn record(f: &SkyFunction) -> FunctionRecord {
    let created_at = f
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0);
    // The newest write of any manager (kubectl, the gateway, the operator's status).
    let updated_at = f
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max()
        .map_or(created_at, |t| t.max(created_at));
    FunctionRecord {
        spec: f.spec.clone(),
        status: f.status.clone().unwrap_or_default(),
        generation: f.metadata.generation.unwrap_or(1),
        created_at,
        updated_at,
    }
}

/// Whether `filter` selects a function: its owner's, or public ones, or both (OR), or all
/// when it names neither; as the local store does.
pub fn selects(filter: &FunctionFilter, spec: &SkyFunctionSpec) -> bool {
    let by_owner = filter.owner.as_ref().is_some_and(|o| *o == spec.owner);
    let by_visibility = filter.include_public && spec.visibility == Visibility::Public;
    (filter.owner.is_none() && !filter.include_public) || by_owner || by_visibility
}

/// Each endpoint's holder among `functions`, by owner then endpoint.
pub fn holders<'a>(functions: impl IntoIterator<Item = &'a SkyFunction>) -> Vec<&'a SkyFunction> {
    let mut claims: BTreeMap<(&str, &str), Vec<&SkyFunction>> = BTreeMap::new();
    for f in functions {
        claims
            .entry((f.spec.owner.as_str(), f.spec.endpoint.as_str()))
            .or_default()
            .push(f);
    }
    claims
        .into_iter()
        .filter_map(|((owner, endpoint), fs)| endpoint_holder(fs, owner, endpoint))
        .collect()
}

fn qualified_name(f: &SkyFunction) -> String {
    format!("{}/{}", f.namespace().unwrap_or_default(), f.name_any())
}

fn taken(owner: &str, endpoint: &str, holder: &SkyFunction) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "{owner}/{endpoint} already exists (SkyFunction {}); replace it with PUT",
            qualified_name(holder)
        ),
    )
}

fn changed(owner: &str, endpoint: &str, holder: &SkyFunction) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "{owner}/{endpoint} changed meanwhile (SkyFunction {}); read it again and retry",
            qualified_name(holder)
        ),
    )
}

/// The HTTP status the API server answered with, if it answered.
fn api_status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// What a failed write of SkyFunctions (`verb`: create, update, delete) in `namespace` means
/// for the API's caller. What only the operator of the cluster can fix is 503.
pub fn kube_error(e: kube::Error, verb: &str, namespace: &str) -> ApiError {
    let unavailable = |msg: String| ApiError::new(ErrorCode::PlatformUnavailable, msg);
    let kube::Error::Api(status) = &e else {
        return unavailable(format!(
            "the Kubernetes API could not be reached to {verb} a SkyFunction: {e}"
        ));
    };
    match status.code {
        401 => unavailable(format!(
            "the Kubernetes API refused the gateway's credentials: {}",
            status.message
        )),
        403 => unavailable(format!(
            "the gateway lacks the permission to {verb} skyfunctions.skython.io in namespace \
             {namespace} (grant it in its Role): {}",
            status.message
        )),
        404 => unavailable(format!(
            "{} (is the SkyFunction CRD installed, and namespace {namespace} there?)",
            status.message
        )),
        409 => ApiError::new(ErrorCode::Conflict, status.message.clone()),
        400 | 422 => ApiError::new(
            ErrorCode::InvalidSpec,
            format!("the cluster refused the function: {}", status.message),
        ),
        _ => unavailable(format!(
            "the Kubernetes API failed to {verb} a SkyFunction: {}",
            status.message
        )),
    }
}

/// Why the watch failed, for logs and `/readyz`.
fn watch_failure(e: &watcher::Error, scope: &str) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
        watcher::Error::WatchError(s) => Some(s.as_ref()),
        _ => None,
    };
    match status {
        Some(s) if s.code == 403 => format!(
            "the gateway lacks the permission to list and watch skyfunctions.skython.io in \
             {scope}: {}",
            s.message
        ),
        Some(s) if s.code == 404 => format!(
            "SkyFunctions cannot be listed in {scope} (is the CRD installed?): {}",
            s.message
        ),
        _ => format!("watching SkyFunctions in {scope} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};

    use super::*;

    fn at(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    fn function(ns: &str, name: &str, owner: &str, endpoint: &str, created: i64) -> SkyFunction {
        let mut f = SkyFunction::new(name, SkyFunctionSpec::new(owner, endpoint, "def f(): pass"));
        f.metadata.namespace = Some(ns.into());
        f.metadata.creation_timestamp = Some(at(created));
        f.metadata.generation = Some(4);
        f
    }

    #[test]
    fn the_wire_form_leaves_out_empty_strings_and_reads_back_the_same() {
        let mut f = function("ns", "alice.f", "alice", "f", 1);
        f.spec.env = vec![skython_crds::EnvVar {
            name: "EMPTY".into(),
            value: String::new(),
        }];
        let wire = wire_form(&f).unwrap();
        let spec = &wire.data["spec"];
        assert!(spec.get("description").is_none(), "{spec}");
        assert_eq!(spec["env"][0], serde_json::json!({"name": "EMPTY"}));
        assert_eq!(typed(wire).unwrap().spec, f.spec);
    }

    fn written_at(second: i64) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            time: Some(at(second)),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_carries_the_objects_generation_and_creation_time() {
        let r = record(&function("ns", "n", "alice", "f", 100));
        assert_eq!(r.generation, 4);
        assert_eq!(r.created_at, at(100).0);
        assert_eq!(r.updated_at, at(100).0, "never written since its creation");
        assert_eq!(r.spec.endpoint, "f");
        assert_eq!(r.status, Default::default());
    }

    #[test]
    fn a_record_was_updated_at_the_newest_managed_fields_time() {
        let mut f = function("ns", "n", "alice", "f", 100);
        f.metadata.managed_fields = Some(vec![written_at(300), written_at(200)]);
        assert_eq!(record(&f).updated_at, at(300).0);
    }

    #[test]
    fn a_record_keeps_the_status_as_it_is() {
        let mut f = function("ns", "n", "alice", "f", 100);
        let status = skython_crds::SkyFunctionStatus {
            ready_replicas: 2,
            observed_generation: Some(3),
            ..Default::default()
        };
        f.status = Some(status.clone());
        assert_eq!(record(&f).status, status);
    }

    #[test]
    fn listings_hold_each_endpoint_once_by_its_holder_in_order() {
        let fs = [
            function("b", "late", "alice", "f", 20),
            function("z", "g", "bob", "g", 5),
            function("a", "early", "alice", "f", 10),
            function("a", "h", "alice", "h", 30),
        ];
        let names: Vec<String> = holders(&fs).iter().map(|f| qualified_name(f)).collect();
        assert_eq!(names, ["a/early", "a/h", "z/g"]);
    }

    #[test]
    fn filters_select_as_the_local_store_does() {
        let mut public = SkyFunctionSpec::new("bob", "p", "x");
        public.visibility = Visibility::Public;
        let private = SkyFunctionSpec::new("bob", "q", "x");
        let mine = SkyFunctionSpec::new("alice", "r", "x");
        let filter = |owner: Option<&str>, include_public| FunctionFilter {
            owner: owner.map(String::from),
            include_public,
        };
        let selected = |f: FunctionFilter| {
            [&public, &private, &mine]
                .into_iter()
                .filter(|s| selects(&f, s))
                .map(|s| s.endpoint.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(selected(filter(None, false)), ["p", "q", "r"]);
        assert_eq!(selected(filter(Some("alice"), false)), ["r"]);
        assert_eq!(selected(filter(None, true)), ["p"]);
        assert_eq!(selected(filter(Some("alice"), true)), ["p", "r"]);
    }

    #[test]
    fn names_are_owner_dot_endpoint() {
        assert_eq!(
            object_name(&SkyFunctionSpec::new("alice", "weather", "x")),
            "alice.weather"
        );
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_forbidden_write_is_unavailable_and_names_the_permission() {
        let e = kube_error(
            api_error(
                403,
                "skyfunctions.skython.io is forbidden: User \"x\" cannot create",
            ),
            "create",
            "fns",
        );
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "platform_unavailable")
        );
        assert!(
            e.message
                .contains("permission to create skyfunctions.skython.io in namespace fns"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("User \"x\" cannot create"),
            "{}",
            e.message
        );
    }

    #[test]
    fn api_server_answers_map_to_api_errors() {
        let code = |status| {
            let e = kube_error(api_error(status, "m"), "update", "fns");
            (e.status.as_u16(), e.code.as_str())
        };
        assert_eq!(code(409), (409, "conflict"));
        assert_eq!(code(422), (400, "invalid_spec"));
        assert_eq!(code(401), (503, "platform_unavailable"));
        assert_eq!(code(404), (503, "platform_unavailable"));
        assert_eq!(code(500), (503, "platform_unavailable"));
    }

    #[test]
    fn an_unreachable_api_server_is_unavailable() {
        let e = kube_error(
            kube::Error::LinesCodecMaxLineLengthExceeded,
            "delete",
            "fns",
        );
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "platform_unavailable")
        );
    }

    #[test]
    fn a_forbidden_watch_names_the_permission() {
        let e = watcher::Error::InitialListFailed(api_error(403, "cannot list"));
        let why = watch_failure(&e, "all namespaces");
        assert!(
            why.contains("permission to list and watch skyfunctions.skython.io in all namespaces"),
            "{why}"
        );
    }
}
