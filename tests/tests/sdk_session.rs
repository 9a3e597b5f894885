//! `dagger session` and `dagger run`, directly and through the real SDKs (Python `dagger-io`
//! and TypeScript `@dagger.io/dagger`, pinned in tests/sdk/) against a real engine.
//!
//! Each SDK program (tests/sdk/pipeline.py, tests/sdk/pipeline.mjs) runs both ways an SDK can
//! find an engine: `dagger run <interpreter> <program>` (DAGGER_SESSION_PORT/TOKEN), and
//! `_EXPERIMENTAL_DAGGER_CLI_BIN=<our dagger>` with no session variables, where the SDK spawns
//! `dagger session` itself and stops it (Python: stdin EOF; TypeScript: SIGTERM).

use dagger_integration_tests::sdk::*;
use dagger_integration_tests::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

// ---------------------------------------------------------------------------------------
// `dagger session`, driven by hand
// ---------------------------------------------------------------------------------------

#[test]
fn handshake_is_one_json_line_with_exactly_port_and_token() {
    let engine = Engine::start(EngineOptions::default());
    // Every flag an SDK passes, plus ones this CLI has never heard of.
    let mut s = SessionProcess::start(
        &engine,
        &[
            "--label",
            "dagger.io/sdk.name:python",
            "--label",
            "dagger.io/sdk.version:0.21.11",
            "--workdir",
            "/tmp",
            "--project",
            "/tmp/dagger.json",
            "--load-workspace-modules",
            "--some-future-flag=x",
            "-v",
        ],
    );
    assert!(s.line.ends_with('\n'), "{:?}", s.line);
    let v: serde_json::Value = serde_json::from_str(&s.line).unwrap();
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["port", "session_token"],
        "the Python SDK fails on any extra key: {}",
        s.line
    );
    assert!(s.port > 0, "{}", s.line);
    assert_eq!(s.token.len(), 36, "a UUID-like token: {}", s.line);
    assert!(
        s.token.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
        "{}",
        s.line
    );

    // A second session gets another token.
    let other = SessionProcess::start(&engine, &[]);
    assert_ne!(other.token, s.token);

    let (status, stderr) = s.close_and_wait();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "", "a healthy session is quiet on stderr");
}

#[test]
fn requests_without_the_token_get_401_json() {
    let engine = Engine::start(EngineOptions::default());
    let s = SessionProcess::start(&engine, &[]);
    let wrong_user = basic_auth("not-the-token", "");
    let token_as_password = basic_auth("", &s.token);
    let bearer = format!("Bearer {}", s.token);
    for auth in [
        None,
        Some(wrong_user.as_str()),
        Some(token_as_password.as_str()),
        Some(bearer.as_str()),
        Some("Basic !!!"),
    ] {
        let r = s.query(auth, "{ version }");
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Basic realm="Access to the Dagger engine session""#),
            "{auth:?}"
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{auth:?}: {:?}",
            r.headers
        );
        let v = r.json();
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(v.get("data").is_none(), "{v}");
    }
    // Every path is guarded, not only /query.
    let r = http(s.port, "GET", "/", &[], "").unwrap();
    assert_eq!(r.status, 401);
}

#[test]
fn queries_with_the_token_reach_the_engine() {
    let engine = Engine::start(EngineOptions::default());
    let s = SessionProcess::start(&engine, &[]);

    // Python sends `token:`; the password is ignored.
    for auth in [s.auth(), basic_auth(&s.token, "ignored")] {
        let r = s.query(Some(&auth), "{ version defaultPlatform }");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.contains("application/json")),
            "the TypeScript SDK only parses JSON content types: {:?}",
            r.headers
        );
        let v = r.json();
        assert_eq!(
            v["data"]["version"],
            format!("v{}", env!("CARGO_PKG_VERSION")),
            "{v}"
        );
    }

    // GraphQL errors come back as the engine's JSON, untouched.
    let r = s.query(Some(&s.auth()), "{ noSuchField }");
    assert!(r.json()["errors"][0]["message"].is_string(), "{}", r.body);

    // Keep-alive: several requests on one connection, as httpx and node-fetch pool them.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    for i in 0..5 {
        let body = gql("{ version }");
        write!(
            conn,
            "POST /query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            s.auth(),
            body.len()
        )
        .unwrap();
        let r = read_one_response(&mut conn);
        assert_eq!(r.status, 200, "request {i} on a kept-alive connection");
        assert!(r.body.contains("\"version\""), "{}", r.body);
    }

    // Many concurrent requests (the Python SDK resolves argument IDs in parallel).
    let port = s.port;
    let auth = s.auth();
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let q = format!(r#"{{ container {{ withEnvVariable(name: "N", value: "{i}") {{ envVariable(name: "N") }} }} }}"#);
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ];
                let r = http(port, "POST", "/query", &headers, &gql(&q)).unwrap();
                (i, r.status, r.body)
            })
        })
        .collect();
    for h in handles {
        let (i, status, body) = h.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["data"]["container"]["withEnvVariable"]["envVariable"],
            i.to_string(),
            "{v}"
        );
    }
}

