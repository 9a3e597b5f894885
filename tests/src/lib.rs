//! Harness for end-to-end tests: starts the real `dagger-engine` binary on a private state
//! directory and socket, and talks to it with the real `dagger` CLI and with raw HTTP.
//!
//! These tests need root (the engine refuses to run without it). When not root they fail
//! loudly instead of skipping.

pub mod bench;
pub mod docker;
pub mod fixtures;
pub mod images;
pub mod oci_build;
pub mod registry;
pub mod sdk;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary built by `cargo build --workspace`, next to the test executable's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Test binaries live in target/<profile>/deps, benchmark binaries in target/<profile>.
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`), as scripts/test.sh does",
        path.display()
    );
    path
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these end-to-end tests start the real engine and must run as root (scripts/test.sh does)"
    );
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Default)]
pub struct EngineOptions {
    /// Contents of a config file passed with `--config`.
    pub config: Option<String>,
    /// State directory; a fresh temporary one when `None`.
    pub root: Option<PathBuf>,
    /// Also listen on 127.0.0.1:<free port>.
    pub tcp: bool,
    pub extra_args: Vec<String>,
    /// Extra environment for the engine process (e.g. `DOCKER_CONFIG`).
    pub env: Vec<(String, String)>,
}

pub struct Engine {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub tcp_port: Option<u16>,
    pub log_path: PathBuf,
    /// `--network-name`: the engine's bridge is `<name>0` and its nft table `<name>`.
    pub network_name: String,
    child: Option<Child>,
}

static NEXT_NETWORK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static NETWORK_BY_ROOT: std::sync::Mutex<std::collections::BTreeMap<PathBuf, u32>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// How long the engine may take to come up in a test.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Engine {
    /// Starts the engine and waits until it answers on its unix socket.
    pub fn start(opts: EngineOptions) -> Engine {
        let mut engine = Engine::spawn(opts);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = engine.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("engine exited early ({status}):\n{}", engine.log());
            }
            if let Ok(r) = post_unix(&engine.socket, "/query", r#"{"query":"{ version }"}"#) {
                if r.status == 200 {
                    return engine;
                }
            }
            assert!(
                Instant::now() < deadline,
                "engine not ready:\n{}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns the engine without waiting for it.
    pub fn spawn(opts: EngineOptions) -> Engine {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("dagger-e2e-")
            .tempdir()
            .unwrap();
        let root = opts.root.unwrap_or_else(|| dir.path().join("state"));
        let socket = dir.path().join("engine.sock");
        let log_path = dir.path().join("engine.log");
        let mut cmd = Command::new(bin("dagger-engine"));
        cmd.arg("--root")
            .arg(&root)
            .arg("--addr")
            .arg(format!("unix://{}", socket.display()));
        // Every test engine gets its own bridge and subnet, so engines running in parallel
        // never share addresses and tests never touch a real `dagger0`. An engine restarted on
        // the same state directory gets the same network back and cleans up after its
        // predecessor (a crash test's kill -9 leaves one behind).
        let n = {
            let mut by_root = NETWORK_BY_ROOT.lock().unwrap();
            *by_root
                .entry(root.clone())
                .or_insert_with(|| NEXT_NETWORK.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
        };
        let pid = std::process::id();
        let network_name = format!("dt{:x}{n:02x}", pid % 0xffff);
        cmd.arg("--network-name")
            .arg(&network_name)
            .arg("--network-cidr")
            .arg(format!("10.{}.{}.0/24", 150 + pid % 50, n % 256));
        let tcp_port = opts.tcp.then(free_port);
        if let Some(port) = tcp_port {
            cmd.arg("--addr").arg(format!("tcp://127.0.0.1:{port}"));
        }
        if let Some(text) = &opts.config {
            let path = dir.path().join("engine.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        } else {
            // Never pick up the machine's /etc/dagger/engine.toml in tests.
            let path = dir.path().join("empty.toml");
            std::fs::write(&path, "").unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.args(&opts.extra_args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(&log_path).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("DAGGER_ENGINE_LOG", "debug")
            .spawn()
            .unwrap();
        Engine {
            dir,
            root,
            socket,
            tcp_port,
            log_path,
            network_name,
            child: Some(child),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a GraphQL query over the unix socket and returns the JSON answer.
    pub fn query(&self, query: &str) -> serde_json::Value {
        let r = post_unix(&self.socket, "/query", &gql(query))
            .unwrap_or_else(|e| panic!("query failed: {e}\nengine log:\n{}", self.log()));
        r.json()
    }

    /// Like [`Engine::query`], but panics (with the engine log) on GraphQL errors.
    pub fn query_ok(&self, query: &str) -> serde_json::Value {
        let v = self.query(query);
        assert!(
            v.get("errors").is_none(),
            "query {query}\nfailed: {v}\nengine log:\n{}",
            self.log()
        );
        v["data"].clone()
    }

    /// Kills the engine with SIGKILL (a crash) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `_EXPERIMENTAL_DAGGER_RUNNER_HOST` for this engine.
    pub fn runner_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs the `dagger` CLI against this engine.
    pub fn dagger(&self, args: &[&str], stdin: &str) -> Output {
        dagger_cli(
            args,
            stdin,
            &[("_EXPERIMENTAL_DAGGER_RUNNER_HOST", &self.runner_host())],
        )
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("engine already stopped");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_timeout(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("engine did not stop after SIGTERM:\n{}", self.log()))
    }

    /// Waits for the engine to exit by itself (e.g. after a start-up error).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("engine already stopped");
        wait_timeout(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("engine did not exit:\n{}", self.log()))
    }
}

impl Drop for Engine {
    /// A graceful stop first, so the engine removes its bridge, NAT table and mounts; a kill
    /// only if it does not stop in time.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if wait_timeout(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the `dagger` CLI with extra environment variables.
pub fn dagger_cli(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    dagger_cli_in(None, args, stdin, env)
}

/// Runs the `dagger` CLI in `cwd` (this process's when `None`) with extra environment
/// variables, `stdin` written to it and closed.
pub fn dagger_cli_in(
    cwd: Option<&Path>,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(bin("dagger"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A raw HTTP answer.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request over a unix socket, by hand, with `Connection: close`.
pub fn post_unix(socket: &Path, path: &str, body: &str) -> std::io::Result<RawResponse> {
    let stream = UnixStream::connect(socket)?;
    request(stream, "POST", path, body)
}

pub fn request_unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<RawResponse> {
    request(UnixStream::connect(socket)?, method, path, body)
}

pub fn post_tcp(port: u16, path: &str, body: &str) -> std::io::Result<RawResponse> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    request(stream, "POST", path, body)
}

fn request<S: Read + Write>(
    mut s: S,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<RawResponse> {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    sdk::parse_response(&raw)
}

/// A GraphQL request body for `query`.
pub fn gql(query: &str) -> String {
    serde_json::json!({ "query": query }).to_string()
}
