//! The skybox catalogue's conformance: search, statistics and versions, the same on every
//! backend. `catalog_suite!` (expanded by `conformance_suite!`) makes one test per behaviour in
//! a `skybox` module.

use std::sync::Arc;

use jiff::ToSpan;
use serde::Deserialize;
use skython_crds::{Param, Signature, SkyFunctionSpec};
use skython_store::{CatalogEntry, FunctionStats, FunctionVersion, SearchQuery, Store, StoreError};

use super::{invocation, now, record};

#[macro_export]
macro_rules! catalog_suite {
    ($new:expr) => {
        mod skybox {
            use super::*;
            $crate::catalog_suite!(@tests $new;
                search_finds_a_function_by_each_field,
                a_name_match_outranks_the_same_word_in_other_fields,
                a_word_finds_the_terms_it_starts,
                every_word_must_match,
                private_functions_are_never_found,
                the_tag_filter_needs_every_tag_exactly,
                pages_hold_their_share_and_total_counts_every_match,
                equal_matches_rank_by_calls,
                empty_text_lists_every_public_function_by_calls,
                hostile_query_text_is_only_words,
                reindexing_replaces_the_entry_and_keeps_its_counts,
                stats_count_recorded_invocations,
                a_failed_call_counts_as_a_call_and_an_error,
                a_successful_call_is_no_error,
                stats_of_several_functions_come_in_their_order,
                a_clone_records_its_origin_and_the_origin_counts_it,
                versions_are_kept_and_listed_newest_first,
                a_duplicate_version_is_a_conflict,
                deleting_a_function_forgets_its_catalogue_data,
                remove_from_catalog_forgets_entry_counts_and_versions,
                skybox_queries_find_their_expected_function_in_the_top_3,
            );
        }
    };
    (@tests $new:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: std::sync::Arc<dyn skython_store::Store> = $new.await;
                $crate::conformance::catalog::$name(store).await;
            }
        )*
    };
}

/// A public entry with nothing to search but its name.
fn entry(owner: &str, endpoint: &str) -> CatalogEntry {
    CatalogEntry {
        owner: owner.into(),
        endpoint: endpoint.into(),
        description: String::new(),
        tags: Vec::new(),
        doc: String::new(),
        params: Vec::new(),
        public: true,
        updated_at: now(),
    }
}

fn query(text: &str) -> SearchQuery {
    SearchQuery {
        text: text.into(),
        tags: Vec::new(),
        limit: 10,
        offset: 0,
    }
}

fn tagged(text: &str, tags: &[&str]) -> SearchQuery {
    SearchQuery {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..query(text)
    }
}

/// The hits of `q` as `owner/endpoint`, best first.
async fn found(s: &dyn Store, q: &SearchQuery) -> Vec<String> {
    s.search_functions(q)
        .await
        .unwrap()
        .hits
        .into_iter()
        .map(|h| format!("{}/{}", h.owner, h.endpoint))
        .collect()
}

async fn index(s: &dyn Store, entries: &[CatalogEntry]) {
    for e in entries {
        s.index_function(e).await.unwrap();
    }
}

/// `n` finished calls of owner/endpoint.
async fn call(s: &dyn Store, owner: &str, endpoint: &str, n: usize) {
    let batch: Vec<_> = (0..n).map(|i| invocation(owner, endpoint, i)).collect();
    s.record_invocations(&batch, 5).await.unwrap();
}

pub async fn search_finds_a_function_by_each_field(s: Arc<dyn Store>) {
    let e = CatalogEntry {
        description: "Convert a temperature".into(),
        tags: vec!["units".into()],
        doc: "Rounded to `digits` places.".into(),
        params: vec!["celsius_value".into()],
        ..entry("alice", "to-fahrenheit")
    };
    index(&*s, &[e, entry("bob", "other")]).await;
    for text in ["fahrenheit", "units", "temperature", "celsius", "rounded"] {
        assert_eq!(
            found(&*s, &query(text)).await,
            ["alice/to-fahrenheit"],
            "{text}"
        );
    }
}

