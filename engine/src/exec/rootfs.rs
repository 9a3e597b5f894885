//! What the executor does inside the caller's rootfs before and after runc: read the user
//! database, create the working directory, create (and later remove) mount-point stubs, and
//! check that the executable exists. Every path is resolved with `RESOLVE_IN_ROOT`, so
//! symlinks in the image can't point any of this at the host (CVE-2021-30465, CVE-2024-23652).

use super::user::{resolve, ResolvedUser};
use crate::sys::fsops::{self, FileKind};
use crate::sys::inroot::{EntryKind, Root};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// `/etc/passwd` and `/etc/group` larger than this are refused rather than read.
const MAX_USER_DB: u64 = 4 << 20;

/// The components of an absolute container path after lexical cleaning (`.`, `..` and
/// repeated slashes resolved as on `/`). `"/"` has none.
pub(crate) fn clean_components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// `clean_components` joined back into an absolute path.
pub(crate) fn clean(path: &str) -> String {
    format!("/{}", clean_components(path).join("/"))
}

/// Whether the cleaned `path` is `dir` or below it.
pub(crate) fn is_under(path: &str, dir: &str) -> bool {
    let (p, d) = (clean_components(path), clean_components(dir));
    p.len() >= d.len() && p[..d.len()] == d[..]
}

