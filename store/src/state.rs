//! What a state write decides, apart from where the value lives: both backends read the current
//! value, ask [`StateWrite::apply`] what to write, and write it in the same atomic step.

use serde_json::{Number, Value};

use crate::{Result, StoreError};

/// One write to a state key.
#[derive(Debug, Clone, PartialEq)]
pub enum StateWrite {
    /// `store(key, value)`: the value replaces whatever is there; of concurrent writers the last
    /// one wins.
    Set { value: String },
    /// `store(key, value, expect=old)`: writes only if the current value equals `expect` (as JSON
    /// values: `1` equals `1.0`, objects compare without key order). `null` also matches a missing
    /// key, as `load(key)` returns `None` for both.
    SetIf { value: String, expect: Value },
    /// `incr(key, by, default)`: the current number, or `default` if the key is missing, plus `by`.
    Incr { by: Number, default: Number },
}

/// What a state write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The value was stored.
    Stored,
    /// A `SetIf` found another value: nothing changed.
    Lost,
    /// An `Incr` stored this number (JSON text).
    Counted(String),
}

/// The outcome of [`StateWrite::apply`]: the JSON text to store (`None`: leave the key as it is)
/// and what to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub store: Option<String>,
    pub written: Written,
}

impl StateWrite {
    /// Decides the write given the current JSON text under `key` (`None`: missing).
    /// `Invalid` when an `Incr` finds something other than a number, or the sum leaves the
    /// numbers JSON can hold.
    pub fn apply(&self, key: &str, current: Option<&str>) -> Result<Decision> {
        match self {
            StateWrite::Set { value } => Ok(Decision {
                store: Some(value.clone()),
                written: Written::Stored,
            }),
            StateWrite::SetIf { value, expect } => {
                let matches = match current {
                    None => expect.is_null(),
                    Some(text) => json_equal(&parse(text)?, expect),
                };
                Ok(if matches {
                    Decision {
                        store: Some(value.clone()),
                        written: Written::Stored,
                    }
                } else {
                    Decision {
                        store: None,
                        written: Written::Lost,
                    }
                })
            }
            StateWrite::Incr { by, default } => {
                let base = match current {
                    None => default.clone(),
                    Some(text) => match parse(text)? {
                        Value::Number(n) => n,
                        other => {
                            return Err(StoreError::Invalid(format!(
                                "incr needs a number under {key:?}, found {}",
                                kind(&other)
                            )));
                        }
                    },
                };
                let sum = add(&base, by).ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "incr of {key:?}: {base} + {by} is past the numbers state can hold"
                    ))
                })?;
                let text = sum.to_string();
                Ok(Decision {
                    store: Some(text.clone()),
                    written: Written::Counted(text),
                })
            }
        }
    }
}

fn parse(text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("a stored value is not JSON: {e}").into()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Integers add exactly (64-bit, `None` on overflow); anything else as floats (`None` if the sum
/// is not finite).
fn add(a: &Number, b: &Number) -> Option<Number> {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x.checked_add(y).map(Number::from),
        _ => Number::from_f64(a.as_f64()? + b.as_f64()?),
    }
}

/// JSON values equal as Python would compare what they decode to: numbers by value, objects
/// by their entries whatever the order.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn incr(by: i64, default: i64) -> StateWrite {
        StateWrite::Incr {
            by: by.into(),
            default: default.into(),
        }
    }

    #[test]
    fn set_always_stores() {
        let w = StateWrite::Set { value: "2".into() };
        let d = w.apply("k", Some("1")).unwrap();
        assert_eq!(
            (d.store.as_deref(), d.written),
            (Some("2"), Written::Stored)
        );
    }

    #[test]
    fn set_if_stores_only_over_the_expected_value() {
        let w = StateWrite::SetIf {
            value: "3".into(),
            expect: json!({"a": 1, "b": [1.0, "x"]}),
        };
        let won = w.apply("k", Some(r#"{"b":[1,"x"],"a":1.0}"#)).unwrap();
        assert_eq!(won.store.as_deref(), Some("3"));
        let lost = w.apply("k", Some(r#"{"a":1,"b":[2,"x"]}"#)).unwrap();
        assert_eq!((lost.store, lost.written), (None, Written::Lost));
        assert_eq!(w.apply("k", None).unwrap().written, Written::Lost);
    }

    #[test]
    fn set_if_none_matches_a_missing_key_or_null() {
        let w = StateWrite::SetIf {
            value: "1".into(),
            expect: Value::Null,
        };
        assert_eq!(w.apply("k", None).unwrap().written, Written::Stored);
        assert_eq!(w.apply("k", Some("null")).unwrap().written, Written::Stored);
        assert_eq!(w.apply("k", Some("0")).unwrap().written, Written::Lost);
    }

    #[test]
    fn incr_starts_from_the_default_and_adds() {
        assert_eq!(
            incr(1, 10).apply("k", None).unwrap().written,
            Written::Counted("11".into())
        );
        assert_eq!(
            incr(-5, 0).apply("k", Some("3")).unwrap().store.as_deref(),
            Some("-2")
        );
    }

    #[test]
    fn incr_with_a_float_gives_a_float() {
        let w = StateWrite::Incr {
            by: Number::from_f64(0.5).unwrap(),
            default: 0.into(),
        };
        assert_eq!(
            w.apply("k", Some("1")).unwrap().store.as_deref(),
            Some("1.5")
        );
    }

    #[test]
    fn incr_of_something_else_than_a_number_is_refused_naming_it() {
        let e = incr(1, 0).apply("visits", Some(r#""seven""#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"incr needs a number under "visits", found a string"#
        );
        assert!(matches!(e, StoreError::Invalid(_)));
    }

    #[test]
    fn incr_past_64_bits_is_refused() {
        let e = incr(1, 0)
            .apply("k", Some(&i64::MAX.to_string()))
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(m) if m.contains("past the numbers")));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_equal(&json!(1), &json!(1.0)));
        assert!(!json_equal(&json!(1), &json!(2)));
        assert!(json_equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_equal(&json!(1), &json!("1")));
        assert!(!json_equal(&json!([1]), &json!([1, 2])));
        assert!(!json_equal(&json!({"a": 1}), &json!({"b": 1})));
    }
}
