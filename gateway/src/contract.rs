//! A function's contract from its type hints: the arguments a call may carry ([`ArgSchema`],
//! checked before any worker sees them), an OpenAPI document of its endpoint
//! ([`function_openapi`]) and client code that calls it ([`snippets`]).
//!
//! The hints are the Python source text of the entry function's annotations (`ast.unparse`,
//! in the function's [`Signature`]). They are read leniently, as a Python user expects: an int
//! where a float is hinted is fine, and whatever is not understood (`np.ndarray`, a class of the
//! source, a string annotation, a hint that does not parse) constrains nothing. Only JSON's own
//! kinds are checked: what a call body can carry.

use std::fmt::Write as _;

use axum::Json;
use axum::extract::{Path, State};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value, json};
use skython_crds::{Signature, SkyFunctionSpec};
use skython_store::FunctionRecord;

use crate::AppState;
use crate::api::FunctionPath;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Longest annotation read; a longer one constrains nothing (annotations are user text).
const MAX_ANNOTATION_CHARS: usize = 1000;
/// Deepest nesting of an annotation's brackets read; a deeper one constrains nothing.
const MAX_ANNOTATION_DEPTH: usize = 16;

// ---------------------------------------------------------------------------------------------
// Types read from annotations

/// What a hint says a JSON value must be.
#[derive(Debug, Clone, PartialEq, Default)]
enum Ty {
    /// No constraint.
    #[default]
    Any,
    Null,
    Bool,
    Int,
    /// Any number: an int passes where a float is hinted.
    Float,
    Str,
    /// An array whose items are all of the type (`list[T]`, `Sequence[T]`, `set[T]`, ...).
    List(Box<Ty>),
    /// An array of exactly these items (`tuple[A, B]`).
    Tuple(Vec<Ty>),
    /// An object whose values are all of the type (`dict[str, T]`).
    Dict(Box<Ty>),
    /// Any of these (`Optional[T]`, `Union[A, B]`, `A | B`).
    Union(Vec<Ty>),
    /// One of these values (`Literal[...]`).
    Literal(Vec<Value>),
}

impl Ty {
    /// The type of an annotation's source text; `Any` for what is not understood.
    fn parse(annotation: &str) -> Ty {
        if annotation.len() > MAX_ANNOTATION_CHARS {
            return Ty::Any;
        }
        let Some(tokens) = lex(annotation) else {
            return Ty::Any;
        };
        let mut p = Parser { tokens, at: 0 };
        match p.union(0) {
            Some(ty) if p.at == p.tokens.len() => ty,
            _ => Ty::Any,
        }
    }

    fn union(members: Vec<Ty>) -> Ty {
        let mut flat = Vec::new();
        for m in members {
            match m {
                Ty::Any => return Ty::Any,
                Ty::Union(inner) => flat.extend(inner),
                other if !flat.contains(&other) => flat.push(other),
                _ => {}
            }
        }
        if flat.len() == 1 {
            flat.pop().unwrap_or_default()
        } else {
            Ty::Union(flat)
        }
    }

    /// The JSON Schema (2020-12) of the type.
    fn schema(&self) -> Value {
        match self {
            Ty::Any => json!({}),
            Ty::Null => json!({"type": "null"}),
            Ty::Bool => json!({"type": "boolean"}),
            Ty::Int => json!({"type": "integer"}),
            Ty::Float => json!({"type": "number"}),
            Ty::Str => json!({"type": "string"}),
            Ty::List(item) => match **item {
                Ty::Any => json!({"type": "array"}),
                ref t => json!({"type": "array", "items": t.schema()}),
            },
            Ty::Tuple(items) => json!({
                "type": "array",
                "prefixItems": items.iter().map(Ty::schema).collect::<Vec<_>>(),
                "items": false,
                "minItems": items.len(),
                "maxItems": items.len(),
            }),
            Ty::Dict(value) => match **value {
                Ty::Any => json!({"type": "object"}),
                ref t => json!({"type": "object", "additionalProperties": t.schema()}),
            },
            Ty::Union(members) => {
                json!({"anyOf": members.iter().map(Ty::schema).collect::<Vec<_>>()})
            }
            Ty::Literal(values) => json!({"enum": values}),
        }
    }

    /// The type in words, with an article: "a list of numbers".
    fn words(&self) -> String {
        match self {
            Ty::Any => "any value".into(),
            Ty::Null => "null".into(),
            Ty::Bool => "a boolean (true or false)".into(),
            Ty::Int => "an integer".into(),
            Ty::Float => "a number".into(),
            Ty::Str => "a string".into(),
            Ty::List(item) if **item == Ty::Any => "a list".into(),
            Ty::List(item) => format!("a list of {}", item.plural()),
            Ty::Tuple(items) if items.is_empty() => "an empty list".into(),
            Ty::Tuple(items) => format!(
                "a list of {} item{} ({})",
                items.len(),
                if items.len() == 1 { "" } else { "s" },
                items.iter().map(Ty::words).collect::<Vec<_>>().join(", ")
            ),
            Ty::Dict(value) if **value == Ty::Any => "an object".into(),
            Ty::Dict(value) => format!("an object whose values are {}", value.plural()),
            Ty::Union(members) => or_list(members.iter().map(Ty::words).collect()),
            Ty::Literal(values) => match values.as_slice() {
                [one] => one.to_string(),
                _ => format!(
                    "one of {}",
                    values
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    }

    /// The type in words, in the plural: "numbers".
    fn plural(&self) -> String {
        match self {
            Ty::Any => "any values".into(),
            Ty::Null => "nulls".into(),
            Ty::Bool => "booleans".into(),
            Ty::Int => "integers".into(),
            Ty::Float => "numbers".into(),
            Ty::Str => "strings".into(),
            Ty::List(item) if **item == Ty::Any => "lists".into(),
            Ty::List(item) => format!("lists of {}", item.plural()),
            Ty::Dict(value) if **value == Ty::Any => "objects".into(),
            Ty::Dict(value) => format!("objects whose values are {}", value.plural()),
            Ty::Union(members) => or_list(members.iter().map(Ty::plural).collect()),
            Ty::Tuple(_) | Ty::Literal(_) => format!("values each {}", self.words()),
        }
    }

    /// Whether `v` fits; else where it does not (a path below `v`) and what is there.
    fn check(&self, v: &Value) -> Result<(), Mismatch> {
        // A JSON boolean is no number here, though Python's bool is an int: JSON tells them
        // apart, and `true` for a count or a weight is almost always the client's mistake.
        let fits = match (self, v) {
            (Ty::Any, _)
            | (Ty::Null, Value::Null)
            | (Ty::Bool, Value::Bool(_))
            | (Ty::Float, Value::Number(_))
            | (Ty::Str, Value::String(_)) => true,
            (Ty::Int, Value::Number(n)) => is_integer(n),
            (Ty::List(item), Value::Array(items)) => {
                for (i, x) in items.iter().enumerate() {
                    item.check(x).map_err(|m| m.under(format!("[{i}]")))?;
                }
                true
            }
            (Ty::Tuple(types), Value::Array(items)) if types.len() == items.len() => {
                for (i, (t, x)) in types.iter().zip(items).enumerate() {
                    t.check(x).map_err(|m| m.under(format!("[{i}]")))?;
                }
                true
            }
            (Ty::Dict(value), Value::Object(entries)) => {
                for (k, x) in entries {
                    value
                        .check(x)
                        .map_err(|m| m.under(format!("[{}]", Value::from(k.as_str()))))?;
                }
                true
            }
            (Ty::Union(members), v) => members.iter().any(|m| m.check(v).is_ok()),
            (Ty::Literal(values), v) => values.iter().any(|x| same_value(x, v)),
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(Mismatch {
                path: String::new(),
                got: kind_of(v),
            })
        }
    }

    /// A value that fits, for examples.
    fn example(&self) -> Value {
        match self {
            // Nothing is known: a number is as likely to work as anything (`add(a, b)`).
            Ty::Any => json!(1),
            Ty::Null => Value::Null,
            Ty::Bool => json!(true),
            Ty::Int => json!(1),
            Ty::Float => json!(1.5),
            Ty::Str => json!("text"),
            Ty::List(item) => json!([item.example()]),
            Ty::Tuple(items) => Value::Array(items.iter().map(Ty::example).collect()),
            Ty::Dict(value) => json!({"key": value.example()}),
            Ty::Union(members) => members
                .iter()
                .find(|m| **m != Ty::Null)
                .map_or(Value::Null, Ty::example),
            Ty::Literal(values) => values.first().cloned().unwrap_or(Value::Null),
        }
    }
}

/// JSON numbers that Python reads as an int. Integers beyond 64 bits arrive as floats here and
/// cannot be told from `1e20`: those pass, rather than refuse an int Python would take.
fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.abs() >= 9.2e18)
}

/// Literal values compare as Python does for numbers (`1 == 1.0`), and exactly otherwise.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn or_list(mut words: Vec<String>) -> String {
    match words.len() {
        0 => String::new(),
        1 => words.pop().unwrap_or_default(),
        _ => {
            let last = words.pop().unwrap_or_default();
            format!("{} or {last}", words.join(", "))
        }
    }
}

