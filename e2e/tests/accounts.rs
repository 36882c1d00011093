//! People over the real server: sign-up, tokens, sessions, API keys that gate calls, login
//! throttling, browsers' CORS, and who a function is told called it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skython_e2e::Skython;
use skython_e2e::people::{PASSWORD, client, send};

fn call(s: &Skython, name: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    skython_e2e::people::call(s, name, json!({}), headers)
}

const WHO: &str = "import skython\n\ndef who():\n    return skython.caller()\n";

#[test]
fn a_new_user_signs_up_deploys_and_calls_with_a_key() {
    let s = Skython::start(&[]);
    let carol = s.sign_up("carol");
    let (status, me) = carol.api(reqwest::Method::GET, "/me", None);
    assert_eq!((status, me["name"].as_str()), (200, Some("carol")));
    carol.deploy("who", WHO, json!({}));

    let (status, body) = call(&s, "carol/who", &[]);
    assert_eq!(status, 401, "a private function needs a key: {body}");
    assert_eq!(body["error"]["code"], "key_required");

    let (id, key) = carol.key(&["carol/who"]);
    assert!(key.starts_with("sky_key_"));
    let (status, body) = call(&s, "carol/who", &[("x-api-key", &key)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"kind": "key", "id": id, "owner": "carol", "name": "my-app"})
    );
    let bearer = format!("Bearer {key}");
    assert_eq!(call(&s, "carol/who", &[("authorization", &bearer)]).0, 200);

    let (status, shown) = carol.api(reqwest::Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["usage"]["calls"], 2, "{shown}");
    assert!(shown.get("secret").is_none(), "shown once: {shown}");
}

#[test]
fn a_revoked_key_is_refused_at_once() {
    let s = Skython::start(&[]);
    let dan = s.sign_up("dan");
    dan.deploy("who", WHO, json!({}));
    let (id, key) = dan.key(&["dan/*"]);
    assert_eq!(call(&s, "dan/who", &[("x-api-key", &key)]).0, 200);
    let (status, _) = dan.api(reqwest::Method::DELETE, &format!("/keys/{id}"), None);
    assert_eq!(status, 204);
    let (status, body) = call(&s, "dan/who", &[("x-api-key", &key)]);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_key"))
    );
}

#[test]
fn the_function_is_told_who_called_never_their_state() {
    let s = Skython::start(&[]);
    let erin = s.sign_up("erin");
    let frank = s.sign_up("frank");
    erin.deploy(
        "counter",
        "import skython\n\ndef counter():\n    return [skython.caller(), skython.incr('n')]\n",
        json!({"visibility": "public"}),
    );
    let (status, body) = call(&s, "erin/counter", &[]);
    assert_eq!((status, &body), (200, &json!([{"kind": "anonymous"}, 1])));
    let bearer = format!("Bearer {}", frank.token);
    let (status, body) = call(&s, "erin/counter", &[("authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([{"kind": "user", "name": "frank"}, 2]),
        "frank's call counts in erin's state"
    );
}

#[test]
fn wrong_passwords_are_slowed_down_then_refused_and_counted() {
    let s = Skython::start(&[]);
    s.sign_up("gina");
    let login = |password: &str| {
        send(
            client()
                .post(format!("{}/api/v1/sessions", s.url))
                .json(&json!({"name": "gina", "password": password})),
        )
    };
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = login("wrong password");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("invalid_credentials"))
        );
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }
    let (status, body) = login(PASSWORD);
    assert_eq!(
        status, 429,
        "the right password too, once throttled: {body}"
    );
    assert_eq!(body["error"]["code"], "too_many_attempts");
    assert_eq!(
        s.metric("skython_login_failures_total{reason=\"wrong_password\"}"),
        Some(5.0)
    );
}

