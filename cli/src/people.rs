//! The client commands for people and what they share: signup, login, search, clone, keys,
//! tokens, versions and rollback (the README's "People, keys and the skybox").
//!
//! Secrets are shown once, on standard output alone (`KEY=$(skython keys create …)` works), with
//! what to do with them on standard error.

use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, Server, params, save_config, spinner, split_name};

/// The password: `--password-stdin`'s first line, else `SKYTHON_PASSWORD`, else asked for on
/// the terminal without echo (twice when `confirm`, since a typo there would lock one out).
fn password(from_stdin: bool, confirm: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']);
        if p.is_empty() {
            bail!("--password-stdin: standard input has no password");
        }
        return Ok(p.to_string());
    }
    if let Some(p) = std::env::var("SKYTHON_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(p);
    }
    let no_terminal = "no terminal to ask for a password on: set SKYTHON_PASSWORD or pass \
                       --password-stdin";
    let p = rpassword::prompt_password("Password: ").context(no_terminal)?;
    if confirm && rpassword::prompt_password("Password again: ").context(no_terminal)? != p {
        bail!("the two passwords differ");
    }
    Ok(p)
}

/// A string field of an answer, or an error naming it (a server of another version).
fn field<'a>(body: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    body[key]
        .as_str()
        .ok_or_else(|| anyhow!("the server's answer has no {key:?}: {body}"))
}

#[derive(Args, Debug)]
pub struct SignupArgs {
    /// Your account name: lowercase letters, digits and '-' (the owner in your functions' URLs).
    name: String,
    /// Read the password from standard input's first line [else env: SKYTHON_PASSWORD, else
    /// asked for].
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    server: Server,
}

pub async fn signup(a: SignupArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server)?;
    let password = password(a.password_stdin, true)?;
    let body = client
        .ok(client
            .bare(Method::POST, "/api/v1/accounts")
            .json(&json!({"name": a.name, "password": password})))
        .await?;
    let path = save_config(&client.url, field(&body, "token")?)?;
    println!(
        "✓ signed up as {} at {}; your token is saved in {}",
        field(&body, "name")?,
        client.url,
        path.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Log in with your account name and password: creates a personal access token
    /// `cli@<this host>` and saves it.
    #[arg(long, conflicts_with = "token")]
    name: Option<String>,
    /// With --name: read the password from standard input's first line [else env:
    /// SKYTHON_PASSWORD, else asked for].
    #[arg(long, requires = "name")]
    password_stdin: bool,
    #[command(flatten)]
    server: Server,
}

/// `skython login --name NAME` or `skython login --token TOKEN`: saves the server and a token
/// for the next commands, checked first.
pub async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server)?;
    let (name, token) = match (&a.name, &a.server.token) {
        (Some(name), _) => {
            let password = password(a.password_stdin, false)?;
            (
                name.clone(),
                token_from_password(&client, name, &password).await?,
            )
        }
        (None, Some(token)) => {
            let me = client
                .ok(client.bare(Method::GET, "/api/v1/me").bearer_auth(token))
                .await?;
            (field(&me, "name")?.to_string(), token.clone())
        }
        (None, None) => bail!("pass --name NAME (you are asked for the password) or --token TOKEN"),
    };
    let path = save_config(&client.url, &token)?;
    println!(
        "✓ logged in to {} as {name}; the token is saved in {}",
        client.url,
        path.display()
    );
    Ok(())
}

/// Logs in, creates a personal access token with the session and ends the session: the CLI
/// keeps a token the user can see and revoke (`skython tokens`), not a 14-day session.
async fn token_from_password(
    client: &Client,
    name: &str,
    password: &str,
) -> anyhow::Result<String> {
    let session = client
        .ok(client
            .bare(Method::POST, "/api/v1/sessions")
            .json(&json!({"name": name, "password": password})))
        .await?;
    let session = field(&session, "token")?;
    let created = client
        .ok(client
            .bare(Method::POST, "/api/v1/tokens")
            .bearer_auth(session)
            .json(&json!({"name": token_name()})))
        .await;
    let ended = client
        .send(
            client
                .bare(Method::DELETE, "/api/v1/sessions/current")
                .bearer_auth(session),
        )
        .await;
    if !matches!(&ended, Ok((status, _)) if status.is_success()) {
        eprintln!("warning: could not end the login session; it expires by itself in 14 days");
    }
    Ok(field(&created?, "secret")?.to_string())
}