fn read_user_db(root: &Root, path: &str) -> io::Result<Option<String>> {
    let file = match root.open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    file.take(MAX_USER_DB + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_USER_DB {
        return Err(io::Error::other(format!(
            "{path} is larger than {MAX_USER_DB} bytes"
        )));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Resolves the exec user against the rootfs user database.
pub(crate) fn resolve_user(root: &Root, spec: &str) -> Result<ResolvedUser, String> {
    if spec.is_empty() {
        return resolve(spec, None, None);
    }
    let passwd = read_user_db(root, "/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    let group = read_user_db(root, "/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
    resolve(spec, passwd.as_deref(), group.as_deref())
}

/// Something the executor created in the rootfs and removes after the run if it is still the
/// same, empty inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stub {
    /// The parent directory, as components from the root.
    parent: Vec<String>,
    name: String,
    /// `(st_dev, st_ino)` and mtime: an inode number alone may be reused by a replacement.
    dev: u64,
    ino: u64,
    mtime: fsops::Time,
    dir: bool,
}

impl Stub {
    /// The stub for `name` in `parent`, just created and open as `fd`, identified by its
    /// current `fstat`.
    fn created(parent: Vec<String>, name: &str, fd: BorrowedFd<'_>, dir: bool) -> io::Result<Self> {
        let meta = fsops::fstat(fd)?;
        Ok(Stub {
            parent,
            name: name.to_string(),
            dev: meta.dev,
            ino: meta.ino,
            mtime: meta.mtime,
            dir,
        })
    }
}

/// What to create at the end of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaf {
    Dir,
    File,
}

fn open_in_root(root: BorrowedFd<'_>, comps: &[&str]) -> io::Result<OwnedFd> {
    fsops::open_dir_in_root(root, Path::new(&comps.join("/")))
}

/// Makes sure `path` exists in the rootfs, creating what is missing (directories mode 0755,
/// owned by `owner` when given; a final file mode 0600 if `leaf` is `File`). Existing
/// components, symlinks included, are followed inside the root; a final component that exists
/// in any form is left alone. Everything created is appended to `created`, parents first.
pub(crate) fn ensure_path(
    root: BorrowedFd<'_>,
    path: &str,
    leaf: Leaf,
    owner: Option<(u32, u32)>,
    created: &mut Vec<Stub>,
) -> io::Result<()> {
    let comps = clean_components(path);
    let mut dir = open_in_root(root, &[])?;
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let os = OsStr::new(name);
        if fsops::lstat_at(dir.as_fd(), os)?.is_some() {
            if last {
                return Ok(());
            }
            dir = open_in_root(root, &comps[..=i])?;
            continue;
        }
        let parent: Vec<String> = comps[..i].iter().map(|s| s.to_string()).collect();
        if last && leaf == Leaf::File {
            let file = fsops::create_file_at(dir.as_fd(), os)?;
            created.push(Stub::created(parent, name, file.as_fd(), false)?);
            return Ok(());
        }
        fsops::mkdir_at(dir.as_fd(), os, 0o755)?;
        let child = fsops::open_dir_at(dir.as_fd(), os)?;
        fsops::chmod(child.as_fd(), 0o755)?; // the umask may have narrowed it
        if let Some((uid, gid)) = owner {
            fsops::chown(child.as_fd(), uid, gid)?;
        }
        created.push(Stub::created(parent, name, child.as_fd(), true)?);
        dir = child;
    }
    Ok(())
}

/// Records the final mtimes of `stubs` once they are all created (creating a child stub
/// changed its parent's).
pub(crate) fn refresh_stubs(root: BorrowedFd<'_>, stubs: &mut [Stub]) {
    for stub in stubs {
        if let Ok(Some(meta)) = lookup_stub(root, stub).map(|found| found.map(|(_, m)| m)) {
            if meta.id() == (stub.dev, stub.ino) {
                stub.mtime = meta.mtime;
            }
        }
    }
}

fn lookup_stub(root: BorrowedFd<'_>, stub: &Stub) -> io::Result<Option<(OwnedFd, fsops::Meta)>> {
    let parent: Vec<&str> = stub.parent.iter().map(String::as_str).collect();
    let dir = match open_in_root(root, &parent) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = fsops::lstat_at(dir.as_fd(), OsStr::new(&stub.name))?;
    Ok(meta.map(|m| (dir, m)))
}

/// Removes the stubs that are still exactly what was created (same inode, same mtime, so
/// untouched by the process) and still empty, children first. Identity is checked for all of
/// them before anything is removed: removing a child changes its parent's mtime. Anything
/// else, a stub the process replaced by a symlink included, is left alone.
pub(crate) fn remove_stubs(rootfs: &Path, stubs: &[Stub]) -> io::Result<()> {
    if stubs.is_empty() {
        return Ok(());
    }
    let root = fsops::open_dir(rootfs)?;
    let untouched: Vec<bool> = stubs
        .iter()
        .map(|stub| {
            matches!(lookup_stub(root.as_fd(), stub),
                Ok(Some((_, m))) if m.id() == (stub.dev, stub.ino) && m.mtime == stub.mtime)
        })
        .collect();
    let mut first_error = None;
    for (stub, _) in stubs.iter().zip(untouched).rev().filter(|(_, ok)| *ok) {
        if let Err(e) = remove_if_empty(root.as_fd(), stub) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_if_empty(root: BorrowedFd<'_>, stub: &Stub) -> io::Result<()> {
    let Some((dir, meta)) = lookup_stub(root, stub)? else {
        return Ok(());
    };
    if meta.id() != (stub.dev, stub.ino) {
        return Ok(());
    }
    let name = OsStr::new(&stub.name);
    match (stub.dir, meta.kind) {
        (true, FileKind::Dir) => {
            let d = fsops::open_dir_at(dir.as_fd(), name)?;
            if fsops::read_dir(d.as_fd())?.is_empty() {
                fsops::remove_all_at(dir.as_fd(), name)?;
            }
        }
        (false, FileKind::File) if meta.size == 0 => fsops::unlink_at(dir.as_fd(), name)?,
        _ => {}
    }
    Ok(())
}

/// What looking up the executable found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found,
    /// runc's message for the same failure.
    NotFound(String),
    /// It may come from a mount or a relative `PATH` entry: let runc decide.
    Unknown,
}

fn executable_at(root: &Root, path: &str) -> Result<bool, io::Error> {
    let st = root.stat(path, true)?;
    Ok(st.kind == EntryKind::File && st.mode & 0o111 != 0)
}

/// Looks up `arg0` like runc does (`exec.LookPath` in the container), inside the rootfs.
/// `mounts` are the destinations of bind mounts, whose contents the rootfs does not show.
pub(crate) fn find_executable(
    root: &Root,
    arg0: &str,
    path_env: Option<&str>,
    cwd: &str,
    mounts: &[String],
) -> Lookup {
    let hidden = |p: &str| mounts.iter().any(|m| is_under(p, m));
    if arg0.contains('/') {
        let full = if arg0.starts_with('/') {
            clean(arg0)
        } else {
            clean(&format!("{cwd}/{arg0}"))
        };
        if hidden(&full) {
            return Lookup::Unknown;
        }
        return match executable_at(root, &full) {
            Ok(true) => Lookup::Found,
            Ok(false) => Lookup::NotFound(format!("exec: \"{arg0}\": permission denied")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Lookup::NotFound(format!(
                "exec: \"{arg0}\": stat {arg0}: no such file or directory"
            )),
            Err(_) => Lookup::Unknown,
        };
    }
    let mut unknown = false;
    for dir in path_env.unwrap_or("").split(':') {
        if !dir.starts_with('/') {
            unknown = true; // relative to the working directory: runc will know
            continue;
        }
        let candidate = clean(&format!("{dir}/{arg0}"));
        if hidden(&candidate) {
            unknown = true;
            continue;
        }
        match executable_at(root, &candidate) {
            Ok(true) => return Lookup::Found,
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => unknown = true,
        }
    }
    if unknown {
        Lookup::Unknown
    } else {
        Lookup::NotFound(format!(
            "exec: \"{arg0}\": executable file not found in $PATH"
        ))
    }
}
