//! Helpers for driving `dagger session`, `dagger run` and the real SDKs pinned in tests/sdk/
//! (Python `dagger-io` in .test-venv, TypeScript `@dagger.io/dagger` in tests/sdk/node_modules,
//! both installed by scripts/test.sh).
//!
//! Every SDK program runs with a cleared environment: it only reaches our engine (through
//! `_EXPERIMENTAL_DAGGER_RUNNER_HOST`), never a download site or a telemetry endpoint.

use crate::images::{self, Format};
use crate::registry::{require_binary, Mode, TestRegistry};
use crate::{bin, wait_timeout, workspace, Engine, EngineOptions, RawResponse};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long an SDK program may take (pulls, execs, several sessions).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);

/// tests/sdk: the pins and the SDK test programs.
pub fn sdk_dir() -> PathBuf {
    workspace().join("tests/sdk")
}

/// The venv's Python, which has the pinned `dagger-io`.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("DAGGER_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".test-venv"));
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} is missing: scripts/test.sh installs the pinned Python SDK (tests/sdk/requirements.txt) into {}",
        py.display(),
        venv.display()
    );
    py
}

/// `node`, after checking that the pinned TypeScript SDK is installed in tests/sdk/node_modules.
pub fn node() -> PathBuf {
    let node = require_binary("node", "nodejs");
    let pkg = sdk_dir().join("node_modules/@dagger.io/dagger/package.json");
    let installed: serde_json::Value = std::fs::read_to_string(&pkg)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: scripts/test.sh installs the pinned TypeScript SDK (tests/sdk/package.json) with npm",
                pkg.display()
            )
        });
    let wanted: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sdk_dir().join("package.json")).expect("tests/sdk/package.json"),
    )
    .expect("tests/sdk/package.json is JSON");
    assert_eq!(
        installed["version"], wanted["dependencies"]["@dagger.io/dagger"],
        "tests/sdk/node_modules is stale: run scripts/test.sh (it reinstalls when package-lock.json changes)"
    );
    node
}

