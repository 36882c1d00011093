//! The skybox catalogue: what people search to find public functions, each function's call and
//! clone counts, and the numbered versions of its deploys.
//!
//! Search is one set of rules for both backends, decided here: text becomes terms by [`terms`]
//! (the one tokenizer), a query's words by [`query_words`], and a hit's score is the sum, over
//! the query's words and the entry's fields, of the field's [`Field::weight`] when the word is
//! one of the field's terms, half of it when the word only starts one. A function matches when
//! each of the query's words (compounds aside, see [`QueryWord::required`]) is or starts a term
//! of any field, and it has every tag asked for. Hits are ranked by score, then calls, then
//! endpoint and owner. SQLite finds the matches with an FTS5 index, MongoDB with a multikey
//! index of the terms and their prefixes; each computes the same score on the matches only.

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use skython_crds::{Signature, SkyFunctionSpec};

use crate::Result;

/// What the skybox searches, for one function (the gateway writes it at each deploy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    pub owner: String,
    pub endpoint: String,
    pub description: String,
    pub tags: Vec<String>,
    /// The entry function's docstring.
    pub doc: String,
    /// The entry function's parameter names.
    pub params: Vec<String>,
    pub public: bool,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchQuery {
    pub text: String,
    /// Every one must match (exactly, ignoring case).
    pub tags: Vec<String>,
    pub limit: usize,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchHit {
    pub owner: String,
    pub endpoint: String,
    /// How well the text matched (0 for a query without words).
    pub score: f64,
    pub calls: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// Every match, not only this page's.
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStats {
    pub calls: u64,
    /// Calls that did not succeed (counted in `calls` too).
    pub errors: u64,
    pub last_called_at: Option<Timestamp>,
    /// How many functions were cloned from this one.
    pub clones: u64,
    /// `owner/endpoint` of the function this one was cloned from.
    pub cloned_from: Option<String>,
}

/// One deploy of a function, kept so that it can be called pinned or rolled back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionVersion {
    pub version: i64,
    /// As deployed, with env values removed by the caller.
    pub spec: SkyFunctionSpec,
    pub signature: Option<Signature>,
    pub created_at: Timestamp,
    /// The version this one was rolled back to, if it was made by a rollback.
    pub restored_from: Option<i64>,
}

/// The skybox catalogue, its statistics and versions. The gateway keeps it beside the
/// functions (on Kubernetes a function itself lives in a `SkyFunction`).
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Adds or replaces the function's entry (private ones are kept, never returned by search).
    async fn index_function(&self, entry: &CatalogEntry) -> Result<()>;
    /// Forgets the entry, versions and statistics of a deleted function.
    async fn remove_from_catalog(&self, owner: &str, endpoint: &str) -> Result<()>;
    /// Public functions matching every word of `text` (empty text, or text without words: all,
    /// by calls) and every tag.
    async fn search_functions(&self, query: &SearchQuery) -> Result<SearchPage>;
    /// Zeros for a function never called nor cloned.
    async fn function_stats(&self, owner: &str, endpoint: &str) -> Result<FunctionStats>;
    /// [`function_stats`](Self::function_stats) of each `(owner, endpoint)`, in their order,
    /// in one read (a listing's).
    async fn functions_stats(&self, functions: &[(String, String)]) -> Result<Vec<FunctionStats>>;
    /// Records that owner/endpoint was cloned from origin: sets its `cloned_from`, adds one to
    /// the origin's clones.
    async fn record_clone(
        &self,
        owner: &str,
        endpoint: &str,
        origin_owner: &str,
        origin_endpoint: &str,
    ) -> Result<()>;
    /// `Conflict` if that version number exists.
    async fn record_version(
        &self,
        owner: &str,
        endpoint: &str,
        version: &FunctionVersion,
    ) -> Result<()>;
    /// Newest first.
    async fn list_versions(&self, owner: &str, endpoint: &str) -> Result<Vec<FunctionVersion>>;
    async fn get_version(
        &self,
        owner: &str,
        endpoint: &str,
        version: i64,
    ) -> Result<Option<FunctionVersion>>;
}

/// The searched fields of an entry, most telling first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Name,
    Tags,
    Description,
    Params,
    Doc,
}

impl Field {
    pub const ALL: [Field; 5] = [
        Field::Name,
        Field::Tags,
        Field::Description,
        Field::Params,
        Field::Doc,
    ];

    /// What a query word equal to one of the field's terms adds to the score.
    pub fn weight(self) -> f64 {
        match self {
            Field::Name => 8.0,
            Field::Tags => 5.0,
            Field::Description => 3.0,
            Field::Params => 2.0,
            Field::Doc => 1.0,
        }
    }