pub async fn a_name_match_outranks_the_same_word_in_other_fields(s: Arc<dyn Store>) {
    let word = || "zebra".to_string();
    index(
        &*s,
        &[
            CatalogEntry {
                doc: word(),
                ..entry("a", "in-doc")
            },
            CatalogEntry {
                params: vec![word()],
                ..entry("a", "in-params")
            },
            CatalogEntry {
                description: word(),
                ..entry("a", "in-description")
            },
            CatalogEntry {
                tags: vec![word()],
                ..entry("a", "in-tags")
            },
            entry("a", "zebra"),
        ],
    )
    .await;
    // More calls must not lift a weaker field over a stronger one.
    call(&*s, "a", "in-doc", 5).await;
    assert_eq!(
        found(&*s, &query("zebra")).await,
        [
            "a/zebra",
            "a/in-tags",
            "a/in-description",
            "a/in-params",
            "a/in-doc"
        ]
    );
}

pub async fn a_word_finds_the_terms_it_starts(s: Arc<dyn Store>) {
    index(
        &*s,
        &[
            CatalogEntry {
                description: "temperature".into(),
                ..entry("a", "prefix")
            },
            CatalogEntry {
                description: "temp".into(),
                ..entry("a", "whole")
            },
            CatalogEntry {
                description: "attempt".into(),
                ..entry("a", "inside")
            },
        ],
    )
    .await;
    // A whole term counts more than a term it starts; a term it is inside does not match.
    assert_eq!(found(&*s, &query("temp")).await, ["a/whole", "a/prefix"]);
    assert_eq!(found(&*s, &query("tempera")).await, ["a/prefix"]);
    // A single letter matches only itself, not every term it starts.
    assert!(found(&*s, &query("t")).await.is_empty());
}

pub async fn every_word_must_match(s: Arc<dyn Store>) {
    index(
        &*s,
        &[
            CatalogEntry {
                description: "convert miles".into(),
                ..entry("a", "one")
            },
            CatalogEntry {
                description: "convert kilometres".into(),
                ..entry("a", "two")
            },
        ],
    )
    .await;
    assert_eq!(found(&*s, &query("convert miles")).await, ["a/one"]);
    assert!(found(&*s, &query("miles kilometres")).await.is_empty());
}

pub async fn private_functions_are_never_found(s: Arc<dyn Store>) {
    let hidden = CatalogEntry {
        public: false,
        tags: vec!["units".into()],
        ..entry("alice", "celsius")
    };
    index(&*s, &[hidden.clone(), entry("bob", "celsius-copy")]).await;
    call(&*s, "alice", "celsius", 9).await;
    assert_eq!(found(&*s, &query("celsius")).await, ["bob/celsius-copy"]);
    assert!(found(&*s, &tagged("", &["units"])).await.is_empty());
    assert_eq!(found(&*s, &query("")).await, ["bob/celsius-copy"]);
    // Made private after being public: gone from search at once.
    index(
        &*s,
        &[CatalogEntry {
            public: false,
            ..entry("bob", "celsius-copy")
        }],
    )
    .await;
    let page = s.search_functions(&query("celsius")).await.unwrap();
    assert!(page.hits.is_empty() && page.total == 0, "{page:?}");
}

pub async fn the_tag_filter_needs_every_tag_exactly(s: Arc<dyn Store>) {
    let with = |endpoint: &str, tags: &[&str]| CatalogEntry {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..entry("a", endpoint)
    };
    index(
        &*s,
        &[
            with("both", &["units", "temperature"]),
            with("one", &["units"]),
            with("longer", &["unitsx"]),
        ],
    )
    .await;
    assert_eq!(
        found(&*s, &tagged("", &["units"])).await,
        ["a/both", "a/one"]
    );
    assert_eq!(
        found(&*s, &tagged("", &["units", "temperature"])).await,
        ["a/both"]
    );
    assert_eq!(
        found(&*s, &tagged("", &["Units", "TEMPERATURE"])).await,
        ["a/both"]
    );
    assert!(found(&*s, &tagged("", &["unit"])).await.is_empty());
    assert!(found(&*s, &tagged("", &["units", "nope"])).await.is_empty());
    assert_eq!(found(&*s, &tagged("one", &["units"])).await, ["a/one"]);
}