/// `Basic base64(user:pass)`.
pub fn basic_auth(user: &str, pass: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` with extra headers, `Connection: close`.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<RawResponse> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(PROGRAM_TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// `out`'s stdout, after asserting that its process succeeded (else panics with both outputs
/// and `engine`'s log).
pub fn stdout_of_success(out: &std::process::Output, engine: &Engine) -> String {
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stdout:\n{so}\nstderr:\n{se}\nengine:\n{}",
        engine.log()
    );
    so.into_owned()
}

/// Parses one HTTP/1.1 answer (a `Content-Length` or `chunked` body).
pub fn parse_response(raw: &[u8]) -> std::io::Result<RawResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end: {raw:?}")))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        let mut body = Vec::new();
        let mut rest = rest;
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| std::io::Error::other("truncated chunk size"))?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16)
                .map_err(std::io::Error::other)?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(
                rest.get(..size)
                    .ok_or_else(|| std::io::Error::other("truncated chunk"))?,
            );
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        body
    } else {
        rest.to_vec()
    };
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A `dagger session` child, started the way the SDKs start it, after its handshake line.
pub struct SessionProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The handshake line, as printed.
    pub line: String,
    pub port: u16,
    pub token: String,
    stderr: Option<std::thread::JoinHandle<String>>,
    extra_stdout: Option<std::thread::JoinHandle<String>>,
}

impl SessionProcess {
    /// Runs `dagger session ARGS` against `engine` (its unix socket) and reads the handshake.
    pub fn start(engine: &Engine, args: &[&str]) -> SessionProcess {
        Self::start_with_runner_host(&engine.runner_host(), args)
    }

    /// Runs `dagger session ARGS` with `_EXPERIMENTAL_DAGGER_RUNNER_HOST=runner_host`.
    pub fn start_with_runner_host(runner_host: &str, args: &[&str]) -> SessionProcess {
        Self::start_configured(runner_host, args, None, &[])
    }

    /// Runs `dagger session` against `engine` in working directory `cwd` with extra
    /// environment variables, as an SDK program in that directory would.
    pub fn start_in(
        engine: &Engine,
        cwd: &std::path::Path,
        env: &[(&str, &str)],
    ) -> SessionProcess {
        Self::start_configured(&engine.runner_host(), &[], Some(cwd), env)
    }

    fn start_configured(
        runner_host: &str,
        args: &[&str],
        cwd: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> SessionProcess {
        let mut cmd = Command::new(bin("dagger"));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .arg("session")
            .args(args)
            .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", runner_host)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning dagger session");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        let extra_stdout = std::thread::spawn(move || {
            let mut line = String::new();
            let r = stdout.read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
            // Anything after the handshake is a protocol violation; [`SessionProcess::wait`]
            // reports it.
            let mut extra = String::new();
            let _ = stdout.read_to_string(&mut extra);
            extra
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("reading the handshake: {e}"),
            Err(_) => panic!("no handshake line from dagger session within 60s"),
        };
        let mut session = SessionProcess {
            child,
            stdin,
            line: line.clone(),
            port: 0,
            token: String::new(),
            stderr: Some(stderr),
            extra_stdout: Some(extra_stdout),
        };
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let (status, err) = session.close_and_wait();
                panic!("handshake {line:?} is not JSON ({e}); session exited {status}:\n{err}")
            }
        };
        session.port = v["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        session.token = v["session_token"].as_str().unwrap_or_default().to_string();
        session
    }

    /// POST /query with `authorization` (a full header value) and a GraphQL document.
    pub fn query(&self, authorization: Option<&str>, query: &str) -> RawResponse {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = authorization {
            headers.push(("Authorization", a));
        }
        http(self.port, "POST", "/query", &headers, &crate::gql(query))
            .unwrap_or_else(|e| panic!("request to the session failed: {e}"))
    }

    /// The right credentials: the token as user name, an empty password.
    pub fn auth(&self) -> String {
        basic_auth(&self.token, "")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Closes stdin (as the Python SDK does) and waits for the exit.
    pub fn close_and_wait(&mut self) -> (ExitStatus, String) {
        self.stdin.take();
        self.wait()
    }

    /// Waits (at most 30 s) for the exit; returns the status and everything on stderr.
    pub fn wait(&mut self) -> (ExitStatus, String) {
        let status = wait_timeout(&mut self.child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("dagger session did not exit within 30s")
        });
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let extra = self
            .extra_stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(
            extra, "",
            "dagger session printed more than the handshake line on stdout"
        );
        (status, stderr)
    }
}

impl Drop for SessionProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An engine and a plain-HTTP registry on 127.0.0.1 holding the busybox test image.
pub struct SdkFixture {
    pub engine: Engine,
    pub registry: TestRegistry,
    /// `127.0.0.1:PORT/sdk/busybox:latest`
    pub image: String,
}

impl SdkFixture {
    pub fn start() -> SdkFixture {
        let registry = TestRegistry::start(Mode::Plain);
        images::push(
            images::BUSYBOX,
            &registry,
            "sdk/busybox:latest",
            Format::Oci,
            None,
        );
        let engine = Engine::start(EngineOptions::default());
        let image = format!("{}/sdk/busybox:latest", registry.addr);
        SdkFixture {
            engine,
            registry,
            image,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// `*.py` with the venv's Python.
    Python,
    /// `*.mjs` with node.
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `dagger run <interpreter> PROGRAM`: the SDK finds DAGGER_SESSION_PORT/TOKEN.
    DaggerRun,
    /// `_EXPERIMENTAL_DAGGER_CLI_BIN=<our dagger>`: the SDK spawns `dagger session` itself.
    CliBin,
}

/// What an SDK program did.
pub struct ProgramRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// With [`Launch::CliBin`]: the argument lists the SDK started `dagger` with.
    pub sessions: Vec<String>,
}

impl ProgramRun {
    pub fn describe(&self) -> String {
        format!(
            "exit: {}\nsessions: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.sessions, self.stdout, self.stderr
        )
    }
}

/// Runs tests/sdk/`program` against `fx` and waits for it (at most [`PROGRAM_TIMEOUT`]).
pub fn run_program(fx: &SdkFixture, lang: Lang, launch: Launch, program: &str) -> ProgramRun {
    let interpreter = match lang {
        Lang::Python => python(),
        Lang::Node => node(),
    };
    let script = sdk_dir().join(program);
    assert!(script.is_file(), "{} is missing", script.display());
    let home = tempfile::Builder::new()
        .prefix("sdk-home-")
        .tempdir()
        .unwrap();
    let wrapper = home.path().join("dagger-wrapper");
    let sessions_log = home.path().join("sessions.log");

    let mut cmd = match launch {
        Launch::DaggerRun => {
            let mut c = Command::new(bin("dagger"));
            c.arg("run").arg(&interpreter).arg(&script);
            c
        }
        Launch::CliBin => {
            let mut c = Command::new(&interpreter);
            c.arg(&script);
            c
        }
    };
    // A cleared environment: no DAGGER_SESSION_*, no OTEL_*/TRACEPARENT from the machine, a
    // private HOME and XDG cache so Python's CLI cache lookup finds nothing of the user's.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .env("LANG", "C.UTF-8")
        .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", fx.engine.runner_host())
        .env("SDK_TEST_IMAGE", &fx.image)
        .current_dir(sdk_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match launch {
        Launch::DaggerRun => {
            // Must stay unused: an SDK that ignored DAGGER_SESSION_PORT would fail on this
            // path instead of downloading a CLI.
            cmd.env(
                "_EXPERIMENTAL_DAGGER_CLI_BIN",
                "/nonexistent/dagger-must-not-run",
            );
        }
        Launch::CliBin => {
            // Records how the SDK starts the session, then becomes our real CLI (so the SDK
            // sees its real exit status).
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
                    sessions_log.display(),
                    bin("dagger").display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(
                &wrapper,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
            cmd.env("_EXPERIMENTAL_DAGGER_CLI_BIN", &wrapper);
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_timeout(&mut child, PROGRAM_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{program} ({launch:?}) did not finish within {}s; engine log:\n{}",
            PROGRAM_TIMEOUT.as_secs(),
            fx.engine.log()
        )
    });
    let sessions = std::fs::read_to_string(&sessions_log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    ProgramRun {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        sessions,
    }
}
