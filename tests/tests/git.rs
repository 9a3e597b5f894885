//! Git sources end to end: the real engine, queried through GraphQL, fetching from `git daemon`
//! and from smart HTTP (`git http-backend` behind `tests/scripts/git-http-server.py`, with
//! Basic auth), both on 127.0.0.1 and started here. Covers ref resolution, trees with and
//! without `.git`, the tree cache, credentials in URLs, and the hardening cases G3-G6
//! (anchors C.5).

use dagger_integration_tests::{free_port, Engine, EngineOptions};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "tester";
const TOKEN: &str = "s3cr3t-t0ken-XYZ";
const WRONG: &str = "wr0ng-t0ken-ABC";

// ---- fixtures: repositories made with the host's git, isolated from the host's config ----

/// Runs the test's own git in `dir` and returns its stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let home = dir.join(".test-home");
    let _ = std::fs::create_dir_all(&home);
    let out = Command::new("git")
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .unwrap_or_else(|e| panic!("cannot run git (install it: scripts/install-deps.sh): {e}"));
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes `files` and commits them in the work tree `work`; returns the commit id.
fn commit(work: &Path, files: &[(&str, &str)], msg: &str) -> String {
    for (path, content) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        git(work, &["add", "--", path]);
    }
    git(work, &["commit", "-q", "--allow-empty", "-m", msg]);
    git(work, &["rev-parse", "HEAD"])
}

/// A fresh work tree at `dir/name`.
fn work_tree(dir: &Path, name: &str) -> PathBuf {
    let w = dir.join(name);
    std::fs::create_dir_all(&w).unwrap();
    git(&w, &["init", "-q"]);
    w
}

/// Publishes a work tree as the bare repository `<root>/<name>.git`.
fn publish(work: &Path, root: &Path, name: &str) -> PathBuf {
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            "--",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    bare
}

/// The main fixture: `repo.git`.
struct Repo {
    c1: String,
    c2: String,
    c3: String,
}

/// main: c1 (README.md "one", src/lib.txt) → c2 (README.md "two"), tagged v2.0 (annotated);
/// dev: c1 → c3 (dev.txt); v1.0: lightweight tag on c1.
fn make_repo(tmp: &Path, root: &Path) -> Repo {
    let w = work_tree(tmp, "repo-work");
    let c1 = commit(
        &w,
        &[("README.md", "one\n"), ("src/lib.txt", "lib\n")],
        "one",
    );
    git(&w, &["tag", "v1.0"]);
    let c2 = commit(&w, &[("README.md", "two\n")], "two");
    git(&w, &["tag", "-a", "v2.0", "-m", "release 2.0"]);
    git(&w, &["checkout", "-q", "-b", "dev", &c1]);
    let c3 = commit(&w, &[("dev.txt", "dev\n")], "three");
    git(&w, &["checkout", "-q", "main"]);
    publish(&w, root, "repo");
    Repo { c1, c2, c3 }
}

// ---- servers on loopback ----

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `git daemon` serving every repository under `root` on 127.0.0.1 (one process).
fn git_daemon(root: &Path) -> Server {
    let exec_path = git(root, &["--exec-path"]);
    let daemon = Path::new(&exec_path).join("git-daemon");
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new(&daemon)
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg("--export-all")
            .arg("--informative-errors")
            .arg(root)
            .env("HOME", root.join(".test-home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", daemon.display()));
        if wait_listening(port, &mut child) {
            return Server { child, port };
        }
        // Lost the port to someone else: try another.
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("git daemon did not start");
}