pub async fn pages_hold_their_share_and_total_counts_every_match(s: Arc<dyn Store>) {
    let entries: Vec<_> = (0..7)
        .map(|i| CatalogEntry {
            description: "stats".into(),
            ..entry("a", &format!("f{i}"))
        })
        .collect();
    index(&*s, &entries).await;
    index(&*s, &[entry("a", "unrelated")]).await;
    let page = |limit, offset| SearchQuery {
        limit,
        offset,
        ..query("stats")
    };
    let mut seen = Vec::new();
    for offset in [0, 3, 6] {
        let p = s.search_functions(&page(3, offset)).await.unwrap();
        assert_eq!(p.total, 7);
        seen.extend(p.hits.into_iter().map(|h| h.endpoint));
    }
    assert_eq!(seen, ["f0", "f1", "f2", "f3", "f4", "f5", "f6"]);
    let past = s.search_functions(&page(3, 20)).await.unwrap();
    assert!(past.hits.is_empty());
    assert_eq!(past.total, 7);
    let none = s.search_functions(&page(0, 0)).await.unwrap();
    assert!(none.hits.is_empty());
    assert_eq!(none.total, 7);
}

pub async fn equal_matches_rank_by_calls(s: Arc<dyn Store>) {
    index(
        &*s,
        &[
            entry("a", "slugify"),
            entry("b", "slugify"),
            entry("c", "slugify"),
        ],
    )
    .await;
    call(&*s, "b", "slugify", 3).await;
    call(&*s, "c", "slugify", 1).await;
    let page = s.search_functions(&query("slugify")).await.unwrap();
    let ranked: Vec<_> = page
        .hits
        .iter()
        .map(|h| (h.owner.as_str(), h.calls))
        .collect();
    assert_eq!(ranked, [("b", 3), ("c", 1), ("a", 0)]);
    assert!(page.hits.iter().all(|h| h.score == page.hits[0].score));
    assert!(page.hits[0].score > 0.0);
}

pub async fn empty_text_lists_every_public_function_by_calls(s: Arc<dyn Store>) {
    index(&*s, &[entry("a", "x"), entry("a", "y"), entry("a", "z")]).await;
    call(&*s, "a", "z", 2).await;
    call(&*s, "a", "y", 1).await;
    let page = s.search_functions(&query("")).await.unwrap();
    assert_eq!(page.total, 3);
    let ranked: Vec<_> = page.hits.iter().map(|h| h.endpoint.as_str()).collect();
    assert_eq!(ranked, ["z", "y", "x"]);
    assert!(page.hits.iter().all(|h| h.score == 0.0));
}

pub async fn hostile_query_text_is_only_words(s: Arc<dyn Store>) {
    index(
        &*s,
        &[
            CatalogEntry {
                description: "near or and not".into(),
                ..entry("a", "celsius")
            },
            entry("a", "other"),
        ],
    )
    .await;
    for text in [
        "\"",
        "*",
        "a OR",
        "NEAR(",
        ")",
        "(",
        "-",
        "^",
        ":",
        "{name}:x",
        "\"\"*",
        "'",
        "\\",
        "%",
        "_",
        "$where",
        "{\"$gt\": \"\"}",
        "AND NOT OR",
        "celsius\"",
        "NEAR(celsius, 2)",
    ] {
        let r = s.search_functions(&query(text)).await;
        assert!(r.is_ok(), "{text:?}: {r:?}");
    }
    // Operators are words like any other; punctuation is nothing.
    assert_eq!(found(&*s, &query("\"celsius\"*")).await, ["a/celsius"]);
    assert_eq!(found(&*s, &query("celsius OR near")).await, ["a/celsius"]);
    assert!(found(&*s, &query("celsius OR other")).await.is_empty());
    assert_eq!(found(&*s, &query("NEAR(celsius")).await, ["a/celsius"]);
    assert_eq!(found(&*s, &query("\" * )")).await.len(), 2);
}