#[test]
fn session_streams_large_bodies_to_a_tcp_engine() {
    let engine = Engine::start(EngineOptions {
        tcp: true,
        ..Default::default()
    });
    let host = format!("tcp://127.0.0.1:{}", engine.tcp_port.unwrap());
    let mut s = SessionProcess::start_with_runner_host(&host, &[]);
    // 2 MiB each way: the query carries the value, the answer echoes it.
    let value = "x".repeat(2 << 20);
    let r = s.query(
        Some(&s.auth()),
        &format!(
            r#"{{ container {{ withEnvVariable(name: "BIG", value: "{value}") {{ envVariable(name: "BIG") }} }} }}"#
        ),
    );
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(500)]);
    assert_eq!(
        r.json()["data"]["container"]["withEnvVariable"]["envVariable"].as_str(),
        Some(value.as_str())
    );
    let (status, stderr) = s.close_and_wait();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "");
}

/// Reads exactly one Content-Length or chunked response from a kept-alive connection.
fn read_one_response(conn: &mut std::net::TcpStream) -> RawResponse {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(r) = complete_response(&raw) {
            return r;
        }
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed mid-response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
}

fn complete_response(raw: &[u8]) -> Option<RawResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return (raw.len() >= end + len).then(|| parse_response(&raw[..end + len]).unwrap());
    }
    raw.ends_with(b"\r\n0\r\n\r\n")
        .then(|| parse_response(raw).unwrap())
}

#[test]
fn session_exits_0_on_stdin_eof() {
    let engine = Engine::start(EngineOptions::default());
    let mut s = SessionProcess::start(&engine, &["--label", "dagger.io/sdk.name:python"]);
    assert_eq!(s.query(Some(&s.auth()), "{ version }").status, 200);
    let (status, stderr) = s.close_and_wait();
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn session_exits_0_on_sigterm_and_sigint() {
    let engine = Engine::start(EngineOptions::default());
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // stdin stays open, as with the TypeScript SDK, which only sends SIGTERM.
        let mut s = SessionProcess::start(&engine, &["--label", "dagger.io/sdk.name:nodejs"]);
        assert_eq!(s.query(Some(&s.auth()), "{ version }").status, 200);
        s.signal(sig);
        let (status, stderr) = s.wait();
        assert_eq!(status.code(), Some(0), "{sig}: {status}: {stderr}");
        assert_eq!(stderr, "", "{sig}");
    }
}

