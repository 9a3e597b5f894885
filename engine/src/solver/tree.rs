//! Writing into a tree being built (a writable snapshot root), for the filesystem operations.
//!
//! Paths are absolute and lexically clean ([`super::fs::join`]). Directories on the way are
//! resolved with `openat2(RESOLVE_IN_ROOT)` ([`fsops::open_dir_in_root`]), so symlinks in the
//! tree (`/etc -> /`, `x -> ../../..`) resolve inside the root and no write can land outside
//! it. The last component is never followed: whatever is there (a symlink included) is
//! replaced, through `*at` calls on the parent directory's fd. Sources are read the same way,
//! from read-only views, without following symlinks inside copied trees.

use super::filter::Decision;
use crate::sys::fsops::{self, FileKind, Meta};
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A numeric owner to set on what is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Overrides for what a copy writes; `None` keeps the source's value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub owner: Option<Owner>,
}

/// Mode and owner of directories created on the way to a path (Dagger: 0755, root).
pub const PARENT_MODE: u32 = 0o755;

fn rel(path: &str) -> &Path {
    Path::new(path.trim_start_matches('/'))
}

/// `path` split into its parent directory and final name; `None` for the root.
pub fn split(path: &str) -> Option<(&str, &OsStr)> {
    let p = path.trim_end_matches('/');
    let (dir, name) = p.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some((if dir.is_empty() { "/" } else { dir }, OsStr::new(name)))
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// The directory at `path`, if it exists (symlinks on the way resolved in the root).
pub fn open_dir(root: BorrowedFd<'_>, path: &str) -> io::Result<Option<OwnedFd>> {
    match fsops::open_dir_in_root(root, rel(path)) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The directory at `path`, created with its missing parents (each new one gets `mode` and
/// `owner`; existing ones are left alone).
pub fn make_dirs(
    root: BorrowedFd<'_>,
    path: &str,
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<OwnedFd> {
    let mut cur = fsops::open_dir_in_root(root, Path::new(""))?;
    let mut prefix = PathBuf::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        prefix.push(comp);
        match fsops::open_dir_in_root(root, &prefix) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e),
        }
        match fsops::mkdir_at(cur.as_fd(), OsStr::new(comp), 0o700) {
            Ok(()) => {
                let fd = fsops::open_dir_at(cur.as_fd(), OsStr::new(comp))?;
                if let Some(o) = owner {
                    fsops::chown(fd.as_fd(), o.uid, o.gid)?;
                }
                fsops::chmod(fd.as_fd(), mode)?;
                cur = fd;
            }
            // A dangling symlink is in the way: resolving it again (in the root) reports it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                cur = fsops::open_dir_in_root(root, &prefix)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Makes room for a non-directory `name` in `dir`: removes what is there. A directory is only
/// removed when `replace_dir`; otherwise it is an `IsADirectory` error.
fn clear(dir: BorrowedFd<'_>, name: &OsStr, replace_dir: bool) -> io::Result<()> {
    match fsops::lstat_at(dir, name)? {
        None => Ok(()),
        Some(m) if m.kind == FileKind::Dir => {
            if replace_dir {
                fsops::remove_all_at(dir, name)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "a directory is in the way",
                ))
            }
        }
        Some(_) => fsops::unlink_at(dir, name),
    }
}

/// Writes a new regular file `name` in `dir` (replacing a non-directory there).
pub fn write_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<()> {
    clear(dir, name, false)?;
    let mut f = fsops::create_file_at(dir, name)?;
    f.write_all(data)?;
    if let Some(o) = owner {
        fsops::chown(f.as_fd(), o.uid, o.gid)?;
    }
    // After chown, which clears setuid/setgid bits.
    fsops::chmod(f.as_fd(), mode)
}

/// Creates symlink `name` in `dir`; an existing entry is an error (as in Dagger).
pub fn make_symlink(dir: BorrowedFd<'_>, name: &OsStr, target: &str) -> io::Result<()> {
    fsops::symlink_at(OsStr::new(target), dir, name)
}

/// Extended attributes, best effort: `trusted.*` is the overlay driver's and never copied.
fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) {
    let Ok(keys) = fsops::list_xattrs(src) else {
        return;
    };
    for key in keys {
        if key.as_encoded_bytes().starts_with(b"trusted.") {
            continue;
        }
        if let Ok(Some(value)) = fsops::get_xattr(src, &key) {
            let _ = fsops::set_xattr(dst, &key, &value);
        }
    }
}

/// Owner, mode and times of a copied entry (`fd` may be an `O_PATH` handle).
fn finish(fd: BorrowedFd<'_>, src: &Meta, attrs: &Attrs) -> io::Result<()> {
    let (uid, gid) = attrs.owner.map_or((src.uid, src.gid), |o| (o.uid, o.gid));
    fsops::chown(fd, uid, gid)?;
    if src.kind != FileKind::Symlink {
        fsops::chmod(fd, attrs.mode.unwrap_or(src.mode))?;
    }
    fsops::set_times(fd, src.atime, src.mtime)
}

/// Copies the regular file `src` (metadata `meta`) to `name` in `dir`, replacing a
/// non-directory there (and a directory too when `replace_dir`).
pub fn copy_file(
    src: &File,
    meta: &Meta,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attrs: &Attrs,
    replace_dir: bool,
) -> io::Result<()> {
    clear(dir, name, replace_dir)?;
    let mut dst = fsops::create_file_at(dir, name)?;
    io::copy(&mut &*src, &mut dst)?;
    copy_xattrs(src.as_fd(), dst.as_fd());
    finish(dst.as_fd(), meta, attrs)
}

/// Removes `path` (a whole tree for a directory, the link itself for a symlink). Whether
/// anything was there.
pub fn remove(root: BorrowedFd<'_>, path: &str) -> io::Result<bool> {
    let Some((parent, name)) = split(path) else {
        return remove_children(root, "/");
    };
    let dir = match fsops::open_dir_in_root(root, rel(parent)) {
        Ok(d) => d,
        Err(e) if not_found(&e) || fsops::is_bad_path(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    if fsops::lstat_at(dir.as_fd(), name)?.is_none() {
        return Ok(false);
    }
    fsops::remove_all_at(dir.as_fd(), name)?;
    Ok(true)
}

/// Empties the directory at `path`, keeping the directory itself.
pub fn remove_children(root: BorrowedFd<'_>, path: &str) -> io::Result<bool> {
    let Some(dir) = open_dir(root, path)? else {
        return Ok(false);
    };
    let names = fsops::read_dir(dir.as_fd())?;
    for name in &names {
        fsops::remove_all_at(dir.as_fd(), name)?;
    }
    Ok(!names.is_empty())
}

/// The paths matching `pattern` (absolute; `*`, `?` and `[...]` within a component), as
/// Go's `filepath.Glob` finds them. Symlinked directories on the way resolve in the root.
pub fn glob(root: BorrowedFd<'_>, pattern: &str) -> io::Result<Vec<String>> {
    let mut found = vec![String::from("/")];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for base in &found {
            let child = |name: &str| super::fs::join(base, name);
            if !comp.contains(['*', '?', '[']) {
                next.push(child(comp));
                continue;
            }
            let Some(dir) = open_dir(root, base).or_else(|e| {
                if fsops::is_bad_path(&e) {
                    Ok(None)
                } else {
                    Err(e)
                }
            })?
            else {
                continue;
            };
            let mut names = fsops::read_dir(dir.as_fd())?;
            names.sort();
            for name in names {
                let name = name.to_string_lossy();
                let hit = super::fs::match_one(comp.as_bytes(), name.as_bytes()).map_err(|r| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("bad pattern {pattern:?}: {r}"),
                    )
                })?;
                if hit {
                    next.push(child(&name));
                }
            }
        }
        found = next;
    }
    Ok(found)
}

