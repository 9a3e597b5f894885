//! The system-call seam: the only module that talks to the kernel directly (statfs, flock,
//! mount, ownership). Everything above it calls these small functions, so the logic that
//! decides what to do can be tested without root.

pub mod caps;
pub mod fsops;
pub mod inroot;
pub mod mount;
pub mod netns;
pub mod proc;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::statfs::statfs;
use std::fs::File;
use std::io;
use std::path::Path;

/// `statfs` magic numbers of the filesystems the engine cares about.
pub mod magic {
    pub const OVERLAYFS: i64 = 0x794c_7630;
    pub const TMPFS: i64 = 0x0102_1994;
    pub const EXT4: i64 = 0xef53;
    pub const XFS: i64 = 0x5846_5342;
    pub const BTRFS: i64 = 0x9123_683e;
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The `statfs` magic of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let st = statfs(path).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast)] // the field's width differs between architectures
    Ok(st.filesystem_type().0 as i64)
}

/// A human name for a filesystem magic, for log lines.
pub fn fs_name(magic: i64) -> &'static str {
    match magic {
        magic::OVERLAYFS => "overlayfs",
        magic::TMPFS => "tmpfs",
        magic::EXT4 => "ext4",
        magic::XFS => "xfs",
        magic::BTRFS => "btrfs",
        _ => "unknown",
    }
}

/// Size in bytes of the filesystem holding `path`.
pub fn fs_total_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.blocks() as u64 * st.fragment_size() as u64)
}

/// Free bytes on the filesystem holding `path` (`f_bfree`, root's view, as BuildKit's GC
/// counts it).
pub fn fs_free_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.blocks_free() as u64 * st.fragment_size() as u64)
}

/// Whether `readdir` in `dir` reports entry types (`d_type`). Overlay upper directories need it.
pub fn supports_d_type(dir: &Path) -> io::Result<bool> {
    let probe = tempfile_in(dir, ".d_type-probe")?;
    let name = probe
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let result = (|| {
        let mut d = nix::dir::Dir::open(
            dir,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        for entry in d.iter() {
            let entry = entry.map_err(io::Error::from)?;
            if entry.file_name().to_bytes() == name.as_bytes() {
                return Ok(entry.file_type().is_some());
            }
        }
        Err(io::Error::other("d_type probe file vanished"))
    })();
    let _ = std::fs::remove_file(&probe);
    result
}

fn tempfile_in(dir: &Path, prefix: &str) -> io::Result<std::path::PathBuf> {
    let path = dir.join(format!("{prefix}-{}", std::process::id()));
    File::create(&path)?;
    Ok(path)
}

/// Mounts a throw-away overlay (two lowers, an upper, a work dir) under `dir` and unmounts it,
/// the same check containerd makes before choosing the overlay snapshotter.
pub fn probe_overlay(dir: &Path) -> io::Result<()> {
    let base = dir.join(format!(".overlay-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (l1, l2, upper, work, merged) = (
        base.join("l1"),
        base.join("l2"),
        base.join("upper"),
        base.join("work"),
        base.join("merged"),
    );
    let result = (|| {
        for d in [&l1, &l2, &upper, &work, &merged] {
            std::fs::create_dir_all(d)?;
        }
        let data = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            l2.display(),
            l1.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(io::Error::from)?;
        nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
    })();
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// An exclusive advisory lock, held until dropped.
pub struct ExclusiveLock {
    _lock: Flock<File>,
}

/// Takes an exclusive, non-blocking `flock` on `path` (created if missing). Returns
/// `Ok(None)` when another process holds it.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<ExclusiveLock>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(ExclusiveLock { _lock: lock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Changes the owner of `path`; `None` leaves that id unchanged.
pub fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    nix::unistd::chown(
        path,
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = try_lock_exclusive(&path).unwrap();
        assert!(first.is_some());
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(first);
        assert!(try_lock_exclusive(&path).unwrap().is_some());
    }

    #[test]
    fn tmp_dirs_report_d_type() {
        let dir = tempfile::tempdir().unwrap();
        assert!(supports_d_type(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe cleaned up"
        );
        assert_ne!(fs_magic(dir.path()).unwrap(), magic::OVERLAYFS);
        assert!(fs_total_bytes(dir.path()).unwrap() > 0);
    }
}