#[test]
fn session_fails_before_the_handshake_when_the_engine_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-engine.sock");
    // Keep stdin open: a closed stdin means "shut down" (exit 0), which would race the
    // connection failure this test is about.
    let mut child = Command::new(bin("dagger"))
        .arg("session")
        .env(
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            format!("unix://{}", missing.display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(30))
        .expect("session exits by itself when the engine is unreachable");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let out = std::process::Output { status, ..out };
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "no handshake: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the engine") && stderr.contains("no-engine.sock"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// `dagger run`
// ---------------------------------------------------------------------------------------

fn dagger_run(engine: &Engine, args: &[&str]) -> std::process::Output {
    Command::new(bin("dagger"))
        .arg("run")
        .args(args)
        .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", engine.runner_host())
        .env_remove("DAGGER_SESSION_PORT")
        .env_remove("DAGGER_SESSION_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn dagger_run_exports_a_working_session_to_the_command() {
    let engine = Engine::start(EngineOptions::default());
    // The command itself talks to the session with the exported port and token.
    let script = r#"
import base64, json, os, urllib.request
port, token = os.environ["DAGGER_SESSION_PORT"], os.environ["DAGGER_SESSION_TOKEN"]
def post(auth):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/query",
        data=json.dumps({"query": "{ version }"}).encode(),
        headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{token}:".encode()).decode())
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
print(json.dumps({"with": post(True), "without": post(False), "token": token}))
"#;
    let out = dagger_run(&engine, &["python3", "-c", script]);
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{so}{se}");
    let v: serde_json::Value = serde_json::from_str(so.trim()).unwrap();
    assert_eq!(v["with"][0], 200, "{v}");
    assert_eq!(
        v["with"][1]["data"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(v["without"][0], 401, "{v}");
    assert_eq!(v["token"].as_str().map(str::len), Some(36), "{v}");
    assert_eq!(se, "", "dagger run is quiet when all is well");
}

#[test]
fn dagger_run_passes_the_exit_code_through() {
    let engine = Engine::start(EngineOptions::default());
    assert_eq!(dagger_run(&engine, &["true"]).status.code(), Some(0));
    assert_eq!(
        dagger_run(&engine, &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    // Flags after the command belong to the command.
    let out = dagger_run(&engine, &["sh", "-c", "echo \"$1\"", "sh", "--label"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--label\n");
    // Killed by a signal: 128 + the signal number, like a shell.
    assert_eq!(
        dagger_run(&engine, &["sh", "-c", "kill -TERM $$"])
            .status
            .code(),
        Some(128 + 15)
    );
    let out = dagger_run(&engine, &["/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dagger_run_forwards_sigterm_and_sigint_to_the_command() {
    let engine = Engine::start(EngineOptions::default());
    for (sig, code) in [(Signal::SIGTERM, 42), (Signal::SIGINT, 43)] {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        // The command traps the signal and exits with its own code once it arrives.
        let script = format!(
            "trap 'exit 42' TERM; trap 'exit 43' INT; touch {}; while :; do sleep 0.05; done",
            ready.display()
        );
        let mut child = Command::new(bin("dagger"))
            .args(["run", "sh", "-c", &script])
            .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", engine.runner_host())
            .stdin(Stdio::null())
            // Its own process group, so only the signal we send reaches dagger.
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ready.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "command never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let status = wait_timeout(&mut child, std::time::Duration::from_secs(30))
            .expect("dagger run did not exit after the command did");
        assert_eq!(status.code(), Some(code), "{sig}: {status}");
    }
}

// ---------------------------------------------------------------------------------------
// The real SDKs
// ---------------------------------------------------------------------------------------

/// The checks every pipeline program prints (see tests/sdk/pipeline.*).
const CHECKS: &[&str] = &[
    "from + withExec + stdout",
    "env + workdir + file contents",
    "directory entries",
    "workdir is the exec cwd",
    "envVariable",
    "ExecError cmd",
    "ExecError exit code",
    "ExecError stdout",
    "ExecError stderr",
    "sync + node",
    "chain after sync",
    "envVariables",
];

fn assert_pipeline_ok(fx: &SdkFixture, run: &ProgramRun, load_check: &str) {
    let report = || format!("{}\nengine log:\n{}", run.describe(), fx.engine.log());
    assert_eq!(run.status.code(), Some(0), "{}", report());
    for check in CHECKS.iter().chain([&load_check]) {
        assert!(
            run.stdout.lines().any(|l| l == format!("ok: {check}")),
            "missing check {check:?}\n{}",
            report()
        );
    }
    assert!(run.stdout.lines().any(|l| l == "ALL OK"), "{}", report());
    assert!(
        run.stdout.contains("ExecError: ") && run.stdout.contains("exit=3"),
        "{}",
        report()
    );
    // What an unclean session end looks like: Python's SessionError, Node's rejected execa
    // promise; and nothing from our session should reach the SDK's log at all.
    for bad in [
        "SessionError",
        "ExecaError",
        "Unhandled",
        "unhandled",
        "Traceback",
        "dagger session:",
        "dagger:",
    ] {
        assert!(!run.stderr.contains(bad), "{bad:?} on stderr\n{}", report());
    }
}

#[test]
fn python_sdk_pipeline_through_dagger_run() {
    let fx = SdkFixture::start();
    let run = run_program(&fx, Lang::Python, Launch::DaggerRun, "pipeline.py");
    assert_pipeline_ok(&fx, &run, "load_container_from_id");
}

#[test]
fn python_sdk_pipeline_with_a_spawned_session_closed_by_stdin_eof() {
    let fx = SdkFixture::start();
    let run = run_program(&fx, Lang::Python, Launch::CliBin, "pipeline.py");
    assert_pipeline_ok(&fx, &run, "load_container_from_id");
    assert_eq!(run.sessions.len(), 1, "{}", run.describe());
    assert!(
        run.sessions[0].starts_with("session ")
            && run.sessions[0].contains("--label dagger.io/sdk.name:python"),
        "{}",
        run.describe()
    );
}

#[test]
fn typescript_sdk_pipeline_through_dagger_run() {
    let fx = SdkFixture::start();
    let run = run_program(&fx, Lang::Node, Launch::DaggerRun, "pipeline.mjs");
    assert_pipeline_ok(&fx, &run, "loadContainerFromID");
}

#[test]
fn typescript_sdk_pipeline_with_a_spawned_session_stopped_by_sigterm() {
    let fx = SdkFixture::start();
    let run = run_program(&fx, Lang::Node, Launch::CliBin, "pipeline.mjs");
    // Exit 0 and no ExecaError on stderr: the session exited 0 on the SDK's SIGTERM.
    assert_pipeline_ok(&fx, &run, "loadContainerFromID");
    assert_eq!(run.sessions.len(), 1, "{}", run.describe());
    assert!(
        run.sessions[0].starts_with("session ")
            && run.sessions[0].contains("--label dagger.io/sdk.name:nodejs"),
        "{}",
        run.describe()
    );
}

#[test]
fn dagger_run_hands_the_command_a_trace_context() {
    let engine = Engine::start(EngineOptions::default());
    let out = dagger_run(&engine, &["sh", "-c", "echo \"$TRACEPARENT\""]);
    assert!(out.status.success(), "{out:?}");
    let tp = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "not a W3C traceparent: {tp:?}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("00", 32, 16),
        "{tp}"
    );

    // An inherited context keeps its trace id: the run nests under the caller's trace.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let out = Command::new(bin("dagger"))
        .args(["run", "sh", "-c", "echo \"$TRACEPARENT\""])
        .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", engine.runner_host())
        .env("TRACEPARENT", parent)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let tp = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert_ne!(tp, parent, "the run needs a span of its own");
}