pub async fn reindexing_replaces_the_entry_and_keeps_its_counts(s: Arc<dyn Store>) {
    let first = CatalogEntry {
        description: "old words".into(),
        tags: vec!["before".into()],
        ..entry("a", "f")
    };
    index(&*s, &[first]).await;
    call(&*s, "a", "f", 2).await;
    let second = CatalogEntry {
        description: "new words".into(),
        tags: vec!["after".into()],
        ..entry("a", "f")
    };
    index(&*s, &[second]).await;
    assert!(found(&*s, &query("old")).await.is_empty());
    assert!(found(&*s, &tagged("", &["before"])).await.is_empty());
    assert_eq!(found(&*s, &query("new")).await, ["a/f"]);
    assert_eq!(found(&*s, &tagged("", &["after"])).await, ["a/f"]);
    assert_eq!(s.search_functions(&query("f")).await.unwrap().total, 1);
    assert_eq!(s.function_stats("a", "f").await.unwrap().calls, 2);
}

pub async fn stats_count_recorded_invocations(s: Arc<dyn Store>) {
    assert_eq!(
        s.function_stats("a", "f").await.unwrap(),
        FunctionStats::default()
    );
    let t0 = now();
    let at = |i: usize, minutes: i64| {
        let mut c = invocation("a", "f", i);
        c.started_at = t0 + minutes.minutes();
        c
    };
    // Out of order within a batch, and an older batch after a newer one.
    s.record_invocations(&[at(1, 5), at(2, 9), at(3, 1), invocation("a", "g", 4)], 2)
        .await
        .unwrap();
    s.record_invocations(&[at(5, 3)], 2).await.unwrap();
    let stats = s.function_stats("a", "f").await.unwrap();
    // Counted past what the invocation log keeps.
    assert_eq!(stats.calls, 4);
    assert_eq!(stats.last_called_at, Some(t0 + 9.minutes()));
    assert_eq!((stats.clones, stats.cloned_from), (0, None));
    assert_eq!(s.function_stats("a", "g").await.unwrap().calls, 1);
}

/// A call of `owner/endpoint` that failed with `outcome`.
fn failed(owner: &str, endpoint: &str, id: usize, outcome: &str) -> skython_store::Invocation {
    skython_store::Invocation {
        status: 500,
        outcome: outcome.into(),
        error: Some("it raised".into()),
        ..invocation(owner, endpoint, id)
    }
}

pub async fn a_failed_call_counts_as_a_call_and_an_error(s: Arc<dyn Store>) {
    s.record_invocations(&[failed("a", "f", 1, "function_error")], 5)
        .await
        .unwrap();
    let stats = s.function_stats("a", "f").await.unwrap();
    assert_eq!((stats.calls, stats.errors), (1, 1));
    assert!(stats.last_called_at.is_some());
    // Counted in the same write as the calls, batch after batch.
    s.record_invocations(
        &[failed("a", "f", 2, "timeout"), invocation("a", "f", 3)],
        5,
    )
    .await
    .unwrap();
    let stats = s.function_stats("a", "f").await.unwrap();
    assert_eq!((stats.calls, stats.errors), (3, 2));
}

pub async fn a_successful_call_is_no_error(s: Arc<dyn Store>) {
    call(&*s, "a", "f", 2).await;
    let stats = s.function_stats("a", "f").await.unwrap();
    assert_eq!((stats.calls, stats.errors), (2, 0));
}

pub async fn stats_of_several_functions_come_in_their_order(s: Arc<dyn Store>) {
    call(&*s, "a", "f", 2).await;
    s.record_invocations(&[failed("b", "g", 1, "timeout")], 5)
        .await
        .unwrap();
    s.record_clone("c", "h", "a", "f").await.unwrap();
    let keys: Vec<(String, String)> = [("b", "g"), ("nobody", "x"), ("a", "f"), ("c", "h")]
        .iter()
        .map(|(o, e)| (o.to_string(), e.to_string()))
        .collect();
    let mut each = Vec::new();
    for (o, e) in &keys {
        each.push(s.function_stats(o, e).await.unwrap());
    }
    let all = s.functions_stats(&keys).await.unwrap();
    assert_eq!(all, each);
    let calls: Vec<_> = all
        .iter()
        .map(|st| (st.calls, st.errors, st.clones))
        .collect();
    assert_eq!(calls, [(1, 1, 0), (0, 0, 0), (2, 0, 1), (0, 0, 0)]);
    assert_eq!(all[3].cloned_from.as_deref(), Some("a/f"));
    assert!(s.functions_stats(&[]).await.unwrap().is_empty());
}

