//! Path operations confined to a root directory (openat2 RESOLVE_IN_ROOT) for layer apply.
//!
//! Everything here is relative to a directory fd. Only [`open_dir_in_root`] resolves a
//! multi-component path, and it does so with chroot semantics: absolute and `..` symlinks stay
//! inside the root (containerd's `fs.RootPath`), and magic links are refused. Every other
//! function takes a single name in a directory and never follows a symlink in it, so an
//! archive can't redirect a write, chmod or chown out of the root (CVE-2021-32760,
//! RUSTSEC-2018-0002, CVE-2026-33056).
//!
//! Metadata calls take an fd, which may be an `O_PATH` handle from [`open_path_at`]. The kernel
//! refuses `fchmod`/`fsetxattr` on those, so those two go through the handle's
//! `/proc/self/fd/N` magic link, which names the pinned inode itself (for a symlink, the link,
//! not its target). This needs `/proc`, and only for special files and symlinks.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, XattrFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// The type of a directory entry, from `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

/// A timestamp as `utimensat` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// What `lstat`/`fstat` says about an inode.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: u64,
    pub ino: u64,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub size: u64,
    /// Hard links to the inode (copies use it to keep hard links linked).
    pub nlink: u64,
    pub atime: Time,
    pub mtime: Time,
}

impl Meta {
    /// `(st_dev, st_ino)`: what identifies an inode.
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// An overlayfs whiteout: a 0:0 character device.
    pub fn is_whiteout(&self) -> bool {
        self.kind == FileKind::CharDevice && self.rdev_major == 0 && self.rdev_minor == 0
    }
}

#[allow(clippy::unnecessary_cast)] // field widths differ between architectures
fn meta(st: &rfs::Stat) -> Meta {
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        _ => FileKind::Unknown,
    };
    let rdev = st.st_rdev as u64;
    Meta {
        kind,
        mode: (st.st_mode as u32) & 0o7777,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        rdev_major: rfs::major(rdev as _),
        rdev_minor: rfs::minor(rdev as _),
        size: st.st_size.max(0) as u64,
        nlink: st.st_nlink as u64,
        atime: Time {
            secs: st.st_atime as i64,
            nanos: st.st_atime_nsec as u32,
        },
        mtime: Time {
            secs: st.st_mtime as i64,
            nanos: st.st_mtime_nsec as u32,
        },
    }
}

/// Opens a directory by a trusted path (the root itself, a lower layer).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `rel` under `root` with chroot semantics: `..` and absolute symlinks
/// anywhere on the path, the last component included, resolve inside `root`; magic links
/// (`/proc/self/fd/N`) are refused. An empty `rel` is the root.
pub fn open_dir_in_root(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut attempts = 0;
    loop {
        match rfs::openat2(
            root,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            // The kernel answers EAGAIN when a rename elsewhere on the filesystem raced the
            // lookup; it asks the caller to retry.
            Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
            other => return Ok(other?),
        }
    }
}

/// `lstat` of `name` in `dir`; `None` when it doesn't exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Meta>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(meta(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `fstat` of an fd (an `O_PATH` handle included).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    Ok(meta(&rfs::fstat(fd)?))
}

/// Creates directory `name` in `dir`. The mode is filtered by the umask; callers chmod after.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(rfs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

/// Opens the directory `name` in `dir` for reading; fails if it is a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The parent of directory `dir` (an `O_PATH` handle). Callers must stop at their root.
pub fn open_parent(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        "..",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Creates the regular file `name` in `dir`, mode 0600, failing if anything exists there.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Opens the regular file `name` in `dir` for reading; fails if it is a symlink. Callers check
/// the kind first: opening a device or fifo would have side effects.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// An `O_PATH` handle on `name` in `dir` itself (a symlink is not followed): pins the inode for
/// the metadata calls below without opening it.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Creates symlink `name` in `dir` pointing at `target` (stored verbatim).
pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rfs::symlinkat(target, dir, name)?)
}

/// Hard-links `src_name` in `src_dir` as `dst_name` in `dst_dir`. A symlink source is linked
/// itself, not followed.
pub fn hardlink_at(
    src_dir: BorrowedFd<'_>,
    src_name: &OsStr,
    dst_dir: BorrowedFd<'_>,
    dst_name: &OsStr,
) -> io::Result<()> {
    Ok(rfs::linkat(
        src_dir,
        src_name,
        dst_dir,
        dst_name,
        AtFlags::empty(),
    )?)
}

/// Creates a character device, block device or fifo. The mode is filtered by the umask.
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    kind: FileKind,
    mode: u32,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let file_type = match kind {
        FileKind::CharDevice => FileType::CharacterDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::Fifo,
        _ => return Err(io::Error::from_raw_os_error(Errno::INVAL.raw_os_error())),
    };
    Ok(rfs::mknodat(
        dir,
        name,
        file_type,
        Mode::from_raw_mode(mode & 0o7777),
        rfs::makedev(major, minor),
    )?)
}