/// Smart HTTP over `root`; with `auth` every request needs `user:password` (Basic).
fn http_server(root: &Path, auth: Option<&str>) -> Server {
    let script = dagger_integration_tests::workspace().join("tests/scripts/git-http-server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(root).arg("0");
    if let Some(a) = auth {
        cmd.arg("--auth").arg(a);
    }
    let mut child = cmd
        .env("HOME", root.join(".test-home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    match line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
    {
        Some(port) => Server { child, port },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("git-http-server.py did not start (printed {line:?})");
        }
    }
}

// ---- queries ----

/// A GraphQL string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The first error of a query that must fail: (message, code).
fn query_err(engine: &Engine, query: &str) -> (String, String) {
    let v = engine.query(query);
    let err = v["errors"]
        .get(0)
        .unwrap_or_else(|| panic!("query {query} should fail, got {v}"));
    (
        err["message"].as_str().unwrap_or_default().to_string(),
        err["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Directory entries, sorted, without the `/` directories may carry.
fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = strings(v)
        .into_iter()
        .map(|s| s.trim_end_matches('/').to_string())
        .collect();
    n.sort();
    n
}

fn snapshot_dirs(engine: &Engine) -> usize {
    std::fs::read_dir(engine.root.join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn git_runs(engine: &Engine) -> usize {
    engine.log().matches("running git").count()
}

/// Every file under `dir` named `name`.
fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&p, name, out);
        }
    }
}

/// A scratch temp dir and its `srv` subdirectory (created), the root the servers serve.
fn scratch_and_srv() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    (tmp, root)
}

// ---- tests ----

#[test]
fn refs_resolve_like_dagger() {
    let (tmp, root) = scratch_and_srv();
    let repo = make_repo(tmp.path(), &root);
    let daemon = git_daemon(&root);
    let engine = Engine::start(EngineOptions::default());
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);

    let d = engine.query_ok(&format!(
        r#"{{ git(url: {u}) {{
            url
            head {{ ref commit }}
            main: branch(name: "main") {{ ref commit }}
            dev: branch(name: "refs/heads/dev") {{ ref commit }}
            v1: tag(name: "v1.0") {{ ref commit }}
            v2: tag(name: "refs/tags/v2.0") {{ ref commit }}
            c1: commit(id: {c1}) {{ ref commit }}
            r: ref(name: "dev") {{ ref commit }}
            rt: ref(name: "v2.0") {{ ref commit }}
            tags
            branches
            vtags: tags(patterns: ["v1*"])
            fulltags: tags(patterns: ["refs/tags/v2*"])
            some: branches(patterns: ["ma?n", "nope"])
        }} }}"#,
        u = lit(&url),
        c1 = lit(&repo.c1),
    ))["git"]
        .clone();
    assert_eq!(d["url"], url.as_str());
    let pair = |k: &str| {
        (
            d[k]["ref"].as_str().unwrap(),
            d[k]["commit"].as_str().unwrap(),
        )
    };
    assert_eq!(pair("head"), ("refs/heads/main", repo.c2.as_str()));
    assert_eq!(pair("main"), ("refs/heads/main", repo.c2.as_str()));
    assert_eq!(pair("dev"), ("refs/heads/dev", repo.c3.as_str()));
    assert_eq!(pair("v1"), ("refs/tags/v1.0", repo.c1.as_str()));
    // An annotated tag resolves to its commit, not to the tag object.
    assert_eq!(pair("v2"), ("refs/tags/v2.0", repo.c2.as_str()));
    assert_eq!(pair("c1"), (repo.c1.as_str(), repo.c1.as_str()));
    assert_eq!(pair("r"), ("refs/heads/dev", repo.c3.as_str()));
    assert_eq!(pair("rt"), ("refs/tags/v2.0", repo.c2.as_str()));
    assert_eq!(strings(&d["tags"]), ["v1.0", "v2.0"]);
    assert_eq!(strings(&d["branches"]), ["dev", "main"]);
    assert_eq!(strings(&d["vtags"]), ["v1.0"]);
    assert_eq!(strings(&d["fulltags"]), ["v2.0"]);
    assert_eq!(strings(&d["some"]), ["main"]);

    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: {}) {{ branch(name: "nope") {{ commit }} }} }}"#,
            lit(&url)
        ),
    );
    assert_eq!(code, "NOT_FOUND", "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: {}) {{ commit(id: "abc123") {{ commit }} }} }}"#,
            lit(&url)
        ),
    );
    assert_eq!(code, "INVALID_ARGUMENT", "{msg}");
    // A well-formed commit the remote does not have fails at fetch time.
    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: {}) {{ commit(id: "{}") {{ tree {{ entries }} }} }} }}"#,
            lit(&url),
            "0123456789abcdef0123456789abcdef01234567"
        ),
    );
    assert_eq!(code, "NOT_FOUND", "{msg}");
    let missing = format!("git://127.0.0.1:{}/missing.git", daemon.port);
    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: {}) {{ head {{ commit }} }} }}"#,
            lit(&missing)
        ),
    );
    assert_eq!(code, "NOT_FOUND", "{msg}");
    // Refused before any traffic: ssh needs a socket the API cannot pass yet; no local paths.
    for (bad, needle) in [
        ("ssh://git@127.0.0.1:1/repo.git", "sshAuthSocket"),
        ("git@127.0.0.1:repo.git", "sshAuthSocket"),
        ("file:///etc", "not supported"),
        ("/etc", "local paths"),
    ] {
        let (msg, code) = query_err(
            &engine,
            &format!(r#"{{ git(url: {}) {{ head {{ commit }} }} }}"#, lit(bad)),
        );
        assert_eq!(code, "INVALID_ARGUMENT", "{bad}: {msg}");
        assert!(msg.contains(needle), "{bad}: {msg}");
    }
}

