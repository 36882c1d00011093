//! "Runs as" through a real `skython up`: a function learns who called it from
//! `skython.caller()`, and runs as its owner whoever that is.

use reqwest::Method;
use serde_json::json;
use skython_e2e::Skython;

const WHO_CALLED: &str = "from skython import caller\n\ndef who():\n    return caller()\n";

#[test]
fn a_plain_call_tells_the_function_it_is_anonymous() {
    let s = Skython::start(&[]);
    s.deploy_ok("who", WHO_CALLED, json!({}));
    assert_eq!(
        s.call("admin/who", json!({})),
        (200, json!({"kind": "anonymous"}))
    );
}

#[test]
fn a_test_run_tells_the_draft_it_is_called_by_the_user_running_it() {
    let s = Skython::start(&[]);
    let (status, body) = s.api(
        Method::POST,
        "/test-run",
        Some(json!({"source": WHO_CALLED})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"kind": "user", "name": "admin"}));
}
