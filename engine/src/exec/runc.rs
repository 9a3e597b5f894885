//! The runc binary: finding it, judging its version against known CVEs, building its command
//! lines, and reading its JSON log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long a housekeeping runc call (`kill`, `delete`, `list`) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `runc --version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuncVersion {
    /// The version as printed (`1.1.5+ds1`).
    pub raw: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// The release-candidate number of a pre-release (`1.4.0-rc.3` → 3).
    pub rc: Option<u32>,
    /// `(release, update)` of a Debian stable update suffix (`+deb12u1` → `(12, 1)`), from the
    /// version or the `commit:` line, where Debian puts the package version.
    pub debian: Option<(u32, u32)>,
}

impl RuncVersion {
    fn key(&self) -> (u32, u32, u32, u32) {
        // A pre-release sorts before its release.
        (
            self.major,
            self.minor,
            self.patch,
            self.rc.unwrap_or(u32::MAX),
        )
    }

    fn below(&self, major: u32, minor: u32, patch: u32) -> bool {
        self.key() < (major, minor, patch, u32::MAX)
    }
}

/// Parses the output of `runc --version`.
pub(crate) fn parse_version(output: &str) -> Option<RuncVersion> {
    let raw = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("runc version "))?
        .trim()
        .to_string();
    let core_end = raw.find(['+', '-', '~']).unwrap_or(raw.len());
    let mut nums = raw[..core_end].split('.').map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next()??, nums.next()??);
    let patch = nums.next().flatten().unwrap_or(0);
    let rc = raw[core_end..].find("rc").map(|at| {
        let digits: String = raw[core_end + at + 2..]
            .trim_start_matches('.')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap_or(0)
    });
    let commit = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("commit:"))
        .unwrap_or("");
    let debian = debian_update(&raw).or_else(|| debian_update(commit));
    Some(RuncVersion {
        raw,
        major,
        minor,
        patch,
        rc,
        debian,
    })
}

/// `+deb12u1` → `(12, 1)`.
fn debian_update(s: &str) -> Option<(u32, u32)> {
    let rest = &s[s.find("+deb")? + 4..];
    let (release, rest) = rest.split_once('u')?;
    let update: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((release.parse().ok()?, update.parse().ok()?))
}

/// What to do with a runc version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    /// Usable, but with known vulnerabilities: log this.
    Warn(String),
    /// Vulnerable to a container escape: refuse unless explicitly allowed.
    Refuse(String),
}

const LATE_2025_CVES: &str = "CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881 (container \
                              escapes through masked paths, /dev/console and procfs writes; \
                              fixed in runc 1.2.8, 1.3.3 and 1.4.0-rc.3)";

/// Judges a runc version against the container-escape CVEs the engine designs against.
pub(crate) fn judge(v: &RuncVersion) -> Verdict {
    if v.below(1, 1, 12) {
        // Debian 12 ships runc 1.1.5+ds1-1+deb12u1, which backports the fix for
        // CVE-2024-21626 (DSA-5610) without changing the upstream version; any later bookworm
        // update, or a later Debian release, keeps it.
        let backported = matches!(v.debian, Some((12, u)) if u >= 1)
            || matches!(v.debian, Some((r, _)) if r > 12);
        if backported && !v.below(1, 1, 5) {
            return Verdict::Warn(format!(
                "runc {} is older than 1.1.12, but Debian's +deb{}u{} package backports the fix \
                 for CVE-2024-21626; it is still vulnerable to {LATE_2025_CVES}. Install runc \
                 1.2.8 or newer.",
                v.raw,
                v.debian.map_or(0, |d| d.0),
                v.debian.map_or(0, |d| d.1),
            ));
        }
        return Verdict::Refuse(format!(
            "runc {} is older than 1.1.12 and vulnerable to CVE-2024-21626 (\"Leaky Vessels\": \
             a leaked host file descriptor lets a container reach the host filesystem) and to \
             {LATE_2025_CVES}. Install runc 1.2.8 or newer (or set worker.oci.binary to one).",
            v.raw
        ));
    }
    let vulnerable = v.below(1, 2, 8)
        || (!v.below(1, 3, 0) && v.below(1, 3, 3))
        || (v.major == 1 && v.minor == 4 && v.patch == 0 && v.rc.is_some_and(|rc| rc < 3));
    if vulnerable {
        return Verdict::Warn(format!(
            "runc {} is vulnerable to {LATE_2025_CVES}. Install runc 1.2.8, 1.3.3 or newer.",
            v.raw
        ));
    }
    Verdict::Accept
}

/// Finds `binary` like a shell would: a path with a slash is used as is, a bare name is looked
/// up on `PATH`.
pub(crate) fn locate(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 || binary.is_absolute() {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

/// The error-level messages in a runc `--log-format json` log, oldest first.
pub(crate) fn log_errors(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal" | "panic")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect()
}

/// Whether a runc failure message is about what the caller asked for (a missing executable or
/// working directory, a bad mount) rather than about the engine or the host.
pub(crate) fn is_user_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "executable file not found",
        "no such file or directory",
        "permission denied",
        "not a directory",
        "is a directory",
        "exec format error",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// runc with its state directory: every command line the executor runs.
#[derive(Debug, Clone)]
pub(crate) struct Runc {
    pub path: PathBuf,
    /// `--root`: where runc keeps container state. Ours alone, so `runc list` shows only ours.
    pub root: PathBuf,
}

impl Runc {
    /// `runc --root R <args>`, with stdio detached and every inherited fd close-on-exec.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.path);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::sys::proc::cloexec_from_3_on_spawn(&mut cmd);
        cmd
    }

    /// Runs a housekeeping command; `Ok(stdout)` on success, `Err(stderr)` otherwise.
    pub async fn call(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::from(self.command(args));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout(CALL_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("runc {} timed out", args.join(" "))),
        }
    }

    /// The blocking twin of [`Runc::call`], for cleanup when no runtime is left.
    pub fn call_blocking(&self, args: &[&str]) -> Result<(), String> {
        match self.command(args).status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("runc {} exited with {s}", args.join(" "))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The ids of the containers in our state directory.
    pub async fn list(&self) -> Result<Vec<String>, String> {
        let out = self.call(&["list", "--quiet"]).await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The version, from `runc --version`.
    pub async fn version(&self) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg("--version").kill_on_drop(true);
        match tokio::time::timeout(CALL_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => Err(format!(
                "`{} --version` failed: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("cannot run {}: {e}", self.path.display())),
            Err(_) => Err(format!("`{} --version` timed out", self.path.display())),
        }
    }
}