struct Level {
    fd: Option<OwnedFd>,
    name: OsString,
    meta: Meta,
    /// The source directory, for its extended attributes.
    src: OwnedFd,
}

/// Copies the children of a source directory into a destination directory, entry by entry,
/// as `decide` says. Directories merge with existing ones; anything else replaces what is
/// there. Hard links inside the copy stay linked.
pub struct Copier<'a> {
    base: OwnedFd,
    levels: Vec<Level>,
    attrs: Attrs,
    decide: &'a mut dyn FnMut(&str, &Meta) -> io::Result<Decision>,
    links: HashMap<(u64, u64), PathBuf>,
}

impl<'a> Copier<'a> {
    pub fn new(
        dest: OwnedFd,
        attrs: Attrs,
        decide: &'a mut dyn FnMut(&str, &Meta) -> io::Result<Decision>,
    ) -> Self {
        Copier {
            base: dest,
            levels: Vec::new(),
            attrs,
            decide,
            links: HashMap::new(),
        }
    }

    /// Copies the children of `src` (recursively).
    pub fn copy_children(&mut self, src: BorrowedFd<'_>) -> io::Result<()> {
        self.walk(src, Path::new(""))
    }

    fn walk(&mut self, src: BorrowedFd<'_>, at: &Path) -> io::Result<()> {
        let mut names = fsops::read_dir(src)?;
        names.sort();
        for name in names {
            let Some(m) = fsops::lstat_at(src, &name)? else {
                continue;
            };
            let path = at.join(&name);
            let decision = (self.decide)(&path.to_string_lossy(), &m)?;
            match (m.kind, decision) {
                (_, Decision::Skip) => {}
                (FileKind::Dir, d) => {
                    let sub = fsops::open_dir_at(src, &name)?;
                    self.levels.push(Level {
                        fd: None,
                        name: name.clone(),
                        meta: m,
                        src: sub.try_clone()?,
                    });
                    if d == Decision::Copy {
                        ensure(&self.base, &mut self.levels)?;
                    }
                    self.walk(sub.as_fd(), &path)?;
                    if let Some(level) = self.levels.pop() {
                        if let Some(fd) = level.fd {
                            copy_xattrs(level.src.as_fd(), fd.as_fd());
                            finish(fd.as_fd(), &level.meta, &self.attrs)?;
                        }
                    }
                }
                (_, Decision::Descend) | (FileKind::Socket | FileKind::Unknown, _) => {}
                (_, Decision::Copy) => {
                    let parent = ensure(&self.base, &mut self.levels)?;
                    copy_entry(
                        src,
                        &name,
                        &m,
                        parent,
                        &path,
                        &self.attrs,
                        &self.base,
                        &mut self.links,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The destination directory for the innermost pending level, creating the pending ones.
fn ensure<'b>(base: &'b OwnedFd, levels: &'b mut [Level]) -> io::Result<BorrowedFd<'b>> {
    for i in 0..levels.len() {
        if levels[i].fd.is_some() {
            continue;
        }
        let (done, rest) = levels.split_at_mut(i);
        let parent = done
            .last()
            .and_then(|l| l.fd.as_ref())
            .unwrap_or(base)
            .as_fd();
        let name = rest[0].name.clone();
        let fd = match fsops::lstat_at(parent, &name)? {
            Some(m) if m.kind == FileKind::Dir => fsops::open_dir_at(parent, &name)?,
            existing => {
                if existing.is_some() {
                    fsops::unlink_at(parent, &name)?;
                }
                fsops::mkdir_at(parent, &name, 0o700)?;
                fsops::open_dir_at(parent, &name)?
            }
        };
        rest[0].fd = Some(fd);
    }
    Ok(levels
        .last()
        .and_then(|l| l.fd.as_ref())
        .unwrap_or(base)
        .as_fd())
}

/// Copies one non-directory entry.
#[allow(clippy::too_many_arguments)]
fn copy_entry(
    src: BorrowedFd<'_>,
    name: &OsStr,
    m: &Meta,
    dst: BorrowedFd<'_>,
    path: &Path,
    attrs: &Attrs,
    base: &OwnedFd,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    clear(dst, name, true)?;
    match m.kind {
        FileKind::File => {
            if m.nlink > 1 {
                if let Some(first) = links.get(&m.id()) {
                    if link_to(base, first, dst, name).is_ok() {
                        return Ok(());
                    }
                }
            }
            let f = fsops::open_file_at(src, name)?;
            copy_file(&f, m, dst, name, attrs, true)?;
            if m.nlink > 1 {
                links.insert(m.id(), path.to_path_buf());
            }
            Ok(())
        }
        FileKind::Symlink => {
            let target = fsops::readlink_at(src, name)?;
            fsops::symlink_at(&target, dst, name)?;
            let h = fsops::open_path_at(dst, name)?;
            finish(h.as_fd(), m, attrs)
        }
        FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo => {
            fsops::mknod_at(dst, name, m.kind, 0o600, m.rdev_major, m.rdev_minor)?;
            let h = fsops::open_path_at(dst, name)?;
            finish(h.as_fd(), m, attrs)
        }
        FileKind::Dir | FileKind::Socket | FileKind::Unknown => Ok(()),
    }
}

/// Hard-links the already copied `first` (relative to the copy's base) as `name` in `dst`.
fn link_to(base: &OwnedFd, first: &Path, dst: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let parent = first.parent().unwrap_or(Path::new(""));
    let first_name = first
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let dir = fsops::open_dir_in_root(base.as_fd(), parent)?;
    fsops::hardlink_at(dir.as_fd(), first_name, dst, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn root(p: &Path) -> OwnedFd {
        fsops::open_dir(p).unwrap()
    }

    #[test]
    fn writes_stay_inside_the_root_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(r.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink("/", r.join("etc")).unwrap();
        symlink(&outside, r.join("host")).unwrap();
        symlink("../../../..", r.join("up")).unwrap();
        let fd = root(&r);
        for (path, lands) in [("/etc/passwd", "passwd"), ("/up/x/y", "x/y")] {
            let (dir, name) = split(path).unwrap();
            let d = make_dirs(fd.as_fd(), dir, PARENT_MODE, None).unwrap();
            write_file(d.as_fd(), name, b"data", 0o640, None).unwrap();
            let landed = r.join(lands);
            let meta = std::fs::metadata(&landed).unwrap_or_else(|_| panic!("{path}"));
            assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        }
        // An absolute link to a host path names a path inside the root, which is missing.
        let host = make_dirs(fd.as_fd(), "/host/sub", PARENT_MODE, None);
        assert!(host.is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        // The last component is replaced, never followed.
        symlink(&outside, r.join("real/link")).unwrap();
        let d = make_dirs(fd.as_fd(), "/real", PARENT_MODE, None).unwrap();
        write_file(d.as_fd(), OsStr::new("link"), b"x", 0o644, None).unwrap();
        assert!(std::fs::symlink_metadata(r.join("real/link"))
            .unwrap()
            .is_file());
        assert!(write_file(d.as_fd(), OsStr::new("."), b"x", 0o644, None).is_err());

        // Removal does not follow either.
        assert!(remove(fd.as_fd(), "/host").unwrap());
        assert!(outside.exists());
        assert!(!remove(fd.as_fd(), "/nothing/here").unwrap());
    }

    #[test]
    fn copies_keep_metadata_links_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let dst = t.path().join("dst");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::create_dir_all(dst.join("d")).unwrap();
        std::fs::write(dst.join("d/old"), "kept").unwrap();
        std::fs::create_dir_all(dst.join("f")).unwrap();
        std::fs::write(src.join("f"), "file replaces dir").unwrap();
        std::fs::write(src.join("d/e/x"), "x").unwrap();
        std::fs::set_permissions(src.join("d/e/x"), std::fs::Permissions::from_mode(0o751))
            .unwrap();
        std::fs::hard_link(src.join("d/e/x"), src.join("d/hard")).unwrap();
        symlink("/etc/passwd", src.join("d/link")).unwrap();
        std::os::unix::fs::chown(src.join("d/e/x"), Some(1234), Some(5678)).unwrap();
        let s = root(&src);
        let mut all = |_: &str, _: &Meta| Ok(Decision::Copy);
        let mut c = Copier::new(root(&dst), Attrs::default(), &mut all);
        c.copy_children(s.as_fd()).unwrap();
        let x = std::fs::metadata(dst.join("d/e/x")).unwrap();
        assert_eq!((x.mode() & 0o7777, x.uid(), x.gid()), (0o751, 1234, 5678));
        assert_eq!(
            x.ino(),
            std::fs::metadata(dst.join("d/hard")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(dst.join("d/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(std::fs::read_to_string(dst.join("d/old")).unwrap(), "kept");
        assert_eq!(
            std::fs::read_to_string(dst.join("f")).unwrap(),
            "file replaces dir"
        );
        assert_eq!(
            x.mtime(),
            std::fs::metadata(src.join("d/e/x")).unwrap().mtime()
        );

        // Overrides and lazily created directories.
        let dst2 = t.path().join("dst2");
        std::fs::create_dir(&dst2).unwrap();
        let mut only_x = |p: &str, m: &Meta| {
            Ok(match (p, m.kind) {
                (_, FileKind::Dir) => Decision::Descend,
                ("d/e/x", _) => Decision::Copy,
                _ => Decision::Skip,
            })
        };
        let attrs = Attrs {
            mode: Some(0o600),
            owner: Some(Owner { uid: 7, gid: 8 }),
        };
        let mut c = Copier::new(root(&dst2), attrs, &mut only_x);
        c.copy_children(s.as_fd()).unwrap();
        let x = std::fs::metadata(dst2.join("d/e/x")).unwrap();
        assert_eq!((x.mode() & 0o7777, x.uid(), x.gid()), (0o600, 7, 8));
        let names: Vec<_> = std::fs::read_dir(dst2.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["e"]);
    }

    #[test]
    fn glob_and_split() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        for f in ["a/x.txt", "a/y.txt", "a/z.md", "a/b/w.txt"] {
            std::fs::write(r.join(f), "").unwrap();
        }
        let fd = root(r);
        assert_eq!(
            glob(fd.as_fd(), "/a/*.txt").unwrap(),
            ["/a/x.txt", "/a/y.txt"]
        );
        assert_eq!(glob(fd.as_fd(), "/*/b/*").unwrap(), ["/a/b/w.txt"]);
        assert!(glob(fd.as_fd(), "/nope/*").unwrap().is_empty());
        assert_eq!(split("/a/b"), Some(("/a", OsStr::new("b"))));
        assert_eq!(split("/a"), Some(("/", OsStr::new("a"))));
        assert_eq!(split("/"), None);
    }
}
