//! Registries for tests, on 127.0.0.1 only:
//!
//! * [`TestRegistry`]: Debian's real `docker-registry` (distribution 2.8) in one of the modes
//!   of shared/reference/scripts/registry-start.sh: plain HTTP, TLS (a CA made here with
//!   openssl), htpasswd Basic auth over TLS or plain HTTP, and bearer tokens from
//!   `tests/scripts/token-server.py`.
//! * [`FakeRegistry`]: an in-process HTTP/1.1 server whose every answer a test scripts, for
//!   the misbehaviours a real registry never shows (wrong digests, endless bodies, 503s).
//!
//! Missing binaries fail the test with the package to install; nothing is skipped.

use dagger_engine::config::RegistryConfig;
use dagger_engine::registry::Credentials;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The account every auth mode accepts (htpasswd and the token server).
pub const USER: &str = "testuser";
pub const PASS: &str = "testpass";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The absolute path of `name` on `PATH` (or `name` itself when it is a path); panics naming
/// the Debian package when it is missing.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    let candidate = Path::new(name);
    if candidate.is_absolute() {
        assert!(
            candidate.is_file(),
            "{name} is missing: install the Debian package {package} (scripts/install-deps.sh does)"
        );
        return candidate.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH: install the Debian package {package} (scripts/install-deps.sh does)")
        })
}

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain HTTP, anonymous.
    Plain,
    /// HTTPS with a certificate from a CA made for this registry.
    Tls,
    /// HTTPS + htpasswd Basic auth.
    Basic,
    /// Plain HTTP + htpasswd Basic auth.
    BasicHttp,
    /// HTTPS + bearer tokens from token-server.py (anonymous pull allowed).
    Token,
}

impl Mode {
    pub fn tls(self) -> bool {
        matches!(self, Mode::Tls | Mode::Basic | Mode::Token)
    }
    pub fn auth(self) -> bool {
        matches!(self, Mode::Basic | Mode::BasicHttp | Mode::Token)
    }
}

/// A running `docker-registry`; killed (with its token server) on drop.
pub struct TestRegistry {
    pub mode: Mode,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The CA certificate (PEM) the registry's certificate chains to, in TLS modes.
    pub ca: Option<PathBuf>,
    /// A directory holding only `ca.crt`: skopeo's `--dest-cert-dir`, or an `extra_ca_dir`.
    pub cert_dir: Option<PathBuf>,
    pub user: Option<String>,
    pub pass: Option<String>,
    /// The token server's `host:port` in token mode.
    pub token_addr: Option<String>,
    pub dir: tempfile::TempDir,
    registry: Option<Child>,
    token_server: Option<Child>,
}

impl TestRegistry {
    pub fn start(mode: Mode) -> TestRegistry {
        let registry_bin = require_binary("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("registry-test-")
            .tempdir()
            .expect("temp dir");
        let work = dir.path().to_path_buf();
        std::fs::create_dir_all(work.join("data")).unwrap();

        let (ca, cert_dir) = if mode.tls() {
            let (ca, cert_dir) = make_tls_material(&work);
            (Some(ca), Some(cert_dir))
        } else {
            (None, None)
        };
        if matches!(mode, Mode::Basic | Mode::BasicHttp) {
            let htpasswd = require_binary("htpasswd", "apache2-utils");
            let out = run(Command::new(htpasswd).args(["-Bbn", USER, PASS]));
            std::fs::write(work.join("htpasswd"), out.stdout).unwrap();
        }
        let (token_server, token_addr) = if mode == Mode::Token {
            let (child, addr) = start_token_server(&work);
            (Some(child), Some(addr))
        } else {
            (None, None)
        };

        let mut last_log = String::new();
        for _ in 0..3 {
            let addr = format!("127.0.0.1:{}", crate::free_port());
            std::fs::write(
                work.join("config.yml"),
                registry_config(&work, &addr, mode, token_addr.as_deref()),
            )
            .unwrap();
            let log_path = work.join("registry.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(&registry_bin)
                .arg("serve")
                .arg(work.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", registry_bin.display()));
            if wait_listening(&addr, &mut child) {
                return TestRegistry {
                    mode,
                    addr,
                    ca,
                    cert_dir,
                    user: mode.auth().then(|| USER.to_string()),
                    pass: mode.auth().then(|| PASS.to_string()),
                    token_addr,
                    dir,
                    registry: Some(child),
                    token_server,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            // Most likely the port was taken between free_port() and the bind: try another.
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        if let Some(mut t) = token_server {
            let _ = t.kill();
            let _ = t.wait();
        }
        panic!("docker-registry ({mode:?}) did not start:\n{last_log}");
    }

    pub fn scheme(&self) -> &'static str {
        if self.mode.tls() {
            "https"
        } else {
            "http"
        }
    }

    /// `scheme://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// Settings that reach this registry: HTTPS with its CA in TLS modes (loopback hosts
    /// default to plain HTTP), plain HTTP otherwise.
    pub fn registry_config(&self) -> RegistryConfig {
        if self.mode.tls() {
            RegistryConfig {
                http: Some(false),
                ca: self.ca.iter().cloned().collect(),
                ..Default::default()
            }
        } else {
            RegistryConfig::default()
        }
    }

    /// The right credentials for this registry (none when it has no auth).
    pub fn credentials(&self) -> Credentials {
        match (&self.user, &self.pass) {
            (Some(u), Some(p)) => Credentials::none().with(&self.addr, u, p),
            _ => Credentials::none(),
        }
    }

    pub fn creds(&self) -> Option<(&str, &str)> {
        Some((self.user.as_deref()?, self.pass.as_deref()?))
    }

    /// Kills the registry (e.g. to test an origin that is down); the address stays reserved
    /// in no way, so use it right away.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.registry.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        for c in [self.registry.take(), self.token_server.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn registry_config(work: &Path, addr: &str, mode: Mode, token_addr: Option<&str>) -> String {
    let mut cfg = format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {addr}
  secret: test-secret
",
        data = work.join("data").display()
    );
    if mode.tls() {
        cfg.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            work.join("tls.crt").display(),
            work.join("tls.key").display()
        ));
    }
    if matches!(mode, Mode::Basic | Mode::BasicHttp) {
        cfg.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
            work.join("htpasswd").display()
        ));
    }
    if let Some(t) = token_addr {
        cfg.push_str(&format!(
            "auth:\n  token:\n    realm: http://{t}/token\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
            work.join("token.crt").display()
        ));
    }
    cfg
}