#[test]
fn trees_keep_or_discard_git_dir_and_are_cached() {
    let (tmp, root) = scratch_and_srv();
    let repo = make_repo(tmp.path(), &root);
    let daemon = git_daemon(&root);
    let engine = Engine::start(EngineOptions::default());
    let url = lit(&format!("git://127.0.0.1:{}/repo.git", daemon.port));

    let d = engine.query_ok(&format!(
        r#"{{ git(url: {url}) {{ head {{ tree {{
            entries
            readme: file(path: "README.md") {{ contents }}
            src: directory(path: "src") {{ entries }}
            head: file(path: ".git/HEAD") {{ contents }}
            shallow: file(path: ".git/shallow") {{ contents }}
            config: file(path: ".git/config") {{ contents }}
        }} }} }} }}"#
    ))["git"]["head"]["tree"]
        .clone();
    let entries = names(&d["entries"]);
    assert!(entries.contains(&".git".to_string()), "{entries:?}");
    assert!(entries.contains(&"README.md".to_string()), "{entries:?}");
    assert!(entries.contains(&"src".to_string()), "{entries:?}");
    assert_eq!(d["readme"]["contents"], "two\n");
    assert_eq!(names(&d["src"]["entries"]), ["lib.txt"]);
    // A real repository: on the branch, shallow at depth 1, origin set to the remote.
    assert_eq!(d["head"]["contents"], "ref: refs/heads/main\n");
    assert_eq!(d["shallow"]["contents"], format!("{}\n", repo.c2));
    let config = d["config"]["contents"].as_str().unwrap();
    assert!(
        config.contains(&format!("url = git://127.0.0.1:{}/repo.git", daemon.port)),
        "{config}"
    );

    // Without .git: by tree argument, and by the deprecated Query.git argument.
    let d = engine.query_ok(&format!(
        r#"{{ a: git(url: {url}) {{ head {{ tree(discardGitDir: true) {{ entries }} }} }}
             b: git(url: {url}, keepGitDir: false) {{ head {{ tree {{ entries }} }} }} }}"#
    ));
    for k in ["a", "b"] {
        let entries = names(&d[k]["head"]["tree"]["entries"]);
        assert_eq!(entries, ["README.md", "src"], "{k}");
    }

    // Older commits (not a branch tip) and tags; a full history with depth 0.
    let d = engine.query_ok(&format!(
        r#"{{ git(url: {url}) {{
            c1: commit(id: {c1}) {{ tree {{ readme: file(path: "README.md") {{ contents }} head: file(path: ".git/HEAD") {{ contents }} }} }}
            dev: branch(name: "dev") {{ tree(discardGitDir: true) {{ entries }} }}
            v2: tag(name: "v2.0") {{ tree {{ head: file(path: ".git/HEAD") {{ contents }} }} }}
            full: head {{ tree(depth: 0) {{ git: entries(path: ".git") }} }}
        }} }}"#,
        c1 = lit(&repo.c1)
    ))["git"]
        .clone();
    assert_eq!(d["c1"]["tree"]["readme"]["contents"], "one\n");
    assert_eq!(
        d["c1"]["tree"]["head"]["contents"],
        format!("{}\n", repo.c1)
    );
    assert_eq!(
        names(&d["dev"]["tree"]["entries"]),
        ["README.md", "dev.txt", "src"]
    );
    assert_eq!(
        d["v2"]["tree"]["head"]["contents"],
        format!("{}\n", repo.c2)
    );
    let full = names(&d["full"]["tree"]["git"]);
    assert!(!full.contains(&"shallow".to_string()), "{full:?}");

    // The same tree again: no git process, no new snapshot.
    let q = format!(
        r#"{{ git(url: {url}) {{ commit(id: {c1}) {{ tree {{ entries }} }} }} }}"#,
        c1 = lit(&repo.c1)
    );
    let first = engine.query_ok(&q);
    let (runs, snaps) = (git_runs(&engine), snapshot_dirs(&engine));
    assert!(runs > 0, "git runs are logged at debug:\n{}", engine.log());
    let again = engine.query_ok(&q);
    assert_eq!(first, again);
    assert_eq!(
        git_runs(&engine),
        runs,
        "a cached tree ran git:\n{}",
        engine.log()
    );
    assert_eq!(snapshot_dirs(&engine), snaps);

    // The same new tree twice in one query (resolved concurrently): checked out once.
    let d = engine.query_ok(&format!(
        r#"{{ git(url: {url}) {{
            a: commit(id: {c2}) {{ tree(depth: 2) {{ entries }} }}
            b: commit(id: {c2}) {{ tree(depth: 2) {{ entries }} }}
        }} }}"#,
        c2 = lit(&repo.c2)
    ));
    assert_eq!(d["git"]["a"], d["git"]["b"]);
    assert_eq!(snapshot_dirs(&engine), snaps + 1);

    // A tree's ID loads the same files later; an ID naming anything but a recorded snapshot
    // is refused (IDs come from clients).
    let id = engine.query_ok(&format!(
        r#"{{ git(url: {url}) {{ head {{ tree {{ id }} }} }} }}"#
    ))["git"]["head"]["tree"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = engine.query_ok(&format!(
        r#"{{ loadDirectoryFromID(id: {}) {{ file(path: "README.md") {{ contents }} }} }}"#,
        lit(&id)
    ));
    assert_eq!(d["loadDirectoryFromID"]["file"]["contents"], "two\n");
    for forged in ["../../../../etc", "nope", ""] {
        let id = dagger_engine::solver::id::encode(
            "Directory",
            &dagger_engine::solver::node::DirectoryNode::Snapshot {
                snapshot: forged.into(),
            },
        );
        let (msg, code) = query_err(
            &engine,
            &format!("{{ loadDirectoryFromID(id: {}) {{ entries }} }}", lit(&id)),
        );
        assert_eq!(code, "INVALID_ARGUMENT", "{forged:?}: {msg}");
    }
}