/// `cli@<hostname>`, so the token list says which machine holds each token.
fn token_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    // Token names are at most 64 characters.
    format!("cli@{host}").chars().take(64).collect()
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Words to find in names, descriptions, tags, docstrings and parameter names (none: the
    /// most called functions).
    words: Vec<String>,
    /// Only functions with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// How many results.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    server: Server,
}

pub async fn search(a: SearchArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server)?;
    let mut query = vec![("q", a.words.join(" ")), ("limit", a.limit.to_string())];
    query.extend(a.tags.iter().map(|t| ("tag", t.clone())));
    let body = client
        .ok(client.bare(Method::GET, "/api/v1/skybox").query(&query))
        .await?;
    let items = body["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no public function matches");
        return Ok(());
    }
    println!(
        "{:<32} {:>7}  {:<20} DESCRIPTION",
        "FUNCTION", "CALLS", "TAGS"
    );
    for i in &items {
        println!(
            "{:<32} {:>7}  {:<20} {}",
            format!("{}/{}", text(&i["owner"]), text(&i["endpoint"])),
            i["calls"].as_u64().unwrap_or(0),
            strings(&i["tags"]).join(","),
            truncate(text(&i["description"]).lines().next().unwrap_or(""), 60)
        );
        if i["signature"].is_object() {
            println!("    {}", signature_line(&i["signature"]));
        }
    }
    let total = body["total"].as_u64().unwrap_or(0);
    if total > items.len() as u64 {
        println!("({} of {total}; --limit for more)", items.len());
    }
    Ok(())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// At most `n` characters, with `…` when cut.
fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// `name(params) -> returns`, as a Python user reads a signature.
fn signature_line(sig: &Value) -> String {
    let mut line = format!("{}({})", text(&sig["entrypoint"]), params(sig));
    if let Some(r) = sig["returns"].as_str() {
        line.push_str(&format!(" -> {r}"));
    }
    line
}

/// The function a deploy-like answer (`FunctionView`) describes, or why it is not ready.
fn ready_url(body: &Value, label: &str) -> anyhow::Result<String> {
    let ready = &body["status"]["conditions"][0];
    if ready["status"] != "True" {
        bail!(
            "{label} was saved but is not ready: {}",
            ready["message"].as_str().unwrap_or("unknown reason")
        );
    }
    Ok(text(&body["status"]["url"]).to_string())
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    /// OWNER/ENDPOINT of the function to copy (its source, description, tags and settings;
    /// never its state, env values or keys).
    name: String,
    /// The copy's endpoint name (default: the original's).
    #[arg(long = "as", value_name = "NEW_ENDPOINT")]
    new_endpoint: Option<String>,
    /// List the copy in the public catalogue (default: private).
    #[arg(long)]
    public: bool,
    #[command(flatten)]
    server: Server,
}

