//! Validation of a `SkyFunctionSpec`: pure checks that return every problem at once, each naming
//! its field, so an API client can fix them all in one round.

use std::collections::HashSet;

use serde::Serialize;

use crate::SkyFunctionSpec;

/// Largest accepted source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;
const MAX_DESCRIPTION_CHARS: usize = 4000;
const MAX_TAGS: usize = 20;
const MAX_TAG_CHARS: usize = 40;
const MAX_ENV: usize = 64;
const MAX_ORIGINS: usize = 32;
const MAX_ENV_VALUE_BYTES: usize = 32 << 10;
const MIN_MEMORY: u64 = 64 << 20;
const MAX_MEMORY: u64 = 64 << 30;
/// Most replicas a function may ask for (`replicas`, `scaling.maxReplicas`).
const MAX_REPLICAS: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field's path in the spec, e.g. `scaling.maxReplicas` or `tags[2]`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// RFC 1123 label: 1–63 lowercase letters, digits and '-', starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// What a browser sends in `Origin`: `scheme://host[:port]`, lowercase, nothing after.
fn is_origin(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let host = match rest.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => rest,
    };
    let name = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.';
    let ipv6 = |h: &str| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|a| !a.is_empty() && a.bytes().all(|c| c.is_ascii_hexdigit() || c == b':'))
    };
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && host.len() <= 253
        && (host.bytes().all(name) || ipv6(host))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Kubernetes memory quantity (`512Mi`, `1Gi`, `1G`, `1048576`) in bytes.
pub fn parse_memory_bytes(q: &str) -> Option<u64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Kubernetes CPU quantity (`500m`, `1`, `2`) in millicores.
pub fn parse_cpu_millis(q: &str) -> Option<u64> {
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<u64>().ok()?.checked_mul(1000),
    }
}