#[test]
fn private_repo_with_http_auth_token_and_header_secrets() {
    let (tmp, root) = scratch_and_srv();
    let w = work_tree(tmp.path(), "tok-work");
    let sha = commit(&w, &[("secret.txt", "by token\n")], "private");
    publish(&w, &root, "private");
    let named = http_server(&root, Some(&format!("{USER}:{TOKEN}")));
    // Dagger's default user name for a token.
    let default_user = http_server(&root, Some(&format!("x-access-token:{TOKEN}")));
    let engine = Engine::start(EngineOptions::default());
    let secret_id = |value: &str| {
        engine.query_ok(&format!(
            "{{ setSecret(name: \"git-token\", plaintext: {}) {{ id }} }}",
            lit(value)
        ))["setSecret"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let token = secret_id(TOKEN);
    let read = |port: u16, args: &str| {
        engine.query(&format!(
            r#"{{ git(url: "http://127.0.0.1:{port}/private.git", {args}) {{ url head {{ commit tree(discardGitDir: true) {{ file(path: "secret.txt") {{ contents }} }} }} }} }}"#
        ))
    };

    // Token with a user name, token with the default user name, and a whole header.
    let header = secret_id(&format!(
        "Basic {}",
        dagger_integration_tests::fixtures::base64(format!("{USER}:{TOKEN}").as_bytes())
    ));
    for (port, args) in [
        (
            named.port,
            format!(
                "httpAuthUsername: {}, httpAuthToken: {}",
                lit(USER),
                lit(&token)
            ),
        ),
        (default_user.port, format!("httpAuthToken: {}", lit(&token))),
        (named.port, format!("httpAuthHeader: {}", lit(&header))),
    ] {
        let v = read(port, &args);
        assert!(v["errors"].is_null(), "{args}: {v}");
        assert_eq!(v["data"]["git"]["head"]["commit"], sha.as_str(), "{args}");
        assert_eq!(
            v["data"]["git"]["head"]["tree"]["file"]["contents"], "by token\n",
            "{args}"
        );
        assert_eq!(
            v["data"]["git"]["url"],
            format!("http://127.0.0.1:{port}/private.git"),
            "{args}"
        );
    }

    // A wrong token: permission denied, and the message carries no form of it.
    let wrong = secret_id(WRONG);
    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: "http://127.0.0.1:{}/private.git", httpAuthUsername: {}, httpAuthToken: {}) {{ head {{ commit }} }} }}"#,
            named.port,
            lit(USER),
            lit(&wrong)
        ),
    );
    assert_eq!(code, "PERMISSION_DENIED", "{msg}");
    assert!(!msg.contains(WRONG), "{msg}");
    // HTTP credentials on a git:// URL are refused.
    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: "git://127.0.0.1:1/x.git", httpAuthToken: {}) {{ head {{ commit }} }} }}"#,
            lit(&token)
        ),
    );
    assert_eq!(code, "INVALID_ARGUMENT", "{msg}");
    let log = engine.log();
    for secret in [TOKEN, WRONG] {
        assert!(!log.contains(secret), "{secret} in the engine log");
    }
    assert!(!log.contains(&dagger_integration_tests::fixtures::base64(
        format!("{USER}:{TOKEN}").as_bytes()
    )));
}

