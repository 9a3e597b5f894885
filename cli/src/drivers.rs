//! Connection drivers for engines reached through a command: `docker-container://`,
//! `podman-container://`, `kube-pod://` and `docker-image://` (which first provisions a
//! container).
//!
//! Each connection to such an engine is a child process (`docker exec -i NAME dagger-engine
//! dial-stdio`, ...) whose stdin and stdout carry HTTP/1.1 to the engine's unix socket. The
//! rest of the CLI only knows unix and tcp endpoints, so the driver serves a private unix
//! socket (in a fresh 0700 directory) and forwards each request over a pool of those child
//! connections, kept alive and reused: the number of child processes follows the number of
//! requests in flight at once, not the number of requests. `dagger query`, `dagger run` and
//! `dagger session` all go through it unchanged.

use crate::client::{Client, Endpoint};
use crate::runner_host::RunnerHost;
use anyhow::{bail, Context as _};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixListener;
use tokio::process::Command;

/// The command run inside the engine's container.
pub const DIAL_STDIO: [&str; 2] = ["dagger-engine", "dial-stdio"];

/// Set (to anything) to keep older `dagger-engine-*` containers when `docker-image://`
/// provisions a new one (Dagger's variable).
pub const LEAVE_OLD_ENGINE_ENV: &str = "DAGGER_LEAVE_OLD_ENGINE";

/// `docker run` flags used instead of `--privileged` by `docker-image://`, split like a shell
/// does (whitespace, with '…' and "…" quoting and backslash escapes): for hosts where a
/// privileged container cannot start (docs/runner.md).
pub const RUN_ARGS_ENV: &str = "DAGGER_ENGINE_DOCKER_RUN_ARGS";

/// The named volume `docker-image://` mounts at `/var/lib/dagger`.
pub const ENGINE_VOLUME: &str = "dagger-engine";

/// Prefix of the containers `docker-image://` creates.
pub const CONTAINER_PREFIX: &str = "dagger-engine-";

/// How long a provisioned engine may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the first `{ version }` through a driver may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// The command line of one connection to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialCommand {
    pub program: String,
    pub args: Vec<String>,
}

impl std::fmt::Display for DialCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// `<runtime> exec -i NAME dagger-engine dial-stdio`.
pub fn container_command(runtime: &str, name: &str) -> DialCommand {
    let mut args = vec!["exec".to_string(), "-i".to_string(), name.to_string()];
    args.extend(DIAL_STDIO.iter().map(|s| s.to_string()));
    DialCommand {
        program: runtime.to_string(),
        args,
    }
}

/// `kubectl [--context=C] [--namespace=NS] exec -i POD [--container=C] -- dagger-engine
/// dial-stdio`: each flag only when its query parameter is given (kubectl's own defaults
/// otherwise), and in the `--flag=value` form so a value can never be read as another flag.
pub fn kube_command(
    pod: &str,
    context: Option<&str>,
    namespace: Option<&str>,
    container: Option<&str>,
) -> DialCommand {
    let mut args = Vec::new();
    if let Some(c) = context {
        args.push(format!("--context={c}"));
    }
    if let Some(n) = namespace {
        args.push(format!("--namespace={n}"));
    }
    args.extend(["exec".to_string(), "-i".to_string(), pod.to_string()]);
    if let Some(c) = container {
        args.push(format!("--container={c}"));
    }
    args.push("--".to_string());
    args.extend(DIAL_STDIO.iter().map(|s| s.to_string()));
    DialCommand {
        program: "kubectl".to_string(),
        args,
    }
}

/// The container name `docker-image://REF` uses: `dagger-engine-<tag>`, or the first 16 hex
/// digits of the digest when the reference pins one; `latest` when it has neither.
pub fn container_name_for(reference: &str) -> String {
    if let Some((_, digest)) = reference.split_once('@') {
        let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
        let short: String = hex
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        return format!("{CONTAINER_PREFIX}{short}");
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let tag = match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => "latest",
    };
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{CONTAINER_PREFIX}{tag}")
}

/// The `docker run` command line that provisions an engine from `reference`.
pub fn run_command(
    reference: &str,
    name: &str,
    extra: Option<&str>,
    volume: &str,
) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = ["run", "-d", "--restart", "always"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match extra.map(str::trim).filter(|e| !e.is_empty()) {
        Some(extra) => args.extend(split_words(extra)?),
        None => args.push("--privileged".to_string()),
    }
    args.extend([
        "-v".to_string(),
        format!("{volume}:/var/lib/dagger"),
        "--name".to_string(),
        name.to_string(),
        reference.to_string(),
    ]);
    Ok(args)
}

