//! `dagger run CMD...`: runs CMD with a session, which the SDKs find through
//! `DAGGER_SESSION_PORT` and `DAGGER_SESSION_TOKEN` (so they neither spawn nor download a CLI).

use crate::session::Session;
use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

pub async fn command(argv: Vec<String>) -> anyhow::Result<ExitCode> {
    let Some((program, args)) = argv.split_first() else {
        anyhow::bail!("usage: dagger run COMMAND [ARGS...]");
    };
    // Installed before the child exists, so a signal in between is not lost (it would
    // otherwise kill us with the default action and orphan the child).
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let client = crate::connect::connect().await?;
    let session = Session::start(&client).await?;
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env("DAGGER_SESSION_PORT", session.port.to_string())
        .env("DAGGER_SESSION_TOKEN", &session.token)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            session.stop(Duration::ZERO).await;
            eprintln!("dagger run: cannot start {program}: {e}");
            // The shell's conventions for a missing or non-executable command.
            return Ok(ExitCode::from(match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            }));
        }
    };

    // The child usually shares our process group, so a terminal's Ctrl-C reaches it directly
    // as well; forwarding covers signals sent to this process alone (`kill`, a CI runner).
    let status = loop {
        let forward = tokio::select! {
            status = child.wait() => break status,
            _ = sigterm.recv() => Signal::SIGTERM,
            _ = sigint.recv() => Signal::SIGINT,
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), forward);
        }
    };
    session.stop(Duration::ZERO).await;
    let status = status.with_context(|| format!("waiting for {program}"))?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