/// Removes the non-directory `name` from `dir`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rfs::unlinkat(dir, name, AtFlags::empty())?)
}

/// The entry names in `dir`, without `.` and `..`.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    let mut stream = rfs::Dir::read_from(dir)?;
    while let Some(entry) = stream.read() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    Ok(names)
}

/// The callback of [`walk_sorted`]: `(parent, name, path, meta)`.
pub type WalkVisit<'v> = dyn FnMut(BorrowedFd<'_>, &OsStr, &[u8], &Meta) -> io::Result<()> + 'v;

/// Walks the tree below `dir` depth-first, each directory's entries sorted by name, calling
/// `visit(parent, name, path, meta)` for every entry (`path`: relative to `dir`, `/`-separated)
/// before descending into it when it is a directory. Entries that vanish are skipped;
/// symlinks are not followed.
pub fn walk_sorted(dir: BorrowedFd<'_>, visit: &mut WalkVisit<'_>) -> io::Result<()> {
    walk_sorted_at(dir, b"", visit)
}

fn walk_sorted_at(dir: BorrowedFd<'_>, prefix: &[u8], visit: &mut WalkVisit<'_>) -> io::Result<()> {
    let mut names = read_dir(dir)?;
    names.sort();
    for name in names {
        let Some(m) = lstat_at(dir, &name)? else {
            continue;
        };
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        visit(dir, &name, &path, &m)?;
        if m.kind == FileKind::Dir {
            let sub = open_dir_at(dir, &name)?;
            walk_sorted_at(sub.as_fd(), &path, visit)?;
        }
    }
    Ok(())
}

