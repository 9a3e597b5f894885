//! Mounts: overlay (through the new mount API, so hundreds of layers fit), read-only binds, and
//! unmounts. Overlay is assembled with `fsopen("overlay")` and one `lowerdir+` per layer: the
//! legacy `mount(2)` option string is limited to one page, which caps absolute lower paths at
//! roughly 150 layers.

use rustix::fd::AsFd;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, unmount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};
use std::io;
use std::path::{Path, PathBuf};

/// What to mount for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// A read-only bind of one directory.
    BindReadOnly(PathBuf),
    /// Overlay with `lowers` top-most first. Without `upper`, the mount is read-only.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: Option<(PathBuf, PathBuf)>, // (upperdir, workdir)
    },
}

/// Mounts `spec` at `target` (an existing directory).
pub fn mount(spec: &MountSpec, target: &Path) -> io::Result<()> {
    match spec {
        MountSpec::BindReadOnly(source) => {
            rustix::mount::mount_bind(source, target)?;
            // A bind ignores MS_RDONLY on the first call; read-only takes a remount.
            rustix::mount::mount_remount(
                target,
                rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
                "",
            )
            .inspect_err(|_| {
                let _ = unmount(target, UnmountFlags::DETACH);
            })?;
            Ok(())
        }
        MountSpec::Overlay { lowers, upper } => mount_overlay(lowers, upper.as_ref(), target),
    }
}

fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<&(PathBuf, PathBuf)>,
    target: &Path,
) -> io::Result<()> {
    if lowers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay needs at least one lower directory",
        ));
    }
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for lower in lowers {
        fsconfig_set_string(fs.as_fd(), "lowerdir+", lower)?;
    }
    if let Some((upperdir, workdir)) = upper {
        fsconfig_set_string(fs.as_fd(), "upperdir", upperdir)?;
        fsconfig_set_string(fs.as_fd(), "workdir", workdir)?;
    }
    // index=off: we never move upper dirs between lowers, and index=on refuses reuse of a
    // lower under a different upper.
    fsconfig_set_string(fs.as_fd(), "index", "off")?;
    if upper.is_none() {
        // Only readers use a mount without an upper; `ro` also lets overlay skip the workdir.
        fsconfig_set_flag(fs.as_fd(), "ro")?;
    }
    fsconfig_create(fs.as_fd())?;
    let attrs = if upper.is_none() {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Mounts a fresh tmpfs (memory only: for secrets that must never reach a disk) at `target`.
pub fn mount_tmpfs(target: &Path, size_bytes: u64, mode: u32) -> io::Result<()> {
    let data = std::ffi::CString::new(format!("size={size_bytes},mode={mode:o}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::mount::mount(
        "tmpfs",
        target,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// Unmounts `target`, lazily if it is busy, so cleanup never hangs on a stray reader.
pub fn unmount_detach(target: &Path) -> io::Result<()> {
    match unmount(target, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => Ok(unmount(target, UnmountFlags::DETACH)?),
        Err(e) => Err(e.into()),
    }
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo), for start-up
/// cleanup of mounts a crashed engine left behind.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    /// 200 long absolute lower paths: more than the one-page legacy option string allows.
    #[test]
    fn overlay_with_many_long_lowers() {
        let dir = tempfile::tempdir().unwrap();
        let long = "a-rather-long-directory-name-to-blow-past-the-page-limit";
        let mut lowers = Vec::new();
        for i in 0..200 {
            let l = dir.path().join(format!("{long}-{i:03}"));
            write(&l.join(format!("f{i}")), &i.to_string());
            write(&l.join("top"), &i.to_string());
            lowers.push(l);
        }
        lowers.reverse(); // top-most first: layer 199 wins
        let target = dir.path().join("merged");
        std::fs::create_dir(&target).unwrap();
        let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
        assert!(
            total > 4096,
            "the lower list must exceed one page ({total})"
        );
        mount(
            &MountSpec::Overlay {
                lowers,
                upper: None,
            },
            &target,
        )
        .unwrap();
        let top = std::fs::read_to_string(target.join("top"));
        let f0 = std::fs::read_to_string(target.join("f0"));
        let listed = mounts_under(dir.path()).unwrap();
        unmount_detach(&target).unwrap();
        assert_eq!(top.unwrap(), "199");
        assert_eq!(f0.unwrap(), "0");
        assert_eq!(listed, vec![target.clone()]);
        assert!(mounts_under(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn readonly_bind_and_writable_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let (src, upper, work, t1, t2) = (
            dir.path().join("src"),
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("t1"),
            dir.path().join("t2"),
        );
        for d in [&src, &upper, &work, &t1, &t2] {
            std::fs::create_dir(d).unwrap();
        }
        write(&src.join("x"), "lower");
        mount(&MountSpec::BindReadOnly(src.clone()), &t1).unwrap();
        let ro_write = std::fs::write(t1.join("y"), "no");
        unmount_detach(&t1).unwrap();
        assert!(ro_write.is_err(), "read-only bind must refuse writes");

        let spec = MountSpec::Overlay {
            lowers: vec![src.clone()],
            upper: Some((upper.clone(), work.clone())),
        };
        mount(&spec, &t2).unwrap();
        std::fs::write(t2.join("x"), "changed").unwrap();
        std::fs::write(t2.join("new"), "n").unwrap();
        unmount_detach(&t2).unwrap();
        assert_eq!(std::fs::read_to_string(src.join("x")).unwrap(), "lower");
        assert_eq!(std::fs::read_to_string(upper.join("x")).unwrap(), "changed");
        assert_eq!(std::fs::read_to_string(upper.join("new")).unwrap(), "n");
    }
}
