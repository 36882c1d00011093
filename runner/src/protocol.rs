//! Frames and messages of the worker protocol (see `PROTOCOL.md`).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const HEADER_LEN: usize = 5;

pub mod kind {
    pub const HELLO: u8 = b'H';
    pub const INSPECT: u8 = b'I';
    pub const SPAWN: u8 = b'S';
    pub const SPAWNED: u8 = b'P';
    pub const SPAWN_FAILED: u8 = b'E';
    /// First frame of a worker, before any user code: the kernel attaches its pid.
    pub const STARTED: u8 = b'T';
    /// Gateway → worker after `started`: placed (in its cgroup); load the function now.
    pub const GO: u8 = b'W';
    pub const READY: u8 = b'R';
    pub const LOAD_ERROR: u8 = b'L';
    /// Gateway → worker before a `C` whose caller differs from the previous call's: who the
    /// calls from here on are for (`Caller`, JSON). Not the control channel's `INSPECT`.
    pub const CALLER: u8 = b'I';
    pub const CALL: u8 = b'C';
    pub const STATE_REQ: u8 = b'Q';
    pub const STATE_ANS: u8 = b'A';
    /// Worker → gateway, with the state cache on: a plain `store` that waits for no answer.
    pub const STATE_WRITE: u8 = b'V';
    /// Gateway → worker, with the state cache on: another worker's write committed (or forget).
    pub const STATE_PUSH: u8 = b'N';
    pub const LOG: u8 = b'G';
    /// Worker → gateway before some answers: how long the call held the worker (µs, decimal
    /// ASCII): its CPU time, or its wall time if it blocked.
    pub const RAN: u8 = b'U';
    pub const OK: u8 = b'O';
    pub const ERROR: u8 = b'X';
}

pub fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let n = (len as u32).to_le_bytes();
    [n[0], n[1], n[2], n[3], kind]
}

/// Reads one frame; refuses payloads above `max_len` so a broken peer cannot make us allocate.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; HEADER_LEN];
    r.read_exact(&mut hdr).await?;
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if len > max_len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max_len}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((hdr[4], payload))
}

/// What the zygote says once it is ready to fork workers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub pid: i32,
    pub python: String,
    #[serde(default)]
    pub preloaded: Vec<String>,
    #[serde(default)]
    pub missing: Vec<String>,
    pub start_ms: f64,
}

/// Everything a worker needs to load one function.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// `owner/endpoint`, for logs.
    pub label: String,
    pub source: String,
    /// The file name tracebacks show.
    pub filename: String,
    pub entrypoint: String,
    pub env: std::collections::BTreeMap<String, String>,
    /// The worker's address-space limit (`RLIMIT_AS`) on top of the zygote's mappings: only
    /// where no memory cgroup limits it (a non-root gateway, a runner pod, whose own cgroup is
    /// the pod's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds_per_call: Option<u64>,
    pub max_result_bytes: usize,
    pub max_log_bytes: usize,
    pub max_state_value_bytes: usize,
    /// Whether the worker caches state values and sends plain `store`s without waiting (see
    /// `PROTOCOL.md`, "State cache"). Set by the pool from its state handler, not by callers.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub state_cache: bool,
}

/// Who a call is for, as `skython.caller()` tells the function. Only an identity: the call
/// runs with its function owner's state, limits and secrets, whoever the caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum Caller {
    /// No credential presented (or none needed).
    #[default]
    Anonymous,
    /// A signed-in user (a session or a personal access token), by account name.
    User { name: String },
    /// An API key: its id (never the key itself), its owner's account name and its name.
    Key {
        id: String,
        owner: String,
        name: String,
    },
}

impl Caller {
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Caller::Anonymous)
    }
}

/// Values up to this size (JSON text) are cached by workers and pushed to them; a larger one
/// is only forgotten, and loaded again when asked for.
pub const CACHE_VALUE_MAX: usize = 16 * 1024;

/// A worker's write-behind `store` (`V`).
#[derive(Debug, Deserialize)]
pub struct StateWriteFrame {
    pub key: String,
    pub value: String,
}

/// What the gateway pushes to a caching worker (`N`).
#[derive(Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum StatePush<'a> {
    /// Another worker's write of `key` committed with `value`; `acked` of the receiving
    /// worker's own `V` writes had been committed or refused by then.
    Value {
        key: &'a str,
        value: &'a str,
        acked: u64,
    },
    Forget {
        key: &'a str,
    },
    Reset {
        reset: bool,
    },
}

/// An error reported by Python code: the function's exception, bad arguments, a load failure.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct FunctionError {
    pub code: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// For `bad_arguments`: the parameters the function takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
    /// Output printed while loading (load errors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// The worker ends after this answer (it hit its CPU limit and its threads may still be
    /// running): the pool must not give it another call. Never shown to clients.
    #[serde(default, skip_serializing)]
    pub retire: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub pid: i32,
    pub load_ms: f64,
    #[serde(default)]
    pub logs: String,
}