/// Splits `s` into words as a POSIX shell would, without expansions: whitespace separates,
/// '…' quotes literally, "…" quotes with `\"` and `\\` escapes, and a backslash outside quotes
/// escapes the next character.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated \" in {s:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("trailing backslash in {s:?}")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Connects through the driver for `host` (not `unix://` or `tcp://`).
pub async fn connect(host: &RunnerHost) -> anyhow::Result<Client> {
    let dial = match host {
        RunnerHost::DockerContainer { name } => {
            let docker = require_program("docker", host)?;
            check_container(&docker, name, host).await?;
            container_command("docker", name)
        }
        RunnerHost::PodmanContainer { name } => {
            let podman = require_program("podman", host)?;
            check_container(&podman, name, host).await?;
            container_command("podman", name)
        }
        RunnerHost::KubePod {
            pod,
            context,
            namespace,
            container,
        } => {
            require_program("kubectl", host)?;
            kube_command(
                pod,
                context.as_deref(),
                namespace.as_deref(),
                container.as_deref(),
            )
        }
        RunnerHost::DockerImage { reference } => {
            let docker = require_program("docker", host)?;
            let name = provision(&docker, reference).await?;
            let dial = container_command("docker", &name);
            let client = tunnel_client(host, dial.clone())?;
            wait_until_ready(&docker, &name, &client).await?;
            return Ok(client);
        }
        RunnerHost::Unix(_) | RunnerHost::Tcp { .. } => {
            bail!("{host}: not a driver scheme")
        }
    };
    let client = tunnel_client(host, dial.clone())?;
    check_engine(&client, host, &dial).await?;
    Ok(client)
}