#[test]
fn private_repo_over_smart_http_with_credentials_in_the_url() {
    let (tmp, root) = scratch_and_srv();
    let w = work_tree(tmp.path(), "private-work");
    let sha = commit(&w, &[("secret.txt", "classified\n")], "private");
    publish(&w, &root, "private");
    let private = http_server(&root, Some(&format!("{USER}:{TOKEN}")));
    let public = http_server(&root, None);
    let engine = Engine::start(EngineOptions::default());
    let base = format!("127.0.0.1:{}/private.git", private.port);
    let good = format!("http://{USER}:{TOKEN}@{base}");

    let d = engine.query_ok(&format!(
        r#"{{ git(url: {u}) {{ url head {{ commit tree {{
            secret: file(path: "secret.txt") {{ contents }}
            config: file(path: ".git/config") {{ contents }}
        }} }} }} }}"#,
        u = lit(&good)
    ))["git"]
        .clone();
    assert_eq!(d["head"]["commit"], sha.as_str());
    assert_eq!(d["head"]["tree"]["secret"]["contents"], "classified\n");
    let shown = d["url"].as_str().unwrap();
    assert!(!shown.contains(TOKEN) && !shown.contains(USER), "{shown}");
    // The kept .git points at the remote without the credentials.
    let config = d["head"]["tree"]["config"]["contents"].as_str().unwrap();
    assert!(config.contains(&format!("url = http://{base}")), "{config}");
    assert!(!config.contains(TOKEN), "{config}");

    // Wrong or no credentials: a clear error that carries neither token.
    let wrong = format!("http://{USER}:{WRONG}@{base}");
    for (u, what) in [
        (wrong.clone(), "ls-remote with a wrong token"),
        (format!("http://{base}"), "ls-remote without credentials"),
    ] {
        let (msg, code) = query_err(
            &engine,
            &format!(r#"{{ git(url: {}) {{ head {{ commit }} }} }}"#, lit(&u)),
        );
        assert_eq!(code, "PERMISSION_DENIED", "{what}: {msg}");
        assert!(msg.contains("authentication failed"), "{what}: {msg}");
        assert!(
            !msg.contains(WRONG) && !msg.contains(TOKEN),
            "{what}: {msg}"
        );
    }
    // A fetch (no ls-remote for a commit id) with the wrong token fails the same way: trees
    // fetched with other credentials are not shared.
    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: {}) {{ commit(id: {}) {{ tree {{ entries }} }} }} }}"#,
            lit(&wrong),
            lit(&sha)
        ),
    );
    assert_eq!(code, "PERMISSION_DENIED", "{msg}");
    assert!(!msg.contains(WRONG) && !msg.contains(TOKEN), "{msg}");

    // Public smart HTTP needs nothing.
    let d = engine.query_ok(&format!(
        r#"{{ git(url: "http://127.0.0.1:{}/private.git") {{ head {{ tree(discardGitDir: true) {{ entries }} }} }} }}"#,
        public.port
    ));
    assert_eq!(names(&d["git"]["head"]["tree"]["entries"]), ["secret.txt"]);

    // G6: credentials never reach the log, in any form.
    let log = engine.log();
    let b64 = |s: &str| {
        use std::io::Write;
        let mut out = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        out.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
    };
    for secret in [
        TOKEN.to_string(),
        WRONG.to_string(),
        b64(&format!("{USER}:{TOKEN}")),
        b64(&format!("{USER}:{WRONG}")),
    ] {
        assert!(!log.contains(&secret), "{secret} in the engine log:\n{log}");
    }
    assert!(log.contains("running git"), "git runs are logged:\n{log}");
}