pub(crate) fn spec(s: &SkyFunctionSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |field: &str, message: String| {
        errs.push(FieldError {
            field: field.into(),
            message,
        })
    };
    const LABEL: &str =
        "must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";

    if !is_dns_label(&s.owner) {
        err("owner", format!("{LABEL}, got {:?}", s.owner));
    }
    if !is_dns_label(&s.endpoint) {
        err("endpoint", format!("{LABEL}, got {:?}", s.endpoint));
    }
    if s.source.trim().is_empty() {
        err("source", "must contain Python code".into());
    } else if s.source.len() > MAX_SOURCE_BYTES {
        err(
            "source",
            format!(
                "is {} bytes, more than the limit of {MAX_SOURCE_BYTES}",
                s.source.len()
            ),
        );
    }
    if let Some(e) = &s.entrypoint
        && !is_identifier(e)
    {
        err(
            "entrypoint",
            format!("must be a Python identifier, got {e:?}"),
        );
    }
    if s.description.chars().count() > MAX_DESCRIPTION_CHARS {
        err(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        );
    }
    if s.tags.len() > MAX_TAGS {
        err(
            "tags",
            format!("at most {MAX_TAGS} tags, got {}", s.tags.len()),
        );
    }
    let mut seen = HashSet::new();
    for (i, t) in s.tags.iter().enumerate() {
        let ok = !t.is_empty()
            && t.len() <= MAX_TAG_CHARS
            && t.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !ok {
            err(
                &format!("tags[{i}]"),
                format!("must be 1-{MAX_TAG_CHARS} lowercase letters, digits or '-', got {t:?}"),
            );
        } else if !seen.insert(t) {
            err(&format!("tags[{i}]"), format!("duplicate tag {t:?}"));
        }
    }
    for (i, o) in s.allowed_origins.iter().flatten().enumerate() {
        if !is_origin(o) {
            err(
                &format!("allowedOrigins[{i}]"),
                format!(
                    "must be \"*\" or an origin such as \"https://example.com\" or \
                     \"http://localhost:8080\" (scheme, host and port only), got {o:?}"
                ),
            );
        }
    }
    if s.allowed_origins
        .as_ref()
        .is_some_and(|l| l.len() > MAX_ORIGINS)
    {
        err("allowedOrigins", format!("at most {MAX_ORIGINS} origins"));
    }
    match parse_cpu_millis(&s.resources.cpu) {
        Some(m) if m > 0 => {}
        _ => err(
            "resources.cpu",
            format!(
                "must be a CPU quantity such as \"500m\" or \"1\", got {:?}",
                s.resources.cpu
            ),
        ),
    }
    match parse_memory_bytes(&s.resources.memory) {
        Some(b) if (MIN_MEMORY..=MAX_MEMORY).contains(&b) => {}
        Some(_) => err(
            "resources.memory",
            format!(
                "must be between 64Mi and 64Gi, got {:?}",
                s.resources.memory
            ),
        ),
        None => err(
            "resources.memory",
            format!(
                "must be a memory quantity such as \"256Mi\" or \"1Gi\", got {:?}",
                s.resources.memory
            ),
        ),
    }
    if !(1..=900).contains(&s.timeout_seconds) {
        err(
            "timeoutSeconds",
            format!("must be 1-900, got {}", s.timeout_seconds),
        );
    }
    if !(1..=64).contains(&s.concurrency) {
        err(
            "concurrency",
            format!("must be 1-64, got {}", s.concurrency),
        );
    }
    let sc = &s.scaling;
    if !(1..=MAX_REPLICAS).contains(&sc.max_replicas) {
        err(
            "scaling.maxReplicas",
            format!("must be 1-{MAX_REPLICAS}, got {}", sc.max_replicas),
        );
    }
    if sc.min_replicas > sc.max_replicas {
        err(
            "scaling.minReplicas",
            format!(
                "must not exceed maxReplicas ({}), got {}",
                sc.max_replicas, sc.min_replicas
            ),
        );
    }
    if let Some(n) = s.replicas
        && n > MAX_REPLICAS
    {
        err("replicas", format!("must be 0-{MAX_REPLICAS}, got {n}"));
    }
    if let Some(t) = sc.target_concurrency
        && !(1..=64).contains(&t)
    {
        err(
            "scaling.targetConcurrency",
            format!("must be 1-64, got {t}"),
        );
    }
    if !(1..=86400).contains(&sc.idle_seconds_to_zero) {
        err(
            "scaling.idleSecondsToZero",
            format!("must be 1-86400, got {}", sc.idle_seconds_to_zero),
        );
    }
    if s.env.len() > MAX_ENV {
        err(
            "env",
            format!("at most {MAX_ENV} variables, got {}", s.env.len()),
        );
    }
    let mut names = HashSet::new();
    for (i, e) in s.env.iter().enumerate() {
        let field = format!("env[{i}].name");
        if !is_identifier(&e.name) {
            err(
                &field,
                format!("must match [A-Za-z_][A-Za-z0-9_]*, got {:?}", e.name),
            );
        } else if e.name.starts_with("SKYTHON_") {
            err(
                &field,
                format!("the SKYTHON_ prefix is reserved, got {:?}", e.name),
            );
        } else if !names.insert(&e.name) {
            err(&field, format!("duplicate variable {:?}", e.name));
        }
        if e.value.len() > MAX_ENV_VALUE_BYTES {
            err(
                &format!("env[{i}].value"),
                format!("must be at most {MAX_ENV_VALUE_BYTES} bytes"),
            );
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EnvVar, SkyFunctionSpec};

    fn fields(s: &SkyFunctionSpec) -> Vec<String> {
        s.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(
            SkyFunctionSpec::new("alice", "add", "def add(a, b): return a + b")
                .validate()
                .is_empty()
        );
    }

    #[test]
    fn allowed_origins_are_star_or_bare_origins() {
        let mut s = SkyFunctionSpec::new("alice", "add", "def add(a, b): return a + b");
        s.allowed_origins = Some(
            [
                "*",
                "https://example.com",
                "http://localhost:8080",
                "http://[::1]:3000",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        for bad in [
            "example.com",
            "https://example.com/",
            "https://Example.com",
            "ftp://x",
            "https://a.com:x",
            "",
        ] {
            s.allowed_origins = Some(vec![bad.into()]);
            assert_eq!(fields(&s), ["allowedOrigins[0]"], "{bad}");
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "add", "my-fn-2", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Add",
            "a_b",
            "a.b",
            "../x",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut s = SkyFunctionSpec::new("Bad Owner", "x/..", "  ");
        s.entrypoint = Some("1abc".into());
        s.tags = vec!["ok".into(), "ok".into(), "NO".into()];
        s.timeout_seconds = 0;
        s.concurrency = 65;
        s.scaling.min_replicas = 20;
        s.resources.memory = "lots".into();
        s.resources.cpu = "0".into();
        s.env = vec![
            EnvVar {
                name: "SKYTHON_TOKEN".into(),
                value: String::new(),
            },
            EnvVar {
                name: "A-B".into(),
                value: String::new(),
            },
        ];
        assert_eq!(
            fields(&s),
            [
                "owner",
                "endpoint",
                "source",
                "entrypoint",
                "tags[1]",
                "tags[2]",
                "resources.cpu",
                "resources.memory",
                "timeoutSeconds",
                "concurrency",
                "scaling.minReplicas",
                "env[0].name",
                "env[1].name",
            ]
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_memory_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_memory_bytes("1.5Gi"), None);
        assert_eq!(parse_memory_bytes("99999999999999Gi"), None);
        assert_eq!(parse_cpu_millis("500m"), Some(500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis("two"), None);
    }

    #[test]
    fn replicas_are_bounded_like_max_replicas() {
        let mut s = SkyFunctionSpec::new("a", "b", "x = 1");
        s.replicas = Some(100);
        assert!(s.validate().is_empty());
        s.replicas = Some(101);
        assert_eq!(
            s.validate(),
            [FieldError {
                field: "replicas".into(),
                message: "must be 0-100, got 101".into()
            }]
        );
    }

    #[test]
    fn memory_bounds() {
        let mut s = SkyFunctionSpec::new("a", "b", "x = 1");
        s.resources.memory = "1Mi".into();
        assert_eq!(fields(&s), ["resources.memory"]);
    }
}
