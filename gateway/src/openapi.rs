//! The OpenAPI 3.1 document of the HTTP API, generated from the Rust types (`skython openapi`
//! prints it; the committed copy in `docs/openapi.json` is checked by a test).

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};
use skython_crds::SkyFunctionSpec;

use crate::api::{
    FunctionList, FunctionView, InvocationList, Me, NOT_DEPLOYABLE, TestRunRequest, TestRunResponse,
};
use crate::contract::Snippets;

fn response(desc: &str, schema: Option<&str>) -> Value {
    match schema {
        Some(s) => {
            json!({"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}})
        }
        None => json!({"description": desc}),
    }
}

fn errors(codes: &[&str]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|c| (c.to_string(), response("Error", Some("Error"))))
        .collect()
}

fn op(
    summary: &str,
    ok_status: &str,
    ok: Value,
    error_codes: &[&str],
    body: Option<&str>,
    params: &[&str],
) -> Value {
    let mut responses = errors(error_codes);
    responses.insert(ok_status.into(), ok);
    let mut o = json!({"summary": summary, "responses": responses});
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}}});
    }
    let mut parameters: Vec<Value> = params
        .iter()
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}}))
        .collect();
    if summary.starts_with("List") || summary.contains("invocations") || summary.contains("logs") {
        let (name, desc) = if summary.starts_with("List functions") {
            ("owner", "Only this owner's functions")
        } else {
            ("limit", "How many, newest first (default 50, at most 1000)")
        };
        let schema = if name == "limit" {
            json!({"type": "integer", "minimum": 1})
        } else {
            json!({"type": "string"})
        };
        parameters.push(json!({"name": name, "in": "query", "required": false, "description": desc, "schema": schema}));
    }
    if !parameters.is_empty() {
        o["parameters"] = Value::Array(parameters);
    }
    o
}

pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    let mut generator = settings.into_generator();
    let mut schemas = serde_json::Map::new();
    for (name, schema) in [
        (
            "SkyFunctionSpec",
            generator.subschema_for::<SkyFunctionSpec>(),
        ),
        ("Function", generator.subschema_for::<FunctionView>()),
        ("FunctionList", generator.subschema_for::<FunctionList>()),
        (
            "TestRunRequest",
            generator.subschema_for::<TestRunRequest>(),
        ),
        (
            "TestRunResponse",
            generator.subschema_for::<TestRunResponse>(),
        ),
        (
            "InvocationList",
            generator.subschema_for::<InvocationList>(),
        ),
        ("Me", generator.subschema_for::<Me>()),
        ("Snippets", generator.subschema_for::<Snippets>()),
    ] {
        let v = schema.to_value();
        // Named types come back as references; keep the alias only when it adds a name.
        if v.get("$ref").and_then(Value::as_str) != Some(&format!("#/components/schemas/{name}")) {
            schemas.insert(name.into(), v);
        }
    }
    generator.subschema_for::<crate::error::ApiError>();
    for (name, schema) in generator.take_definitions(true) {
        schemas.insert(name, schema);
    }
    // The request body of a deploy: the fields a body may carry (`api::parse_spec`).
    if let Some(props) = schemas
        .get_mut("SkyFunctionSpec")
        .and_then(|s| s.get_mut("properties"))
        .and_then(Value::as_object_mut)
    {
        for field in NOT_DEPLOYABLE {
            props.remove(field);
        }
    }
    schemas.insert("Arguments".into(), json!({
        "description": "Keyword arguments as an object, or positional arguments as an array. An empty body calls with no arguments.",
        "oneOf": [{"type": "object"}, {"type": "array"}]
    }));
    let fp = ["owner", "endpoint"];
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Skython",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Plain Python functions as HTTP endpoints. Call a function with `POST /fn/{owner}/{endpoint}`; manage functions under `/api/v1` with `Authorization: Bearer <token>`."
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}],
        "paths": {
            "/fn/{owner}/{endpoint}": {"post": {
                "summary": "Call a function: the JSON body holds the arguments, the answer is the return value as JSON",
                "security": [],
                "parameters": fp.iter().map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}})).collect::<Vec<_>>(),
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Arguments"}}}},
                "responses": {
                    "200": {"description": "The return value", "content": {"application/json": {"schema": {}}}},
                    "400": response("Bad JSON (bad_json), or arguments that do not fit the signature or its type hints (bad_arguments; `param` names the parameter)", Some("Error")),
                    "404": response("No such function", Some("Error")),
                    "413": response("Body too large", Some("Error")),
                    "429": response("Every worker busy and the queue full", Some("Error")),
                    "500": response("The function raised, or its value cannot be encoded", Some("Error")),
                    "502": response("The worker died during the call", Some("Error")),
                    "503": response("The function's state storage cannot be reached (state_unavailable), or the runtime cannot start a worker: try again later", Some("Error")),
                    "504": response("The call ran past the function's timeout", Some("Error"))
                }
            }},
            "/api/v1/functions": {
                "post": op("Deploy a new function", "201", response("Deployed", Some("Function")), &["400", "401", "403", "409", "413"], Some("SkyFunctionSpec"), &[]),
                "get": op("List functions: your own and the public ones", "200", response("Functions", Some("FunctionList")), &["400", "401"], None, &[])
            },
            "/api/v1/functions/{owner}/{endpoint}": {
                "get": op("Read a function", "200", response("The function", Some("Function")), &["401", "404"], None, &fp),
                "put": op("Replace a function's spec (a new version); without `env`, the current environment variables are kept", "200", response("Deployed", Some("Function")), &["400", "401", "403", "404", "409", "413"], Some("SkyFunctionSpec"), &fp),
                "delete": op("Delete a function with its state and history", "204", response("Deleted", None), &["401", "403", "404"], None, &fp)
            },
            "/api/v1/functions/{owner}/{endpoint}/invocations": {
                "get": op("Recent invocations of a function", "200", response("Invocations", Some("InvocationList")), &["400", "401", "403", "404"], None, &fp)
            },
            "/api/v1/functions/{owner}/{endpoint}/logs": {
                "get": op("Recent logs of a function (calls that printed or failed)", "200", response("Invocations with logs", Some("InvocationList")), &["400", "401", "403", "404"], None, &fp)
            },
            "/api/v1/functions/{owner}/{endpoint}/openapi.json": {
                "get": op("The OpenAPI document of a function's endpoint, from its type hints", "200", json!({"description": "An OpenAPI 3.1 document", "content": {"application/json": {"schema": {"type": "object"}}}}), &["401", "404"], None, &fp)
            },
            "/api/v1/functions/{owner}/{endpoint}/snippets": {
                "get": op("Client code that calls a function (curl, Python, JavaScript, Swift, Kotlin)", "200", response("Snippets", Some("Snippets")), &["401", "404"], None, &fp)
            },
            "/api/v1/test-run": {
                "post": op("Run a draft once without deploying it", "200", response("The result, logs and duration", Some("TestRunResponse")), &["400", "401", "413"], Some("TestRunRequest"), &[])
            },
            "/api/v1/me": {
                "get": op("Who the token belongs to", "200", response("The user", Some("Me")), &["401"], None, &[])
            },
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Readiness: the runtime and the store answer", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics, for the admin's API token or the metrics token (`skython up --metrics-token`)",
                "responses": {
                    "200": {"description": "text exposition"},
                    "401": response("No token, or not a valid one", Some("Error")),
                    "403": response("A user's token that is not the admin's", Some("Error"))
                }
            }}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy must match what the code generates (`make generate` rewrites it).
    #[test]
    fn committed_openapi_is_current() {
        // Read at run time: a build reused from another checkout carries that checkout's path.
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let path = format!("{dir}/../docs/openapi.json");
        let fresh = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("SKYTHON_WRITE_GENERATED").is_some() {
            std::fs::write(&path, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == fresh,
            "docs/openapi.json is stale: run `make generate` and commit it"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
    }
}