#[test]
fn g3_refs_and_urls_that_look_like_options_are_rejected() {
    let (tmp, root) = scratch_and_srv();
    let repo = make_repo(tmp.path(), &root);
    // A remote whose default branch is named like an option.
    let evil = root.join("evil.git");
    git(
        &root,
        &["clone", "-q", "--bare", "--", "repo.git", "evil.git"],
    );
    git(&evil, &["update-ref", "refs/heads/-evil", &repo.c1]);
    git(&evil, &["symbolic-ref", "HEAD", "refs/heads/-evil"]);
    let daemon = git_daemon(&root);
    let engine = Engine::start(EngineOptions::default());
    let url = lit(&format!("git://127.0.0.1:{}/repo.git", daemon.port));
    let evil_url = lit(&format!("git://127.0.0.1:{}/evil.git", daemon.port));
    let marker = tmp.path().join("pwned");
    let inject = lit(&format!("--upload-pack=touch {}", marker.display()));

    for field in [
        format!("ref(name: {inject}) {{ commit }}"),
        format!("branch(name: {inject}) {{ commit }}"),
        format!("tag(name: {inject}) {{ commit }}"),
        format!("commit(id: {inject}) {{ commit }}"),
        format!("ref(name: {inject}) {{ tree {{ entries }} }}"),
        r#"branch(name: "-evil") { commit }"#.to_string(),
    ] {
        for u in [&url, &evil_url] {
            let (msg, code) = query_err(&engine, &format!("{{ git(url: {u}) {{ {field} }} }}"));
            assert_eq!(code, "INVALID_ARGUMENT", "{field}: {msg}");
        }
    }
    let (msg, code) = query_err(
        &engine,
        &format!("{{ git(url: {inject}) {{ head {{ commit }} }} }}"),
    );
    assert_eq!(code, "INVALID_ARGUMENT", "{msg}");
    // The default branch the remote advertises is checked before it reaches a command line.
    for field in ["head { commit }", "head { tree { entries } }"] {
        let (msg, code) = query_err(
            &engine,
            &format!("{{ git(url: {evil_url}) {{ {field} }} }}"),
        );
        assert_eq!(code, "INVALID_ARGUMENT", "{field}: {msg}");
        assert!(msg.contains("-evil"), "{msg}");
    }
    assert!(!marker.exists(), "an injected option ran");
    // The repository itself is fine through a safe name.
    let d = engine.query_ok(&format!(
        "{{ git(url: {evil_url}) {{ branch(name: \"main\") {{ commit }} }} }}"
    ));
    assert_eq!(d["git"]["branch"]["commit"], repo.c2.as_str());
}

/// A superproject `<name>.git` whose one submodule, at `sub`, has URL `sub_url`.
fn with_submodule(tmp: &Path, root: &Path, name: &str, sub_url: &str) {
    let w = work_tree(tmp, &format!("{name}-work"));
    commit(&w, &[("top.txt", "top\n")], "top");
    git(&w, &["submodule", "add", "-q", "--", sub_url, "sub"]);
    git(&w, &["commit", "-q", "-m", "add submodule"]);
    publish(&w, root, name);
}

#[test]
fn g4_submodules_over_the_network_work_and_file_urls_are_blocked() {
    let (tmp, root) = scratch_and_srv();
    let daemon = git_daemon(&root);
    // Served submodule.
    let sw = work_tree(tmp.path(), "sub-work");
    commit(&sw, &[("sub.txt", "from the submodule\n")], "sub");
    publish(&sw, &root, "sub");
    with_submodule(
        tmp.path(),
        &root,
        "good",
        &format!("git://127.0.0.1:{}/sub.git", daemon.port),
    );
    // A local repository that must never be read through a file:// submodule.
    let lw = work_tree(tmp.path(), "local-work");
    commit(&lw, &[("host-secret.txt", "host secret\n")], "local");
    let local = publish(&lw, tmp.path(), "local-secret");
    with_submodule(
        tmp.path(),
        &root,
        "bad",
        &format!("file://{}", local.display()),
    );

    let engine = Engine::start(EngineOptions::default());
    let good = lit(&format!("git://127.0.0.1:{}/good.git", daemon.port));
    let d = engine.query_ok(&format!(
        r#"{{ git(url: {good}) {{ head {{
            kept: tree {{ sub: file(path: "sub/sub.txt") {{ contents }} }}
            bare: tree(discardGitDir: true) {{ entries sub: entries(path: "sub") }}
        }} }} }}"#
    ))["git"]["head"]
        .clone();
    assert_eq!(d["kept"]["sub"]["contents"], "from the submodule\n");
    assert_eq!(
        names(&d["bare"]["entries"]),
        [".gitmodules", "sub", "top.txt"]
    );
    // Without .git, the submodule's gitlink file goes too.
    assert_eq!(names(&d["bare"]["sub"]), ["sub.txt"]);

    let bad = lit(&format!("git://127.0.0.1:{}/bad.git", daemon.port));
    for tree in ["tree", "tree(discardGitDir: true)"] {
        let (msg, code) = query_err(
            &engine,
            &format!("{{ git(url: {bad}) {{ head {{ {tree} {{ entries }} }} }} }}"),
        );
        assert_eq!(code, "PERMISSION_DENIED", "{msg}");
        assert!(msg.contains("not allowed"), "{msg}");
    }
    let mut found = Vec::new();
    find_named(&engine.root, "host-secret.txt", &mut found);
    assert!(
        found.is_empty(),
        "file:// submodule content reached the engine: {found:?}"
    );
}

