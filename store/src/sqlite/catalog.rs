//! The skybox catalogue on SQLite.
//!
//! `catalog` holds one row per function that was indexed, called or cloned: whether it is
//! public, its call and clone counts and its origin. `catalog_text`, an FTS5 table with the
//! same rowid, holds each indexed entry's fields as the terms of the shared tokenizer
//! (`crate::catalog::terms`), space-separated and padded with a space at both ends; FTS5's
//! `unicode61` tokenizer (diacritics kept, as ours keeps them) finds them again as they are.
//! A search asks FTS5 for the rows that have every word (`"temp"*` matches the terms it
//! starts, through FTS5's prefix indexes), then scores only those rows by looking for
//! ` word ` (a whole term) and ` word` (a term's start) in each field's text. User text never
//! reaches FTS5's query syntax: each word is quoted, and words are letters and digits only.
//! `catalog_tags` holds the tags for exact filtering. Deleting a `catalog` row removes its
//! text and tags (a trigger), so a function is forgotten by one `DELETE`.
//! `function_versions` keeps each deploy's spec and signature as JSON text.

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use super::{SqliteStore, backend, count, from_micros, is_unique_violation, json_col, micros};
use crate::catalog::{Field, QueryWord, calls_per_function, entry_terms, normal_tag, query_words};
use crate::{
    CatalogEntry, CatalogStore, FunctionStats, FunctionVersion, Invocation, Result, SearchHit,
    SearchPage, SearchQuery, StoreError, label,
};