/// A CA and a leaf for 127.0.0.1. The leaf is CA:FALSE with an IP SAN: rustls rejects a CA
/// certificate used as a server certificate. EC keys because RSA generation is slow.
fn make_tls_material(work: &Path) -> (PathBuf, PathBuf) {
    let openssl = require_binary("openssl", "openssl");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new(&openssl)
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "3650", "-subj", "/CN=dagger-engine test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(work.join("ca.key"))
        .arg("-out")
        .arg(work.join("ca.crt")));
    run(Command::new(&openssl)
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(work.join("tls.key"))
        .arg("-out")
        .arg(work.join("tls.csr")));
    std::fs::write(
        work.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(Command::new(&openssl)
        .args([
            "x509",
            "-req",
            "-sha256",
            "-days",
            "3650",
            "-CAcreateserial",
        ])
        .arg("-in")
        .arg(work.join("tls.csr"))
        .arg("-CA")
        .arg(work.join("ca.crt"))
        .arg("-CAkey")
        .arg(work.join("ca.key"))
        .arg("-extfile")
        .arg(work.join("leaf.ext"))
        .arg("-out")
        .arg(work.join("tls.crt")));
    let cert_dir = work.join("certs.d");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(work.join("ca.crt"), cert_dir.join("ca.crt")).unwrap();
    (work.join("ca.crt"), cert_dir)
}

/// Starts token-server.py on a port it picks itself (no race) and returns it with its address.
fn start_token_server(work: &Path) -> (Child, String) {
    let openssl = require_binary("openssl", "openssl");
    let python = require_binary("python3", "python3");
    // RS256 JWTs: the token server signs with `openssl dgst -sha256 -sign`.
    run(Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        ])
        .args(["-subj", "/CN=token-issuer"])
        .arg("-keyout")
        .arg(work.join("token.key"))
        .arg("-out")
        .arg(work.join("token.crt")));
    let script = crate::workspace().join("tests/scripts/token-server.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(work.join("token.key"))
        .arg(work.join("token.crt"))
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    // The server prints its port once it listens; EOF means it died (its stderr is shown).
    let _ = BufReader::new(stdout).read_line(&mut line);
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse::<u16>().ok());
    match port {
        Some(p) => (child, format!("127.0.0.1:{p}")),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("token-server.py did not start (printed {line:?})");
        }
    }
}

/// Waits until `addr` accepts connections; false if the process exited first.
fn wait_listening(addr: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ---- The in-process fake ----

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the fake sends back.
#[derive(Debug, Clone)]
pub enum FakeBody {
    Full(Vec<u8>),
    /// Declares `declared` bytes, sends `sent`, then closes the connection.
    Truncated {
        declared: u64,
        sent: Vec<u8>,
    },
    /// Streams zeros, up to `max` bytes, until the client hangs up; counts what it wrote in
    /// [`FakeStats::bytes_streamed`]. With `chunked`, no length is declared.
    Endless {
        max: u64,
        chunked: bool,
    },
    /// Sends `body` (with its length declared) in `chunk`-sized pieces, pausing `pause`
    /// between them: a slow download that a test can interrupt.
    Slow {
        body: Vec<u8>,
        chunk: usize,
        pause: Duration,
    },
    /// Closes the connection without answering.
    HangUp,
}

#[derive(Debug, Clone)]
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: FakeBody,
    /// Wait this long before answering (the request counts as in flight meanwhile).
    pub delay: Duration,
}

