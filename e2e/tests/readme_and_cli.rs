//! The README's curl tour, run as written against a real `skython up`, and the CLI commands.

use std::process::Command;

use serde_json::json;
use skython_e2e::{Skython, TOKEN, skython_bin};

fn tour_script() -> String {
    let readme = std::fs::read_to_string(skython_e2e::repo_root().join("README.md")).unwrap();
    let start = readme.find("<!-- tour").expect("README has a tour block");
    let end = readme.find("<!-- /tour -->").expect("README tour ends");
    let block = &readme[start..end];
    let code = block
        .split("```bash\n")
        .nth(1)
        .expect("a bash block")
        .split("```")
        .next()
        .unwrap();
    code.to_string()
}

#[test]
fn the_readme_tour_works_as_written() {
    run_the_tour(&[]);
}

#[test]
fn the_readme_tour_works_unchanged_on_mongodb() {
    run_the_tour(&["--store", &skython_e2e::mongo::fresh_database_url()]);
}

fn run_the_tour(store_args: &[&str]) {
    // Without SKYTHON_ADMIN_TOKEN, as `make run` starts it: the token is written to the data dir.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(skython_bin());
    cmd.args(["up", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(store_args);
    let s = Skython::start_with(cmd, dir.path());
    let host = s.url.trim_start_matches("http://");
    let script = tour_script()
        .replace("localhost:8080", host)
        .replace(".skython/", &format!("{}/", dir.path().display()));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tour failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"5") && lines.contains(&"42"), "{stdout}");
    assert!(
        stdout.contains(r#"[{"page":"home","visits":1}]"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("bad_arguments") && stdout.contains("'b'"),
        "{stdout}"
    );
}

/// `skython ARGS` against `s` with the admin's token: success, stdout, stderr.
fn cli_as_admin(
    s: &Skython,
    config_dir: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(skython_bin())
        .args(args)
        .env("SKYTHON_URL", &s.url)
        .env("SKYTHON_TOKEN", TOKEN)
        .env("SKYTHON_CONFIG", config_dir.join("config.json"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_deploys_invokes_lists_and_shows_logs() {
    let s = Skython::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shout.py");
    std::fs::write(&file, "def shout(word: str = 'hi') -> str:\n    print('shouting', word)\n    return word.upper()\n").unwrap();
    let cli = |args: &[&str]| cli_as_admin(&s, dir.path(), args);
    let f = file.to_str().unwrap();
    let (ok, out, err) = cli(&[
        "deploy",
        f,
        "--endpoint",
        "shout",
        "--tag",
        "text",
        "--public",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("deployed admin/shout") && out.contains("shout(word: str = 'hi')"),
        "{out}"
    );
    // Deploying again updates the function.
    std::fs::write(
        &file,
        "def shout(word: str = 'hi') -> str:\n    return word.upper() + '!'\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&["deploy", f, "--endpoint", "shout"]);
    assert!(ok && out.contains("generation 2"), "{out}{err}");
    let (ok, out, _) = cli(&["invoke", "admin/shout", r#"{"word": "hey"}"#]);
    assert!(ok);
    assert_eq!(out.trim(), "\"HEY!\"");
    let (ok, _, err) = cli(&["invoke", "admin/shout", r#"{"nope": 1}"#]);
    assert!(
        !ok && err.contains("unexpected keyword argument 'nope'"),
        "{err}"
    );
    let (ok, out, _) = cli(&["ls"]);
    assert!(
        ok && out.contains("admin/shout") && out.contains("public") && out.contains("text"),
        "{out}"
    );
    // Logs: the first version printed; keep it simple and call it again through the API.
    s.call("admin/shout", json!({}));
    let (ok, out, err) = cli(&["logs", "admin/shout"]);
    assert!(ok && out.contains("400"), "{out}{err}");
    // A syntax error shows the line with a caret.
    std::fs::write(&file, "def shout(:\n    pass\n").unwrap();
    let (ok, _, err) = cli(&["deploy", f, "--endpoint", "shout"]);
    assert!(!ok && err.contains("line 1") && err.contains('^'), "{err}");
    // No token: a clear message.
    let out = Command::new(skython_bin())
        .args(["ls"])
        .env("SKYTHON_URL", &s.url)
        .env_remove("SKYTHON_TOKEN")
        .env("SKYTHON_CONFIG", dir.path().join("none.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token"));
}

#[test]
fn cli_rm_deletes_a_function_and_names_one_that_is_not_there() {
    let s = Skython::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    s.deploy_ok("gone", "def main():\n    return 1\n", json!({}));
    let rm = || {
        let (ok, out, err) = cli_as_admin(&s, dir.path(), &["rm", "admin/gone"]);
        (ok, out + &err)
    };
    let (ok, out) = rm();
    assert!(ok && out.contains("deleted admin/gone"), "{out}");
    assert_eq!(s.call("admin/gone", json!({})).0, 404);
    let (ok, out) = rm();
    assert!(!ok && out.contains("function_not_found"), "{out}");
}

#[test]
fn cli_deploy_sets_the_workers_cpu_and_memory() {
    let s = Skython::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small.py");
    std::fs::write(&file, "def main():\n    return 1\n").unwrap();
    let file = file.to_str().unwrap();
    let (ok, out, err) = cli_as_admin(
        &s,
        dir.path(),
        &["deploy", file, "--cpu", "250m", "--memory", "256Mi"],
    );
    assert!(ok, "{out}{err}");
    let (status, f) = s.api(reqwest::Method::GET, "/functions/admin/small", None);
    assert_eq!(status, 200, "{f}");
    assert_eq!(f["resources"], json!({"cpu": "250m", "memory": "256Mi"}));
}