#[test]
fn a_browser_session_is_an_http_only_cookie_and_its_writes_need_this_origin() {
    let s = Skython::start(&[]);
    s.sign_up("hana");
    let resp = client()
        .post(format!("{}/api/v1/sessions", s.url))
        .json(&json!({"name": "hana", "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();

    let (status, me) = send(
        client()
            .get(format!("{}/api/v1/me", s.url))
            .header("cookie", &cookie),
    );
    assert_eq!((status, me["name"].as_str()), (200, Some("hana")));

    let new_token = |origin: Option<&str>| {
        let mut req = client()
            .post(format!("{}/api/v1/tokens", s.url))
            .header("cookie", &cookie)
            .json(&json!({"name": "laptop"}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        send(req)
    };
    let (status, body) = new_token(Some("https://evil.example"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("csrf_check_failed"))
    );
    assert_eq!(new_token(None).0, 403);
    let (status, body) = new_token(Some(&s.url));
    assert_eq!(status, 201, "{body}");
    assert!(body["secret"].as_str().unwrap().starts_with("sky_pat_"));

    let (status, _) = send(
        client()
            .delete(format!("{}/api/v1/sessions/current", s.url))
            .header("cookie", &cookie)
            .header("origin", &s.url),
    );
    assert_eq!(status, 204);
    let (status, _) = send(
        client()
            .get(format!("{}/api/v1/me", s.url))
            .header("cookie", &cookie),
    );
    assert_eq!(status, 401, "the session ended");
}

#[test]
fn browsers_get_cors_answers_for_preflights_and_calls() {
    let s = Skython::start(&[]);
    let ivan = s.sign_up("ivan");
    ivan.deploy("who", WHO, json!({"visibility": "public"}));
    ivan.deploy(
        "narrow",
        WHO,
        json!({"visibility": "public", "allowedOrigins": ["https://app.example"]}),
    );
    let resp = client()
        .request(reqwest::Method::OPTIONS, format!("{}/fn/ivan/who", s.url))
        .header("origin", "https://page.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-api-key")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    assert!(h.get("access-control-allow-credentials").is_none());

    let resp = client()
        .post(format!("{}/fn/ivan/who", s.url))
        .header("origin", "https://page.example")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    let narrow = |origin: &str| {
        client()
            .post(format!("{}/fn/ivan/narrow", s.url))
            .header("origin", origin)
            .body("{}")
            .send()
            .unwrap()
    };
    let ok = narrow("https://app.example");
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        narrow("https://other.example")
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[test]
fn sign_up_can_be_closed_or_by_invitation() {
    let closed = Skython::start(&["--signup", "closed"]);
    let (status, body) = send(
        client()
            .post(format!("{}/api/v1/accounts", closed.url))
            .json(&json!({"name": "jo", "password": PASSWORD})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("signup_closed"))
    );

    let invite = Skython::start(&["--signup", "invite"]);
    let (status, body) = send(
        client()
            .post(format!("{}/api/v1/accounts", invite.url))
            .json(&json!({"name": "jo", "password": PASSWORD})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("signup_by_invitation"))
    );
    let (status, body) = invite.api(
        reqwest::Method::POST,
        "/accounts",
        Some(json!({"name": "jo", "password": PASSWORD})),
    );
    assert_eq!(status, 201, "the admin invites: {body}");
}

#[test]
fn nobody_calls_another_owners_gated_function_but_with_its_key() {
    let s = Skython::start(&[]);
    let kim = s.sign_up("kim");
    let lee = s.sign_up("lee");
    kim.deploy("who", WHO, json!({}));
    lee.deploy("mine", WHO, json!({}));
    let (_, kims_key) = kim.key(&["kim/who"]);
    let (_, lees_key) = lee.key(&["lee/*"]);
    let lees_token = format!("Bearer {}", lee.token);
    for (headers, want, code) in [
        (vec![], 401, "key_required"),
        (
            vec![("authorization", lees_token.as_str())],
            403,
            "key_not_allowed",
        ),
        (
            vec![("x-api-key", lees_key.as_str())],
            403,
            "key_not_allowed",
        ),
        (vec![("x-api-key", "sky_key_guessed")], 401, "invalid_key"),
    ] {
        let (status, body) = call(&s, "kim/who", &headers);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (want, Some(code)),
            "{headers:?}"
        );
    }
    assert_eq!(call(&s, "kim/who", &[("x-api-key", &kims_key)]).0, 200);
    assert_eq!(
        kim.call("kim/who", json!({})).0,
        200,
        "the owner's own token"
    );
}

#[test]
fn sign_ups_from_one_address_are_bounded() {
    let s = Skython::start(&[]);
    for i in 0..100 {
        s.sign_up(&format!("user{i}"));
    }
    let (status, body) = send(
        client()
            .post(format!("{}/api/v1/accounts", s.url))
            .json(&json!({"name": "user10", "password": PASSWORD})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
    let (status, body) = s.api(
        reqwest::Method::POST,
        "/accounts",
        Some(json!({"name": "user100", "password": PASSWORD})),
    );
    assert_eq!(status, 201, "the admin is not limited: {body}");
}
