//! The CLI's commands for people, keys, the skybox, clones and versions, run as processes
//! against a real `skython up`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use skython_e2e::{Skython, TOKEN, skython_bin};

const PASSWORD: &str = "correct horse battery";

/// The CLI as one user runs it: a config file of its own, and a token if given.
struct Cli<'a> {
    s: &'a Skython,
    dir: tempfile::TempDir,
    token: Option<String>,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl<'a> Cli<'a> {
    fn new(s: &'a Skython, token: Option<&str>) -> Cli<'a> {
        Cli {
            s,
            dir: tempfile::tempdir().unwrap(),
            token: token.map(str::to_string),
        }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("config.json")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let mut cmd = Command::new(skython_bin());
        cmd.args(args)
            .env("SKYTHON_URL", &self.s.url)
            .env("SKYTHON_CONFIG", self.config())
            .env_remove("SKYTHON_PASSWORD")
            .env_remove("SKYTHON_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &self.token {
            Some(t) => cmd.env("SKYTHON_TOKEN", t),
            None => cmd.env_remove("SKYTHON_TOKEN"),
        };
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, "")
    }

    /// Runs a command that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.ok, "skython {args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    }

    /// Writes `source` to a file and deploys it as `endpoint`.
    fn deploy(&self, endpoint: &str, source: &str, more: &[&str]) -> String {
        let file = self.dir.path().join(format!("{endpoint}.py"));
        std::fs::write(&file, source).unwrap();
        let mut args = vec!["deploy", file.to_str().unwrap(), "--endpoint", endpoint];
        args.extend(more);
        self.ok(&args)
    }
}

/// Signs `name` up through the API; their first token.
fn sign_up(s: &Skython, name: &str) -> String {
    let (status, body) = s.api(
        reqwest::Method::POST,
        "/accounts",
        Some(json!({"name": name, "password": PASSWORD})),
    );
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

#[test]
fn signup_saves_a_token_the_next_commands_use() {
    let s = Skython::start(&[]);
    let cli = Cli::new(&s, None);
    let out = cli.run_with_stdin(&["signup", "carol", "--password-stdin"], PASSWORD);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("signed up as carol"), "{}", out.stdout);
    // No SKYTHON_TOKEN: the deploy authenticates with the saved token, as carol.
    let out = cli.deploy("hello", "def hello() -> str:\n    return 'hi'\n", &[]);
    assert!(out.contains("deployed carol/hello"), "{out}");
}

#[test]
fn login_with_a_password_saves_a_personal_access_token() {
    let s = Skython::start(&[]);
    sign_up(&s, "dave");
    let cli = Cli::new(&s, None);
    let out = cli.run_with_stdin(&["login", "--name", "dave", "--password-stdin"], PASSWORD);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("as dave"), "{}", out.stdout);
    let config = std::fs::read_to_string(cli.config()).unwrap();
    assert!(
        config.contains("sky_pat_"),
        "a token, not a session: {config}"
    );
    let tokens = cli.ok(&["tokens", "ls"]);
    assert!(tokens.contains("cli@"), "{tokens}");
}

#[test]
fn login_with_a_wrong_password_fails_and_says_so() {
    let s = Skython::start(&[]);
    sign_up(&s, "erin");
    let cli = Cli::new(&s, None);
    let out = cli.run_with_stdin(
        &["login", "--name", "erin", "--password-stdin"],
        "not the password",
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("wrong name or password") && out.stderr.contains("invalid_credentials"),
        "{}",
        out.stderr
    );
    assert!(!cli.config().exists(), "nothing saved");
}

#[test]
fn search_finds_a_public_function_by_a_word_of_its_description() {
    let s = Skython::start(&[]);
    s.deploy_ok(
        "c2f",
        "def c2f(c: float) -> float:\n    return c * 9 / 5 + 32\n",
        json!({"visibility": "public", "tags": ["units"], "description": "Converts Celsius to Fahrenheit"}),
    );
    s.deploy_ok(
        "add",
        "def add(a: int, b: int) -> int:\n    return a + b\n",
        json!({"visibility": "public", "description": "Adds two numbers"}),
    );
    let out = Cli::new(&s, None).ok(&["search", "fahrenheit"]);
    assert!(out.contains("admin/c2f") && out.contains("units"), "{out}");
    assert!(out.contains("c2f(c: float) -> float"), "{out}");
    assert!(!out.contains("admin/add"), "{out}");
}

