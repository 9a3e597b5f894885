//! Helpers the benchmark binaries (`src/bin/bench-*.rs`) share: settings from the
//! environment, tool lookup, timing statistics, and describing the disk a run used.

use anyhow::{bail, ensure, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// "ext4 on /dev/loop0, journaled, mounted at /x, statfs magic 0xef53" for the filesystem
/// holding `dir`.
pub fn describe_fs(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some((unescape_mount(point), fstype.to_string(), dev.to_string()))
        })
        .filter(|(point, _, _)| dir.starts_with(point))
        .fold(None::<(PathBuf, String, String)>, |best, cur| match &best {
            Some((p, _, _)) if p.as_os_str().len() > cur.0.as_os_str().len() => best,
            _ => Some(cur),
        });
    let magic = nix::sys::statfs::statfs(&dir)
        .map(|st| format!("statfs magic {:#x}", st.filesystem_type().0))
        .unwrap_or_else(|e| format!("statfs failed: {e}"));
    match best {
        Some((point, fstype, dev)) => {
            let journal = if fstype == "ext4" {
                let name = dev.rsplit('/').next().unwrap_or_default();
                let journaled = std::fs::read_dir("/proc/fs/jbd2")
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with(name))
                    })
                    .unwrap_or(false);
                if journaled {
                    ", journaled"
                } else {
                    ", NO journal"
                }
            } else {
                ""
            };
            format!(
                "{fstype} on {dev}{journal}, mounted at {}, {magic}",
                point.display()
            )
        }
        None => format!("unknown filesystem, {magic}"),
    }
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
pub fn unescape_mount(s: &str) -> PathBuf {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

pub fn env_or<T>(name: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => bail!("{name}: {e}"),
    }
}

pub fn which(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} is not on PATH: install the Debian package {package} (the bench script installs it)"
            )
        })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sorts `v` and returns its min, median (mean of the middle two for even lengths) and max.
pub fn min_med_max(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], med, v[n - 1])
}

pub fn run_checked(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Unmounts whatever is still mounted under `dir`, then deletes it.
pub fn remove_tree(dir: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut under: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount)
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first.
    under.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for m in under {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}
