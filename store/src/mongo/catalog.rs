//! The skybox catalogue on MongoDB.
//!
//! `catalog` holds one document per function that was indexed, called or cloned:
//! `{owner, endpoint, public, tags, updated_at, calls, errors, last_called_at, clones,
//! cloned_from}` (`errors` missing in documents from before it: 0),
//! and for an indexed one the terms of the shared tokenizer (`crate::catalog::terms`): per
//! field, `<field>_terms` and `<field>_prefixes` (the prefixes a query word may be, see
//! `crate::catalog::prefixes`), and `terms`, all of them together, under a multikey index. A
//! search matches `terms` with `$all` of its words (an index lookup for prefixes too, as they
//! are stored), then scores the matches in an aggregation (`$in` of each word in each field's
//! terms and prefixes), sorts, skips and limits; a count with the same filter gives the total.
//!
//! MongoDB's `$text` indexes would rank by their own rules (stemming, no prefixes), so both
//! backends would no longer agree, and SecantusDB has none: this one way is used everywhere.
//! SecantusDB's planner takes an index only for a single condition, so searches name theirs
//! (`hint`), which MongoDB honours as well.
//!
//! `function_versions`: `{owner, endpoint, version, spec, signature, created_at,
//! restored_from}`, unique on (owner, endpoint, version); spec and signature are JSON text.

use async_trait::async_trait;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::Hint;
use mongodb::{ClientSession, Collection, Database};
use serde::{Deserialize, Serialize};

use super::{Failure, MongoStore, backend, collect, from_micros, index, integer, is_duplicate_key};
use super::{count, limit_of, micros, store_error};
use crate::catalog::{Field, calls_per_function, entry_terms, normal_tag, prefixes, query_words};
use crate::{
    CatalogEntry, CatalogStore, FunctionStats, FunctionVersion, Invocation, Result, SearchHit,
    SearchPage, SearchQuery, StoreError, label,
};

/// The catalogue's collections.
#[derive(Clone)]
pub(super) struct Catalog {
    db: Database,
    entries: Collection<Document>,
    versions: Collection<VersionDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VersionDoc {
    owner: String,
    endpoint: String,
    version: i64,
    spec: String,
    signature: Option<String>,
    created_at: i64,
    restored_from: Option<i64>,
}

impl VersionDoc {
    fn into_version(self) -> Result<FunctionVersion> {
        Ok(FunctionVersion {
            version: self.version,
            spec: serde_json::from_str(&self.spec).map_err(backend)?,
            signature: self
                .signature
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(backend)?,
            created_at: from_micros(self.created_at)?,
            restored_from: self.restored_from,
        })
    }
}

/// The index each kind of search reads.
const BY_TERMS: &str = "terms";
const BY_TAGS: &str = "tags";
const BY_CALLS: &str = "public_calls";

fn function(owner: &str, endpoint: &str) -> Document {
    doc! { "owner": owner, "endpoint": endpoint }
}

/// A search as MongoDB runs it: the filter of every match, the index it reads, and the
/// score of a match.
struct Search {
    filter: Document,
    hint: &'static str,
    score: Bson,
}

fn search(q: &SearchQuery) -> Search {
    let words = query_words(&q.text);
    let required: Vec<&str> = words
        .iter()
        .filter(|w| w.required)
        .map(|w| w.text.as_str())
        .collect();
    let tags: Vec<String> = q.tags.iter().map(|t| normal_tag(t)).collect();
    let mut filter = doc! { "public": true };
    // `$all` of nothing matches nothing: only present when there is something to match.
    if !required.is_empty() {
        filter.insert("terms", doc! { "$all": &required });
    }
    if !tags.is_empty() {
        filter.insert("tags", doc! { "$all": &tags });
    }
    let hint = match (required.is_empty(), tags.is_empty()) {
        (false, _) => BY_TERMS,
        (true, false) => BY_TAGS,
        (true, true) => BY_CALLS,
    };
    let mut score = Vec::new();
    if !required.is_empty() {
        for w in &words {
            for f in Field::ALL {
                let has = |kind: &str| doc! { "$in": [&w.text, format!("${}_{kind}", f.name())] };
                let otherwise = if w.prefix {
                    Bson::from(doc! { "$cond": [has("prefixes"), f.prefix_weight(), 0.0] })
                } else {
                    Bson::Double(0.0)
                };
                score.push(Bson::from(
                    doc! { "$cond": [has("terms"), f.weight(), otherwise] },
                ));
            }
        }
    }
    let score = if score.is_empty() {
        Bson::Double(0.0)
    } else {
        Bson::from(doc! { "$add": score })
    };
    Search {
        filter,
        hint,
        score,
    }
}

/// A number the aggregation computed, whichever type the server gave it.
fn number(d: &Document, field: &str) -> Result<f64> {
    match d.get(field) {
        Some(Bson::Double(x)) => Ok(*x),
        Some(Bson::Int32(n)) => Ok(f64::from(*n)),
        // Scores are small sums of small weights: exact in an f64.
        Some(Bson::Int64(n)) => Ok(*n as f64),
        other => Err(StoreError::Backend(
            format!("expected a number in {field:?}, MongoDB gave {other:?}").into(),
        )),
    }
}

impl Catalog {
    pub(super) fn new(db: &Database) -> Catalog {
        Catalog {
            db: db.clone(),
            entries: db.collection("catalog"),
            versions: db.collection("function_versions"),
        }
    }