impl FakeResponse {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        FakeResponse {
            status,
            headers: Vec::new(),
            body: FakeBody::Full(body.into()),
            delay: Duration::ZERO,
        }
    }
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        FakeResponse::new(200, body)
    }
    pub fn status(status: u16) -> Self {
        FakeResponse::new(status, Vec::new())
    }
    pub fn not_found() -> Self {
        FakeResponse::new(
            404,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not found"}]}"#.to_vec(),
        )
        .header("Content-Type", "application/json")
    }
    pub fn hang_up() -> Self {
        FakeResponse {
            body: FakeBody::HangUp,
            ..FakeResponse::status(200)
        }
    }
    pub fn with_body(mut self, body: FakeBody) -> Self {
        self.body = body;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// What the fake observed.
#[derive(Default, Debug)]
pub struct FakeStats {
    pub requests: AtomicUsize,
    pub connections: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Bytes written by [`FakeBody::Endless`] responses.
    pub bytes_streamed: AtomicU64,
    /// Endless responses the client hung up on before `max`.
    pub client_hangups: AtomicUsize,
    pub log: Mutex<Vec<FakeRequest>>,
}

type Handler = dyn Fn(&FakeRequest) -> FakeResponse + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1:<free port> answering with `handler`. Must be started
/// inside a tokio runtime; stops accepting on drop.
pub struct FakeRegistry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub stats: Arc<FakeStats>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    pub async fn start(
        handler: impl Fn(&FakeRequest) -> FakeResponse + Send + Sync + 'static,
    ) -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(FakeStats::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let s = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(sock, handler.clone(), s.clone()));
            }
        });
        FakeRegistry { addr, stats, task }
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.stats.log.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(
    mut sock: tokio::net::TcpStream,
    handler: Arc<Handler>,
    stats: Arc<FakeStats>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let req = FakeRequest {
            method,
            target,
            headers,
        };
        // Discard a request body, if any.
        let body_len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < body_len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);

        stats.requests.fetch_add(1, Ordering::SeqCst);
        stats.log.lock().unwrap().push(req.clone());
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let resp = handler(&req);
        if !resp.delay.is_zero() {
            tokio::time::sleep(resp.delay).await;
        }
        let keep_open = write_response(&mut sock, &req, resp, &stats).await;
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep_open {
            let _ = sock.shutdown().await;
            return;
        }
    }
}

/// Writes one response; false when the connection must be closed afterwards.
async fn write_response(
    sock: &mut tokio::net::TcpStream,
    req: &FakeRequest,
    resp: FakeResponse,
    stats: &FakeStats,
) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let head_only = req.method == "HEAD";
    match resp.body {
        FakeBody::HangUp => false,
        FakeBody::Full(body) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut out = head.into_bytes();
            if !head_only {
                out.extend_from_slice(&body);
            }
            sock.write_all(&out).await.is_ok()
        }
        FakeBody::Slow { body, chunk, pause } => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            if sock.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            if head_only {
                return true;
            }
            for piece in body.chunks(chunk.max(1)) {
                if sock.write_all(piece).await.is_err() {
                    stats.client_hangups.fetch_add(1, Ordering::SeqCst);
                    return false;
                }
                tokio::time::sleep(pause).await;
            }
            true
        }
        FakeBody::Truncated { declared, sent } => {
            head.push_str(&format!("Content-Length: {declared}\r\n\r\n"));
            let mut out = head.into_bytes();
            out.extend_from_slice(&sent);
            let _ = sock.write_all(&out).await;
            false
        }
        FakeBody::Endless { max, chunked } => {
            if chunked {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            } else {
                head.push_str(&format!("Content-Length: {max}\r\n\r\n"));
            }
            if sock.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let chunk = vec![0u8; 64 * 1024];
            let mut written = 0u64;
            while written < max {
                let n = (max - written).min(chunk.len() as u64) as usize;
                let ok = if chunked {
                    let mut framed = format!("{n:x}\r\n").into_bytes();
                    framed.extend_from_slice(&chunk[..n]);
                    framed.extend_from_slice(b"\r\n");
                    sock.write_all(&framed).await.is_ok()
                } else {
                    sock.write_all(&chunk[..n]).await.is_ok()
                };
                if !ok {
                    stats.client_hangups.fetch_add(1, Ordering::SeqCst);
                    return false;
                }
                written += n as u64;
                stats.bytes_streamed.fetch_add(n as u64, Ordering::SeqCst);
            }
            if chunked {
                let _ = sock.write_all(b"0\r\n\r\n").await;
            }
            false
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
