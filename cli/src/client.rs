//! The client commands for functions: deploy, invoke, logs, ls; and what every client command
//! shares (the server, its errors, the config file). People, keys and the skybox are in
//! [`crate::people`].
//!
//! Server URL and token come from flags, then `SKYTHON_URL`/`SKYTHON_TOKEN`, then the config file
//! (`$SKYTHON_CONFIG`, else `~/.config/skython/config.json`, written by `skython login` and
//! `skython signup`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Args, Debug, Clone)]
pub struct Server {
    /// Server URL [env: SKYTHON_URL; config file; default http://127.0.0.1:8080]
    #[arg(long, global = true)]
    pub(crate) url: Option<String>,
    /// API token [env: SKYTHON_TOKEN; config file]
    #[arg(long, global = true)]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Config {
    url: Option<String>,
    token: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKYTHON_CONFIG") {
        return Some(p.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("skython").join("config.json"))
}

fn read_config() -> Config {
    config_path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Saves the server and token for the next commands (readable by the user only: the token is
/// a secret); returns where.
pub(crate) fn save_config(url: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = config_path().ok_or_else(|| anyhow!("no HOME; set SKYTHON_CONFIG"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cfg = Config {
        url: Some(url.to_string()),
        token: Some(token.to_string()),
    };
    let bytes = serde_json::to_vec_pretty(&cfg)?;
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // Created 0600, so the token is never readable by others, even for a moment.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
    }
    #[cfg(not(unix))]
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) token: Option<String>,
}

impl Client {
    pub(crate) fn new(s: &Server) -> anyhow::Result<Client> {
        let cfg = read_config();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = s
            .url
            .clone()
            .or_else(|| env("SKYTHON_URL"))
            .or(cfg.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = s
            .token
            .clone()
            .or_else(|| env("SKYTHON_TOKEN"))
            .or(cfg.token);
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            url: url.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = self.token.as_ref().ok_or_else(|| {
            anyhow!("no API token: pass --token, set SKYTHON_TOKEN, or run `skython login` (the admin token is printed by `skython up` and saved in .skython/admin.token)")
        })?;
        Ok(self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token))
    }

    /// A request without the token (sign-up, login, search).
    pub(crate) fn bare(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// Sends a request; the answer's JSON when it succeeded, else the server's error.
    pub(crate) async fn ok(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok(body)
    }

    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let resp = req.send().await.with_context(|| {
            format!(
                "could not reach Skython at {} (is `skython up` running?)",
                self.url
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, body))
    }
}

/// `error: <message> (<status>, <code>)` from the common error shape.
pub(crate) fn api_error(status: reqwest::StatusCode, body: &Value) -> anyhow::Error {
    let e = &body["error"];
    let mut msg = format!(
        "{} ({status}",
        e["message"].as_str().unwrap_or("request failed")
    );
    if let Some(code) = e["code"].as_str() {
        msg.push_str(&format!(", {code}"));
    }
    msg.push(')');
    if let (Some(line), Some(text)) = (e["line"].as_u64(), e["text"].as_str()) {
        let col = e["column"].as_u64().unwrap_or(1).max(1) as usize;
        msg.push_str(&format!(
            "\n  {line} | {text}\n  {} | {}^",
            " ".repeat(line.to_string().len()),
            " ".repeat(col - 1)
        ));
    }
    anyhow!(msg)
}

pub(crate) fn split_name(name: &str) -> anyhow::Result<(&str, &str)> {
    name.split_once('/')
        .filter(|(o, e)| !o.is_empty() && !e.is_empty() && !e.contains('/'))
        .ok_or_else(|| anyhow!("expected OWNER/ENDPOINT, got {name:?}"))
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The Python file.
    file: PathBuf,
    /// Endpoint name (lowercase letters, digits, '-'). Default: the file name.
    #[arg(long)]
    endpoint: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// List the function in the public catalogue.
    #[arg(long, conflicts_with = "private")]
    public: bool,
    /// Keep the function out of the public catalogue (the default for new functions).
    #[arg(long)]
    private: bool,
    #[arg(long)]
    description: Option<String>,
    /// The function to call (default: `main`, else the only public function).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Call timeout in seconds.
    #[arg(long)]
    timeout: Option<u32>,
    /// Calls served at once (worker processes).
    #[arg(long)]
    concurrency: Option<u32>,
    /// CPU per worker, a Kubernetes quantity such as 250m or 2 (on Kubernetes, what each
    /// runner pod requests).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory per worker, such as 256Mi or 1Gi.
    #[arg(long)]
    memory: Option<String>,
    /// Deploy for another owner (admin only). Default: the token's user.
    #[arg(long)]
    owner: Option<String>,
    #[command(flatten)]
    server: Server,
}

pub async fn deploy(a: DeployArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server)?;
    let source = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let endpoint = match &a.endpoint {
        Some(e) => e.clone(),
        None => a
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.to_lowercase().replace('_', "-"))
            .ok_or_else(|| anyhow!("pass --endpoint NAME"))?,
    };
    let spinner = spinner(format!("deploying {endpoint}…"))?;
    let started = Instant::now();
    let owner = match &a.owner {
        Some(o) => o.clone(),
        None => {
            let (status, me) = client
                .send(client.request(reqwest::Method::GET, "/api/v1/me")?)
                .await?;
            if !status.is_success() {
                return Err(api_error(status, &me));
            }
            me["name"].as_str().unwrap_or_default().to_string()
        }
    };
    let path = format!("/api/v1/functions/{owner}/{endpoint}");
    let (status, current) = client
        .send(client.request(reqwest::Method::GET, &path)?)
        .await?;
    // An update keeps every field the command line does not set; `env` is not shown (only
    // `envNames`), and a replace without it keeps the current values.
    let (method, url, mut spec) = match status.as_u16() {
        // The server ignores what it adds to the spec in its answers (`status`, `stats`, …).
        200 => (reqwest::Method::PUT, path, current),
        404 => (
            reqwest::Method::POST,
            "/api/v1/functions".to_string(),
            json!({"owner": owner, "endpoint": endpoint}),
        ),
        _ => return Err(api_error(status, &current)),
    };
    spec["source"] = source.into();
    let visibility = match (a.public, a.private) {
        (true, _) => Some("public"),
        (_, true) => Some("private"),
        _ => None,
    };
    for (k, v) in [
        ("visibility", visibility.map(Value::from)),
        (
            "tags",
            (!a.tags.is_empty()).then(|| Value::from(a.tags.clone())),
        ),
        ("description", a.description.clone().map(Value::from)),
        ("entrypoint", a.entrypoint.clone().map(Value::from)),
        ("timeoutSeconds", a.timeout.map(Value::from)),
        ("concurrency", a.concurrency.map(Value::from)),
    ] {
        if let Some(v) = v {
            spec[k] = v;
        }
    }
    for (k, v) in [("cpu", &a.cpu), ("memory", &a.memory)] {
        if let Some(v) = v {
            spec["resources"][k] = v.as_str().into();
        }
    }
    spinner.set_message(format!(
        "deploying {owner}/{endpoint}: checking the source and starting a worker…"
    ));
    let (status, body) = client
        .send(client.request(method, &url)?.json(&spec))
        .await?;
    spinner.finish_and_clear();
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    let ready = &body["status"]["conditions"][0];
    let label = format!("{owner}/{endpoint}");
    let url = body["status"]["url"].as_str().unwrap_or_default();
    if ready["status"] == "True" {
        let sig = &body["status"]["signature"];
        println!(
            "✓ deployed {label} (generation {}) in {:.1}s",
            body["generation"],
            started.elapsed().as_secs_f64()
        );
        println!(
            "  calls {}({})",
            sig["entrypoint"].as_str().unwrap_or("?"),
            params(sig)
        );
        println!("  curl -X POST {url} -d '{{...}}'");
        Ok(())
    } else {
        bail!(
            "{label} was saved but is not ready: {}",
            ready["message"].as_str().unwrap_or("unknown reason")
        )
    }
}

/// A spinner on stderr for requests that take seconds (hidden when stderr is not a terminal).
pub(crate) fn spinner(message: String) -> anyhow::Result<ProgressBar> {
    let spinner = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner.set_message(message);
    Ok(spinner)
}

pub(crate) fn params(sig: &Value) -> String {
    sig["params"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let mut s = p["name"].as_str().unwrap_or("?").to_string();
                    if let Some(a) = p["annotation"].as_str() {
                        s.push_str(&format!(": {a}"));
                    }
                    if let Some(d) = p["default"].as_str() {
                        s.push_str(&format!(" = {d}"));
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// OWNER/ENDPOINT, or OWNER/ENDPOINT@VERSION to call an earlier version.
    name: String,
    /// Arguments as JSON (an object or an array); `-` reads standard input. Default: {}.
    args: Option<String>,
    /// Call with this API key (sent as `X-Api-Key`) instead of your token
    /// [env: SKYTHON_API_KEY].
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    server: Server,
}

/// `OWNER/ENDPOINT[@VERSION]`, checked here so a typo is not sent as a path.
fn call_target(name: &str) -> anyhow::Result<(&str, &str)> {
    let (owner, endpoint) = split_name(name)?;
    if let Some((e, n)) = endpoint.split_once('@')
        && (e.is_empty() || n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()))
    {
        bail!("expected OWNER/ENDPOINT@VERSION with a version number, got {name:?}");
    }
    Ok((owner, endpoint))
}

pub async fn invoke(a: InvokeArgs) -> anyhow::Result<()> {
    let (owner, endpoint) = call_target(&a.name)?;
    let client = Client::new(&a.server)?;
    let args = match a.args.as_deref() {
        Some("-") => std::io::read_to_string(std::io::stdin())?,
        Some(s) => s.to_string(),
        None => "{}".into(),
    };
    serde_json::from_str::<Value>(&args)
        .with_context(|| format!("the arguments are not valid JSON: {args}"))?;
    let key = a
        .key
        .or_else(|| std::env::var("SKYTHON_API_KEY").ok())
        .filter(|k| !k.is_empty());
    // A private function needs a key or its owner's token: the token goes along unless a key
    // is given (a public function ignores it; the caller is then told to the function).
    let mut req = client
        .http
        .post(format!("{}/fn/{owner}/{endpoint}", client.url))
        .header("content-type", "application/json")
        .body(args);
    req = match (&key, &client.token) {
        (Some(k), _) => req.header("x-api-key", k),
        (None, Some(t)) => req.bearer_auth(t),
        (None, None) => req,
    };
    let (status, body) = client.send(req).await?;
    if !status.is_success() {
        let err = api_error(status, &body);
        if body["error"]["code"] == "key_required" {
            let base = endpoint.split('@').next().unwrap_or(endpoint);
            bail!(
                "{err}\n  {owner}/{base} is private: its owner creates a key with \
                 `skython keys create NAME --function {owner}/{base}`;\n  call it with --key KEY \
                 (or SKYTHON_API_KEY)"
            );
        }
        return Err(err);
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// OWNER/ENDPOINT
    name: String,
    #[command(flatten)]
    server: Server,
}

/// Deletes a function: its endpoint stops answering at once.
pub async fn rm(a: RmArgs) -> anyhow::Result<()> {
    let (owner, endpoint) = split_name(&a.name)?;
    let client = Client::new(&a.server)?;
    let (status, body) = client
        .send(client.request(
            reqwest::Method::DELETE,
            &format!("/api/v1/functions/{owner}/{endpoint}"),
        )?)
        .await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    println!("deleted {owner}/{endpoint}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// OWNER/ENDPOINT
    name: String,
    /// How many calls, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    server: Server,
}

pub async fn logs(a: LogsArgs) -> anyhow::Result<()> {
    let (owner, endpoint) = split_name(&a.name)?;
    let client = Client::new(&a.server)?;
    let (status, body) = client
        .send(client.request(
            reqwest::Method::GET,
            &format!(
                "/api/v1/functions/{owner}/{endpoint}/logs?limit={}",
                a.limit
            ),
        )?)
        .await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    let items = body["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no logs yet for {owner}/{endpoint}");
    }
    // Oldest first, like a log file.
    for i in items.iter().rev() {
        println!(
            "── {} {} {} {:.1}ms {}",
            i["startedAt"].as_str().unwrap_or(""),
            i["requestId"].as_str().unwrap_or(""),
            i["status"],
            i["durationMs"].as_f64().unwrap_or(0.0),
            i["error"].as_str().unwrap_or("")
        );
        print!("{}", i["logs"].as_str().unwrap_or(""));
        if !i["logs"].as_str().unwrap_or("").ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only this owner's functions.
    #[arg(long)]
    owner: Option<String>,
    #[command(flatten)]
    server: Server,
}

pub async fn ls(a: LsArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server)?;
    let mut req = client.request(reqwest::Method::GET, "/api/v1/functions")?;
    if let Some(o) = &a.owner {
        req = req.query(&[("owner", o)]);
    }
    let (status, body) = client.send(req).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    let items = body["items"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<32} {:<6} {:<8} {:<24} URL",
        "FUNCTION", "READY", "VISIBLE", "TAGS"
    );
    for i in &items {
        let tags: Vec<&str> = i["tags"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{:<32} {:<6} {:<8} {:<24} {}",
            format!(
                "{}/{}",
                i["owner"].as_str().unwrap_or(""),
                i["endpoint"].as_str().unwrap_or("")
            ),
            if i["ready"] == true { "yes" } else { "no" },
            i["visibility"].as_str().unwrap_or(""),
            tags.join(","),
            i["url"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_target_may_pin_a_version_by_number() {
        assert_eq!(call_target("alice/add").unwrap(), ("alice", "add"));
        assert_eq!(call_target("alice/add@2").unwrap(), ("alice", "add@2"));
        for bad in ["alice/add@", "alice/add@x", "alice/@2", "add"] {
            assert!(call_target(bad).is_err(), "{bad}");
        }
    }
}
