//! The skybox over the real server: search, a function's public page, clones that share
//! nothing but the code, numbered versions, pinned calls and rollback.

use serde_json::json;
use skython_e2e::Skython;
use skython_e2e::people::{call, client, send};

const CONVERT: &str = "def to_fahrenheit(celsius: float) -> float:\n    \"\"\"Degrees Celsius in Fahrenheit.\"\"\"\n    return celsius * 9 / 5 + 32\n";

fn search(s: &Skython, query: &str) -> Vec<String> {
    let (status, body) = send(client().get(format!("{}/api/v1/skybox?{query}", s.url)));
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["owner"].as_str().unwrap(),
                i["endpoint"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn anyone_finds_a_public_function_by_a_word_of_its_description_but_never_a_private_one() {
    let s = Skython::start(&[]);
    let ann = s.sign_up("ann");
    let more = json!({"visibility": "public", "description": "Converts a thermometer reading", "tags": ["units"]});
    ann.deploy("to-fahrenheit", CONVERT, more);
    ann.deploy(
        "secret-thermometer",
        CONVERT,
        json!({"description": "thermometer"}),
    );
    assert_eq!(search(&s, "q=thermometer"), ["ann/to-fahrenheit"]);
    assert_eq!(
        search(&s, "q=celsius&tag=units"),
        ["ann/to-fahrenheit"],
        "a parameter name"
    );
    assert!(search(&s, "q=thermometer&tag=finance").is_empty());

    let (status, _) = ann.api(
        reqwest::Method::DELETE,
        "/functions/ann/to-fahrenheit",
        None,
    );
    assert_eq!(status, 204);
    assert!(
        search(&s, "q=thermometer").is_empty(),
        "a deleted function is gone"
    );
}

#[test]
fn a_clone_copies_the_code_never_the_state_and_the_origin_counts_it() {
    let s = Skython::start(&[]);
    let ann = s.sign_up("ann");
    let bob = s.sign_up("bob");
    let counter = "import skython\n\ndef count():\n    return skython.incr('n')\n";
    ann.deploy(
        "counter",
        counter,
        json!({"visibility": "public", "env": [{"name": "TOKEN", "value": "ann-secret"}]}),
    );
    assert_eq!(ann.call("ann/counter", json!({})).1, 1);
    assert_eq!(ann.call("ann/counter", json!({})).1, 2);

    let (status, clone) = bob.api(
        reqwest::Method::POST,
        "/functions/ann/counter/clone",
        Some(json!({"endpoint": "my-counter"})),
    );
    assert_eq!(status, 201, "{clone}");
    assert_eq!(clone["stats"]["clonedFrom"], "ann/counter");
    assert_eq!(clone["source"], counter);
    assert!(!clone.to_string().contains("ann-secret"), "{clone}");
    assert_eq!(
        bob.call("bob/my-counter", json!({})).1,
        1,
        "the clone starts from nothing"
    );
    assert_eq!(
        ann.call("ann/counter", json!({})).1,
        3,
        "and the origin kept its own"
    );

    let page = ann.get("/functions/ann/counter");
    assert_eq!(page["stats"]["clones"], 1, "{page}");
    assert!(page["stats"]["calls"].as_u64().unwrap() >= 2, "{page}");
}

#[test]
fn a_private_function_cannot_be_cloned_by_others() {
    let s = Skython::start(&[]);
    let ann = s.sign_up("ann");
    let bob = s.sign_up("bob");
    ann.deploy("hidden", CONVERT, json!({}));
    let (status, body) = bob.api(reqwest::Method::POST, "/functions/ann/hidden/clone", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("function_not_found"))
    );
}

#[test]
fn every_deploy_is_a_version_that_can_be_called_pinned_and_rolled_back_to() {
    let s = Skython::start(&[]);
    let ann = s.sign_up("ann");
    let v = |n: u32| format!("def main():\n    return {n}\n");
    ann.deploy("ver", &v(1), json!({}));
    let (status, body) = ann.api(
        reqwest::Method::PUT,
        "/functions/ann/ver",
        Some(json!({"source": v(2)})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(ann.call("ann/ver", json!({})).1, 2);
    assert_eq!(ann.call("ann/ver@1", json!({})).1, 1, "pinned to version 1");
    let (status, body) = ann.call("ann/ver@9", json!({}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("function_not_found"))
    );

    let versions = ann.get("/functions/ann/ver/versions");
    let listed: Vec<(i64, bool)> = versions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [(2, true), (1, false)]);
    assert_eq!(ann.get("/functions/ann/ver/versions/1")["source"], v(1));

    let (status, body) = ann.api(
        reqwest::Method::POST,
        "/functions/ann/ver/rollback",
        Some(json!({"version": 1})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"], 3);
    assert_eq!(ann.call("ann/ver", json!({})).1, 1);
    let latest = &ann.get("/functions/ann/ver/versions")["items"][0];
    assert_eq!(
        (latest["version"].as_i64(), latest["restoredFrom"].as_i64()),
        (Some(3), Some(1))
    );
}

#[test]
fn another_owners_versions_are_not_theirs_to_read_or_roll_back() {
    let s = Skython::start(&[]);
    let ann = s.sign_up("ann");
    let bob = s.sign_up("bob");
    ann.deploy("open", CONVERT, json!({"visibility": "public"}));
    ann.deploy("shut", CONVERT, json!({}));
    for (path, want) in [("open", 403), ("shut", 404)] {
        let (status, _) = bob.api(
            reqwest::Method::GET,
            &format!("/functions/ann/{path}/versions"),
            None,
        );
        assert_eq!(status, want, "{path}");
        let (status, _) = bob.api(
            reqwest::Method::POST,
            &format!("/functions/ann/{path}/rollback"),
            Some(json!({"version": 1})),
        );
        assert_eq!(status, want, "{path}");
    }
    let (status, body) = call(&s, "ann/shut@1", json!({"celsius": 1}), &[]);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("key_required")),
        "pinned calls are gated too"
    );
}

#[test]
fn a_pinned_version_is_gated_as_the_function_is_now() {
    let s = Skython::start(&[]);
    let ann = s.sign_up("ann");
    ann.deploy(
        "was-open",
        "def main():\n    return 1\n",
        json!({"access": "public"}),
    );
    assert_eq!(call(&s, "ann/was-open", json!({}), &[]).0, 200);
    let (status, body) = ann.api(
        reqwest::Method::PUT,
        "/functions/ann/was-open",
        Some(json!({"source": "def main():\n    return 2\n", "access": "key"})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&s, "ann/was-open@1", json!({}), &[]);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("key_required"))
    );
    assert_eq!(ann.call("ann/was-open@1", json!({})), (200, json!(1)));
}