/// What a JSON value is, in words.
fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) if is_integer(n) => "an integer".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Where a value does not fit its type: the path below the argument and what is there.
#[derive(Debug)]
struct Mismatch {
    path: String,
    got: String,
}

impl Mismatch {
    fn under(mut self, step: String) -> Self {
        self.path.insert_str(0, &step);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Reading annotations and default values (a small subset of Python expressions)

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Num(serde_json::Number),
    Ellipsis,
    Punct(char),
}

/// The tokens of a Python expression, or None for what this reader does not understand.
fn lex(src: &str) -> Option<Vec<Tok>> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if i < chars.len() && (chars[i] == '\'' || chars[i] == '"') {
                // A string prefix: bytes and f-strings are no JSON values.
                let raw = match word.to_ascii_lowercase().as_str() {
                    "r" => true,
                    "u" => false,
                    _ => return None,
                };
                let (s, next) = string_literal(&chars, i, raw)?;
                tokens.push(Tok::Str(s));
                i = next;
            } else {
                tokens.push(Tok::Name(word));
            }
        } else if c == '\'' || c == '"' {
            let (s, next) = string_literal(&chars, i, false)?;
            tokens.push(Tok::Str(s));
            i = next;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() {
                let d = chars[i];
                let sign_of_exponent =
                    (d == '+' || d == '-') && i > start && matches!(chars[i - 1], 'e' | 'E');
                if d.is_ascii_alphanumeric() || d == '.' || d == '_' || sign_of_exponent {
                    i += 1;
                } else {
                    break;
                }
            }
            let text: String = chars[start..i].iter().filter(|&&d| d != '_').collect();
            tokens.push(Tok::Num(number(&text)?));
        } else if chars[i..].starts_with(&['.', '.', '.']) {
            tokens.push(Tok::Ellipsis);
            i += 3;
        } else {
            tokens.push(Tok::Punct(c));
            i += 1;
        }
    }
    Some(tokens)
}

/// A decimal int or float literal (`repr` writes no other kind for JSON-able numbers).
fn number(text: &str) -> Option<serde_json::Number> {
    if text.contains(['.', 'e', 'E']) {
        let f: f64 = text.parse().ok()?;
        serde_json::Number::from_f64(f)
    } else if let Ok(n) = text.parse::<i64>() {
        Some(n.into())
    } else {
        Some(text.parse::<u64>().ok()?.into())
    }
}

/// The string literal opening at `chars[at]` (a quote) and the index after it.
fn string_literal(chars: &[char], at: usize, raw: bool) -> Option<(String, usize)> {
    let quote = chars[at];
    let triple = chars.get(at + 1) == Some(&quote) && chars.get(at + 2) == Some(&quote);
    let mut i = at + if triple { 3 } else { 1 };
    let mut out = String::new();
    loop {
        let c = *chars.get(i)?;
        if c == quote
            && (!triple || (chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote)))
        {
            return Some((out, i + if triple { 3 } else { 1 }));
        }
        if c != '\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *chars.get(i + 1)?;
        i += 2;
        if raw {
            out.push('\\');
            out.push(e);
            continue;
        }
        let hex = |n: usize, i: &mut usize| -> Option<char> {
            let digits: String = chars.get(*i..*i + n)?.iter().collect();
            *i += n;
            char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
        };
        match e {
            '\\' | '\'' | '"' => out.push(e),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'v' => out.push('\x0b'),
            '0' => out.push('\0'),
            '\n' => {}
            'x' => out.push(hex(2, &mut i)?),
            'u' => out.push(hex(4, &mut i)?),
            'U' => out.push(hex(8, &mut i)?),
            // Python keeps the backslash of an unknown escape.
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// `A | B | ...`
    fn union(&mut self, depth: usize) -> Option<Ty> {
        let mut members = vec![self.primary(depth)?];
        while self.eat('|') {
            members.push(self.primary(depth)?);
        }
        Some(Ty::union(members))
    }

    /// A name, maybe subscripted, or a string (a forward reference: unknown).
    fn primary(&mut self, depth: usize) -> Option<Ty> {
        if depth > MAX_ANNOTATION_DEPTH {
            return None;
        }
        let mut name = match self.next()? {
            Tok::Name(n) => n,
            Tok::Str(_) => return Some(Ty::Any),
            _ => return None,
        };
        while self.eat('.') {
            let Tok::Name(part) = self.next()? else {
                return None;
            };
            name.push('.');
            name.push_str(&part);
        }
        let name = without_module(&name);
        if !self.eat('[') {
            return Some(bare(name));
        }
        let ty = match name {
            "Literal" => match self.items(depth, |p, d| p.literal(d))? {
                values if values.is_empty() => Ty::Any,
                values => Ty::Literal(values),
            },
            "Annotated" => {
                let ty = self.union(depth + 1)?;
                self.skip_to_close(depth)?;
                return Some(ty);
            }
            _ => match generic(name) {
                Some(make) => make(self.items(depth, |p, d| p.arg(d))?)?,
                None => {
                    // Unknown generics (`Callable[[int], str]`, `np.ndarray[...]`): no constraint.
                    self.skip_to_close(depth)?;
                    return Some(Ty::Any);
                }
            },
        };
        Some(ty)
    }

    /// A subscript's items up to the closing `]`.
    fn items<T>(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::new();
        loop {
            if self.eat(']') {
                return Some(out);
            }
            out.push(item(self, depth + 1)?);
            if !self.eat(',') {
                return self.eat(']').then_some(out);
            }
        }
    }

    /// One argument of a generic: a type, `...`, or `()` (as in `tuple[()]`).
    fn arg(&mut self, depth: usize) -> Option<Arg> {
        match self.peek()? {
            Tok::Ellipsis => {
                self.at += 1;
                Some(Arg::Ellipsis)
            }
            Tok::Punct('(') => {
                self.at += 1;
                self.eat(')').then_some(Arg::EmptyTuple)
            }
            _ => Some(Arg::Ty(self.union(depth)?)),
        }
    }

    /// Skips to the `]` that closes the subscript being read.
    fn skip_to_close(&mut self, depth: usize) -> Option<()> {
        let mut open = 1usize;
        while open > 0 {
            match self.next()? {
                Tok::Punct('[' | '(' | '{') => open += 1,
                Tok::Punct(']' | ')' | '}') => open -= 1,
                _ => {}
            }
            if depth + open > MAX_ANNOTATION_DEPTH + 1 {
                return None;
            }
        }
        Some(())
    }

    /// A literal value as JSON: None, True, False, numbers, strings, and lists, tuples and
    /// dicts (with string keys) of them.
    fn literal(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_ANNOTATION_DEPTH {
            return None;
        }
        match self.next()? {
            Tok::Name(n) => match n.as_str() {
                "None" => Some(Value::Null),
                "True" => Some(Value::Bool(true)),
                "False" => Some(Value::Bool(false)),
                _ => None,
            },
            Tok::Str(mut s) => {
                // Adjacent literals concatenate.
                while let Some(Tok::Str(more)) = self.peek() {
                    s.push_str(more);
                    self.at += 1;
                }
                Some(Value::String(s))
            }
            Tok::Num(n) => Some(Value::Number(n)),
            Tok::Punct('-') => match self.next()? {
                Tok::Num(n) => negate(&n).map(Value::Number),
                _ => None,
            },
            Tok::Punct(open @ ('[' | '(')) => {
                let close = if open == '[' { ']' } else { ')' };
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Some(Value::Array(items));
                    }
                    items.push(self.literal(depth + 1)?);
                    if !self.eat(',') {
                        return self.eat(close).then_some(Value::Array(items));
                    }
                }
            }
            Tok::Punct('{') => {
                let mut map = Map::new();
                loop {
                    if self.eat('}') {
                        return Some(Value::Object(map));
                    }
                    let Value::String(k) = self.literal(depth + 1)? else {
                        return None;
                    };
                    if !self.eat(':') {
                        return None;
                    }
                    map.insert(k, self.literal(depth + 1)?);
                    if !self.eat(',') {
                        return self.eat('}').then_some(Value::Object(map));
                    }
                }
            }
            _ => None,
        }
    }
}