pub async fn clone(a: CloneArgs) -> anyhow::Result<()> {
    let (owner, endpoint) = split_name(&a.name)?;
    let client = Client::new(&a.server)?;
    let mut req = json!({"visibility": if a.public { "public" } else { "private" }});
    if let Some(e) = &a.new_endpoint {
        req["endpoint"] = e.as_str().into();
    }
    let started = Instant::now();
    let spinner = spinner(format!(
        "cloning {owner}/{endpoint}: checking the source and starting a worker…"
    ))?;
    let res = client
        .ok(client
            .request(
                Method::POST,
                &format!("/api/v1/functions/{owner}/{endpoint}/clone"),
            )?
            .json(&req))
        .await;
    spinner.finish_and_clear();
    let body = res?;
    let label = format!("{}/{}", text(&body["owner"]), text(&body["endpoint"]));
    let url = ready_url(&body, &label)?;
    println!(
        "✓ cloned {owner}/{endpoint} as {label} ({}) in {:.1}s",
        text(&body["visibility"]),
        started.elapsed().as_secs_f64()
    );
    println!("  calls {}", signature_line(&body["status"]["signature"]));
    println!("  {url}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    server: Server,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create an API key that may call the given functions; it is shown once.
    Create {
        /// What the key is for ("my-app").
        name: String,
        /// A function the key may call: OWNER/ENDPOINT, or OWNER/* for all of an owner's
        /// (repeatable).
        #[arg(long = "function", value_name = "OWNER/ENDPOINT", required = true)]
        functions: Vec<String>,
    },
    /// List your API keys and their usage.
    Ls,
    /// Show one key's scope and usage.
    Show { id: String },
    /// Revoke a key: calls with it fail at once.
    Revoke { id: String },
}

pub async fn keys(a: KeysArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server)?;
    match a.command {
        KeysCommand::Create { name, functions } => {
            let body = client
                .ok(client
                    .request(Method::POST, "/api/v1/keys")?
                    .json(&json!({"name": name, "functions": functions})))
                .await?;
            let first = functions.first().map_or("OWNER/ENDPOINT", String::as_str);
            eprintln!(
                "✓ created key {} ({name}) for {}. It is shown this once: keep it now.\n  \
                 skython invoke {first} --key KEY, or send the header X-Api-Key: KEY",
                text(&body["id"]),
                functions.join(", "),
            );
            println!("{}", field(&body, "secret")?);
        }
        KeysCommand::Ls => {
            let items = list(&client, "/api/v1/keys").await?;
            println!(
                "{:<17} {:<20} {:<13} {:<28} {:>7} {:>7}  REVOKED",
                "ID", "NAME", "PREFIX", "FUNCTIONS", "CALLS", "ERRORS"
            );
            for k in &items {
                println!(
                    "{:<17} {:<20} {:<13} {:<28} {:>7} {:>7}  {}",
                    text(&k["id"]),
                    truncate(text(&k["name"]), 20),
                    format!("{}…", text(&k["prefix"])),
                    strings(&k["functions"]).join(","),
                    k["usage"]["calls"].as_u64().unwrap_or(0),
                    k["usage"]["errors"].as_u64().unwrap_or(0),
                    revoked(k)
                );
            }
        }
        KeysCommand::Show { id } => {
            let k = client
                .ok(client.request(Method::GET, &format!("/api/v1/keys/{id}"))?)
                .await?;
            let u = &k["usage"];
            let calls = u["calls"].as_u64().unwrap_or(0);
            let total_ms = u["totalDurationMs"].as_f64().unwrap_or(0.0);
            println!(
                "{} {} ({}…)",
                text(&k["id"]),
                text(&k["name"]),
                text(&k["prefix"])
            );
            println!("  functions  {}", strings(&k["functions"]).join(", "));
            println!("  created    {}", text(&k["createdAt"]));
            println!("  revoked    {}", revoked(&k));
            println!(
                "  calls      {calls} ({} errors), {total_ms:.1} ms in all{}",
                u["errors"].as_u64().unwrap_or(0),
                if calls > 0 {
                    format!(", {:.1} ms on average", total_ms / calls as f64)
                } else {
                    String::new()
                }
            );
            println!(
                "  last used  {}",
                u["lastUsedAt"].as_str().unwrap_or("never")
            );
        }
        KeysCommand::Revoke { id } => {
            revoke(&client, &format!("/api/v1/keys/{id}")).await?;
            println!("✓ revoked key {id}: calls with it now fail");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
    #[command(flatten)]
    server: Server,
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Create a personal access token (for a script or CI); it is shown once.
    Create {
        /// What the token is for ("ci").
        name: String,
    },
    /// List your personal access tokens.
    Ls,
    /// Revoke a token: requests with it fail at once.
    Revoke { id: String },
}

pub async fn tokens(a: TokensArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server)?;
    match a.command {
        TokensCommand::Create { name } => {
            let body = client
                .ok(client
                    .request(Method::POST, "/api/v1/tokens")?
                    .json(&json!({"name": name})))
                .await?;
            eprintln!(
                "✓ created token {} ({name}). It is shown this once: keep it now \
                 (SKYTHON_TOKEN=… for the CLI, or Authorization: Bearer … for the API).",
                text(&body["id"])
            );
            println!("{}", field(&body, "secret")?);
        }
        TokensCommand::Ls => {
            let items = list(&client, "/api/v1/tokens").await?;
            println!(
                "{:<17} {:<28} {:<13} {:<20} REVOKED",
                "ID", "NAME", "PREFIX", "CREATED"
            );
            for t in &items {
                println!(
                    "{:<17} {:<28} {:<13} {:<20} {}",
                    text(&t["id"]),
                    truncate(text(&t["name"]), 28),
                    format!("{}…", text(&t["prefix"])),
                    short_time(text(&t["createdAt"])),
                    revoked(t)
                );
            }
        }
        TokensCommand::Revoke { id } => {
            revoke(&client, &format!("/api/v1/tokens/{id}")).await?;
            println!("✓ revoked token {id}");
        }
    }
    Ok(())
}

async fn list(client: &Client, path: &str) -> anyhow::Result<Vec<Value>> {
    let body = client.ok(client.request(Method::GET, path)?).await?;
    Ok(body["items"].as_array().cloned().unwrap_or_default())
}

async fn revoke(client: &Client, path: &str) -> anyhow::Result<()> {
    client.ok(client.request(Method::DELETE, path)?).await?;
    Ok(())
}

fn revoked(credential: &Value) -> String {
    credential["revokedAt"]
        .as_str()
        .map_or_else(|| "-".into(), short_time)
}

/// `2025-06-01T12:34:56.789Z` as `2025-06-01 12:34:56`: the seconds are enough in a table.
fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replace('T', " ")
}

