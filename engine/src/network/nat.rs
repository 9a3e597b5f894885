//! Masquerading the pool's traffic out of the host, with nftables.
//!
//! This shells out to `nft -f -` once at setup and once at teardown instead of speaking
//! nf_tables netlink: the rules change only then, nft's text format is the stable interface
//! (the netlink one is libnftnl's business), and one script is one atomic transaction.
//! Everything lives in a table of our own, so teardown is a single `delete table`.

use super::NetworkError;
use ipnet::Ipv4Net;
use std::io;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// The table for the network whose bridge is `bridge`. Dagger names the bridge after the
/// network (`<name>0`, so `dagger0` for `dagger`); the table takes the network's name, which
/// keeps networks with other bridges (tests, nested dev engines) apart. nft identifiers take
/// no `-`, so it becomes `_`.
pub(crate) fn table_name(bridge: &str) -> String {
    let name = match bridge.strip_suffix('0') {
        Some(name) if !name.is_empty() => name,
        _ => bridge,
    };
    name.replace('-', "_")
}

/// Replaces the table wholesale: declaring it first makes the `delete` valid when it does not
/// exist yet, so the script is idempotent.
pub(crate) fn setup_script(table: &str, bridge: &str, cidr: Ipv4Net) -> String {
    format!(
        "table ip {table} {{}}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cidr} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         }}\n"
    )
}

pub(crate) fn teardown_script(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

/// Runs `nft -f -` with `script` on stdin.
pub(crate) async fn apply(script: &str) -> Result<(), NetworkError> {
    let mut child = match spawn("nft") {
        // Non-login root shells may lack /usr/sbin on PATH.
        Err(e) if e.kind() == io::ErrorKind::NotFound => spawn("/usr/sbin/nft"),
        other => other,
    }
    .map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            NetworkError::NftMissing
        } else {
            NetworkError::Io {
                op: "run nft".into(),
                source,
            }
        }
    })?;
    let mut stdin = child.stdin.take().ok_or_else(|| NetworkError::Io {
        op: "run nft".into(),
        source: io::Error::other("no stdin pipe"),
    })?;
    let write = async {
        stdin.write_all(script.as_bytes()).await?;
        stdin.shutdown().await?;
        drop(stdin);
        Ok::<_, io::Error>(())
    };
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(|source| NetworkError::Io {
        op: "run nft".into(),
        source,
    })?;
    if !output.status.success() {
        return Err(NetworkError::Nft(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    written.map_err(|source| NetworkError::Io {
        op: "write the nft script".into(),
        source,
    })
}

fn spawn(program: &str) -> io::Result<tokio::process::Child> {
    tokio::process::Command::new(program)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}