fn negate(n: &serde_json::Number) -> Option<serde_json::Number> {
    if let Some(i) = n.as_i64() {
        return Some(i.checked_neg()?.into());
    }
    serde_json::Number::from_f64(-n.as_f64()?)
}

/// The JSON value of a default's source text, when it is a literal JSON can carry.
fn literal_value(src: &str) -> Option<Value> {
    if src.len() > MAX_ANNOTATION_CHARS {
        return None;
    }
    let mut p = Parser {
        tokens: lex(src)?,
        at: 0,
    };
    let v = p.literal(0)?;
    (p.at == p.tokens.len()).then_some(v)
}

enum Arg {
    Ty(Ty),
    Ellipsis,
    EmptyTuple,
}

/// `typing.List` and `t.List` are `List`; `collections.abc.Sequence` is `Sequence`.
fn without_module(name: &str) -> &str {
    for prefix in [
        "typing.",
        "t.",
        "typing_extensions.",
        "collections.abc.",
        "abc.",
        "builtins.",
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest;
        }
    }
    name
}

/// A name without a subscript.
fn bare(name: &str) -> Ty {
    match name {
        "int" => Ty::Int,
        "float" => Ty::Float,
        "bool" => Ty::Bool,
        "str" => Ty::Str,
        "None" | "NoneType" => Ty::Null,
        "dict" | "Dict" | "Mapping" | "MutableMapping" => Ty::Dict(Box::new(Ty::Any)),
        n if generic(n).is_some() && !matches!(n, "Optional" | "Union") => {
            // `list`, `tuple`, `Sequence`, ... without items: an array of anything.
            Ty::List(Box::new(Ty::Any))
        }
        // `Any`, `object`, and every name this reader does not know.
        _ => Ty::Any,
    }
}

type Generic = fn(Vec<Arg>) -> Option<Ty>;