/// The full path of `program` on `PATH`, or a clear error naming the scheme.
fn require_program(program: &str, host: &RunnerHost) -> anyhow::Result<PathBuf> {
    find_on_path(program).with_context(|| {
        format!(
            "{host}: the {}:// driver runs `{program}`, which is not on PATH; install it or choose another runner host",
            host.scheme()
        )
    })
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `program args...` and returns its stdout, or an error with its stderr.
async fn output(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker inspect`'s `{{.State.Running}}` for container `name`: `"true"` when it runs.
async fn running_state(runtime: &Path, name: &str) -> anyhow::Result<String> {
    let format = "{{.State.Running}}";
    output(
        runtime,
        &["inspect", "--type", "container", "--format", format, name],
    )
    .await
}

/// Fails fast when the container does not exist or is not running.
async fn check_container(runtime: &Path, name: &str, host: &RunnerHost) -> anyhow::Result<()> {
    let state = running_state(runtime, name).await.with_context(|| {
        format!("{host}: no container named {name:?} (is the engine container started?)")
    })?;
    if state != "true" {
        bail!(
            "{host}: container {name:?} is not running; start it with `{} start {name}`",
            runtime
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// One `{ version }` through the driver, so a broken connection is reported now, with the
/// command's own error, rather than on the first real query.
async fn check_engine(
    client: &Client,
    host: &RunnerHost,
    dial: &DialCommand,
) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(CHECK_TIMEOUT, client.query("{ version }"))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{host}: the engine did not answer through `{dial}` within {}s",
                CHECK_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("{host}: cannot reach the engine through `{dial}`"))?;
    if answer.body["data"]["version"].as_str().is_none() {
        let message = answer.body["errors"][0]["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| answer.body.to_string());
        bail!("{host}: cannot reach the engine: {message}");
    }
    Ok(())
}

/// `docker-image://REF`: reuses the engine container for REF (starting it if stopped), or runs
/// a new one; then removes older `dagger-engine-*` containers unless told to keep them.
/// Returns the container's name.
async fn provision(docker: &Path, reference: &str) -> anyhow::Result<String> {
    let name = container_name_for(reference);
    let listed = output(
        docker,
        &[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("name=^/{CONTAINER_PREFIX}"),
            "--format",
            "{{.Names}}",
        ],
    )
    .await
    .context("docker-image://: listing engine containers")?;
    let existing: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(CONTAINER_PREFIX))
        .collect();
    let leave_old = std::env::var_os(LEAVE_OLD_ENGINE_ENV).is_some_and(|v| !v.is_empty());
    let others: Vec<&str> = existing.iter().copied().filter(|n| *n != name).collect();
    // Before starting ours: the old engines hold the lock of the shared volume.
    // Stopped first (SIGTERM: an engine removes its network and releases its lock), then
    // removed; the volume stays.
    if !leave_old && !others.is_empty() {
        let mut stop = vec!["stop", "-t", "20"];
        stop.extend(others.iter().copied());
        let _ = output(docker, &stop).await;
        let mut rm = vec!["rm", "-f"];
        rm.extend(others.iter().copied());
        if let Err(e) = output(docker, &rm).await {
            eprintln!("dagger: removing older engine containers: {e:#}");
        }
    }
    if existing.contains(&name.as_str()) {
        let running = running_state(docker, &name).await?;
        if running != "true" {
            output(docker, &["start", &name])
                .await
                .with_context(|| format!("docker-image://{reference}: starting {name}"))?;
        }
        return Ok(name);
    }
    // Kept engines would hold the lock of the shared volume: a new one gets a volume of its own.
    let volume = if leave_old && !others.is_empty() {
        name.clone()
    } else {
        ENGINE_VOLUME.to_string()
    };
    let extra = std::env::var(RUN_ARGS_ENV).ok();
    let args = run_command(reference, &name, extra.as_deref(), &volume)
        .map_err(|e| anyhow::anyhow!("{RUN_ARGS_ENV}: {e}"))?;
    eprintln!("dagger: starting engine container {name} from {reference}");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(e) = output(docker, &refs).await {
        // Another CLI won the race to create it.
        if !format!("{e:#}").contains("is already in use") {
            return Err(e.context(format!(
                "docker-image://{reference}: cannot start the engine container (where --privileged is not possible, set {RUN_ARGS_ENV} to the docker run flags to use instead)"
            )));
        }
    }
    Ok(name)
}

/// Waits until the provisioned engine answers through the driver; reports the container's
/// logs if it stops first.
async fn wait_until_ready(docker: &Path, name: &str, client: &Client) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_error = String::new();
    while started.elapsed() < READY_TIMEOUT {
        match tokio::time::timeout(Duration::from_secs(10), client.query("{ version }")).await {
            Ok(Ok(answer)) if answer.body["data"]["version"].is_string() => return Ok(()),
            Ok(Ok(answer)) => last_error = answer.body.to_string(),
            Ok(Err(e)) => last_error = format!("{e:#}"),
            Err(_) => last_error = "no answer within 10s".into(),
        }
        let running = running_state(docker, name).await.unwrap_or_default();
        if running != "true" {
            let logs = Command::new(docker)
                .args(["logs", "--tail", "20", name])
                .output()
                .await
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            bail!("engine container {name} stopped before answering; its last log lines:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "engine container {name} did not answer within {}s: {last_error}",
        READY_TIMEOUT.as_secs()
    )
}

/// Starts the local tunnel for `dial` and returns a client for it.
fn tunnel_client(host: &RunnerHost, dial: DialCommand) -> anyhow::Result<Client> {
    let tunnel = Tunnel::start(host, dial)?;
    let endpoint = Endpoint::Unix(tunnel.socket.clone());
    Ok(Client::with_tunnel(endpoint, Arc::new(tunnel)))
}

/// The private unix socket that forwards to the engine; removed when dropped.
pub struct Tunnel {
    dir: PathBuf,
    socket: PathBuf,
    accept: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Tunnel {
    fn start(host: &RunnerHost, dial: DialCommand) -> anyhow::Result<Tunnel> {
        let dir = private_dir().context("creating the driver's socket directory")?;
        let socket = dir.join("engine.sock");
        let listener = match UnixListener::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("listening on {}", socket.display()));
            }
        };
        let pool = Arc::new(Pool {
            dial,
            label: host.to_string(),
            idle: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let pool = pool.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let pool = pool.clone();
                        async move { Ok::<_, std::convert::Infallible>(pool.forward(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .header_read_timeout(None)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
        .abort_handle();
        Ok(Tunnel {
            dir,
            socket,
            accept,
        })
    }
}

/// A fresh directory only this user can enter, under `$TMPDIR`. Directories that earlier
/// CLIs left behind (killed before they could remove them) are removed first.
fn private_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    remove_stale_dirs(&base);
    let mut last = None;
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = base.join(format!(
            "dagger-runner-{}-{nanos:08x}{attempt}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no directory")))
}

/// Removes `dagger-runner-<pid>-*` directories in `base` whose process is gone. Others'
/// directories are 0700: removing them fails, harmlessly.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("dagger-runner-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

type Body = Either<Incoming, Full<Bytes>>;

/// One child connection.
struct Conn {
    sender: SendRequest<Incoming>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

struct Pool {
    dial: DialCommand,
    label: String,
    /// Connections not known to be closed; one is free when its sender is ready.
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| !c.sender.is_closed());
        let i = idle.iter().position(|c| c.sender.is_ready())?;
        Some(idle.swap_remove(i))
    }

    fn give_back(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// Starts one child and speaks HTTP/1.1 over its stdin and stdout.
    async fn dial(&self) -> anyhow::Result<Conn> {
        let mut child = Command::new(&self.dial.program)
            .args(&self.dial.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{}`", self.dial))?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            bail!("`{}`: no pipes", self.dial);
        };
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                if s.len() < 16 << 10 {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        });
        let io = TokioIo::new(tokio::io::join(stdout, stdin));
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .with_context(|| format!("`{}`", self.dial))?;
        tokio::spawn(async move {
            let _ = conn.await;
            // The connection is over: make sure the child goes too, and reap it.
            let _ = child.start_kill();
            let _ = child.wait().await;
        });
        Ok(Conn {
            sender,
            stderr: captured,
        })
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let mut req = req;
        let mut fresh = false;
        loop {
            let mut conn = match self.take() {
                Some(c) => c,
                None => {
                    fresh = true;
                    match self.dial().await {
                        Ok(c) => c,
                        Err(e) => return self.error(&format!("{e:#}")),
                    }
                }
            };
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    self.give_back(conn);
                    return resp.map(Either::Left);
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection that went away before our request was written.
                    Some(unsent) if !fresh => req = unsent,
                    _ => {
                        // Give the child a moment to print why it failed.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let stderr = String::from_utf8_lossy(
                            &conn.stderr.lock().unwrap_or_else(|p| p.into_inner()),
                        )
                        .trim()
                        .to_string();
                        let why = if stderr.is_empty() {
                            e.into_error().to_string()
                        } else {
                            stderr
                        };
                        return self.error(&format!("`{}` failed: {why}", self.dial));
                    }
                },
            }
        }
    }

    fn error(&self, message: &str) -> Response<Body> {
        let body = serde_json::json!({
            "errors": [{ "message": format!("{}: {message}", self.label) }]
        })
        .to_string();
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn argv(d: &DialCommand) -> Vec<String> {
        std::iter::once(d.program.clone())
            .chain(d.args.iter().cloned())
            .collect()
    }

    #[test]
    fn kube_pod_command_lines() {
        assert_eq!(
            argv(&kube_command("p1", None, None, None)),
            [
                "kubectl",
                "exec",
                "-i",
                "p1",
                "--",
                "dagger-engine",
                "dial-stdio"
            ]
        );
        assert_eq!(
            argv(&kube_command(
                "dagger-engine-x7k2p",
                Some("prod"),
                Some("dagger"),
                Some("engine")
            )),
            [
                "kubectl",
                "--context=prod",
                "--namespace=dagger",
                "exec",
                "-i",
                "dagger-engine-x7k2p",
                "--container=engine",
                "--",
                "dagger-engine",
                "dial-stdio"
            ]
        );
        // From the runner-host URL, each query parameter lands in its flag.
        let RunnerHost::KubePod {
            pod,
            context,
            namespace,
            container,
        } = RunnerHost::parse("kube-pod://e1?namespace=ci&context=-x").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            argv(&kube_command(
                &pod,
                context.as_deref(),
                namespace.as_deref(),
                container.as_deref()
            )),
            [
                "kubectl",
                "--context=-x",
                "--namespace=ci",
                "exec",
                "-i",
                "e1",
                "--",
                "dagger-engine",
                "dial-stdio"
            ]
        );
    }

    #[test]
    fn container_command_lines() {
        assert_eq!(
            argv(&container_command("docker", "dagger-engine")),
            [
                "docker",
                "exec",
                "-i",
                "dagger-engine",
                "dagger-engine",
                "dial-stdio"
            ]
        );
        assert_eq!(
            container_command("podman", "e").to_string(),
            "podman exec -i e dagger-engine dial-stdio"
        );
    }

    #[test]
    fn image_container_names() {
        assert_eq!(
            container_name_for("registry.example.com:5000/dagger/engine:v0.1.0"),
            "dagger-engine-v0.1.0"
        );
        assert_eq!(
            container_name_for("localhost:5000/engine"),
            "dagger-engine-latest"
        );
        assert_eq!(
            container_name_for(
                "r.example.com/engine:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            ),
            "dagger-engine-0123456789abcdef"
        );
    }

    #[test]
    fn docker_run_command_lines() {
        assert_eq!(
            run_command("img:v1", "dagger-engine-v1", None, "dagger-engine").unwrap(),
            [
                "run",
                "-d",
                "--restart",
                "always",
                "--privileged",
                "-v",
                "dagger-engine:/var/lib/dagger",
                "--name",
                "dagger-engine-v1",
                "img:v1"
            ]
        );
        let custom = run_command(
            "img:v1",
            "dagger-engine-v1",
            Some(" --cap-add ALL  --network host --device-cgroup-rule 'a *:* rwm'"),
            "dagger-engine",
        )
        .unwrap();
        assert!(!custom.contains(&"--privileged".to_string()));
        assert_eq!(
            &custom[4..10],
            [
                "--cap-add",
                "ALL",
                "--network",
                "host",
                "--device-cgroup-rule",
                "a *:* rwm"
            ]
        );
        assert_eq!(custom.last().unwrap(), "img:v1");
    }

    #[test]
    fn stale_driver_dirs_are_removed() {
        let base = tempfile_dir();
        // pid_max is at most 2^22: this pid cannot exist.
        let stale = base.join("dagger-runner-99999999-00000000");
        let live = base.join(format!("dagger-runner-{}-00000000", std::process::id()));
        let other = base.join("dagger-runner-x");
        for d in [&stale, &live, &other] {
            std::fs::create_dir(d).unwrap();
        }
        remove_stale_dirs(&base);
        assert!(!stale.exists());
        assert!(live.exists() && other.exists());
        std::fs::remove_dir_all(base).unwrap();
    }

    /// A scratch directory for a test (the CLI has no tempfile dependency).
    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "drivers-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            split_words(r#" a  'b c' "d \"e\" \\ \x" f\ g '' "#).unwrap(),
            ["a", "b c", r#"d "e" \ \x"#, "f g", ""]
        );
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
        assert!(split_words("end\\").is_err());
    }

    /// A stand-in for `docker exec -i NAME dagger-engine dial-stdio`: counts its starts in
    /// `count`, then joins stdin/stdout to the unix socket `sock` (python3, as in the tests).
    fn counting_dialer(count: &Path, sock: &Path) -> DialCommand {
        let splice = r#"
import os, socket, sys, threading
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def up():
    while True:
        b = os.read(0, 65536)
        if not b: break
        s.sendall(b)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    b = s.recv(65536)
    if not b: break
    os.write(1, b)
"#;
        DialCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                r#"echo started >> "$0"; exec python3 -c "$1" "$2""#.into(),
                count.display().to_string(),
                splice.into(),
                sock.display().to_string(),
            ],
        }
    }

    /// An engine stand-in on a unix socket: answers every request with a version.
    fn fake_engine(sock: &Path) {
        let listener = UnixListener::bind(sock).unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(br#"{"data":{"version":"v0.0.0-fake"}}"#),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    #[tokio::test]
    async fn requests_reuse_the_dialed_connections() {
        let dir = private_dir().unwrap();
        let engine = dir.join("engine.sock");
        let count = dir.join("count");
        fake_engine(&engine);
        let host = RunnerHost::parse("docker-container://fake").unwrap();
        let client = tunnel_client(&host, counting_dialer(&count, &engine)).unwrap();
        let Endpoint::Unix(local) = client.endpoint.clone() else {
            panic!("not a unix endpoint")
        };
        // One fresh local connection per request (as client.rs does), one child in all.
        for _ in 0..20 {
            assert_eq!(
                client.probe(Duration::from_secs(30)).await.as_deref(),
                Some("v0.0.0-fake")
            );
        }
        let started = || {
            std::fs::read_to_string(&count)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(started(), 1, "sequential requests each started a child");
        // Concurrent requests need a connection each, and no more.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let c = client.clone();
            set.spawn(async move { c.probe(Duration::from_secs(30)).await });
        }
        let answers = set.join_all().await;
        assert!(answers.iter().all(|a| a.as_deref() == Some("v0.0.0-fake")));
        assert!(
            started() <= 4,
            "{} children for 4 concurrent requests",
            started()
        );
        // The driver's socket goes away with the last client.
        assert!(local.exists());
        drop(client);
        assert!(!local.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_failing_command_is_reported_with_its_stderr() {
        let pool = Pool {
            dial: DialCommand {
                program: "sh".into(),
                args: vec!["-c".into(), "echo 'Error: No such container: x' >&2".into()],
            },
            label: "docker-container://x".into(),
            idle: Mutex::new(Vec::new()),
        };
        // A request over a real connection, so the body type is hyper's own.
        let dir = private_dir().unwrap();
        let sock = dir.join("s");
        let listener = UnixListener::bind(&sock).unwrap();
        let pool = Arc::new(pool);
        let p = pool.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req| {
                let p = p.clone();
                async move { Ok::<_, std::convert::Infallible>(p.forward(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                Request::post("/query")
                    .header("host", "localhost")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        assert!(
            body.contains("docker-container://x") && body.contains("No such container: x"),
            "{body}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