/// Removes `name` from `dir` whatever it is, a whole tree included, without following symlinks
/// and without changing the process cwd. A missing `name` is not an error. Iterative, so a
/// deep tree costs one fd per level, not stack.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }

    struct Frame {
        fd: OwnedFd,
        name: OsString,
        subdirs: Vec<OsString>,
    }
    // Opens a directory, unlinks every non-directory in it and remembers the subdirectories.
    fn enter(parent: BorrowedFd<'_>, name: OsString) -> io::Result<Frame> {
        let fd = open_dir_at(parent, &name)?;
        let mut subdirs = Vec::new();
        for child in read_dir(fd.as_fd())? {
            match rfs::unlinkat(&fd, &child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => subdirs.push(child),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Frame { fd, name, subdirs })
    }

    let mut stack = vec![enter(dir, name.to_os_string())?];
    loop {
        let next = match stack.last_mut() {
            Some(top) => top.subdirs.pop(),
            None => return Ok(()),
        };
        match (next, stack.last()) {
            (Some(sub), Some(top)) => {
                let frame = enter(top.fd.as_fd(), sub)?;
                stack.push(frame);
            }
            _ => {
                if let Some(done) = stack.pop() {
                    let parent = stack.last().map_or(dir, |f| f.fd.as_fd());
                    match rfs::unlinkat(parent, &done.name, AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
}

/// The target of symlink `name` in `dir`.
/// Renames `from` to `to` only if `to` does not exist (`EEXIST` otherwise): unlike
/// `rename(2)`, never replaces an empty directory someone else just put there.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rfs::renameat_with(rfs::CWD, from, rfs::CWD, to, rfs::RenameFlags::NOREPLACE)
        .map_err(io::Error::from)
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let target = rfs::readlinkat(dir, name, Vec::new())?;
    Ok(OsString::from_vec(target.into_bytes()))
}

/// `lchown` of the inode behind `fd` (a symlink handle changes the link itself).
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    Ok(rfs::chownat(
        fd,
        "",
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Whether `err` means the machine ran out of something (space, quota, fds, memory) or the
/// disk failed, rather than that the operation was wrong.
pub fn is_resource_exhaustion(err: &io::Error) -> bool {
    err.raw_os_error().is_some_and(|raw| {
        [
            Errno::NOSPC,
            Errno::DQUOT,
            Errno::IO,
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOMEM,
        ]
        .iter()
        .any(|e| e.raw_os_error() == raw)
    })
}

/// Whether `err` is a path that can't be resolved as asked: a non-directory where a directory
/// should be, a symlink loop (or a symlink where `O_NOFOLLOW` forbids one), a name too long.
pub fn is_bad_path(err: &io::Error) -> bool {
    err.raw_os_error().is_some_and(|raw| {
        [Errno::NOTDIR, Errno::LOOP, Errno::NAMETOOLONG]
            .iter()
            .any(|e| e.raw_os_error() == raw)
    })
}

/// Whether `err` says the filesystem doesn't support the operation (ENOTSUP/EOPNOTSUPP).
pub fn is_unsupported(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error())
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Sets the permission bits (setuid, setgid and sticky included) of the inode behind `fd`.
/// Callers never pass a symlink handle: Linux has no symlink modes and chmod would follow.
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let mode = Mode::from_raw_mode(mode & 0o7777);
    match rfs::fchmod(fd, mode) {
        // An O_PATH handle: chmod through its magic link, which is the pinned inode.
        Err(Errno::BADF) => {
            if fstat(fd)?.kind == FileKind::Symlink {
                return Err(io::Error::from_raw_os_error(
                    Errno::OPNOTSUPP.raw_os_error(),
                ));
            }
            Ok(rfs::chmod(proc_fd_path(fd), mode)?)
        }
        other => Ok(other?),
    }
}

/// Sets extended attribute `key` on the inode behind `fd` (a symlink handle sets it on the
/// link itself).
pub fn set_xattr(fd: BorrowedFd<'_>, key: &OsStr, value: &[u8]) -> io::Result<()> {
    match rfs::fsetxattr(fd, key, value, XattrFlags::empty()) {
        Err(Errno::BADF) => Ok(rfs::setxattr(
            proc_fd_path(fd),
            key,
            value,
            XattrFlags::empty(),
        )?),
        other => Ok(other?),
    }
}

/// The extended attribute names on `fd` (a regular fd, not an `O_PATH` handle).
pub fn list_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match rfs::flistxattr(fd, &mut buf[..]) {
            Ok(n) => {
                let names = buf[..n.min(buf.len())]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| OsStr::from_bytes(n).to_os_string())
                    .collect();
                return Ok(names);
            }
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The value of extended attribute `key` on `fd`; `None` if it is not set.
pub fn get_xattr(fd: BorrowedFd<'_>, key: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rfs::fgetxattr(fd, key, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets atime and mtime of the inode behind `fd` (a symlink handle sets the link's own times).
pub fn set_times(fd: BorrowedFd<'_>, atime: Time, mtime: Time) -> io::Result<()> {
    let ts = |t: Time| rfs::Timespec {
        tv_sec: t.secs,
        tv_nsec: t.nanos.min(999_999_999).into(),
    };
    let times = rfs::Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    Ok(rfs::utimensat(
        fd,
        "",
        &times,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn in_root_resolution_clamps_absolute_and_dotdot_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../etc", root.join("up")).unwrap();
        let rootfd = open_dir(&root).unwrap();
        let inside = fstat(open_dir(&root.join("etc")).unwrap().as_fd()).unwrap();
        for rel in ["abs", "up", "/etc", "../../etc"] {
            let fd = open_dir_in_root(rootfd.as_fd(), Path::new(rel)).unwrap();
            assert_eq!(fstat(fd.as_fd()).unwrap().id(), inside.id(), "{rel}");
        }
        let magic = format!("/proc/self/fd/{}", rootfd.as_raw_fd());
        assert!(open_dir_in_root(rootfd.as_fd(), Path::new(&magic)).is_err());
    }

    #[test]
    fn handles_change_symlinks_and_special_files_themselves() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path()).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink_at(victim.as_os_str(), dir.as_fd(), OsStr::new("link")).unwrap();

        let link = open_path_at(dir.as_fd(), OsStr::new("link")).unwrap();
        assert_eq!(fstat(link.as_fd()).unwrap().kind, FileKind::Symlink);
        assert!(chmod(link.as_fd(), 0o777).is_err());
        chown(link.as_fd(), 1234, 5678).unwrap();
        set_xattr(link.as_fd(), OsStr::new("trusted.probe"), b"v").unwrap();
        let t = Time {
            secs: 1_000_000,
            nanos: 5,
        };
        set_times(link.as_fd(), t, t).unwrap();
        let st = lstat_at(dir.as_fd(), OsStr::new("link")).unwrap().unwrap();
        assert_eq!((st.uid, st.gid, st.mtime), (1234, 5678, t));
        let target = std::fs::metadata(&victim).unwrap();
        assert_eq!(target.permissions().mode() & 0o7777, 0o600);
        assert!(xattr_missing(&victim, "trusted.probe"));
        let mut got = [0u8; 8];
        let n = rfs::lgetxattr(tmp.path().join("link"), "trusted.probe", &mut got[..]).unwrap();
        assert_eq!(&got[..n], b"v");

        mknod_at(dir.as_fd(), OsStr::new("fifo"), FileKind::Fifo, 0o600, 0, 0).unwrap();
        let fifo = open_path_at(dir.as_fd(), OsStr::new("fifo")).unwrap();
        chmod(fifo.as_fd(), 0o4751).unwrap();
        assert_eq!(fstat(fifo.as_fd()).unwrap().mode, 0o4751);
    }

    fn xattr_missing(path: &Path, key: &str) -> bool {
        let f = File::open(path).unwrap();
        get_xattr(f.as_fd(), OsStr::new(key)).unwrap().is_none()
    }

    #[test]
    fn remove_all_stays_below_and_does_not_follow() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/f"), b"f").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/out")).unwrap();
        let dir = open_dir(tmp.path()).unwrap();
        remove_all_at(dir.as_fd(), OsStr::new("tree")).unwrap();
        remove_all_at(dir.as_fd(), OsStr::new("missing")).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
    }
}