    /// What a query word that only starts one of the field's terms adds.
    pub fn prefix_weight(self) -> f64 {
        self.weight() / 2.0
    }

    /// Its name in both backends' storage.
    pub fn name(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Tags => "tags",
            Field::Description => "description",
            Field::Params => "params",
            Field::Doc => "doc",
        }
    }
}

/// Terms longer than this are dropped (encoded blobs in a docstring, not words anyone types).
const MAX_TERM_CHARS: usize = 64;

/// Distinct terms kept per field, so that a long docstring cannot grow an entry without bound.
const MAX_FIELD_TERMS: usize = 256;

/// Query words of at least this many characters also match as prefixes ("temp" finds
/// "temperature"); a shorter one ("a") must be a whole term, or it would match nearly all.
pub(crate) const MIN_PREFIX_CHARS: usize = 2;

/// Query words of at most this many characters match as prefixes; a longer one must be a whole
/// term (MongoDB indexes the prefixes of each term up to this length).
pub(crate) const MAX_PREFIX_CHARS: usize = 16;

/// Words of a query that count; the rest are ignored.
const MAX_QUERY_WORDS: usize = 12;

/// The terms of `text`, in order, repeats included: lowercase runs of letters and digits.
/// Identifiers are split at `_`, `-` and camelCase humps, and also kept whole, without their
/// separators (`toCelsius` and `to_celsius` give `to`, `celsius`, `tocelsius`), so that both a
/// word of a name and the name itself match.
pub(crate) fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let compounds = text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'));
    for compound in compounds {
        let parts: Vec<String> = compound
            .split(['_', '-'])
            .flat_map(humps)
            .map(str::to_lowercase)
            .collect();
        if parts.len() > 1 {
            out.extend(parts.iter().cloned());
            out.push(parts.concat());
        } else {
            out.extend(parts);
        }
    }
    out.retain(|t| t.chars().count() <= MAX_TERM_CHARS);
    out
}

/// `word` split before each capital that starts a hump: `toCelsius` → `to`, `Celsius`;
/// `HTMLParser` → `HTML`, `Parser`; `utf8Encode` → `utf8`, `Encode`.
fn humps(word: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..chars.len() {
        let (at, c) = chars[i];
        let prev = chars[i - 1].1;
        let next_lower = chars.get(i + 1).is_some_and(|&(_, n)| n.is_lowercase());
        let hump = c.is_uppercase()
            && (prev.is_lowercase() || prev.is_numeric() || (prev.is_uppercase() && next_lower));
        if hump {
            out.push(&word[start..at]);
            start = at;
        }
    }
    out.push(&word[start..]);
    out.retain(|p| !p.is_empty());
    out
}

/// The distinct terms of each field of `entry`, in [`Field::ALL`] order.
pub(crate) fn entry_terms(entry: &CatalogEntry) -> [Vec<String>; 5] {
    let join = |items: &[String]| items.join(" ");
    Field::ALL.map(|f| {
        let text = match f {
            Field::Name => entry.endpoint.clone(),
            Field::Tags => join(&entry.tags),
            Field::Description => entry.description.clone(),
            Field::Params => join(&entry.params),
            Field::Doc => entry.doc.clone(),
        };
        distinct(terms(&text), MAX_FIELD_TERMS)
    })
}

fn distinct(items: Vec<String>, at_most: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .take(at_most)
        .collect()
}

/// The proper prefixes of `term` that a query word may be, shortest first (what MongoDB
/// indexes beside the term itself).
pub(crate) fn prefixes(term: &str) -> impl Iterator<Item = &str> {
    let ends: Vec<usize> = term.char_indices().map(|(i, _)| i).skip(1).collect();
    ends.into_iter()
        .map(move |end| &term[..end])
        .filter(|p| (MIN_PREFIX_CHARS..=MAX_PREFIX_CHARS).contains(&p.chars().count()))
}

/// A tag as stored and as filtered on.
pub(crate) fn normal_tag(tag: &str) -> String {
    tag.trim().to_lowercase()
}

/// What a batch of finished calls adds to one function's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CallCounts {
    pub calls: i64,
    pub errors: i64,
    /// When the last one started.
    pub last: Timestamp,
}

/// A batch of finished calls per function.
pub(crate) fn calls_per_function(
    batch: &[crate::Invocation],
) -> std::collections::BTreeMap<(&str, &str), CallCounts> {
    let mut out = std::collections::BTreeMap::new();
    for i in batch {
        let c = out
            .entry((i.owner.as_str(), i.endpoint.as_str()))
            .or_insert(CallCounts {
                calls: 0,
                errors: 0,
                last: i.started_at,
            });
        c.calls += 1;
        c.errors += i64::from(!i.succeeded());
        c.last = c.last.max(i.started_at);
    }
    out
}

