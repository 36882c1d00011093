//! The skybox, the community catalogue: search over public functions, a function's public page
//! data (statistics, origin), clones, and numbered versions with rollback.
//!
//! The catalogue lives in the store beside the functions ([`CatalogStore`]) on either platform:
//! every deploy through the API indexes the function and records its version; a deletion
//! forgets both. At start the gateway indexes what the platform holds, so functions deployed
//! before (or applied with kubectl) are found too.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use skython_crds::{Signature, SkyFunctionSpec, Visibility};
use skython_store::{CatalogEntry, FunctionFilter, FunctionRecord, FunctionVersion, SearchQuery};

use crate::AppState;
use crate::api::{FunctionPath, FunctionView, VersionPath, deploy, json_body, visible};
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// What the catalogue keeps of a function for search.
pub fn entry(r: &FunctionRecord) -> CatalogEntry {
    let signature = r.status.signature.as_ref();
    CatalogEntry {
        owner: r.spec.owner.clone(),
        endpoint: r.spec.endpoint.clone(),
        description: r.spec.description.clone(),
        tags: r.spec.tags.clone(),
        doc: signature.and_then(|s| s.doc.clone()).unwrap_or_default(),
        params: signature
            .map(|s| s.params.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default(),
        public: r.spec.visibility == Visibility::Public,
        updated_at: r.updated_at,
    }
}

/// Empties the spec's env values, keeping their names: what versions and clones keep.
fn without_env_values(mut spec: SkyFunctionSpec) -> SkyFunctionSpec {
    for e in &mut spec.env {
        e.value.clear();
    }
    spec
}

/// A deploy as a version: the spec without its env values (secrets are not kept in history).
fn version_of(r: &FunctionRecord, restored_from: Option<i64>) -> FunctionVersion {
    let spec = without_env_values(r.spec.clone());
    FunctionVersion {
        version: r.generation,
        spec,
        signature: r.status.signature.clone(),
        created_at: r.updated_at,
        restored_from,
    }
}

/// Indexes a function just deployed and records its version. The function is deployed
/// whatever happens here: a failure is logged, and the next start indexes it again.
pub async fn deployed(app: &AppState, r: &FunctionRecord, restored_from: Option<i64>) {
    let (owner, endpoint) = (&r.spec.owner, &r.spec.endpoint);
    if let Err(e) = app.store.index_function(&entry(r)).await {
        tracing::warn!(%owner, %endpoint, "could not index: {e}");
    }
    let version = version_of(r, restored_from);
    if let Err(e) = app.store.record_version(owner, endpoint, &version).await {
        tracing::warn!(%owner, %endpoint, "could not record the version: {e}");
    }
}

/// Indexes every function the platform holds, and records the current version of those that
/// have none yet (functions deployed before versions were kept, or applied with kubectl).
pub async fn reindex(app: &AppState) -> ApiResult<usize> {
    let all = app
        .platform
        .list_functions(&FunctionFilter::default())
        .await?;
    for r in &all {
        app.store.index_function(&entry(r)).await?;
        let (o, e) = (&r.spec.owner, &r.spec.endpoint);
        // A version already recorded is a conflict, and stays as it is.
        match app.store.record_version(o, e, &version_of(r, None)).await {
            Ok(()) | Err(skython_store::StoreError::Conflict(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(all.len())
}

/// `GET /api/v1/skybox`'s query.
#[derive(Debug, Default, PartialEq, JsonSchema)]
pub struct SearchParams {
    /// Words to find in names, descriptions, tags, docstrings and parameter names (a word also
    /// finds longer words it starts). Empty: every public function, most called first.
    #[schemars(default)]
    pub q: String,
    /// Only functions with this tag (repeat the parameter, or separate tags with commas: all
    /// must match).
    #[schemars(default)]
    pub tag: Vec<String>,
    /// Results per page (default 20, at most 100).
    pub limit: Option<usize>,
    /// Results to skip (for the next pages).
    #[schemars(default)]
    pub offset: usize,
}

impl SearchParams {
    /// Parses a query string; repeated `tag`s add up (serde's urlencoded form cannot).
    pub fn parse(query: &str) -> ApiResult<Self> {
        let mut p = SearchParams::default();
        let number = |k: &str, v: &str| {
            v.parse::<usize>().map_err(|_| {
                ApiError::new(
                    ErrorCode::BadQuery,
                    format!("{k} must be a whole number, got {v:?}"),
                )
            })
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "q" => p.q = v.into_owned(),
                "tag" => p.tag.extend(
                    v.split(',')
                        .map(|t| t.trim().to_lowercase())
                        .filter(|t| !t.is_empty()),
                ),
                "limit" => p.limit = Some(number("limit", &v)?),
                "offset" => p.offset = number("offset", &v)?,
                other => {
                    return Err(ApiError::new(
                        ErrorCode::BadQuery,
                        format!(
                            "unknown parameter {other:?}; the parameters are q, tag, limit and offset"
                        ),
                    ));
                }
            }
        }
        Ok(p)
    }
}

/// A search result.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    pub owner: String,
    pub endpoint: String,
    pub description: String,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    pub calls: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How well the words matched (higher is better).
    pub score: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchResults {
    pub items: Vec<Card>,
    /// Every match, not only this page's.
    pub total: u64,
    pub limit: usize,
    pub offset: usize,
}

/// `GET /api/v1/skybox`: anyone may search the public functions.
pub async fn search(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<SearchResults>> {
    let p = SearchParams::parse(query.as_deref().unwrap_or(""))?;
    let limit = match p.limit.unwrap_or(20) {
        0 => {
            return Err(ApiError::new(
                ErrorCode::BadQuery,
                "limit must be at least 1",
            ));
        }
        n => n.min(100),
    };
    if p.q.chars().count() > 500 {
        return Err(ApiError::new(
            ErrorCode::BadQuery,
            "q must be at most 500 characters",
        ));
    }
    if p.offset > 10_000 {
        return Err(ApiError::new(
            ErrorCode::BadQuery,
            "offset must be at most 10000",
        ));
    }
    let page = app
        .store
        .search_functions(&SearchQuery {
            text: p.q,
            tags: p.tag,
            limit,
            offset: p.offset,
        })
        .await?;
    let mut items = Vec::with_capacity(page.hits.len());
    for hit in page.hits {
        // The catalogue may lag a deletion made elsewhere: what the platform no longer holds,
        // or holds as private now, is left out.
        let Some(r) = app.platform.get_function(&hit.owner, &hit.endpoint).await? else {
            continue;
        };
        if r.spec.visibility != Visibility::Public {
            continue;
        }
        items.push(Card {
            url: r.status.url.clone(),
            signature: r.status.signature.clone(),
            owner: r.spec.owner,
            endpoint: r.spec.endpoint,
            description: r.spec.description,
            tags: r.spec.tags,
            calls: hit.calls,
            score: hit.score,
        });
    }
    Ok(Json(SearchResults {
        items,
        total: page.total,
        limit,
        offset: p.offset,
    }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloneRequest {
    /// The clone's endpoint name in the caller's account (default: the original's).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Default: private.
    #[serde(default)]
    pub visibility: Visibility,
}

/// `POST /api/v1/functions/{owner}/{endpoint}/clone`: copies a function the caller may see
/// (source, description, tags, settings) into the caller's account. Never its state, env
/// values or keys: env names are kept with empty values for the new owner to fill in.
pub async fn clone_function(
    State(app): State<AppState>,
    user: AuthUser,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body?;
    let req: CloneRequest = if body.trim_ascii().is_empty() {
        CloneRequest {
            endpoint: None,
            visibility: Visibility::Private,
        }
    } else {
        json_body(&body)?
    };
    let origin = visible(&app, Some(&user), &owner, &endpoint).await?;
    let mut spec = without_env_values(origin.spec);
    spec.owner = user.0.name.clone();
    spec.endpoint = req.endpoint.unwrap_or_else(|| endpoint.clone());
    spec.visibility = req.visibility;
    spec.replicas = None;
    crate::api::validate(&spec)?;
    if (spec.owner.as_str(), spec.endpoint.as_str()) == (owner.as_str(), endpoint.as_str()) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{owner}/{endpoint} is yours already; give the clone another endpoint name"),
        ));
    }
    let record = deploy(&app, spec, None, None).await?;
    app.store
        .record_clone(&record.spec.owner, &record.spec.endpoint, &owner, &endpoint)
        .await?;
    let view = FunctionView::with_stats(&app, record, Some(&user)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A version as listed.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub version: i64,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<i64>,
    /// Whether calls without a pinned version run this one.
    pub current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    /// The version's source (in a single version's answer only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VersionList {
    pub items: Vec<VersionView>,
}

/// The owner's (or the admin's) function: versions hold past sources, which may hold what the
/// owner has since removed, so only they see them.
async fn managed(
    app: &AppState,
    user: &AuthUser,
    owner: &str,
    endpoint: &str,
) -> ApiResult<FunctionRecord> {
    let r = visible(app, Some(user), owner, endpoint).await?;
    if !user.may_manage(owner) {
        return Err(ApiError::forbidden(format!(
            "only {owner} sees and rolls back the versions of {owner}/{endpoint}"
        )));
    }
    Ok(r)
}

fn version_view(v: FunctionVersion, current: i64, with_source: bool) -> VersionView {
    VersionView {
        version: v.version,
        created_at: v.created_at.to_string(),
        restored_from: v.restored_from,
        current: v.version == current,
        signature: v.signature,
        source: with_source.then_some(v.spec.source),
    }
}

pub async fn list_versions(
    State(app): State<AppState>,
    user: AuthUser,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
) -> ApiResult<Json<VersionList>> {
    let r = managed(&app, &user, &owner, &endpoint).await?;
    let items = app
        .store
        .list_versions(&owner, &endpoint)
        .await?
        .into_iter()
        .map(|v| version_view(v, r.generation, false))
        .collect();
    Ok(Json(VersionList { items }))
}

async fn stored_version(
    app: &AppState,
    owner: &str,
    endpoint: &str,
    version: i64,
) -> ApiResult<FunctionVersion> {
    app.store
        .get_version(owner, endpoint, version)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::VersionNotFound,
                format!("{owner}/{endpoint} has no version {version}; GET …/versions lists them"),
            )
        })
}

pub async fn get_version(
    State(app): State<AppState>,
    user: AuthUser,
    Path(VersionPath {
        owner,
        endpoint,
        version,
    }): Path<VersionPath>,
) -> ApiResult<Json<VersionView>> {
    let r = managed(&app, &user, &owner, &endpoint).await?;
    let v = stored_version(&app, &owner, &endpoint, version).await?;
    Ok(Json(version_view(v, r.generation, true)))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to make current again.
    pub version: i64,
}

/// `POST /api/v1/functions/{owner}/{endpoint}/rollback`: deploys an earlier version's spec
/// again (keeping the current env values), as a new version that says where it came from.
pub async fn rollback(
    State(app): State<AppState>,
    user: AuthUser,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<FunctionView>> {
    let req: RollbackRequest = json_body(&body?)?;
    let current = managed(&app, &user, &owner, &endpoint).await?;
    let old = stored_version(&app, &owner, &endpoint, req.version).await?;
    let mut spec = old.spec;
    spec.env = current.spec.env.clone();
    spec.replicas = current.spec.replicas;
    let record = deploy(&app, spec, Some(&current), Some(req.version)).await?;
    Ok(Json(
        FunctionView::with_stats(&app, record, Some(&user)).await?,
    ))
}

/// `endpoint@n` in a call's path: the endpoint and the pinned version (`n` ≥ 1, plain
/// digits); `None` when the segment is not of that form.
pub fn pinned(segment: &str) -> Option<(&str, Option<i64>)> {
    match segment.split_once('@') {
        None => Some((segment, None)),
        Some((e, n)) if !n.starts_with('0') && n.bytes().all(|c| c.is_ascii_digit()) => {
            n.parse().ok().map(|n| (e, Some(n)))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_parameters_take_repeated_and_comma_separated_tags() {
        let p = SearchParams::parse("q=celsius+to&tag=Units&tag=geo,temp&limit=5").unwrap();
        assert_eq!(p.q, "celsius to");
        assert_eq!(p.tag, ["units", "geo", "temp"]);
        assert_eq!((p.limit, p.offset), (Some(5), 0));
    }

    #[test]
    fn unknown_or_malformed_search_parameters_are_bad_queries() {
        for q in ["limit=x", "offset=-1", "page=2"] {
            assert_eq!(SearchParams::parse(q).unwrap_err().code, "bad_query", "{q}");
        }
    }

    #[test]
    fn a_call_path_may_pin_a_version() {
        assert_eq!(pinned("add"), Some(("add", None)));
        assert_eq!(pinned("add@3"), Some(("add", Some(3))));
        for bad in [
            "add@",
            "add@0",
            "add@03",
            "add@-1",
            "add@+1",
            "add@x",
            "add@99999999999999999999",
        ] {
            assert_eq!(pinned(bad), None, "{bad}");
        }
    }
}