pub async fn a_clone_records_its_origin_and_the_origin_counts_it(s: Arc<dyn Store>) {
    index(&*s, &[entry("alice", "slugify")]).await;
    s.record_clone("bob", "my-slugify", "alice", "slugify")
        .await
        .unwrap();
    index(&*s, &[entry("bob", "my-slugify")]).await;
    s.record_clone("carol", "slug", "alice", "slugify")
        .await
        .unwrap();
    let origin = s.function_stats("alice", "slugify").await.unwrap();
    assert_eq!((origin.clones, origin.cloned_from), (2, None));
    // Indexing the clone after recording it keeps the origin.
    let clone = s.function_stats("bob", "my-slugify").await.unwrap();
    assert_eq!(clone.cloned_from.as_deref(), Some("alice/slugify"));
    assert_eq!((clone.clones, clone.calls), (0, 0));
    assert_eq!(
        s.function_stats("carol", "slug")
            .await
            .unwrap()
            .cloned_from
            .as_deref(),
        Some("alice/slugify")
    );
}

pub fn version(n: i64, source: &str) -> FunctionVersion {
    let mut spec = SkyFunctionSpec::new("alice", "f", source);
    spec.description = format!("version {n}");
    FunctionVersion {
        version: n,
        spec,
        signature: Some(Signature {
            entrypoint: "main".into(),
            params: vec![Param {
                name: "x".into(),
                kind: "positional_or_keyword".into(),
                annotation: Some("float".into()),
                default: None,
            }],
            returns: Some("float".into()),
            doc: Some("Doubles x.".into()),
        }),
        created_at: now() + n.seconds(),
        restored_from: None,
    }
}

pub async fn versions_are_kept_and_listed_newest_first(s: Arc<dyn Store>) {
    let v1 = version(1, "def main(x): return x");
    let v2 = FunctionVersion {
        signature: None,
        ..version(2, "def main(x): return 2 * x")
    };
    let v3 = FunctionVersion {
        restored_from: Some(1),
        ..version(3, "def main(x): return x")
    };
    for v in [&v1, &v3, &v2] {
        s.record_version("alice", "f", v).await.unwrap();
    }
    s.record_version("bob", "f", &version(1, "other"))
        .await
        .unwrap();
    assert_eq!(
        s.list_versions("alice", "f").await.unwrap(),
        [v3.clone(), v2.clone(), v1.clone()]
    );
    assert_eq!(s.get_version("alice", "f", 2).await.unwrap(), Some(v2));
    assert_eq!(s.get_version("alice", "f", 3).await.unwrap(), Some(v3));
    assert_eq!(s.get_version("alice", "f", 4).await.unwrap(), None);
    assert!(s.list_versions("alice", "g").await.unwrap().is_empty());
}

pub async fn a_duplicate_version_is_a_conflict(s: Arc<dyn Store>) {
    let v = version(1, "def main(x): return x");
    s.record_version("alice", "f", &v).await.unwrap();
    let again = FunctionVersion {
        spec: SkyFunctionSpec::new("alice", "f", "changed"),
        ..v.clone()
    };
    let e = s.record_version("alice", "f", &again).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Conflict(m) if m == "version 1 of function alice/f already exists"),
        "{e}"
    );
    assert_eq!(s.get_version("alice", "f", 1).await.unwrap(), Some(v));
}

/// A function with an entry, calls, a clone and two versions.
async fn catalogued(s: &dyn Store, owner: &str, endpoint: &str) {
    s.create_function(&record(owner, endpoint)).await.unwrap();
    let e = CatalogEntry {
        description: "catalogued".into(),
        tags: vec!["kept".into()],
        ..entry(owner, endpoint)
    };
    index(s, &[e]).await;
    call(s, owner, endpoint, 2).await;
    s.record_clone(owner, endpoint, "origin", "f")
        .await
        .unwrap();
    for n in [1, 2] {
        s.record_version(owner, endpoint, &version(n, "def main(x): return x"))
            .await
            .unwrap();
    }
}

async fn assert_forgotten(s: &dyn Store, owner: &str, endpoint: &str) {
    let me = format!("{owner}/{endpoint}");
    assert!(!found(s, &query("catalogued")).await.contains(&me));
    assert!(!found(s, &tagged("", &["kept"])).await.contains(&me));
    assert_eq!(
        s.function_stats(owner, endpoint).await.unwrap(),
        FunctionStats::default()
    );
    assert!(s.list_versions(owner, endpoint).await.unwrap().is_empty());
}

