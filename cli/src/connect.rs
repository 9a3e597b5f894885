//! Choosing and reaching an engine: `_EXPERIMENTAL_DAGGER_RUNNER_HOST`, or the embedded
//! default (reuse the local engine, or start one when running as root).

use crate::client::{Client, Endpoint};
use crate::runner_host::{RunnerHost, RUNNER_HOST_ENV};
use anyhow::{bail, Context as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DEFAULT_SOCKET: &str = "/run/dagger/engine.sock";
pub const ENGINE_LOG: &str = "/var/log/dagger/engine.log";
pub const ENGINE_PID_FILE: &str = "/run/dagger/engine.pid";

/// How long a freshly started engine may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn connect() -> anyhow::Result<Client> {
    match std::env::var(RUNNER_HOST_ENV) {
        Ok(value) if !value.is_empty() => connect_to(&RunnerHost::parse(&value)?).await,
        _ => embedded_default().await,
    }
}

async fn connect_to(host: &RunnerHost) -> anyhow::Result<Client> {
    match host {
        RunnerHost::Unix(path) => Ok(Client::new(Endpoint::Unix(path.clone()))),
        RunnerHost::Tcp { host, port } => Ok(Client::new(Endpoint::Tcp(format!("{host}:{port}")))),
        // docker-container, podman-container, kube-pod, docker-image.
        other => crate::drivers::connect(other).await,
    }
}

/// Reuses the engine on the default socket, or starts `dagger-engine` in the background.
async fn embedded_default() -> anyhow::Result<Client> {
    let client = Client::new(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)));
    if client.probe(Duration::from_secs(5)).await.is_some() {
        return Ok(client);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "no engine answers at unix://{DEFAULT_SOCKET}, and starting one needs root. Start it with `sudo dagger-engine`, run this command as root, or set {RUNNER_HOST_ENV} to an engine you can reach (unix://PATH or tcp://HOST:PORT)"
        );
    }
    let engine = find_engine_binary()?;
    let child = start_engine(&engine)?;
    wait_until_ready(&client, child).await?;
    Ok(client)
}

fn find_engine_binary() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("dagger-engine")))
        .filter(|p| p.is_file());
    if let Some(p) = beside {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("dagger-engine"))
        .find(|p| p.is_file())
        .context("no engine is running and no dagger-engine binary was found next to dagger or on PATH; install dagger-engine or set _EXPERIMENTAL_DAGGER_RUNNER_HOST")
}

fn start_engine(engine: &Path) -> anyhow::Result<Child> {
    let log_path = Path::new(ENGINE_LOG);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    eprintln!(
        "dagger: starting the local engine ({}), log in {ENGINE_LOG}",
        engine.display()
    );
    // Its own process group, so a Ctrl-C aimed at this command does not stop the engine.
    let child = Command::new(engine)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", engine.display()))?;
    if let Some(dir) = Path::new(ENGINE_PID_FILE).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(ENGINE_PID_FILE, format!("{}\n", child.id()));
    // Dropping the handle later neither waits for nor kills the engine: it outlives this command.
    Ok(child)
}

/// Waits for the engine to answer. If the one we started exits first, another engine may
/// have won a start-up race (it then answers shortly); otherwise its log says why.
async fn wait_until_ready(client: &Client, mut child: Child) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut exited_at = None;
    while started.elapsed() < START_TIMEOUT {
        if client.probe(Duration::from_secs(2)).await.is_some() {
            return Ok(());
        }
        if exited_at.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                exited_at = Some((Instant::now(), status));
            }
        }
        if let Some((at, status)) = exited_at {
            if at.elapsed() > Duration::from_secs(3) {
                bail!(
                    "the local engine exited ({status}) before answering; last lines of {ENGINE_LOG}:\n{}",
                    log_tail()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "the local engine did not answer at unix://{DEFAULT_SOCKET} within {}s (does /etc/dagger/engine.toml leave that socket out of [grpc] address?); last lines of {ENGINE_LOG}:\n{}",
        START_TIMEOUT.as_secs(),
        log_tail()
    )
}

fn log_tail() -> String {
    std::fs::read_to_string(ENGINE_LOG)
        .map(|s| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        })
        .unwrap_or_default()
}
