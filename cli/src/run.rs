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

pub async fn command(
    argv: Vec<String>,
    progress: crate::progress::Mode,
) -> anyhow::Result<ExitCode> {
    let Some((program, args)) = argv.split_first() else {
        anyhow::bail!("usage: dagger run COMMAND [ARGS...]");
    };
    // Installed before the child exists, so a signal in between is not lost (it would
    // otherwise kill us with the default action and orphan the child).
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let client = crate::connect::connect().await?;
    let session = Session::start(&client, crate::progress::Progress::new(progress)).await?;
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env("DAGGER_SESSION_PORT", session.port.to_string())
        .env("DAGGER_SESSION_TOKEN", &session.token)
        .env(
            "TRACEPARENT",
            traceparent(std::env::var("TRACEPARENT").ok().as_deref()),
        )
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

/// The W3C trace context handed to the program, as the real `dagger run` does: the SDKs send it
/// as a `traceparent` header so their spans nest under the run. An inherited, well-formed
/// context keeps its trace id (this run becomes a child span of the caller's); otherwise a new
/// trace starts.
fn traceparent(inherited: Option<&str>) -> String {
    let mut random = [0u8; 24];
    if getrandom_fill(&mut random).is_err() {
        // Uniqueness only matters for correlating spans; fall back to time and pid.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        random[..16].copy_from_slice(&seed.to_le_bytes());
        random[16..].copy_from_slice(&seed.to_be_bytes()[..8]);
    }
    let trace_id = match inherited.and_then(parse_trace_id) {
        Some(id) => id.to_string(),
        None => hex(&random[..16]),
    };
    // An all-zero span id is invalid.
    if random[16..].iter().all(|b| *b == 0) {
        random[23] = 1;
    }
    format!("00-{trace_id}-{}-01", hex(&random[16..]))
}

/// The trace id of a version-00 `traceparent`, if well formed and not all zeros.
fn parse_trace_id(value: &str) -> Option<&str> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace_id, span_id, flags] = parts.as_slice() else {
        return None;
    };
    let is_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = *version == "00"
        && is_hex(trace_id, 32)
        && is_hex(span_id, 16)
        && is_hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0');
    valid.then_some(*trace_id)
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_trace_when_none_inherited() {
        let tp = traceparent(None);
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[0], "00");
        assert!(parse_trace_id(&tp).is_some(), "{tp} is not well formed");
        assert_ne!(traceparent(None), tp, "two runs share a trace id");
    }

    #[test]
    fn inherited_trace_id_is_kept_with_a_new_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = traceparent(Some(parent));
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(!tp.contains("00f067aa0ba902b7"), "span id reused: {tp}");
    }

    #[test]
    fn malformed_inherited_context_starts_a_new_trace() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let tp = traceparent(Some(bad));
            assert!(!tp.contains("4bf92f35"), "{bad} was accepted: {tp}");
            assert!(parse_trace_id(&tp).is_some());
        }
    }
}