#[test]
fn a_clone_is_deployed_in_the_callers_account_and_answers() {
    let s = Skython::start(&[]);
    s.deploy_ok(
        "greet",
        "def greet(name: str) -> str:\n    return 'hello ' + name\n",
        json!({"visibility": "public"}),
    );
    let frank = Cli::new(&s, Some(&sign_up(&s, "frank")));
    let out = frank.ok(&["clone", "admin/greet", "--as", "my-greet"]);
    assert!(
        out.contains("cloned admin/greet as frank/my-greet") && out.contains("/fn/frank/my-greet"),
        "{out}"
    );
    // The clone is private: frank's token calls it.
    let out = frank.ok(&["invoke", "frank/my-greet", r#"{"name": "frank"}"#]);
    assert_eq!(out.trim(), "\"hello frank\"");
}

#[test]
fn an_api_key_calls_a_private_function_until_it_is_revoked() {
    let s = Skython::start(&[]);
    let gina = Cli::new(&s, Some(&sign_up(&s, "gina")));
    gina.deploy(
        "double",
        "def double(x: int) -> int:\n    return 2 * x\n",
        &[],
    );
    let key = gina.ok(&["keys", "create", "my-app", "--function", "gina/double"]);
    let key = key.trim();
    assert!(
        key.starts_with("sky_key_"),
        "the key alone on stdout: {key}"
    );
    let app = Cli::new(&s, None);
    let out = app.ok(&["invoke", "gina/double", r#"{"x": 21}"#, "--key", key]);
    assert_eq!(out.trim(), "42");
    let listed = gina.ok(&["keys", "ls"]);
    let id = listed
        .lines()
        .find(|l| l.contains("my-app"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("my-app in {listed}"));
    gina.ok(&["keys", "revoke", id]);
    let out = app.run(&["invoke", "gina/double", r#"{"x": 21}"#, "--key", key]);
    assert!(
        !out.ok && out.stderr.contains("invalid_key"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_private_function_called_without_a_key_says_how_to_get_one() {
    let s = Skython::start(&[]);
    let owner = Cli::new(&s, Some(TOKEN));
    owner.deploy("hidden", "def hidden() -> int:\n    return 1\n", &[]);
    let out = Cli::new(&s, None).run(&["invoke", "admin/hidden"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("key_required")
            && out
                .stderr
                .contains("skython keys create NAME --function admin/hidden"),
        "{}",
        out.stderr
    );
}

const V1: &str = "def answer() -> int:\n    return 1\n";
const V2: &str = "def answer() -> int:\n    return 2\n";

#[test]
fn versions_lists_each_deploy_with_the_current_one() {
    let s = Skython::start(&[]);
    let cli = Cli::new(&s, Some(TOKEN));
    cli.deploy("answer", V1, &[]);
    cli.deploy("answer", V2, &[]);
    let out = cli.ok(&["versions", "admin/answer"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!((rows[0][0], rows[0].last()), ("2", Some(&"yes")), "{out}");
    assert_eq!(rows[1][0], "1", "{out}");
    assert_eq!(cli.ok(&["versions", "admin/answer", "--show", "1"]), V1);
}

#[test]
fn rollback_makes_version_1s_source_current_as_version_3() {
    let s = Skython::start(&[]);
    let cli = Cli::new(&s, Some(TOKEN));
    cli.deploy("answer", V1, &[]);
    cli.deploy("answer", V2, &[]);
    let out = cli.ok(&["rollback", "admin/answer", "1"]);
    assert!(out.contains("as version 3"), "{out}");
    let out = cli.ok(&["versions", "admin/answer"]);
    let v3: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (v3[0], v3.get(v3.len() - 2), v3.last()),
        ("3", Some(&"yes"), Some(&"1")),
        "version 3, current, restored from 1: {out}"
    );
    assert_eq!(cli.ok(&["versions", "admin/answer", "--show", "3"]), V1);
    assert_eq!(cli.ok(&["invoke", "admin/answer"]).trim(), "1");
}

#[test]
fn invoke_with_at_n_runs_version_n() {
    let s = Skython::start(&[]);
    let cli = Cli::new(&s, Some(TOKEN));
    cli.deploy("answer", V1, &[]);
    cli.deploy("answer", V2, &[]);
    assert_eq!(cli.ok(&["invoke", "admin/answer@1"]).trim(), "1");
    assert_eq!(cli.ok(&["invoke", "admin/answer"]).trim(), "2");
}