/// Created at every open (idempotent): a database from before the catalogue gains it.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS catalog (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    public INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER,
    calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    last_called_at INTEGER,
    clones INTEGER NOT NULL DEFAULT 0,
    cloned_from TEXT,
    UNIQUE (owner, endpoint)
);
CREATE INDEX IF NOT EXISTS catalog_by_calls ON catalog (public, calls DESC, endpoint, owner);
CREATE VIRTUAL TABLE IF NOT EXISTS catalog_text USING fts5 (
    name, tags, description, params, doc,
    tokenize = 'unicode61 remove_diacritics 0',
    prefix = '2 3'
);
CREATE TABLE IF NOT EXISTS catalog_tags (
    tag TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (tag, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS catalog_tags_by_id ON catalog_tags (id);
CREATE TRIGGER IF NOT EXISTS catalog_forget AFTER DELETE ON catalog BEGIN
    DELETE FROM catalog_text WHERE rowid = OLD.id;
    DELETE FROM catalog_tags WHERE id = OLD.id;
END;
CREATE TABLE IF NOT EXISTS function_versions (
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    signature TEXT,
    created_at INTEGER NOT NULL,
    restored_from INTEGER,
    PRIMARY KEY (owner, endpoint, version)
);
";

/// Version 3's `catalog` counted no errors: it gains the column, at 0 (the invocations kept are
/// too few to count the past ones). A file from before the catalogue has no `catalog` yet, and
/// gets it whole from [`SCHEMA`].
pub(super) fn migrate_3_to_4(c: &Connection) -> rusqlite::Result<()> {
    let columns: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('catalog')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !columns.is_empty() && !columns.iter().any(|c| c == "errors") {
        c.execute_batch("ALTER TABLE catalog ADD COLUMN errors INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Forgets a function's entry, statistics and versions (in the caller's transaction).
pub(super) fn forget(c: &Connection, owner: &str, endpoint: &str) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM catalog WHERE owner = ?1 AND endpoint = ?2")?
        .execute(params![owner, endpoint])?;
    c.prepare_cached("DELETE FROM function_versions WHERE owner = ?1 AND endpoint = ?2")?
        .execute(params![owner, endpoint])?;
    Ok(())
}

/// Adds a batch of finished calls to their functions' counts (in the batch's transaction):
/// one statement per function, not per call.
pub(super) fn count_calls(c: &Connection, batch: &[Invocation]) -> rusqlite::Result<()> {
    let mut add = c.prepare_cached(
        "INSERT INTO catalog (owner, endpoint, calls, errors, last_called_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (owner, endpoint) DO UPDATE SET calls = calls + excluded.calls,
         errors = errors + excluded.errors,
         last_called_at = max(coalesce(last_called_at, excluded.last_called_at),
                              excluded.last_called_at)",
    )?;
    for ((owner, endpoint), n) in calls_per_function(batch) {
        add.execute(params![owner, endpoint, n.calls, n.errors, micros(n.last)])?;
    }
    Ok(())
}

/// A field's terms as stored in `catalog_text`: ` a b c `, so that ` b ` finds a whole term
/// and ` b` the start of one.
fn padded(terms: &[String]) -> String {
    format!(" {} ", terms.join(" "))
}

/// A word as an FTS5 query term: quoted (so nothing in it is syntax), with `*` when it also
/// matches the terms it starts.
fn fts_word(w: &QueryWord) -> String {
    let quoted = format!("\"{}\"", w.text.replace('"', "\"\""));
    if w.prefix { quoted + "*" } else { quoted }
}

/// A search as SQL: the page (its last two parameters are the limit and offset) and the count
/// of every match (which takes the first `count_args` parameters).
struct SearchSql {
    page: String,
    count: String,
    args: Vec<Value>,
    count_args: usize,
}

fn search_sql(q: &SearchQuery) -> SearchSql {
    let words = query_words(&q.text);
    let mut args: Vec<Value> = Vec::new();
    let arg = |args: &mut Vec<Value>, v: String| {
        args.push(Value::Text(v));
        format!("?{}", args.len())
    };
    let required: Vec<String> = words.iter().filter(|w| w.required).map(fts_word).collect();
    // The filter's parameters come first, so that the count can take them alone.
    let (from, mut filter) = if required.is_empty() {
        ("catalog c", "c.public".to_string())
    } else {
        let m = arg(&mut args, required.join(" "));
        (
            "catalog_text f JOIN catalog c ON c.id = f.rowid",
            format!("catalog_text MATCH {m} AND c.public"),
        )
    };
    for tag in &q.tags {
        let t = arg(&mut args, normal_tag(tag));
        filter += &format!(" AND c.id IN (SELECT id FROM catalog_tags WHERE tag = {t})");
    }
    let count_args = args.len();
    let mut score = Vec::new();
    if !required.is_empty() {
        for w in &words {
            let whole = arg(&mut args, format!(" {} ", w.text));
            let start = arg(&mut args, format!(" {}", w.text));
            for f in Field::ALL {
                let (col, weight) = (f.name(), f.weight());
                let prefix = if w.prefix {
                    format!(
                        " WHEN instr(f.{col}, {start}) THEN {:.1}",
                        f.prefix_weight()
                    )
                } else {
                    String::new()
                };
                score.push(format!(
                    "CASE WHEN instr(f.{col}, {whole}) THEN {weight:.1}{prefix} ELSE 0.0 END"
                ));
            }
        }
    }
    let score = if score.is_empty() {
        "0.0".to_string()
    } else {
        score.join(" + ")
    };
    let limit = format!("?{}", args.len() + 1);
    let offset = format!("?{}", args.len() + 2);
    SearchSql {
        page: format!(
            "SELECT c.owner, c.endpoint, {score} AS score, c.calls FROM {from} WHERE {filter}
             ORDER BY score DESC, c.calls DESC, c.endpoint, c.owner LIMIT {limit} OFFSET {offset}"
        ),
        count: format!("SELECT count(*) FROM {from} WHERE {filter}"),
        args,
        count_args,
    }
}

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FunctionVersion> {
    let signature: Option<String> = r.get(2)?;
    Ok(FunctionVersion {
        version: r.get(0)?,
        spec: json_col(1, r.get(1)?)?,
        signature: signature.map(|s| json_col(2, s)).transpose()?,
        created_at: from_micros(r.get(3)?)?,
        restored_from: r.get(4)?,
    })
}

/// One function's statistics; zeros if it has no row.
fn stats_of(c: &Connection, owner: &str, endpoint: &str) -> rusqlite::Result<FunctionStats> {
    c.prepare_cached(
        "SELECT calls, errors, last_called_at, clones, cloned_from FROM catalog
         WHERE owner = ?1 AND endpoint = ?2",
    )?
    .query_row(params![owner, endpoint], |r| {
        let last: Option<i64> = r.get(2)?;
        Ok(FunctionStats {
            calls: count(r.get(0)?),
            errors: count(r.get(1)?),
            last_called_at: last.map(from_micros).transpose()?,
            clones: count(r.get(3)?),
            cloned_from: r.get(4)?,
        })
    })
    .optional()
    .map(Option::unwrap_or_default)
}

const VERSION_COLUMNS: &str = "version, spec, signature, created_at, restored_from";

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn index_function(&self, entry: &CatalogEntry) -> Result<()> {
        let e = entry.clone();
        let text = entry_terms(entry).map(|t| padded(&t));
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let id: i64 = tx
                .query_row(
                    "INSERT INTO catalog (owner, endpoint, public, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (owner, endpoint) DO UPDATE SET public = excluded.public,
                     updated_at = excluded.updated_at RETURNING id",
                    params![e.owner, e.endpoint, e.public, micros(e.updated_at)],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            let [name, tags, description, params, doc] = &text;
            tx.execute("DELETE FROM catalog_text WHERE rowid = ?1", [id])
                .and_then(|_| {
                    tx.execute(
                        "INSERT INTO catalog_text (rowid, name, tags, description, params, doc)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![id, name, tags, description, params, doc],
                    )
                })
                .and_then(|_| tx.execute("DELETE FROM catalog_tags WHERE id = ?1", [id]))
                .map_err(backend)?;
            for tag in &e.tags {
                tx.execute(
                    "INSERT OR IGNORE INTO catalog_tags (tag, id) VALUES (?1, ?2)",
                    params![normal_tag(tag), id],
                )
                .map_err(backend)?;
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn remove_from_catalog(&self, owner: &str, endpoint: &str) -> Result<()> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            forget(&tx, &o, &e).map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn search_functions(&self, query: &SearchQuery) -> Result<SearchPage> {
        let sql = search_sql(query);
        let (limit, offset) = (query.limit, query.offset);
        self.scan(move |c| {
            // One snapshot for the page and the count.
            let tx = c.transaction().map_err(backend)?;
            let total: i64 = tx
                .prepare(&sql.count)
                .and_then(|mut st| {
                    st.query_row(params_from_iter(&sql.args[..sql.count_args]), |r| r.get(0))
                })
                .map_err(backend)?;
            let mut args = sql.args;
            args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
            args.push(Value::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
            let mut st = tx.prepare(&sql.page).map_err(backend)?;
            let hits = st
                .query_map(params_from_iter(&args), |r| {
                    Ok(SearchHit {
                        owner: r.get(0)?,
                        endpoint: r.get(1)?,
                        score: r.get(2)?,
                        calls: count(r.get(3)?),
                    })
                })
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            Ok(SearchPage {
                hits,
                total: count(total),
            })
        })
        .await
    }

    async fn function_stats(&self, owner: &str, endpoint: &str) -> Result<FunctionStats> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        self.lookup(move |c| stats_of(c, &o, &e).map_err(backend))
            .await
    }

    async fn functions_stats(&self, functions: &[(String, String)]) -> Result<Vec<FunctionStats>> {
        let functions = functions.to_vec();
        self.scan(move |c| {
            // One snapshot for all of them.
            let tx = c.transaction().map_err(backend)?;
            functions
                .iter()
                .map(|(o, e)| stats_of(&tx, o, e))
                .collect::<rusqlite::Result<_>>()
                .map_err(backend)
        })
        .await
    }

    async fn record_clone(
        &self,
        owner: &str,
        endpoint: &str,
        origin_owner: &str,
        origin_endpoint: &str,
    ) -> Result<()> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        let (oo, oe) = (origin_owner.to_string(), origin_endpoint.to_string());
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute(
                "INSERT INTO catalog (owner, endpoint, cloned_from) VALUES (?1, ?2, ?3)
                 ON CONFLICT (owner, endpoint) DO UPDATE SET cloned_from = excluded.cloned_from",
                params![o, e, format!("{oo}/{oe}")],
            )
            .and_then(|_| {
                tx.execute(
                    "INSERT INTO catalog (owner, endpoint, clones) VALUES (?1, ?2, 1)
                     ON CONFLICT (owner, endpoint) DO UPDATE SET clones = clones + 1",
                    params![oo, oe],
                )
            })
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn record_version(
        &self,
        owner: &str,
        endpoint: &str,
        version: &FunctionVersion,
    ) -> Result<()> {
        let (o, e, v) = (owner.to_string(), endpoint.to_string(), version.clone());
        let spec = serde_json::to_string(&v.spec).map_err(backend)?;
        let signature = v
            .signature
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(backend)?;
        self.write(move |c| {
            let inserted = c.execute(
                "INSERT INTO function_versions
                 (owner, endpoint, version, spec, signature, created_at, restored_from)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    o,
                    e,
                    v.version,
                    spec,
                    signature,
                    micros(v.created_at),
                    v.restored_from
                ],
            );
            match inserted {
                Ok(_) => Ok(()),
                Err(err) if is_unique_violation(&err) => Err(StoreError::Conflict(format!(
                    "version {} of {} already exists",
                    v.version,
                    label(&o, &e)
                ))),
                Err(err) => Err(backend(err)),
            }
        })
        .await
    }

    async fn list_versions(&self, owner: &str, endpoint: &str) -> Result<Vec<FunctionVersion>> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        self.scan(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {VERSION_COLUMNS} FROM function_versions
                     WHERE owner = ?1 AND endpoint = ?2 ORDER BY version DESC"
                ))
                .map_err(backend)?;
            st.query_map(params![o, e], version_row)
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)
        })
        .await
    }

    async fn get_version(
        &self,
        owner: &str,
        endpoint: &str,
        version: i64,
    ) -> Result<Option<FunctionVersion>> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        self.lookup(move |c| {
            c.query_row(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM function_versions
                     WHERE owner = ?1 AND endpoint = ?2 AND version = ?3"
                ),
                params![o, e, version],
                version_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(endpoint: &str, description: &str) -> CatalogEntry {
        CatalogEntry {
            owner: "alice".into(),
            endpoint: endpoint.into(),
            description: description.into(),
            tags: vec!["units".into()],
            doc: String::new(),
            params: vec![],
            public: true,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    /// SQLite's plan of a search: each line of `EXPLAIN QUERY PLAN`.
    async fn plan(s: &SqliteStore, q: SearchQuery) -> Vec<String> {
        let sql = search_sql(&q);
        s.write(move |c| {
            let mut args = sql.args;
            args.extend([Value::Integer(10), Value::Integer(0)]);
            let mut st = c
                .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.page))
                .map_err(backend)?;
            st.query_map(params_from_iter(&args), |r| r.get::<_, String>(3))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_text_search_reads_the_fts_index_not_the_table() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.index_function(&entry("celsius", "temperature"))
            .await
            .unwrap();
        let q = SearchQuery {
            text: "temp celsius".into(),
            tags: vec!["units".into()],
            limit: 10,
            offset: 0,
        };
        let plan = plan(&s, q).await;
        assert!(
            plan.iter().any(|l| l.contains("VIRTUAL TABLE INDEX")),
            "{plan:?}"
        );
        // `catalog` is only looked up by rowid, never scanned.
        assert!(!plan.iter().any(|l| l.starts_with("SCAN c")), "{plan:?}");
    }

    #[test]
    fn words_reach_fts5_quoted() {
        let q = SearchQuery {
            text: r#"temp" OR x*"#.into(),
            ..SearchQuery::default()
        };
        let sql = search_sql(&q);
        assert_eq!(sql.args[0], Value::Text(r#""temp"* "or"* "x""#.into()));
    }
}