/// A worker's state request; the gateway decides the (owner, function) scope, not the worker.
/// Also sent as JSON by a runner pod to the gateway's state service, in the same form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum StateRequest {
    Load {
        key: String,
    },
    /// `store(key, value)`, or with `expect` (JSON text) a compare-and-set: write only if the
    /// key holds that value.
    Store {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
    /// `incr(key, by, default)`: answered with the new number in `value`.
    Incr {
        key: String,
        by: serde_json::Number,
        default: serde_json::Number,
    },
    Delete {
        key: String,
    },
    Keys {
        #[serde(default)]
        prefix: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct StateAnswer {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    /// JSON text of a loaded value, or of the number an `incr` stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Whether a `store` with `expect` wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub won: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StateAnswerError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateAnswerError {
    pub code: String,
    pub message: String,
}

impl StateAnswer {
    pub fn refused(code: &str, message: impl Into<String>) -> Self {
        StateAnswer {
            ok: false,
            error: Some(StateAnswerError {
                code: code.into(),
                message: message.into(),
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        for (k, payload) in [(kind::CALL, &br#"{"a":1}"#[..]), (kind::OK, &[b'x'; 100])] {
            a.write_all(&header(k, payload.len())).await.unwrap();
            a.write_all(payload).await.unwrap();
        }
        assert_eq!(
            read_frame(&mut b, 64).await.unwrap(),
            (kind::CALL, br#"{"a":1}"#.to_vec())
        );
        let err = read_frame(&mut b, 64).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn callers_are_tagged_by_kind_in_camel_case_json() {
        for (caller, wire) in [
            (Caller::Anonymous, serde_json::json!({"kind": "anonymous"})),
            (
                Caller::User {
                    name: "alice".into(),
                },
                serde_json::json!({"kind": "user", "name": "alice"}),
            ),
            (
                Caller::Key {
                    id: "key_1".into(),
                    owner: "bob".into(),
                    name: "my-app".into(),
                },
                serde_json::json!({"kind": "key", "id": "key_1", "owner": "bob", "name": "my-app"}),
            ),
        ] {
            assert_eq!(serde_json::to_value(&caller).unwrap(), wire);
            assert_eq!(serde_json::from_value::<Caller>(wire).unwrap(), caller);
        }
    }

    #[test]
    fn a_caller_with_an_unknown_kind_or_field_is_refused() {
        for bad in [
            r#"{"kind":"admin"}"#,
            r#"{"kind":"user"}"#,
            r#"{"kind":"user","name":"a","state":"x"}"#,
            r#"{"name":"a"}"#,
        ] {
            assert!(serde_json::from_str::<Caller>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_requests_parse() {
        let r: StateRequest =
            serde_json::from_str(r#"{"op":"store","key":"n","value":"1"}"#).unwrap();
        assert_eq!(
            r,
            StateRequest::Store {
                key: "n".into(),
                value: "1".into(),
                expect: None,
            },
            "a frame without `expect` is a plain store"
        );
        let r: StateRequest = serde_json::from_str(r#"{"op":"keys"}"#).unwrap();
        assert_eq!(
            r,
            StateRequest::Keys {
                prefix: String::new()
            }
        );
        assert!(serde_json::from_str::<StateRequest>(r#"{"op":"drop"}"#).is_err());
    }

    #[test]
    fn state_requests_round_trip_through_json_in_their_wire_form() {
        let r = StateRequest::Store {
            key: "n".into(),
            value: "1".into(),
            expect: None,
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "store", "key": "n", "value": "1"})
        );
        assert_eq!(serde_json::from_value::<StateRequest>(json).unwrap(), r);
    }

    #[test]
    fn compare_and_set_round_trips_with_its_expectation_as_json_text() {
        let r = StateRequest::Store {
            key: "n".into(),
            value: "2".into(),
            expect: Some("null".into()),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "store", "key": "n", "value": "2", "expect": "null"})
        );
        assert_eq!(serde_json::from_value::<StateRequest>(json).unwrap(), r);
    }

    #[test]
    fn incr_round_trips_with_json_numbers() {
        let r = StateRequest::Incr {
            key: "n".into(),
            by: 1.into(),
            default: serde_json::Number::from_f64(0.5).unwrap(),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "incr", "key": "n", "by": 1, "default": 0.5})
        );
        assert_eq!(serde_json::from_value::<StateRequest>(json).unwrap(), r);
        assert!(
            serde_json::from_str::<StateRequest>(r#"{"op":"incr","key":"n","by":"1","default":0}"#)
                .is_err(),
            "numbers, not strings"
        );
    }

    #[test]
    fn the_answers_of_incr_and_compare_and_set_round_trip() {
        let counted = StateAnswer {
            ok: true,
            value: Some("7".into()),
            ..Default::default()
        };
        let lost = StateAnswer {
            ok: true,
            won: Some(false),
            ..Default::default()
        };
        for (answer, wire) in [
            (counted, serde_json::json!({"ok": true, "value": "7"})),
            (lost, serde_json::json!({"ok": true, "won": false})),
        ] {
            assert_eq!(serde_json::to_value(&answer).unwrap(), wire);
            assert_eq!(serde_json::from_value::<StateAnswer>(wire).unwrap(), answer);
        }
    }

    #[test]
    fn state_answers_round_trip_through_json_in_their_wire_form() {
        let found = StateAnswer {
            ok: true,
            found: Some(true),
            value: Some("[1]".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&found).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ok": true, "found": true, "value": "[1]"})
        );
        assert_eq!(serde_json::from_value::<StateAnswer>(json).unwrap(), found);

        let refused = StateAnswer::refused("quota_exceeded", "too much");
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ok": false, "error": {"code": "quota_exceeded", "message": "too much"}})
        );
        assert_eq!(
            serde_json::from_value::<StateAnswer>(json).unwrap(),
            refused
        );
    }
}
