//! Functions' contracts over the real `skython up` process: each deployed function's OpenAPI
//! document validates (openapi-spec-validator, `$SKYTHON_OPENAPI_PYTHON`, installed by
//! `make venv-openapi`), a request built from its example succeeds, arguments that do not fit
//! the hints are refused naming the parameter, and the client snippets run as pasted. The
//! platform's own document validates too.

use std::process::Command;

use serde_json::{Value, json};
use skython_e2e::Skython;

/// Functions with varied hints: (endpoint, source, public).
const FUNCTIONS: &[(&str, &str, bool)] = &[
    (
        "mean",
        "import numpy as np\n\ndef mean(xs: list[float], trim: float = 0.0) -> float:\n    \"\"\"The mean of xs.\"\"\"\n    return float(np.mean(np.array(xs, dtype=float)))\n",
        false,
    ),
    (
        "greet",
        "from typing import Literal, Optional\n\ndef greet(name: str, *, style: Literal['plain', 'loud'] = 'plain', times: Optional[int] = None) -> str:\n    s = 'hello ' + name\n    return s.upper() if style == 'loud' else s\n",
        true,
    ),
    (
        "scores",
        "def scores(table: dict[str, list[int]], pair: tuple[int, str] = (1, 'a'), **weights: float) -> dict[str, float]:\n    return {k: sum(v) / len(v) for k, v in table.items()}\n",
        true,
    ),
    (
        "head",
        "import pandas as pd\n\ndef head(rows: list[dict[str, float]], n: int = 2, /) -> list:\n    return pd.DataFrame(rows).head(n).to_dict('records')\n",
        false,
    ),
    ("add", "def add(a, b):\n    return a + b\n", true),
    (
        "matrix",
        "import numpy as np\n\ndef matrix(m: np.ndarray, *rest: int) -> 'np.ndarray':\n    return np.asarray(m) * 2\n",
        true,
    ),
    (
        "echo",
        "def echo(text: str = 'say \"hi\" \\\\ caf\\u00e9 $x') -> str:\n    return text\n",
        true,
    ),
];

fn openapi_python() -> String {
    std::env::var("SKYTHON_OPENAPI_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs openapi-spec-validator on `doc`; Err(its report) when the document is invalid.
fn validate(doc: &Value) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = Command::new(openapi_python())
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))",
        ])
        .arg(&path)
        .output()
        .expect("run the validator's Python (make venv-openapi; SKYTHON_OPENAPI_PYTHON)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn deploy_all(s: &Skython) {
    for (endpoint, source, public) in FUNCTIONS {
        let visibility = if *public { "public" } else { "private" };
        s.deploy_ok(endpoint, source, json!({"visibility": visibility}));
    }
}

fn document(s: &Skython, endpoint: &str) -> Value {
    let (status, doc) = s.api(
        reqwest::Method::GET,
        &format!("/functions/admin/{endpoint}/openapi.json"),
        None,
    );
    assert_eq!(status, 200, "{endpoint}: {doc}");
    doc
}

#[test]
fn the_platforms_document_validates() {
    let s = Skython::start(&[]);
    let (status, doc) = s.get("/api/openapi.json");
    assert_eq!(status, 200, "{doc}");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    if let Err(report) = validate(&doc) {
        panic!("openapi-spec-validator refused /api/openapi.json:\n{report}");
    }
}

#[test]
fn every_functions_document_validates_and_its_example_call_succeeds() {
    let s = Skython::start(&[]);
    deploy_all(&s);
    let http = reqwest::blocking::Client::new();
    for (endpoint, _, _) in FUNCTIONS {
        let doc = document(&s, endpoint);
        if let Err(report) = validate(&doc) {
            panic!("{endpoint}: openapi-spec-validator refused the document:\n{report}\n{doc:#}");
        }
        // The request the document describes: its server, its path, its example body.
        let server = doc["servers"][0]["url"].as_str().unwrap();
        let (path, item) = doc["paths"].as_object().unwrap().iter().next().unwrap();
        let body = &item["post"]["requestBody"]["content"]["application/json"]["example"];
        let resp = http
            .post(format!("{server}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            status,
            200,
            "{endpoint} with {body}: {}",
            resp.text().unwrap()
        );
    }
}

#[test]
fn arguments_that_do_not_fit_are_refused_naming_the_parameter() {
    let s = Skython::start(&[]);
    deploy_all(&s);
    for (endpoint, args, param) in [
        ("mean", json!({"xs": "oops"}), "xs"),
        ("greet", json!({"name": "a", "style": "quiet"}), "style"),
        ("scores", json!({"table": {"a": [1, 2.5]}}), "table"),
        ("scores", json!({"table": {}, "w": "heavy"}), "w"),
        ("head", json!([[{"a": "1"}]]), "rows"),
        ("matrix", json!([[1, 2], 3, "4"]), "rest"),
    ] {
        let (status, body) = s.call(&format!("admin/{endpoint}"), args.clone());
        assert_eq!(status, 400, "{endpoint} {args}: {body}");
        assert_eq!(body["error"]["code"], "bad_arguments", "{body}");
        assert_eq!(body["error"]["param"], param, "{endpoint} {args}: {body}");
    }
    // What fits runs, an int where a float is hinted included.
    assert_eq!(
        s.call("admin/mean", json!({"xs": [1, 2]})),
        (200, json!(1.5))
    );
    assert_eq!(
        s.call("admin/matrix", json!([[1, 2], 3])),
        (200, json!([2, 4]))
    );
}

#[test]
fn snippets_run_as_pasted() {
    let s = Skython::start(&[]);
    deploy_all(&s);
    let (status, snippets) = s.api(reqwest::Method::GET, "/functions/admin/echo/snippets", None);
    assert_eq!(status, 200, "{snippets}");
    let expected = "say \"hi\" \\ caf\u{e9} $x";

    let out = Command::new("bash")
        .args(["-c", snippets["curl"].as_str().unwrap()])
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("curl: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(answer, json!(expected));

    // The standard runtime's Python has `requests`.
    let python = std::env::var("SKYTHON_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args(["-c", snippets["python"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), expected);

    // Node, where the machine has it (fetch and top-level await: a module).
    if let Ok(out) = Command::new("node")
        .args([
            "--input-type=module",
            "-e",
            snippets["javascript"].as_str().unwrap(),
        ])
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), expected);
    }

    // A gated function's snippets carry the key header for the user to fill in.
    s.deploy_ok("gated", FUNCTIONS[0].1, json!({"access": "key"}));
    let (_, gated) = s.api(
        reqwest::Method::GET,
        "/functions/admin/gated/snippets",
        None,
    );
    assert!(
        gated["curl"]
            .as_str()
            .unwrap()
            .contains("X-Api-Key: YOUR_API_KEY"),
        "{gated}"
    );
}
