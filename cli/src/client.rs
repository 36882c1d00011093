//! The client commands: deploy, invoke, logs, ls, login.
//!
//! Server URL and token come from flags, then `SKYTHON_URL`/`SKYTHON_TOKEN`, then the config file
//! (`$SKYTHON_CONFIG`, else `~/.config/skython/config.json`, written by `skython login`).

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
    url: Option<String>,
    /// API token [env: SKYTHON_TOKEN; config file]
    #[arg(long, global = true)]
    token: Option<String>,
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

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    fn new(s: &Server) -> anyhow::Result<Client> {
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

    fn request(
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

    async fn send(
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

/// `error: <message>` from the common error shape.
fn api_error(status: reqwest::StatusCode, body: &Value) -> anyhow::Error {
    let e = &body["error"];
    let mut msg = format!(
        "{} ({status})",
        e["message"].as_str().unwrap_or("request failed")
    );
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

fn split_name(name: &str) -> anyhow::Result<(&str, &str)> {
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
    let spinner = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner.set_message(format!("deploying {endpoint}…"));
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
        200 => {
            let mut spec = current;
            if let Some(obj) = spec.as_object_mut() {
                for k in ["status", "generation", "createdAt", "updatedAt", "envNames"] {
                    obj.remove(k);
                }
            }
            (reqwest::Method::PUT, path, spec)
        }
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

fn params(sig: &Value) -> String {
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
    /// OWNER/ENDPOINT
    name: String,
    /// Arguments as JSON (an object or an array); `-` reads standard input. Default: {}.
    args: Option<String>,
    #[command(flatten)]
    server: Server,
}

pub async fn invoke(a: InvokeArgs) -> anyhow::Result<()> {
    let (owner, endpoint) = split_name(&a.name)?;
    let client = Client::new(&a.server)?;
    let args = match a.args.as_deref() {
        Some("-") => std::io::read_to_string(std::io::stdin())?,
        Some(s) => s.to_string(),
        None => "{}".into(),
    };
    serde_json::from_str::<Value>(&args)
        .with_context(|| format!("the arguments are not valid JSON: {args}"))?;
    let resp = client
        .http
        .post(format!("{}/fn/{owner}/{endpoint}", client.url))
        .header("content-type", "application/json")
        .body(args);
    let (status, body) = client.send(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
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

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Server URL.
    #[arg(long)]
    url: String,
    /// API token.
    #[arg(long)]
    token: String,
}

pub fn login(a: LoginArgs) -> anyhow::Result<()> {
    let path = config_path().ok_or_else(|| anyhow!("no HOME; set SKYTHON_CONFIG"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cfg = Config {
        url: Some(a.url),
        token: Some(a.token),
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("saved to {}", path.display());
    Ok(())
}