#[test]
fn g5_host_and_environment_git_config_do_not_reach_the_engines_git() {
    let (tmp, root) = scratch_and_srv();
    let repo = make_repo(tmp.path(), &root);
    let ew = work_tree(tmp.path(), "evil-work");
    commit(&ew, &[("README.md", "evil\n")], "evil");
    publish(&ew, &root, "evil");
    let lw = work_tree(tmp.path(), "local-work");
    commit(&lw, &[("host-secret.txt", "host secret\n")], "local");
    let local = publish(&lw, tmp.path(), "local-secret");
    let daemon = git_daemon(&root);
    with_submodule(
        tmp.path(),
        &root,
        "bad",
        &format!("file://{}", local.display()),
    );
    let repo_url = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    let evil_url = format!("git://127.0.0.1:{}/evil.git", daemon.port);

    // Every way a host could configure git: config files, hooks, templates, variables.
    let markers = tmp.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let hooks = tmp.path().join("evil-hooks");
    let template = tmp.path().join("evil-template");
    std::fs::create_dir_all(template.join("hooks")).unwrap();
    std::fs::create_dir_all(&hooks).unwrap();
    for dir in [&hooks, &template.join("hooks")] {
        for hook in [
            "post-checkout",
            "reference-transaction",
            "post-merge",
            "post-index-change",
        ] {
            let p = dir.join(hook);
            std::fs::write(
                &p,
                format!("#!/bin/sh\ntouch {}/{hook}\n", markers.display()),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let config = format!(
        "[url \"{evil_url}\"]\n\tinsteadOf = {repo_url}\n\
         [core]\n\tfsmonitor = \"touch {m}/fsmonitor\"\n\thooksPath = {h}\n\
         [protocol \"file\"]\n\tallow = always\n\
         [init]\n\ttemplateDir = {t}\n",
        m = markers.display(),
        h = hooks.display(),
        t = template.display(),
    );
    let home = tmp.path().join("evil-home");
    std::fs::create_dir_all(home.join(".config/git")).unwrap();
    std::fs::write(home.join(".gitconfig"), &config).unwrap();
    std::fs::write(home.join(".config/git/config"), &config).unwrap();
    let system = tmp.path().join("evil-system-gitconfig");
    std::fs::write(&system, &config).unwrap();
    let s = |p: &Path| p.display().to_string();
    let env: Vec<(String, String)> = [
        ("HOME", s(&home)),
        ("XDG_CONFIG_HOME", s(&home.join(".config"))),
        ("GIT_CONFIG_GLOBAL", s(&home.join(".gitconfig"))),
        ("GIT_CONFIG_SYSTEM", s(&system)),
        (
            "GIT_CONFIG_PARAMETERS",
            format!("'url.{evil_url}.insteadof'='{repo_url}'"),
        ),
        ("GIT_CONFIG_COUNT", "1".into()),
        ("GIT_CONFIG_KEY_0", "protocol.file.allow".into()),
        ("GIT_CONFIG_VALUE_0", "always".into()),
        ("GIT_TEMPLATE_DIR", s(&template)),
        (
            "GIT_SSH_COMMAND",
            format!("touch {}/ssh", markers.display()),
        ),
        ("GIT_ASKPASS", format!("{}/askpass", markers.display())),
        ("GIT_ALLOW_PROTOCOL", "file:git:http:https:ext".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let engine = Engine::start(EngineOptions {
        env,
        ..Default::default()
    });

    let d = engine.query_ok(&format!(
        r#"{{ git(url: {u}) {{ head {{ commit tree {{ file(path: "README.md") {{ contents }} }} }} tags }} }}"#,
        u = lit(&repo_url)
    ))["git"]
        .clone();
    assert_eq!(d["head"]["commit"], repo.c2.as_str());
    assert_eq!(d["head"]["tree"]["file"]["contents"], "two\n");
    assert_eq!(strings(&d["tags"]), ["v1.0", "v2.0"]);
    // The host's `protocol.file.allow=always` does not re-open file:// submodules.
    let (msg, code) = query_err(
        &engine,
        &format!(
            "{{ git(url: {}) {{ head {{ tree {{ entries }} }} }} }}",
            lit(&format!("git://127.0.0.1:{}/bad.git", daemon.port))
        ),
    );
    assert_eq!(code, "PERMISSION_DENIED", "{msg}");
    let fired: Vec<_> = std::fs::read_dir(&markers)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(fired.is_empty(), "host git configuration ran: {fired:?}");
}

// ---- ssh, with the client's agent forwarded through its session ----

/// An `sshd` of the test's own on 127.0.0.1 that lets `root` in with `client_key`.
fn sshd(dir: &Path) -> (Server, String) {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "/usr/sbin/sshd is missing: install openssh-server (scripts/install-deps.sh)"
    );
    // Privilege separation needs this directory (the package's service would create it).
    std::fs::create_dir_all("/run/sshd").unwrap();
    let keygen = |path: &Path| {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    for _ in 0..5 {
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 PidFile {d}/sshd.pid\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if wait_listening(port, &mut child) {
            let host_key = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
            let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
            let known = format!("[127.0.0.1]:{port} {}", key.join(" "));
            return (Server { child, port }, known);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("sshd did not start");
}

/// `ssh-agent` on `socket` holding `key`.
fn ssh_agent(socket: &Path, key: &Path) -> Server {
    let mut child = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new("ssh-add")
        .arg(key)
        .env("SSH_AUTH_SOCK", socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-add: {out:?}");
    let _ = child.try_wait();
    Server { child, port: 0 }
}

#[test]
fn ssh_url_through_the_clients_agent_socket() {
    use dagger_integration_tests::sdk::SessionProcess;
    let (tmp, root) = scratch_and_srv();
    let w = work_tree(tmp.path(), "ssh-work");
    let sha = commit(&w, &[("README.md", "over ssh\n")], "ssh");
    let bare = publish(&w, &root, "ssh-repo");
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (server, known_hosts) = sshd(&keys);
    let agent_sock = tmp.path().join("agent.sock");
    let _agent = ssh_agent(&agent_sock, &keys.join("client_key"));

    let engine = Engine::start(EngineOptions::default());
    let session = SessionProcess::start_in(&engine, tmp.path(), &[]);
    let r = session.query(
        Some(&session.auth()),
        r#"{ host { unixSocket(path: "agent.sock") { id } } }"#,
    );
    let v = r.json();
    let socket = v["data"]["host"]["unixSocket"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string();
    let url = format!("ssh://root@127.0.0.1:{}{}", server.port, bare.display());
    let d = engine.query_ok(&format!(
        r#"{{ git(url: {}, sshKnownHosts: {}, sshAuthSocket: {}) {{ head {{ commit tree {{ file(path: "README.md") {{ contents }} }} }} }} }}"#,
        lit(&url),
        lit(&known_hosts),
        lit(&socket)
    ));
    assert_eq!(d["git"]["head"]["commit"], sha.as_str());
    assert_eq!(d["git"]["head"]["tree"]["file"]["contents"], "over ssh\n");

    // No agent: a clear error naming what is missing.
    let (msg, code) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: {}, sshKnownHosts: {}) {{ head {{ commit }} }} }}"#,
            lit(&url),
            lit(&known_hosts)
        ),
    );
    assert!(msg.contains("sshAuthSocket"), "{code}: {msg}");
    // The agent, but a host key we were not told to trust: refused.
    let (msg, _) = query_err(
        &engine,
        &format!(
            r#"{{ git(url: {}, sshAuthSocket: {}) {{ head {{ commit }} }} }}"#,
            lit(&url),
            lit(&socket)
        ),
    );
    assert!(
        msg.to_lowercase().contains("host key"),
        "an unknown host key must fail: {msg}"
    );
}

#[test]
fn git_work_shows_in_progress() {
    let (tmp, root) = scratch_and_srv();
    let repo = make_repo(tmp.path(), &root);
    let daemon = git_daemon(&root);
    let engine = Engine::start(EngineOptions::default());
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    let query = format!(
        r#"{{ git(url: {}) {{ head {{ tree {{ entries }} }} }} }}"#,
        lit(&url)
    );
    let run = || {
        dagger_integration_tests::dagger_cli(
            &["query", "--progress=plain"],
            &query,
            &[("_EXPERIMENTAL_DAGGER_RUNNER_HOST", &engine.runner_host())],
        )
    };
    let out = run();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("git ls-remote {url} DONE")), "{err}");
    let tree = format!("git tree {url} {}", &repo.c2[..12]);
    assert!(err.contains(&format!("{tree} DONE")), "{err}");
    // The same tree again is served from the engine's cache, and says so.
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(err.contains(&format!("{tree} CACHED")), "{err}");
}