    pub(super) async fn create_indexes(&self) -> Result<()> {
        self.entries
            .create_indexes([
                index(doc! { "owner": 1, "endpoint": 1 }, "owner_endpoint", true),
                index(doc! { "terms": 1 }, BY_TERMS, false),
                index(doc! { "tags": 1 }, BY_TAGS, false),
                index(
                    doc! { "public": 1, "calls": -1, "endpoint": 1, "owner": 1 },
                    BY_CALLS,
                    false,
                ),
            ])
            .await
            .map_err(store_error)?;
        self.versions
            .create_index(index(
                doc! { "owner": 1, "endpoint": 1, "version": -1 },
                "owner_endpoint_version",
                true,
            ))
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Adds a batch of finished calls to their functions' counts: one update per function.
    pub(super) async fn count_calls(&self, batch: &[Invocation]) -> Result<()> {
        for ((owner, endpoint), n) in calls_per_function(batch) {
            self.entries
                .update_one(
                    function(owner, endpoint),
                    doc! {
                        "$inc": { "calls": n.calls, "errors": n.errors },
                        "$max": { "last_called_at": micros(n.last) },
                        "$setOnInsert": { "clones": 0_i64 },
                    },
                )
                .upsert(true)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// Forgets a function's entry, statistics and versions, in the caller's transaction.
    pub(super) async fn forget_in(
        &self,
        s: &mut ClientSession,
        owner: &str,
        endpoint: &str,
    ) -> Result<(), Failure> {
        self.entries
            .delete_one(function(owner, endpoint))
            .session(&mut *s)
            .await?;
        self.versions
            .delete_many(function(owner, endpoint))
            .session(&mut *s)
            .await?;
        Ok(())
    }

    async fn record_clone_in(
        &self,
        s: &mut ClientSession,
        (owner, endpoint): (&str, &str),
        (origin_owner, origin_endpoint): (&str, &str),
    ) -> Result<(), Failure> {
        self.entries
            .update_one(
                function(owner, endpoint),
                doc! {
                    "$set": { "cloned_from": format!("{origin_owner}/{origin_endpoint}") },
                    "$setOnInsert": { "calls": 0_i64, "clones": 0_i64 },
                },
            )
            .upsert(true)
            .session(&mut *s)
            .await?;
        self.entries
            .update_one(
                function(origin_owner, origin_endpoint),
                doc! { "$inc": { "clones": 1_i64 }, "$setOnInsert": { "calls": 0_i64 } },
            )
            .upsert(true)
            .session(&mut *s)
            .await?;
        Ok(())
    }
}

impl MongoStore {
    /// The server's plan for finding a search's matches (`explain` of its count), to check
    /// that searches read an index rather than every entry.
    pub async fn explain_search(&self, query: &SearchQuery) -> Result<Document> {
        let s = search(query);
        self.catalog
            .db
            .run_command(doc! {
                "explain": {
                    "count": self.catalog.entries.name(),
                    "query": s.filter,
                    "hint": s.hint,
                },
                "verbosity": "queryPlanner",
            })
            .await
            .map_err(store_error)
    }
}

/// An entry's statistics, from a document with the fields of [`STATS`]; a count missing from
/// an older document is 0.
fn stats_of(d: &Document) -> Result<FunctionStats> {
    let present = |field: &str| !matches!(d.get(field), None | Some(Bson::Null));
    let number = |field: &str| -> Result<u64> {
        Ok(if present(field) {
            count(integer(d, field)?)
        } else {
            0
        })
    };
    Ok(FunctionStats {
        calls: number("calls")?,
        errors: number("errors")?,
        last_called_at: if present("last_called_at") {
            Some(from_micros(integer(d, "last_called_at")?)?)
        } else {
            None
        },
        clones: number("clones")?,
        cloned_from: d.get_str("cloned_from").ok().map(str::to_string),
    })
}

/// The fields of an entry's statistics (a projection).
const STATS: [&str; 5] = ["calls", "errors", "last_called_at", "clones", "cloned_from"];

/// A projection of `fields`.
fn only(fields: &[&str]) -> Document {
    fields
        .iter()
        .map(|f| (f.to_string(), Bson::Int32(1)))
        .collect()
}

#[async_trait]
impl CatalogStore for MongoStore {
    async fn index_function(&self, entry: &CatalogEntry) -> Result<()> {
        let mut set = doc! {
            "public": entry.public,
            "tags": entry.tags.iter().map(|t| normal_tag(t)).collect::<Vec<_>>(),
            "updated_at": micros(entry.updated_at),
        };
        let mut all = std::collections::BTreeSet::new();
        for (f, terms) in Field::ALL.iter().zip(entry_terms(entry)) {
            let starts: std::collections::BTreeSet<&str> =
                terms.iter().flat_map(|t| prefixes(t)).collect();
            all.extend(starts.iter().map(|p| p.to_string()));
            set.insert(
                format!("{}_prefixes", f.name()),
                starts.into_iter().collect::<Vec<_>>(),
            );
            all.extend(terms.iter().cloned());
            set.insert(format!("{}_terms", f.name()), terms);
        }
        set.insert("terms", all.into_iter().collect::<Vec<_>>());
        self.catalog
            .entries
            .update_one(
                function(&entry.owner, &entry.endpoint),
                doc! { "$set": set, "$setOnInsert": { "calls": 0_i64, "clones": 0_i64 } },
            )
            .upsert(true)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn remove_from_catalog(&self, owner: &str, endpoint: &str) -> Result<()> {
        self.transaction(&(self, owner, endpoint), |s, &(store, owner, endpoint)| {
            Box::pin(store.catalog.forget_in(s, owner, endpoint))
        })
        .await
    }

    async fn search_functions(&self, query: &SearchQuery) -> Result<SearchPage> {
        let Search {
            filter,
            hint,
            score,
        } = search(query);
        let total = self
            .catalog
            .entries
            .count_documents(filter.clone())
            .hint(Hint::Name(hint.into()))
            .await
            .map_err(store_error)?;
        if query.limit == 0 || query.offset as u64 >= total {
            return Ok(SearchPage {
                hits: Vec::new(),
                total,
            });
        }
        let mut pipeline = vec![
            doc! { "$match": filter },
            doc! { "$addFields": { "score": score } },
            doc! { "$sort": { "score": -1, "calls": -1, "endpoint": 1, "owner": 1 } },
        ];
        if query.offset > 0 {
            pipeline.push(doc! { "$skip": limit_of(query.offset) });
        }
        pipeline.push(doc! { "$limit": limit_of(query.limit) });
        pipeline.push(doc! { "$project": {
            "_id": 0, "owner": 1, "endpoint": 1, "score": 1, "calls": 1,
        } });
        let cursor = self
            .catalog
            .entries
            .aggregate(pipeline)
            .hint(Hint::Name(hint.into()))
            .await
            .map_err(store_error)?;
        let hits = collect(cursor)
            .await?
            .into_iter()
            .map(|d| {
                Ok(SearchHit {
                    owner: d.get_str("owner").map_err(backend)?.to_string(),
                    endpoint: d.get_str("endpoint").map_err(backend)?.to_string(),
                    score: number(&d, "score")?,
                    calls: count(integer(&d, "calls")?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(SearchPage { hits, total })
    }

    async fn function_stats(&self, owner: &str, endpoint: &str) -> Result<FunctionStats> {
        let found = self
            .catalog
            .entries
            .find_one(function(owner, endpoint))
            .projection(only(&STATS))
            .await
            .map_err(store_error)?;
        found.map_or(Ok(FunctionStats::default()), |d| stats_of(&d))
    }

    async fn functions_stats(&self, functions: &[(String, String)]) -> Result<Vec<FunctionStats>> {
        if functions.is_empty() {
            return Ok(Vec::new());
        }
        let any: Vec<Document> = functions.iter().map(|(o, e)| function(o, e)).collect();
        let cursor = self
            .catalog
            .entries
            .find(doc! { "$or": any })
            .projection(only(&[&STATS[..], &["owner", "endpoint"]].concat()))
            .await
            .map_err(store_error)?;
        let mut found = std::collections::HashMap::new();
        for d in collect(cursor).await? {
            let key = (
                d.get_str("owner").map_err(backend)?.to_string(),
                d.get_str("endpoint").map_err(backend)?.to_string(),
            );
            found.insert(key, stats_of(&d)?);
        }
        Ok(functions
            .iter()
            .map(|f| found.get(f).cloned().unwrap_or_default())
            .collect())
    }

    async fn record_clone(
        &self,
        owner: &str,
        endpoint: &str,
        origin_owner: &str,
        origin_endpoint: &str,
    ) -> Result<()> {
        let args = (self, (owner, endpoint), (origin_owner, origin_endpoint));
        self.transaction(&args, |s, &(store, clone, origin)| {
            Box::pin(store.catalog.record_clone_in(s, clone, origin))
        })
        .await
    }

    async fn record_version(
        &self,
        owner: &str,
        endpoint: &str,
        version: &FunctionVersion,
    ) -> Result<()> {
        let d = VersionDoc {
            owner: owner.to_string(),
            endpoint: endpoint.to_string(),
            version: version.version,
            spec: serde_json::to_string(&version.spec).map_err(backend)?,
            signature: version
                .signature
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(backend)?,
            created_at: micros(version.created_at),
            restored_from: version.restored_from,
        };
        match self.catalog.versions.insert_one(&d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::Conflict(format!(
                "version {} of {} already exists",
                d.version,
                label(owner, endpoint)
            ))),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn list_versions(&self, owner: &str, endpoint: &str) -> Result<Vec<FunctionVersion>> {
        let cursor = self
            .catalog
            .versions
            .find(function(owner, endpoint))
            .sort(doc! { "version": -1 })
            .await
            .map_err(store_error)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(VersionDoc::into_version)
            .collect()
    }

    async fn get_version(
        &self,
        owner: &str,
        endpoint: &str,
        version: i64,
    ) -> Result<Option<FunctionVersion>> {
        let mut filter = function(owner, endpoint);
        filter.insert("version", version);
        let found = self
            .catalog
            .versions
            .find_one(filter)
            .await
            .map_err(store_error)?;
        found.map(VersionDoc::into_version).transpose()
    }
}