#[derive(Args, Debug)]
pub struct VersionsArgs {
    /// OWNER/ENDPOINT
    name: String,
    /// Print this version's source instead of the list.
    #[arg(long, value_name = "VERSION")]
    show: Option<u64>,
    #[command(flatten)]
    server: Server,
}

pub async fn versions(a: VersionsArgs) -> anyhow::Result<()> {
    let (owner, endpoint) = split_name(&a.name)?;
    let client = Client::new(&a.server)?;
    let path = format!("/api/v1/functions/{owner}/{endpoint}/versions");
    if let Some(n) = a.show {
        let v = client
            .ok(client.request(Method::GET, &format!("{path}/{n}"))?)
            .await?;
        let source = field(&v, "source")?;
        print!("{source}");
        if !source.ends_with('\n') {
            println!();
        }
        return Ok(());
    }
    let items = list(&client, &path).await?;
    println!(
        "{:>7}  {:<20} {:<8} RESTORED FROM",
        "VERSION", "CREATED", "CURRENT"
    );
    for v in &items {
        println!(
            "{:>7}  {:<20} {:<8} {}",
            v["version"].as_i64().unwrap_or(0),
            short_time(text(&v["createdAt"])),
            if v["current"] == true { "yes" } else { "" },
            v["restoredFrom"]
                .as_i64()
                .map_or_else(String::new, |n| n.to_string())
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// OWNER/ENDPOINT
    name: String,
    /// The version to run again (see `skython versions`); it is deployed as a new version.
    version: u64,
    #[command(flatten)]
    server: Server,
}

pub async fn rollback(a: RollbackArgs) -> anyhow::Result<()> {
    let (owner, endpoint) = split_name(&a.name)?;
    let client = Client::new(&a.server)?;
    let label = format!("{owner}/{endpoint}");
    let started = Instant::now();
    let spinner = spinner(format!("rolling {label} back to version {}…", a.version))?;
    let res = client
        .ok(client
            .request(
                Method::POST,
                &format!("/api/v1/functions/{owner}/{endpoint}/rollback"),
            )?
            .json(&json!({"version": a.version})))
        .await;
    spinner.finish_and_clear();
    let body = res?;
    ready_url(&body, &label)?;
    println!(
        "✓ {label} runs version {}'s code again, as version {} ({:.1}s)",
        a.version,
        body["generation"],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_reads_as_python() {
        let sig = json!({"entrypoint": "c2f", "params": [
            {"name": "c", "kind": "positional_or_keyword", "annotation": "float"},
            {"name": "digits", "kind": "positional_or_keyword", "annotation": "int", "default": "1"}
        ], "returns": "float"});
        assert_eq!(
            signature_line(&sig),
            "c2f(c: float, digits: int = 1) -> float"
        );
    }

    #[test]
    fn long_descriptions_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ünïcødé and more", 8), "ünïcødé…");
    }

    #[test]
    fn token_names_fit_the_servers_limit() {
        let n = token_name();
        assert!(n.starts_with("cli@") && n.chars().count() <= 64, "{n}");
    }
}