/// One word of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryWord {
    pub text: String,
    /// Whether it also matches the terms it starts.
    pub prefix: bool,
    /// Whether a match must have it. The whole of an identifier typed in a query
    /// (`tocelsius` of `to_celsius`) only adds to the score of the entries that have it, so
    /// that "to_celsius" still finds a `to-celsius-from-kelvin`.
    pub required: bool,
}

/// The words of a query's text: its terms, each once, at most [`MAX_QUERY_WORDS`].
pub(crate) fn query_words(text: &str) -> Vec<QueryWord> {
    let mut words: Vec<QueryWord> = Vec::new();
    for compound in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-')) {
        let found = terms(compound);
        let whole = (found.len() > 1).then(|| found.last().cloned()).flatten();
        for t in found {
            if words.iter().any(|w| w.text == t) {
                continue;
            }
            let n = t.chars().count();
            words.push(QueryWord {
                prefix: (MIN_PREFIX_CHARS..=MAX_PREFIX_CHARS).contains(&n),
                required: whole.as_ref() != Some(&t),
                text: t,
            });
        }
    }
    words.truncate(MAX_QUERY_WORDS);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_lowercased_and_split_on_anything_not_a_letter_or_digit() {
        assert_eq!(
            terms("Convert °C, to  Fahrenheit! (v2)"),
            ["convert", "c", "to", "fahrenheit", "v2"]
        );
        assert_eq!(terms("Größe ändern"), ["größe", "ändern"]);
        assert!(terms(r#"" * ) ( - _ :"#).is_empty());
        assert_eq!(terms("NEAR(a OR"), ["near", "a", "or"]);
    }

    #[test]
    fn identifiers_give_their_parts_and_their_whole() {
        let whole = ["to", "celsius", "tocelsius"];
        assert_eq!(terms("to_celsius"), whole);
        assert_eq!(terms("toCelsius"), whole);
        assert_eq!(terms("to-celsius"), whole);
        assert_eq!(terms("HTMLParser"), ["html", "parser", "htmlparser"]);
        assert_eq!(terms("utf8Encode"), ["utf8", "encode", "utf8encode"]);
        assert_eq!(terms("sha256"), ["sha256"]);
        assert_eq!(terms("_private"), ["private"]);
    }

    #[test]
    fn overlong_terms_are_dropped() {
        let blob = "a".repeat(MAX_TERM_CHARS + 1);
        assert_eq!(terms(&format!("key {blob}")), ["key"]);
    }

    #[test]
    fn prefixes_are_the_proper_ones_within_bounds() {
        assert_eq!(prefixes("temp").collect::<Vec<_>>(), ["te", "tem"]);
        assert_eq!(prefixes("ab").count(), 0);
        assert_eq!(prefixes("ärger").collect::<Vec<_>>(), ["är", "ärg", "ärge"]);
        let long = "x".repeat(30);
        assert_eq!(prefixes(&long).count(), MAX_PREFIX_CHARS - 1);
    }

    #[test]
    fn entry_terms_are_distinct_per_field() {
        let e = CatalogEntry {
            owner: "alice".into(),
            endpoint: "celsius-to-fahrenheit".into(),
            description: "Celsius to Fahrenheit, celsius again".into(),
            tags: vec!["unit-conversion".into()],
            doc: String::new(),
            params: vec!["celsius".into(), "roundTo".into()],
            public: true,
            updated_at: Timestamp::UNIX_EPOCH,
        };
        let [name, tags, description, params, doc] = entry_terms(&e);
        assert_eq!(name, ["celsius", "to", "fahrenheit", "celsiustofahrenheit"]);
        assert_eq!(tags, ["unit", "conversion", "unitconversion"]);
        assert_eq!(description, ["celsius", "to", "fahrenheit", "again"]);
        assert_eq!(params, ["celsius", "round", "to", "roundto"]);
        assert!(doc.is_empty());
    }

    #[test]
    fn query_words_require_the_parts_and_score_the_whole() {
        let w = query_words("a to_Celsius to");
        let got: Vec<_> = w
            .iter()
            .map(|w| (w.text.as_str(), w.prefix, w.required))
            .collect();
        assert_eq!(
            got,
            [
                ("a", false, true),
                ("to", true, true),
                ("celsius", true, true),
                ("tocelsius", true, false)
            ]
        );
        let long = "y".repeat(MAX_PREFIX_CHARS + 1);
        assert!(!query_words(&long)[0].prefix);
        assert_eq!(query_words(&"w ".repeat(40)).len(), 1);
        let many: String = (0..40).map(|i| format!("w{i} ")).collect();
        assert_eq!(query_words(&many).len(), MAX_QUERY_WORDS);
    }
}
