//! People signing up on a running server and using the API with their own token.

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{Value, json};

use crate::Skython;

pub const PASSWORD: &str = "correct horse battery";

/// An HTTP client with no credentials of its own.
pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Status and JSON body (or the text as a JSON string).
pub fn send(req: RequestBuilder) -> (u16, Value) {
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /fn/{name}` with `args` and extra headers, without credentials unless given.
pub fn call(s: &Skython, name: &str, args: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}/fn/{name}", s.url))
        .body(args.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req)
}

pub struct Person<'a> {
    pub s: &'a Skython,
    pub name: String,
    pub token: String,
}

impl Skython {
    /// Signs `name` up with [`PASSWORD`].
    pub fn sign_up(&self, name: &str) -> Person<'_> {
        let (status, body) = send(
            client()
                .post(format!("{}/api/v1/accounts", self.url))
                .json(&json!({"name": name, "password": PASSWORD})),
        );
        assert_eq!(status, 201, "sign-up of {name}: {body}");
        Person {
            s: self,
            name: name.to_string(),
            token: body["token"].as_str().expect("token").to_string(),
        }
    }
}

impl Person<'_> {
    pub fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = client()
            .request(method, format!("{}/api/v1{path}", self.s.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        send(req)
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.api(reqwest::Method::GET, path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Deploys `source` as `endpoint` with more spec fields; asserts it is created.
    pub fn deploy(&self, endpoint: &str, source: &str, more: Value) -> Value {
        let mut spec = json!({"endpoint": endpoint, "source": source});
        if let (Some(s), Some(m)) = (spec.as_object_mut(), more.as_object()) {
            s.extend(m.clone());
        }
        let (status, body) = self.api(reqwest::Method::POST, "/functions", Some(spec));
        assert_eq!(status, 201, "deploy {endpoint}: {body}");
        body
    }

    /// A new API key scoped to `functions`: (id, secret).
    pub fn key(&self, functions: &[&str]) -> (String, String) {
        let (status, body) = self.api(
            reqwest::Method::POST,
            "/keys",
            Some(json!({"name": "my-app", "functions": functions})),
        );
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().expect("id").to_string(),
            body["secret"].as_str().expect("secret").to_string(),
        )
    }

    /// Calls `name` with this person's token.
    pub fn call(&self, name: &str, args: Value) -> (u16, Value) {
        let bearer = format!("Bearer {}", self.token);
        call(self.s, name, args, &[("authorization", &bearer)])
    }
}