pub async fn deleting_a_function_forgets_its_catalogue_data(s: Arc<dyn Store>) {
    catalogued(&*s, "alice", "f").await;
    catalogued(&*s, "alice", "g").await;
    assert!(s.delete_function("alice", "f").await.unwrap());
    assert_forgotten(&*s, "alice", "f").await;
    assert_eq!(found(&*s, &query("catalogued")).await, ["alice/g"]);
    assert_eq!(s.list_versions("alice", "g").await.unwrap().len(), 2);
    assert_eq!(s.function_stats("alice", "g").await.unwrap().calls, 2);
    // The origin's count of its clones stays: the clone existed.
    assert_eq!(s.function_stats("origin", "f").await.unwrap().clones, 2);
}

pub async fn remove_from_catalog_forgets_entry_counts_and_versions(s: Arc<dyn Store>) {
    catalogued(&*s, "alice", "f").await;
    catalogued(&*s, "alice", "g").await;
    s.remove_from_catalog("alice", "f").await.unwrap();
    assert_forgotten(&*s, "alice", "f").await;
    assert_eq!(found(&*s, &query("catalogued")).await, ["alice/g"]);
    // Removing what is not there is no error.
    s.remove_from_catalog("alice", "f").await.unwrap();
    s.remove_from_catalog("nobody", "x").await.unwrap();
}

#[derive(Deserialize)]
struct Fixture {
    functions: Vec<FixtureFunction>,
    queries: Vec<FixtureQuery>,
}

#[derive(Deserialize)]
struct FixtureFunction {
    owner: String,
    endpoint: String,
    description: String,
    tags: Vec<String>,
    doc: String,
    params: Vec<String>,
    public: bool,
    calls: usize,
}

#[derive(Deserialize)]
struct FixtureQuery {
    why: String,
    text: String,
    tags: Vec<String>,
    expect: String,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("../fixtures/skybox.json")).expect("skybox.json")
}

/// Indexes the fixture's functions and records their calls.
pub async fn load_skybox(s: &dyn Store) {
    let f = fixture();
    let mut calls = Vec::new();
    for f in f.functions {
        for i in 0..f.calls {
            calls.push(invocation(&f.owner, &f.endpoint, i));
        }
        let e = CatalogEntry {
            description: f.description,
            tags: f.tags,
            doc: f.doc,
            params: f.params,
            public: f.public,
            ..entry(&f.owner, &f.endpoint)
        };
        s.index_function(&e).await.unwrap();
    }
    s.record_invocations(&calls, 1).await.unwrap();
}

/// The fixture's queries, `limit` hits each.
pub fn skybox_queries(limit: usize) -> Vec<SearchQuery> {
    fixture()
        .queries
        .into_iter()
        .map(|q| SearchQuery {
            text: q.text,
            tags: q.tags,
            limit,
            offset: 0,
        })
        .collect()
}

pub async fn skybox_queries_find_their_expected_function_in_the_top_3(s: Arc<dyn Store>) {
    let f = fixture();
    assert!(f.functions.iter().filter(|f| f.public).count() >= 30);
    assert!(f.queries.len() >= 15);
    load_skybox(&*s).await;
    let mut failed = Vec::new();
    for q in &f.queries {
        let top = found(
            &*s,
            &tagged(
                &q.text,
                &q.tags.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
        )
        .await
        .into_iter()
        .take(3)
        .collect::<Vec<_>>();
        if !top.contains(&q.expect) {
            failed.push(format!(
                "{:?} (tags {:?}, {}): expected {}, top 3 {:?}",
                q.text, q.tags, q.why, q.expect, top
            ));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

/// Both backends give the same hits, scores and totals for every fixture query.
pub async fn backends_rank_the_skybox_alike(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    load_skybox(&*a).await;
    load_skybox(&*b).await;
    for q in skybox_queries(10) {
        let (pa, pb) = (
            a.search_functions(&q).await.unwrap(),
            b.search_functions(&q).await.unwrap(),
        );
        assert_eq!(pa, pb, "{q:?}");
    }
}