/// How a subscripted name reads its arguments.
fn generic(name: &str) -> Option<Generic> {
    let make: Generic = match name {
        "list" | "List" | "Sequence" | "MutableSequence" | "Iterable" | "Collection" | "set"
        | "Set" | "MutableSet" | "AbstractSet" | "frozenset" | "FrozenSet" => {
            |args| match args.as_slice() {
                [Arg::Ty(t)] => Some(Ty::List(Box::new(t.clone()))),
                _ => None,
            }
        }
        "tuple" | "Tuple" => |args| match args.as_slice() {
            [Arg::EmptyTuple] => Some(Ty::Tuple(Vec::new())),
            [Arg::Ty(t), Arg::Ellipsis] => Some(Ty::List(Box::new(t.clone()))),
            items => items
                .iter()
                .map(|a| match a {
                    Arg::Ty(t) => Some(t.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(Ty::Tuple),
        },
        // JSON keys are strings whatever the key type says: only the values are checked.
        "dict" | "Dict" | "Mapping" | "MutableMapping" => |args| match args.as_slice() {
            [Arg::Ty(_), Arg::Ty(v)] => Some(Ty::Dict(Box::new(v.clone()))),
            _ => None,
        },
        "Optional" => |args| match args.as_slice() {
            [Arg::Ty(t)] => Some(Ty::union(vec![t.clone(), Ty::Null])),
            _ => None,
        },
        "Union" => |args| {
            args.into_iter()
                .map(|a| match a {
                    Arg::Ty(t) => Some(t),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .filter(|m| !m.is_empty())
                .map(Ty::union)
        },
        _ => return None,
    };
    Some(make)
}

// ---------------------------------------------------------------------------------------------
// The arguments of a function

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    PositionalOnly,
    PositionalOrKeyword,
    VarPositional,
    KeywordOnly,
    VarKeyword,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "positional_only" => Kind::PositionalOnly,
            "positional_or_keyword" => Kind::PositionalOrKeyword,
            "var_positional" => Kind::VarPositional,
            "keyword_only" => Kind::KeywordOnly,
            "var_keyword" => Kind::VarKeyword,
            _ => return None,
        })
    }

    fn positional(self) -> bool {
        matches!(self, Kind::PositionalOnly | Kind::PositionalOrKeyword)
    }

    fn keyword(self) -> bool {
        matches!(self, Kind::PositionalOrKeyword | Kind::KeywordOnly)
    }
}

#[derive(Debug, Clone)]
struct ParamSchema {
    name: String,
    kind: Kind,
    annotation: Option<String>,
    ty: Ty,
    /// The default's source text.
    default: Option<String>,
}

impl ParamSchema {
    fn required(&self) -> bool {
        self.default.is_none() && !matches!(self.kind, Kind::VarPositional | Kind::VarKeyword)
    }

    /// The parameter's schema, with its default where JSON can carry it.
    fn schema(&self) -> Value {
        let mut s = self.ty.schema();
        if let Some(d) = self.default.as_deref().and_then(literal_value) {
            s["default"] = d;
        }
        s
    }

    fn example(&self) -> Value {
        self.default
            .as_deref()
            .and_then(literal_value)
            .unwrap_or_else(|| self.ty.example())
    }
}

/// What a function's calls may carry, from its signature: computed once per deployed version,
/// checked on every call.
#[derive(Debug, Clone, Default)]
pub struct ArgSchema {
    params: Vec<ParamSchema>,
    returns: Ty,
    /// Some parameter's hint constrains its values; else `check` has nothing to do (the worker
    /// still refuses missing and unknown arguments, as it always did).
    constrained: bool,
    /// The signature as Python prints it, for messages: `add(a: int, b: int) -> int`.
    described: String,
    /// The parameters as the runner's `bad_arguments` errors list them (`expected`).
    expected: Value,
}

impl ArgSchema {
    pub fn from_signature(sig: &Signature) -> ArgSchema {
        let mut params = Vec::with_capacity(sig.params.len());
        for p in &sig.params {
            let Some(kind) = Kind::parse(&p.kind) else {
                // A signature this gateway cannot read: leave the checking to the worker.
                return ArgSchema::default();
            };
            let mut ty = p.annotation.as_deref().map_or(Ty::Any, Ty::parse);
            // `x: int = None` is common: the default passes whatever the hint says.
            if p.default.as_deref() == Some("None") {
                ty = Ty::union(vec![ty, Ty::Null]);
            }
            params.push(ParamSchema {
                name: p.name.clone(),
                kind,
                annotation: p.annotation.clone(),
                ty,
                default: p.default.clone(),
            });
        }
        let expected = sig
            .params
            .iter()
            .map(|p| {
                let mut item = json!({"name": p.name, "kind": p.kind});
                if let Some(a) = &p.annotation {
                    item["annotation"] = a.as_str().into();
                }
                if let Some(d) = &p.default {
                    item["default"] = d.as_str().into();
                }
                item
            })
            .collect();
        ArgSchema {
            constrained: params.iter().any(|p| p.ty != Ty::Any),
            described: describe(sig),
            returns: sig.returns.as_deref().map_or(Ty::Any, Ty::parse),
            params,
            expected,
        }
    }

    /// Whether any argument is checked: false for a function without hints.
    pub fn is_constrained(&self) -> bool {
        self.constrained
    }

    /// Checks a call's body (a JSON object of keywords or an array of positional arguments,
    /// already checked by `invoke::check_args`) against the signature: 400 `bad_arguments`
    /// naming the parameter otherwise. Free for a function without hints.
    pub fn check(&self, args: &[u8]) -> Result<(), ApiError> {
        if !self.constrained {
            return Ok(());
        }
        let args: Value = serde_json::from_slice(args).map_err(|e| {
            ApiError::new(
                ErrorCode::BadJson,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        match &args {
            Value::Object(kw) => self.check_keywords(kw),
            Value::Array(pos) => self.check_positional(pos),
            _ => Ok(()), // `check_args` refuses these
        }
    }

    fn check_keywords(&self, kw: &Map<String, Value>) -> Result<(), ApiError> {
        let var_keyword = self.params.iter().find(|p| p.kind == Kind::VarKeyword);
        for p in &self.params {
            let given = kw.get(&p.name);
            match (p.kind, given) {
                (k, Some(v)) if k.keyword() => self.check_value(&p.name, &p.name, p, v)?,
                (Kind::PositionalOnly, Some(_)) if var_keyword.is_none() => {
                    return Err(self.misfit(
                        &p.name,
                        format!(
                            "'{}' parameter is positional only, but was passed as a keyword; \
                             send the arguments as a JSON array",
                            p.name
                        ),
                    ));
                }
                (_, None) | (Kind::PositionalOnly, Some(_)) if p.required() => {
                    return Err(self.missing(p));
                }
                _ => {}
            }
        }
        for (name, v) in kw {
            let named = self
                .params
                .iter()
                .any(|p| p.kind.keyword() && p.name == *name);
            if named {
                continue;
            }
            match var_keyword {
                Some(p) => self.check_value(name, name, p, v)?,
                None => {
                    return Err(
                        self.misfit(name, format!("got an unexpected keyword argument '{name}'"))
                    );
                }
            }
        }
        Ok(())
    }

    fn check_positional(&self, pos: &[Value]) -> Result<(), ApiError> {
        let positional: Vec<&ParamSchema> =
            self.params.iter().filter(|p| p.kind.positional()).collect();
        let var_positional = self.params.iter().find(|p| p.kind == Kind::VarPositional);
        if pos.len() > positional.len() && var_positional.is_none() {
            return Err(ApiError::new(
                ErrorCode::BadArguments,
                format!("too many positional arguments; expected {}", self.described),
            )
            .with("expected", self.expected.clone()));
        }
        let missing = positional
            .iter()
            .skip(pos.len())
            .copied()
            .chain(self.params.iter().filter(|p| p.kind == Kind::KeywordOnly))
            .find(|p| p.required());
        if let Some(p) = missing {
            return Err(self.missing(p));
        }
        for (i, v) in pos.iter().enumerate() {
            match positional.get(i) {
                Some(p) => self.check_value(&p.name, &p.name, p, v)?,
                None => {
                    if let Some(p) = var_positional {
                        let label = format!("{}[{}]", p.name, i - positional.len());
                        self.check_value(&label, &p.name, p, v)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks one argument of `p`: `label` names it in the message (`xs`, `args[0]`, a
    /// `**kwargs` key) and `param` in the error's `param` (`xs`, `args`, the key).
    fn check_value(
        &self,
        label: &str,
        param: &str,
        p: &ParamSchema,
        v: &Value,
    ) -> Result<(), ApiError> {
        let Err(m) = p.ty.check(v) else {
            return Ok(());
        };
        let mut hint = p.annotation.clone().unwrap_or_default();
        if p.default.as_deref() == Some("None") && p.ty != Ty::Any {
            hint.push_str(" = None");
        }
        let mut message = format!("{label}: expected {} ({hint}), ", p.ty.words());
        if m.path.is_empty() {
            let _ = write!(message, "got {}", m.got);
        } else {
            let _ = write!(message, "but {label}{} is {}", m.path, m.got);
        }
        Err(self.misfit(param, message))
    }

    fn missing(&self, p: &ParamSchema) -> ApiError {
        self.misfit(
            &p.name,
            format!("missing a required argument: '{}'", p.name),
        )
    }

    /// 400 `bad_arguments` about `param`, with the parameters the function takes.
    fn misfit(&self, param: &str, message: String) -> ApiError {
        ApiError::new(
            ErrorCode::BadArguments,
            format!("{message}; expected {}", self.described),
        )
        .with("param", param)
        .with("expected", self.expected.clone())
    }

    /// The request body's schema: keyword arguments as an object; where the function has
    /// positional-only parameters or `*args`, positional arguments as an array too.
    fn body_schema(&self) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for p in self.params.iter().filter(|p| p.kind.keyword()) {
            properties.insert(p.name.clone(), p.schema());
            if p.required() {
                required.push(Value::from(p.name.as_str()));
            }
        }
        let additional = match self.params.iter().find(|p| p.kind == Kind::VarKeyword) {
            Some(p) => p.ty.schema(),
            None => Value::Bool(false),
        };
        let object = json!({
            "type": "object",
            "description": "Keyword arguments.",
            "properties": properties,
            "required": required,
            "additionalProperties": additional,
        });
        if !self
            .params
            .iter()
            .any(|p| matches!(p.kind, Kind::PositionalOnly | Kind::VarPositional))
        {
            return object;
        }
        let positional: Vec<&ParamSchema> =
            self.params.iter().filter(|p| p.kind.positional()).collect();
        let min = positional.iter().take_while(|p| p.required()).count();
        let mut array = json!({
            "type": "array",
            "description": "Positional arguments.",
            "prefixItems": positional.iter().map(|p| p.schema()).collect::<Vec<_>>(),
            "minItems": min,
        });
        match self.params.iter().find(|p| p.kind == Kind::VarPositional) {
            Some(p) => array["items"] = p.ty.schema(),
            None => {
                array["items"] = Value::Bool(false);
                array["maxItems"] = positional.len().into();
            }
        }
        json!({"anyOf": [object, array]})
    }

    /// A body that fits: defaults where they are literals, else an example of the type. An
    /// array when the function's required parameters cannot be passed by keyword.
    fn example(&self) -> Value {
        let by_position_only = self
            .params
            .iter()
            .any(|p| p.kind == Kind::PositionalOnly && p.required());
        if by_position_only {
            return Value::Array(
                self.params
                    .iter()
                    .filter(|p| p.kind.positional())
                    .take_while(|p| p.required())
                    .map(ParamSchema::example)
                    .collect(),
            );
        }
        Value::Object(
            self.params
                .iter()
                .filter(|p| p.kind.keyword())
                .filter(|p| p.required() || p.default.as_deref().and_then(literal_value).is_some())
                .map(|p| (p.name.clone(), p.example()))
                .collect(),
        )
    }
}

/// The signature as Python's `str(inspect.signature(f))` writes it, with the function's name.
fn describe(sig: &Signature) -> String {
    let mut parts: Vec<String> = Vec::new();
    let has_var_positional = sig.params.iter().any(|p| p.kind == "var_positional");
    let mut star_written = false;
    for (i, p) in sig.params.iter().enumerate() {
        if p.kind == "keyword_only" && !has_var_positional && !star_written {
            parts.push("*".into());
            star_written = true;
        }
        let mut text = match p.kind.as_str() {
            "var_positional" => format!("*{}", p.name),
            "var_keyword" => format!("**{}", p.name),
            _ => p.name.clone(),
        };
        if let Some(a) = &p.annotation {
            let _ = write!(text, ": {a}");
        }
        if let Some(d) = &p.default {
            let eq = if p.annotation.is_some() { " = " } else { "=" };
            let _ = write!(text, "{eq}{d}");
        }
        parts.push(text);
        let next_kind = sig.params.get(i + 1).map(|n| n.kind.as_str());
        if p.kind == "positional_only" && next_kind != Some("positional_only") {
            parts.push("/".into());
        }
    }
    let returns = sig
        .returns
        .as_deref()
        .map(|r| format!(" -> {r}"))
        .unwrap_or_default();
    format!("{}({}){returns}", sig.entrypoint, parts.join(", "))
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document of one function

/// Whether a call needs an API key.
fn gated(spec: &SkyFunctionSpec) -> bool {
    spec.effective_access() == skython_crds::Access::Key
}

/// An OpenAPI 3.1 document for `POST /fn/{owner}/{endpoint}` of one function, from its
/// signature's type hints.
pub fn function_openapi(record: &FunctionRecord, public_url: &str) -> Value {
    let spec = &record.spec;
    let (owner, endpoint) = (&spec.owner, &spec.endpoint);
    let sig = record.status.signature.as_ref();
    let args = sig.map(ArgSchema::from_signature).unwrap_or_default();
    let (body_schema, example) = match sig {
        Some(_) => (args.body_schema(), args.example()),
        // Not inspected yet: any arguments.
        None => (
            json!({"anyOf": [{"type": "object"}, {"type": "array"}]}),
            json!({}),
        ),
    };
    let doc_text = sig.and_then(|s| s.doc.as_deref()).unwrap_or("").trim();
    let mut description = spec.description.trim().to_string();
    if !doc_text.is_empty() {
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str(doc_text);
    }
    if sig.is_some() {
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        let _ = write!(description, "`{}`", args.described.replace('`', "'"));
    }
    let summary = spec
        .description
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map_or_else(|| format!("Call {owner}/{endpoint}"), str::to_string);
    let error = |why: &str| json!({"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": match sig.and_then(|s| s.returns.as_deref()) {
                Some(r) => format!("The return value ({r})"),
                None => "The return value".into(),
            },
            "content": {"application/json": {"schema": args.returns.schema()}},
        }),
    );
    responses.insert(
        "400".into(),
        error("bad_arguments: the arguments do not fit the signature (`param` names the parameter, `expected` lists them); bad_json: the body is not JSON"),
    );
    let is_gated = gated(spec);
    if is_gated {
        responses.insert(
            "401".into(),
            error("No API key, or not a valid one for this function"),
        );
    }
    for (status, why) in [
        ("404", "No such function"),
        ("413", "The body is too large"),
        (
            "429",
            "Every worker is busy and the queue is full: try again",
        ),
        (
            "500",
            "function_error: the function raised (`type` names the exception)",
        ),
        ("502", "The worker died during the call"),
        (
            "503",
            "The runtime or the function's state storage is unavailable: try again",
        ),
        (
            "504",
            "timeout: the call ran past the function's time limit",
        ),
    ] {
        responses.insert(status.into(), error(why));
    }
    let mut operation = json!({
        "operationId": operation_id(owner, endpoint),
        "summary": summary,
        "requestBody": {
            "required": args.params.iter().any(ParamSchema::required),
            "content": {"application/json": {"schema": body_schema, "example": example}},
        },
        "responses": responses,
    });
    if !description.is_empty() {
        operation["description"] = description.into();
    }
    if !spec.tags.is_empty() {
        operation["tags"] = json!(spec.tags);
    }
    let mut components = json!({"schemas": crate::error::component_schemas()});
    if is_gated {
        operation["security"] = json!([{"apiKey": []}, {"bearer": []}]);
        components["securitySchemes"] = json!({
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            "bearer": {"type": "http", "scheme": "bearer", "description": "The API key as a bearer token"},
        });
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("{owner}/{endpoint}"),
            "version": record.generation.to_string(),
            "description": if spec.description.trim().is_empty() {
                format!("The Skython function {owner}/{endpoint}.")
            } else {
                spec.description.trim().to_string()
            },
        },
        "servers": [{"url": public_url.trim_end_matches('/')}],
        "paths": {format!("/fn/{owner}/{endpoint}"): {"post": operation}},
        "components": components,
    })
}

fn operation_id(owner: &str, endpoint: &str) -> String {
    format!("call_{owner}_{endpoint}").replace('-', "_")
}

// ---------------------------------------------------------------------------------------------
// Client snippets

/// Ready-to-paste code that calls a function with its document's example.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Snippets {
    pub curl: String,
    pub python: String,
    pub javascript: String,
    pub swift: String,
    pub kotlin: String,
}

/// The placeholder a user replaces with their key.
pub const KEY_PLACEHOLDER: &str = "YOUR_API_KEY";

/// Client code for the call a [`function_openapi`] document describes: its first server and
/// path, its example body, and the key header if the call is gated.
pub fn snippets(doc: &Value) -> Snippets {
    let server = doc["servers"][0]["url"].as_str().unwrap_or("");
    let (path, post) = doc["paths"]
        .as_object()
        .and_then(|p| p.iter().next())
        .map_or(("", &Value::Null), |(k, v)| (k.as_str(), &v["post"]));
    let url = format!("{server}{path}");
    let body = post["requestBody"]["content"]["application/json"]["example"].to_string();
    let body = if body == "null" { "{}".into() } else { body };
    let gated = post["security"].as_array().is_some_and(|s| !s.is_empty());
    let example: Value = serde_json::from_str(&body).unwrap_or_default();

    let key_header = |f: &dyn Fn(&str, &str) -> String| {
        if gated {
            f("X-Api-Key", KEY_PLACEHOLDER)
        } else {
            String::new()
        }
    };

    let curl = format!(
        "curl -X POST {} \\\n  -H 'Content-Type: application/json' \\\n{}  -d {}\n",
        shell_quote(&url),
        key_header(&|k, v| format!("  -H {} \\\n", shell_quote(&format!("{k}: {v}")))),
        shell_quote(&body),
    );

    let python = format!(
        "import requests\n\nresponse = requests.post(\n    {},\n    json={},\n{}    timeout=60,\n)\nresponse.raise_for_status()\nprint(response.json())\n",
        json_string(&url),
        python_literal(&example),
        key_header(&|k, v| format!("    headers={{{}: {}}},\n", json_string(k), json_string(v))),
    );

    let javascript = format!(
        "const response = await fetch({}, {{\n  method: \"POST\",\n  headers: {{ \"Content-Type\": \"application/json\"{} }},\n  body: JSON.stringify({body}),\n}});\nif (!response.ok) throw new Error(`${{response.status}}: ${{await response.text()}}`);\nconsole.log(await response.json());\n",
        json_string(&url),
        key_header(&|k, v| format!(", {}: {}", json_string(k), json_string(v))),
    );

    let swift = format!(
        "import Foundation\n\nvar request = URLRequest(url: URL(string: {})!)\nrequest.httpMethod = \"POST\"\nrequest.setValue(\"application/json\", forHTTPHeaderField: \"Content-Type\")\n{}request.httpBody = Data({}.utf8)\n\nlet (data, response) = try await URLSession.shared.data(for: request)\nlet status = (response as? HTTPURLResponse)?.statusCode ?? 0\nprint(status, String(decoding: data, as: UTF8.self))\n",
        swift_string(&url),
        key_header(&|k, v| format!(
            "request.setValue({}, forHTTPHeaderField: {})\n",
            swift_string(v),
            swift_string(k)
        )),
        swift_string(&body),
    );

    let kotlin = format!(
        "import java.net.URI\nimport java.net.http.HttpClient\nimport java.net.http.HttpRequest\nimport java.net.http.HttpResponse\n\nfun main() {{\n    val request = HttpRequest.newBuilder(URI.create({}))\n        .header(\"Content-Type\", \"application/json\")\n{}        .POST(HttpRequest.BodyPublishers.ofString({}))\n        .build()\n    val response = HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString())\n    println(\"${{response.statusCode()}} ${{response.body()}}\")\n}}\n",
        kotlin_string(&url),
        key_header(&|k, v| format!(
            "        .header({}, {})\n",
            kotlin_string(k),
            kotlin_string(v)
        )),
        kotlin_string(&body),
    );

    Snippets {
        curl,
        python,
        javascript,
        swift,
        kotlin,
    }
}

/// A POSIX shell word: single quotes, a quote itself written `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A JSON string literal, which Python and JavaScript read as the same string.
fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// A JSON value as a Python literal (`None`, `True`, `False`; strings and numbers as JSON
/// writes them, which Python reads the same).
fn python_literal(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => json_string(s),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(python_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", json_string(k), python_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A Swift string literal.
fn swift_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Kotlin string literal (`$` starts a template there, so it is escaped too).
fn kotlin_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Routes

/// `GET /api/v1/functions/{owner}/{endpoint}/openapi.json`
pub async fn openapi_json(
    State(app): State<AppState>,
    user: Option<AuthUser>,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
) -> ApiResult<Json<Value>> {
    let record = crate::api::visible(&app, user.as_ref(), &owner, &endpoint).await?;
    Ok(Json(function_openapi(&record, &app.config.public_url)))
}

/// `GET /api/v1/functions/{owner}/{endpoint}/snippets`
pub async fn snippets_json(
    State(app): State<AppState>,
    user: Option<AuthUser>,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
) -> ApiResult<Json<Snippets>> {
    let record = crate::api::visible(&app, user.as_ref(), &owner, &endpoint).await?;
    Ok(Json(snippets(&function_openapi(
        &record,
        &app.config.public_url,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skython_crds::Param;
    use skython_crds::Visibility;

    fn schema_of(annotation: &str) -> Value {
        Ty::parse(annotation).schema()
    }

    fn param(name: &str, kind: &str, annotation: Option<&str>, default: Option<&str>) -> Param {
        Param {
            name: name.into(),
            kind: kind.into(),
            annotation: annotation.map(Into::into),
            default: default.map(Into::into),
        }
    }

    /// `def {name}(params) -> returns`
    fn sig(name: &str, params: Vec<Param>, returns: Option<&str>) -> Signature {
        Signature {
            entrypoint: name.into(),
            params,
            returns: returns.map(Into::into),
            doc: None,
        }
    }

    /// A function of positional-or-keyword parameters `(name, annotation)`.
    fn plain(params: &[(&str, &str)]) -> ArgSchema {
        ArgSchema::from_signature(&sig(
            "f",
            params
                .iter()
                .map(|(n, a)| param(n, "positional_or_keyword", Some(a), None))
                .collect(),
            None,
        ))
    }

    fn refusal(schema: &ArgSchema, body: Value) -> ApiError {
        schema
            .check(body.to_string().as_bytes())
            .expect_err("refused")
    }

    // --- hints to JSON Schema

    #[test]
    fn int_is_an_integer() {
        assert_eq!(schema_of("int"), json!({"type": "integer"}));
    }

    #[test]
    fn float_is_a_number() {
        assert_eq!(schema_of("float"), json!({"type": "number"}));
    }

    #[test]
    fn bool_is_a_boolean() {
        assert_eq!(schema_of("bool"), json!({"type": "boolean"}));
    }

    #[test]
    fn str_is_a_string() {
        assert_eq!(schema_of("str"), json!({"type": "string"}));
    }

    #[test]
    fn none_is_null() {
        assert_eq!(schema_of("None"), json!({"type": "null"}));
    }

    #[test]
    fn sequences_and_sets_are_arrays_of_their_item() {
        for hint in [
            "list[float]",
            "List[float]",
            "Sequence[float]",
            "Iterable[float]",
            "tuple[float, ...]",
            "set[float]",
            "frozenset[float]",
        ] {
            assert_eq!(
                schema_of(hint),
                json!({"type": "array", "items": {"type": "number"}}),
                "{hint}"
            );
        }
        assert_eq!(schema_of("list"), json!({"type": "array"}));
    }

    #[test]
    fn a_fixed_tuple_is_an_array_of_prefix_items() {
        assert_eq!(
            schema_of("tuple[int, str]"),
            json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                   "items": false, "minItems": 2, "maxItems": 2})
        );
        assert_eq!(schema_of("tuple[()]")["maxItems"], 0);
    }

    #[test]
    fn dicts_and_mappings_are_objects_of_their_values() {
        for hint in [
            "dict[str, float]",
            "Dict[str, float]",
            "Mapping[str, float]",
        ] {
            assert_eq!(
                schema_of(hint),
                json!({"type": "object", "additionalProperties": {"type": "number"}}),
                "{hint}"
            );
        }
        assert_eq!(schema_of("dict"), json!({"type": "object"}));
    }

    #[test]
    fn optional_union_and_the_bar_are_any_of() {
        let int_or_null = json!({"anyOf": [{"type": "integer"}, {"type": "null"}]});
        assert_eq!(schema_of("Optional[int]"), int_or_null);
        assert_eq!(schema_of("Union[int, None]"), int_or_null);
        assert_eq!(schema_of("int | None"), int_or_null);
        assert_eq!(
            schema_of("int | str | None")["anyOf"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn literal_is_an_enum() {
        assert_eq!(
            schema_of("Literal['mean', \"max\", 3, -1, True, None]"),
            json!({"enum": ["mean", "max", 3, -1, true, null]})
        );
    }

    #[test]
    fn unknown_names_constrain_nothing() {
        for hint in [
            "Any",
            "object",
            "np.ndarray",
            "pd.DataFrame",
            "Point",
            "'Point'",
            "Callable[[int], str]",
            "npt.NDArray[np.float64]",
            "Optional[np.ndarray]",
        ] {
            assert_eq!(schema_of(hint), json!({}), "{hint}");
        }
    }

    #[test]
    fn typing_prefixes_are_tolerated() {
        assert_eq!(schema_of("typing.List[int]"), schema_of("list[int]"));
        assert_eq!(
            schema_of("t.Optional[t.Dict[str, int]]"),
            schema_of("Optional[dict[str, int]]")
        );
        assert_eq!(
            schema_of("collections.abc.Sequence[str]"),
            schema_of("list[str]")
        );
    }

    #[test]
    fn annotated_is_its_first_argument() {
        assert_eq!(
            schema_of("Annotated[int, Field(gt=0)]"),
            json!({"type": "integer"})
        );
    }

    #[test]
    fn an_annotation_that_does_not_parse_constrains_nothing() {
        for hint in [
            "list[",
            "int int",
            "list[int]]",
            "lambda: 1",
            "dict[str]",
            "b'x'",
            "",
            "1 +",
        ] {
            assert_eq!(schema_of(hint), json!({}), "{hint:?}");
        }
    }

    #[test]
    fn annotations_too_long_or_too_deep_constrain_nothing() {
        let deep = "list[".repeat(50) + "int" + &"]".repeat(50);
        assert_eq!(schema_of(&deep), json!({}));
        let long = format!("Literal[{}]", vec!["1"; 600].join(", "));
        assert_eq!(schema_of(&long), json!({}));
        let fits = "list[".repeat(5) + "int" + &"]".repeat(5);
        assert_ne!(schema_of(&fits), json!({}));
    }

    #[test]
    fn literal_defaults_become_schema_defaults() {
        assert_eq!(literal_value("'a\\'b\\n\\u00e9'"), Some(json!("a'b\né")));
        assert_eq!(literal_value("-2.5"), Some(json!(-2.5)));
        assert_eq!(
            literal_value("(1, [True, None], {'k': 'v'})"),
            Some(json!([1, [true, null], {"k": "v"}]))
        );
        assert_eq!(literal_value("np.pi"), None);
        assert_eq!(literal_value("b'raw'"), None);
        let s = ArgSchema::from_signature(&sig(
            "f",
            vec![param("n", "positional_or_keyword", Some("int"), Some("3"))],
            None,
        ));
        assert_eq!(
            s.params[0].schema(),
            json!({"type": "integer", "default": 3})
        );
    }

    // --- checking a call's arguments

    #[test]
    fn a_function_without_hints_is_not_checked() {
        let s = ArgSchema::from_signature(&sig(
            "add",
            vec![
                param("a", "positional_or_keyword", None, None),
                param("b", "positional_or_keyword", None, None),
            ],
            None,
        ));
        assert!(!s.is_constrained());
        // Not even parsed: the worker refuses what does not fit, as it did before.
        assert!(s.check(b"{\"nope\": 1}").is_ok());
        assert!(s.check(b"not json at all").is_ok());
    }

    #[test]
    fn a_wrong_type_names_the_parameter_the_hint_and_what_was_given() {
        let s = plain(&[("xs", "list[float]")]);
        let e = refusal(&s, json!({"xs": "oops"}));
        assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "bad_arguments"));
        assert_eq!(
            e.message,
            "xs: expected a list of numbers (list[float]), got a string; expected f(xs: list[float])"
        );
        assert_eq!(e.extra["param"], "xs");
        assert_eq!(
            e.extra["expected"],
            json!([{"name": "xs", "kind": "positional_or_keyword", "annotation": "list[float]"}])
        );
    }

    #[test]
    fn a_mismatch_inside_a_value_names_its_place() {
        let s = plain(&[("xs", "list[float]"), ("m", "dict[str, int]")]);
        let e = refusal(&s, json!({"xs": [1, 2.5, "3"], "m": {}}));
        assert!(
            e.message
                .starts_with("xs: expected a list of numbers (list[float]), but xs[2] is a string"),
            "{}",
            e.message
        );
        let e = refusal(&s, json!({"xs": [], "m": {"a\"b": 1.5}}));
        assert!(
            e.message.contains(r#"but m["a\"b"] is the number 1.5"#),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_int_passes_where_a_float_is_hinted() {
        let s = plain(&[("x", "float")]);
        assert!(s.check(b"{\"x\": 2}").is_ok());
        assert!(s.check(b"{\"x\": 2.5}").is_ok());
    }

    #[test]
    fn a_boolean_is_refused_where_a_number_is_hinted() {
        let s = plain(&[("n", "int"), ("x", "float")]);
        let e = refusal(&s, json!({"n": true, "x": 1}));
        assert!(
            e.message
                .starts_with("n: expected an integer (int), got a boolean"),
            "{}",
            e.message
        );
        let e = refusal(&s, json!({"n": 1, "x": false}));
        assert_eq!(e.extra["param"], "x");
    }

    #[test]
    fn a_fraction_is_refused_where_an_int_is_hinted() {
        let s = plain(&[("n", "int")]);
        let e = refusal(&s, json!({"n": 1.5}));
        assert!(
            e.message
                .starts_with("n: expected an integer (int), got the number 1.5"),
            "{}",
            e.message
        );
        assert!(
            s.check(b"{\"n\": 123456789012345678901234567890}").is_ok(),
            "a big int"
        );
    }

    #[test]
    fn a_union_takes_any_of_its_members() {
        let s = plain(&[("x", "int | list[int] | None")]);
        for ok in [json!(1), json!([1, 2]), Value::Null] {
            assert!(
                s.check(json!({"x": ok}).to_string().as_bytes()).is_ok(),
                "{ok}"
            );
        }
        let e = refusal(&s, json!({"x": "1"}));
        assert!(
            e.message.starts_with("x: expected an integer, a list of integers or null (int | list[int] | None), got a string"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_literal_takes_only_its_values() {
        let s = plain(&[("how", "Literal['mean', 'max']")]);
        assert!(s.check(br#"{"how": "max"}"#).is_ok());
        let e = refusal(&s, json!({"how": "min"}));
        assert!(
            e.message
                .starts_with(r#"how: expected one of "mean", "max""#),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_none_default_accepts_null_whatever_the_hint() {
        let s = ArgSchema::from_signature(&sig(
            "f",
            vec![param(
                "n",
                "positional_or_keyword",
                Some("int"),
                Some("None"),
            )],
            None,
        ));
        assert!(s.check(b"{\"n\": null}").is_ok());
        assert!(s.check(b"{}").is_ok());
        assert_eq!(refusal(&s, json!({"n": "x"})).extra["param"], "n");
    }

    #[test]
    fn a_missing_required_parameter_is_named_with_the_signature() {
        let s = plain(&[("a", "int"), ("b", "int")]);
        let e = refusal(&s, json!({"a": 2}));
        assert_eq!(
            e.message,
            "missing a required argument: 'b'; expected f(a: int, b: int)"
        );
        assert_eq!(e.extra["param"], "b");
        assert_eq!(refusal(&s, json!([2])).extra["param"], "b");
    }

    #[test]
    fn an_unknown_keyword_is_refused_without_kwargs() {
        let s = plain(&[("a", "int")]);
        let e = refusal(&s, json!({"a": 1, "nope": 1}));
        assert!(
            e.message
                .starts_with("got an unexpected keyword argument 'nope'"),
            "{}",
            e.message
        );
        assert_eq!(e.extra["param"], "nope");
    }

    #[test]
    fn extra_keywords_are_checked_against_kwargs() {
        let s = ArgSchema::from_signature(&sig(
            "f",
            vec![
                param("a", "positional_or_keyword", Some("int"), None),
                param("rest", "var_keyword", Some("float"), None),
            ],
            None,
        ));
        assert!(s.check(br#"{"a": 1, "x": 1.5, "y": 2}"#).is_ok());
        let e = refusal(&s, json!({"a": 1, "x": "no"}));
        assert!(
            e.message
                .starts_with("x: expected a number (float), got a string"),
            "{}",
            e.message
        );
    }

    #[test]
    fn too_many_positional_arguments_are_refused_without_args() {
        let s = plain(&[("a", "int")]);
        let e = refusal(&s, json!([1, 2]));
        assert_eq!(
            e.message,
            "too many positional arguments; expected f(a: int)"
        );
        assert!(!e.extra.contains_key("param"));
    }

    #[test]
    fn extra_positional_arguments_are_checked_against_args() {
        let s = ArgSchema::from_signature(&sig(
            "f",
            vec![
                param("a", "positional_or_keyword", Some("str"), None),
                param("nums", "var_positional", Some("int"), None),
            ],
            None,
        ));
        assert!(s.check(br#"["x", 1, 2, 3]"#).is_ok());
        let e = refusal(&s, json!(["x", 1, "2"]));
        assert!(
            e.message
                .starts_with("nums[1]: expected an integer (int), got a string"),
            "{}",
            e.message
        );
    }

    #[test]
    fn positional_arguments_are_checked_in_order() {
        let s = plain(&[("a", "int"), ("b", "str")]);
        assert!(s.check(br#"[1, "x"]"#).is_ok());
        assert_eq!(refusal(&s, json!(["x", 1])).extra["param"], "a");
    }

    #[test]
    fn a_required_keyword_only_parameter_cannot_be_left_out_of_an_array() {
        let s = ArgSchema::from_signature(&sig(
            "f",
            vec![
                param("a", "positional_or_keyword", Some("int"), None),
                param("k", "keyword_only", Some("int"), None),
            ],
            None,
        ));
        assert_eq!(refusal(&s, json!([1])).extra["param"], "k");
        assert!(s.check(br#"{"a": 1, "k": 2}"#).is_ok());
    }

    #[test]
    fn a_positional_only_parameter_passed_by_keyword_is_refused() {
        let s = ArgSchema::from_signature(&sig(
            "f",
            vec![param("a", "positional_only", Some("int"), None)],
            None,
        ));
        let e = refusal(&s, json!({"a": 1}));
        assert!(e.message.contains("positional only"), "{}", e.message);
        assert!(s.check(b"[1]").is_ok());
    }

    #[test]
    fn the_signature_is_described_as_python_prints_it() {
        let s = sig(
            "f",
            vec![
                param("a", "positional_only", Some("int"), None),
                param("b", "positional_or_keyword", None, Some("2")),
                param("c", "keyword_only", Some("str"), Some("'x'")),
                param("kw", "var_keyword", None, None),
            ],
            Some("float"),
        );
        assert_eq!(
            describe(&s),
            "f(a: int, /, b=2, *, c: str = 'x', **kw) -> float"
        );
    }

    // --- the document

    fn record(source_sig: Signature, visibility: Visibility) -> FunctionRecord {
        let mut spec = SkyFunctionSpec::new("alice", "stats", "def f(): pass");
        spec.description = "Summary statistics.\nMore words.".into();
        spec.visibility = visibility;
        let now = jiff::Timestamp::now();
        FunctionRecord {
            spec,
            status: skython_crds::SkyFunctionStatus {
                signature: Some(source_sig),
                ..Default::default()
            },
            generation: 3,
            created_at: now,
            updated_at: now,
        }
    }

    fn stats_sig() -> Signature {
        Signature {
            doc: Some("Mean and spread of xs.".into()),
            ..sig(
                "stats",
                vec![
                    param("xs", "positional_or_keyword", Some("list[float]"), None),
                    param(
                        "how",
                        "positional_or_keyword",
                        Some("Literal['mean', 'max']"),
                        Some("'mean'"),
                    ),
                    param("scale", "keyword_only", Some("float"), Some("np.pi")),
                ],
                Some("dict[str, float]"),
            )
        }
    }

    fn operation(doc: &Value) -> &Value {
        &doc["paths"]["/fn/alice/stats"]["post"]
    }

    #[test]
    fn the_document_describes_the_body_with_defaults_and_an_example() {
        let doc = function_openapi(
            &record(stats_sig(), Visibility::Public),
            "https://sky.example/",
        );
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["servers"], json!([{"url": "https://sky.example"}]));
        let op = operation(&doc);
        assert_eq!(op["summary"], "Summary statistics.");
        let description = op["description"].as_str().unwrap();
        assert!(
            description.contains("More words.") && description.contains("Mean and spread of xs."),
            "{description}"
        );
        let body = &op["requestBody"]["content"]["application/json"];
        assert_eq!(
            body["schema"],
            json!({
                "type": "object",
                "description": "Keyword arguments.",
                "properties": {
                    "xs": {"type": "array", "items": {"type": "number"}},
                    "how": {"enum": ["mean", "max"], "default": "mean"},
                    "scale": {"type": "number"},
                },
                "required": ["xs"],
                "additionalProperties": false,
            })
        );
        assert_eq!(body["example"], json!({"xs": [1.5], "how": "mean"}));
        assert_eq!(op["requestBody"]["required"], true);
    }

    #[test]
    fn the_return_annotation_is_the_answers_schema() {
        let doc = function_openapi(&record(stats_sig(), Visibility::Public), "http://h");
        assert_eq!(
            operation(&doc)["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "object", "additionalProperties": {"type": "number"}})
        );
        for status in ["400", "404", "429", "500", "504"] {
            assert_eq!(
                operation(&doc)["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{status}"
            );
        }
        assert!(doc["components"]["schemas"]["Error"].is_object());
    }

    #[test]
    fn a_gated_function_asks_for_a_key_and_a_public_one_does_not() {
        let private = function_openapi(&record(stats_sig(), Visibility::Private), "http://h");
        let op = operation(&private);
        assert_eq!(op["security"], json!([{"apiKey": []}, {"bearer": []}]));
        assert!(op["responses"]["401"].is_object());
        assert_eq!(
            private["components"]["securitySchemes"]["apiKey"],
            json!({"type": "apiKey", "in": "header", "name": "X-Api-Key"})
        );
        let public = function_openapi(&record(stats_sig(), Visibility::Public), "http://h");
        assert!(operation(&public).get("security").is_none());
        assert!(operation(&public)["responses"].get("401").is_none());
        assert!(public["components"].get("securitySchemes").is_none());
    }

    #[test]
    fn positional_only_parameters_make_the_body_an_array_too() {
        let s = sig(
            "f",
            vec![
                param("a", "positional_only", Some("int"), None),
                param("b", "positional_or_keyword", Some("str"), Some("'x'")),
            ],
            None,
        );
        let doc = function_openapi(&record(s, Visibility::Public), "http://h");
        let body = &operation(&doc)["requestBody"]["content"]["application/json"];
        let array = &body["schema"]["anyOf"][1];
        assert_eq!(array["type"], "array");
        assert_eq!(array["prefixItems"][0], json!({"type": "integer"}));
        assert_eq!(
            (array["minItems"].clone(), array["maxItems"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(body["example"], json!([1]));
    }

    // --- snippets

    fn tricky() -> Value {
        let s = sig(
            "f",
            vec![param(
                "text",
                "positional_or_keyword",
                Some("str"),
                Some(r#"'say "hi" \\ café ${x} \'q\''"#),
            )],
            None,
        );
        function_openapi(&record(s, Visibility::Private), "http://127.0.0.1:8080")
    }

    #[test]
    fn the_example_of_a_tricky_default_is_the_default() {
        let doc = tricky();
        assert_eq!(
            operation(&doc)["requestBody"]["content"]["application/json"]["example"],
            json!({"text": r#"say "hi" \ café ${x} 'q'"#})
        );
    }

    #[test]
    fn snippets_escape_quotes_backslashes_and_unicode_for_each_language() {
        let s = snippets(&tricky());
        // The body as JSON text: {"text":"say \"hi\" \\ café ${x} 'q'"}
        assert!(
            s.curl
                .contains(r#"-d '{"text":"say \"hi\" \\ café ${x} '\''q'\''"}'"#),
            "{}",
            s.curl
        );
        assert!(
            s.python
                .contains(r#"json={"text": "say \"hi\" \\ café ${x} 'q'"},"#),
            "{}",
            s.python
        );
        assert!(
            s.javascript
                .contains(r#"body: JSON.stringify({"text":"say \"hi\" \\ café ${x} 'q'"}),"#),
            "{}",
            s.javascript
        );
        assert!(
            s.swift
                .contains(r#"Data("{\"text\":\"say \\\"hi\\\" \\\\ café ${x} 'q'\"}".utf8)"#),
            "{}",
            s.swift
        );
        assert!(
            s.kotlin
                .contains(r#"ofString("{\"text\":\"say \\\"hi\\\" \\\\ café \${x} 'q'\"}")"#),
            "{}",
            s.kotlin
        );
    }

    #[test]
    fn snippets_carry_the_key_header_only_for_gated_functions() {
        let gated = snippets(&tricky());
        for code in [
            &gated.curl,
            &gated.python,
            &gated.javascript,
            &gated.swift,
            &gated.kotlin,
        ] {
            assert!(
                code.contains("X-Api-Key") && code.contains(KEY_PLACEHOLDER),
                "{code}"
            );
            assert!(
                code.contains("http://127.0.0.1:8080/fn/alice/stats"),
                "{code}"
            );
        }
        let open = snippets(&function_openapi(
            &record(stats_sig(), Visibility::Public),
            "http://h",
        ));
        for code in [
            &open.curl,
            &open.python,
            &open.javascript,
            &open.swift,
            &open.kotlin,
        ] {
            assert!(!code.contains("X-Api-Key"), "{code}");
        }
    }

    #[test]
    fn control_characters_are_escaped_in_swift_and_kotlin() {
        assert_eq!(swift_string("a\u{1}\n"), r#""a\u{1}\n""#);
        assert_eq!(kotlin_string("a\u{1}\n$"), r#""a\u0001\n\$""#);
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
    }
}
