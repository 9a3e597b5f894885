//! Writes tar entries under a root with fd-relative calls (see the module docs for the rules).

use super::entry::{self, Described, Kind};
use super::names::{self, Whiteout};
use super::{ApplyOptions, ArchiveError, WhiteoutMode};
use crate::sys::fsops::{self, FileKind, Meta, Time};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Symlinks followed while creating missing parents, as the kernel's MAXSYMLINKS.
const MAX_SYMLINK_HOPS: usize = 40;
/// Bound on the walk from a directory up to the root (PATH_MAX / 2 levels at most).
const MAX_DEPTH: usize = 4096;
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub(super) struct Applier {
    root: OwnedFd,
    root_id: (u64, u64),
    /// Overlay mode: the lower layers, top-most first. `None` in apply mode.
    lowers: Option<Vec<OwnedFd>>,
    max_bytes: u64,
    max_entries: u64,
    entries: u64,
    /// Bytes written to regular files (a sparse entry expands beyond what the stream holds).
    expanded: u64,
    /// Apply mode: the names this layer wrote, by parent directory `(dev, ino)`, and every
    /// directory holding something it wrote. An opaque marker keeps both (T14).
    written: HashMap<(u64, u64), HashSet<OsString>>,
    holders: HashSet<(u64, u64)>,
    /// Directory times, set once every child exists (T21).
    dir_times: Vec<DirTimes>,
    buf: Vec<u8>,
}

struct DirTimes {
    /// Cleaned components from the root.
    path: Vec<OsString>,
    /// The directory that got them; if a later entry replaced it, the times are dropped.
    id: (u64, u64),
    atime: Time,
    mtime: Time,
}

/// Where a hardlink target was found.
enum Lookup {
    Found(OwnedFd, Meta),
    /// Whited out, or below an opaque directory: lower layers don't count.
    Hidden,
    Missing,
}

fn io_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        op,
        path: path.to_string(),
        source,
    }
}

fn invalid(shown: &str, reason: &str) -> ArchiveError {
    ArchiveError::Invalid(format!("entry {shown:?}: {reason}"))
}

/// Resolution failures the archive caused (a file where a directory should be, a symlink
/// loop, an overlong name) are invalid-archive errors, not I/O failures.
fn resolve_err(op: &'static str, shown: &str, err: io::Error) -> ArchiveError {
    if fsops::is_bad_path(&err) {
        invalid(shown, &format!("cannot {op}: {err}"))
    } else {
        io_err(op, shown)(err)
    }
}

impl Applier {
    pub(super) fn new(root: &Path, opts: &ApplyOptions) -> Result<Self, ArchiveError> {
        let shown = root.display().to_string();
        let root_fd = fsops::open_dir(root).map_err(io_err("open the root directory", &shown))?;
        let root_id = fsops::fstat(root_fd.as_fd())
            .map_err(io_err("stat the root directory", &shown))?
            .id();
        let lowers = match &opts.whiteouts {
            WhiteoutMode::Apply => None,
            WhiteoutMode::Overlay { lowers } => Some(
                lowers
                    .iter()
                    .map(|p| {
                        fsops::open_dir(p)
                            .map_err(io_err("open the lower layer", &p.display().to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Applier {
            root: root_fd,
            root_id,
            lowers,
            max_bytes: opts.max_uncompressed_bytes,
            max_entries: opts.max_entries,
            entries: 0,
            expanded: 0,
            written: HashMap::new(),
            holders: HashSet::new(),
            dir_times: Vec::new(),
            buf: vec![0; 128 << 10],
        })
    }

    pub(super) fn entries(&self) -> u64 {
        self.entries
    }

    /// Applies one entry, reading its data from `entry`.
    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.max_entries,
            });
        }
        let e = entry::describe(entry)?;
        if e.kind == Kind::GlobalHeader {
            tracing::debug!("PAX global header ignored");
            return Ok(());
        }
        let shown = names::display(&e.name);
        let comps = names::clean(&e.name)?;
        let Some((base, parents)) = comps.split_last() else {
            tracing::debug!(entry = %shown, "entry names the root; ignored");
            return Ok(());
        };
        let whiteout = names::whiteout(base)?;
        let parent = self.ensure_dir(parents, &shown)?;
        match whiteout {
            Whiteout::Opaque => self.opaque(parent, &shown),
            Whiteout::Remove(target) => self.whiteout(parent.as_fd(), target, &e, &shown),
            Whiteout::No => self.create(entry, parent.as_fd(), &comps, &e, &shown),
        }
    }

    /// Sets the directory times collected on the way, now that no child will change them.
    pub(super) fn finish(&mut self) -> Result<(), ArchiveError> {
        for d in &self.dir_times {
            let Some((base, parents)) = d.path.split_last() else {
                continue;
            };
            let shown = names::join(&d.path).display().to_string();
            let fd = match fsops::open_dir_in_root(self.root.as_fd(), &names::join(parents))
                .and_then(|p| fsops::open_dir_at(p.as_fd(), base))
            {
                Ok(fd) => fd,
                // A later entry removed or replaced it; its times went with it.
                Err(e) if e.kind() == io::ErrorKind::NotFound || fsops::is_bad_path(&e) => continue,
                Err(e) => return Err(io_err("reopen directory", &shown)(e)),
            };
            let id = fsops::fstat(fd.as_fd())
                .map_err(io_err("stat directory", &shown))?
                .id();
            if id == d.id {
                fsops::set_times(fd.as_fd(), d.atime, d.mtime)
                    .map_err(io_err("set times", &shown))?;
            }
        }
        Ok(())
    }

    /// Opens the directory `comps` names under the root, creating what is missing.
    fn ensure_dir(&mut self, comps: &[OsString], shown: &str) -> Result<OwnedFd, ArchiveError> {
        match self.walk_dir(comps, true, shown)? {
            Some(fd) => Ok(fd),
            None => Err(invalid(shown, "cannot create its parent directory")),
        }
    }

    /// Opens the directory `comps` names under the root; `None` if something on the way is
    /// missing (or not a directory) and `create` is false.
    ///
    /// When the whole path exists, the kernel resolves it (RESOLVE_IN_ROOT). Otherwise it is
    /// walked one component at a time, creating what is missing. Symlinks met on that walk are
    /// resolved lexically from their directory, `..` never above the root, as containerd's
    /// `fs.RootPath` does: `x -> gone/../../etc` is `/etc` even though `gone` doesn't exist, and
    /// no directory named `gone` is made on the way.
    fn walk_dir(
        &mut self,
        comps: &[OsString],
        create: bool,
        shown: &str,
    ) -> Result<Option<OwnedFd>, ArchiveError> {
        match fsops::open_dir_in_root(self.root.as_fd(), &names::join(comps)) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if !create && fsops::is_bad_path(&e) => {}
            Err(e) => return Err(resolve_err("resolve the parent directory", shown, e)),
        }
        let open_root = |root: &OwnedFd| {
            fsops::open_dir_in_root(root.as_fd(), Path::new(""))
                .map_err(io_err("open the root directory", shown))
        };
        let mut pending: VecDeque<OsString> = comps.iter().cloned().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut cur = open_root(&self.root)?;
        let mut hops = 0;
        while let Some(comp) = pending.pop_front() {
            match fsops::lstat_at(cur.as_fd(), &comp).map_err(io_err("stat", shown))? {
                None if create => self.make_parent(cur.as_fd(), &comp, &resolved, shown)?,
                None => return Ok(None),
                Some(st) if st.kind == FileKind::Dir => {}
                Some(st) if st.kind == FileKind::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(invalid(shown, "too many levels of symlinks in its parents"));
                    }
                    let target = fsops::readlink_at(cur.as_fd(), &comp)
                        .map_err(io_err("read symlink", shown))?;
                    let mut path = if target.as_bytes().starts_with(b"/") {
                        Vec::new()
                    } else {
                        std::mem::take(&mut resolved)
                    };
                    for part in target.as_bytes().split(|b| *b == b'/') {
                        match part {
                            b"" | b"." => {}
                            b".." => {
                                path.pop();
                            }
                            part => path.push(OsStr::from_bytes(part).to_os_string()),
                        }
                    }
                    // Start over from the root with the link's target in front of the rest.
                    for part in path.into_iter().rev() {
                        pending.push_front(part);
                    }
                    resolved.clear();
                    cur = open_root(&self.root)?;
                    continue;
                }
                Some(_) if create => return Err(invalid(shown, "a parent is not a directory")),
                Some(_) => return Ok(None),
            }
            cur = fsops::open_dir_at(cur.as_fd(), &comp)
                .map_err(|e| resolve_err("open a parent directory", shown, e))?;
            resolved.push(comp);
        }
        Ok(Some(cur))
    }

    /// Creates a parent directory the archive didn't list. Apply mode: root-owned 0755, like
    /// containerd. Overlay mode: a copy of the directory's owner, mode, xattrs and times in the
    /// top-most lower that has it, so the merged view doesn't change (containerd `mkparent`).
    fn make_parent(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        resolved: &[OsString],
        shown: &str,
    ) -> Result<(), ArchiveError> {
        fsops::mkdir_at(dir, name, 0o700).map_err(io_err("create a parent directory", shown))?;
        let fd = fsops::open_dir_at(dir, name).map_err(io_err("open a parent directory", shown))?;
        let mut path = resolved.to_vec();
        path.push(name.to_os_string());
        match self.lower_dir(&path, shown)? {
            Some(lower) => {
                let st =
                    fsops::fstat(lower.as_fd()).map_err(io_err("stat a lower directory", shown))?;
                fsops::chown(fd.as_fd(), st.uid, st.gid).map_err(io_err("chown", shown))?;
                self.copy_xattrs(lower.as_fd(), fd.as_fd(), shown)?;
                fsops::chmod(fd.as_fd(), st.mode).map_err(io_err("chmod", shown))?;
                let id = fsops::fstat(fd.as_fd())
                    .map_err(io_err("stat", shown))?
                    .id();
                self.dir_times.push(DirTimes {
                    path,
                    id,
                    atime: st.atime,
                    mtime: st.mtime,
                });
            }
            None => fsops::chmod(fd.as_fd(), 0o755).map_err(io_err("chmod", shown))?,
        }
        self.mark_written(dir, name, shown)
    }

    /// Overlay mode: the directory at `path` in the top-most lower that has one.
    fn lower_dir(&self, path: &[OsString], shown: &str) -> Result<Option<OwnedFd>, ArchiveError> {
        let Some(lowers) = &self.lowers else {
            return Ok(None);
        };
        let rel = names::join(path);
        for lower in lowers {
            match fsops::open_dir_in_root(lower.as_fd(), &rel) {
                Ok(fd) => return Ok(Some(fd)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Replaced by a non-directory (a whiteout, say): nothing below counts.
                Err(e) if fsops::is_bad_path(&e) => return Ok(None),
                Err(e) => return Err(io_err("look up a lower directory", shown)(e)),
            }
        }
        Ok(None)
    }

    /// Copies xattrs from `src` to `dst`, except `trusted.*` (overlay's own among them).
    fn copy_xattrs(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        for key in fsops::list_xattrs(src).map_err(io_err("list xattrs", shown))? {
            if key.as_bytes().starts_with(b"trusted.") {
                continue;
            }
            if let Some(value) = fsops::get_xattr(src, &key).map_err(io_err("get xattr", shown))? {
                self.set_xattr(dst, &key, &value, shown)?;
            }
        }
        Ok(())
    }

    /// Apply mode: records that this layer wrote `name` in `parent`, and that `parent` and
    /// every directory above it hold something of this layer's.
    fn mark_written(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        if self.lowers.is_some() {
            return Ok(());
        }
        let mut id = fsops::fstat(parent).map_err(io_err("stat", shown))?.id();
        self.written
            .entry(id)
            .or_default()
            .insert(name.to_os_string());
        let mut up: Option<OwnedFd> = None;
        for _ in 0..MAX_DEPTH {
            // Already marked means everything above is too.
            if !self.holders.insert(id) || id == self.root_id {
                break;
            }
            let next = fsops::open_parent(up.as_ref().map_or(parent, |fd| fd.as_fd()))
                .map_err(io_err("open the parent directory", shown))?;
            id = fsops::fstat(next.as_fd())
                .map_err(io_err("stat", shown))?
                .id();
            up = Some(next);
        }
        Ok(())
    }

    /// An opaque marker (`DIR/.wh..wh..opq`).
    fn opaque(&mut self, dir: OwnedFd, shown: &str) -> Result<(), ArchiveError> {
        if self.lowers.is_some() {
            return fsops::set_xattr(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y")
                .map_err(io_err("mark the directory opaque", shown));
        }
        // Apply mode: remove whatever this layer didn't write, at any depth; the marker may
        // come after entries of this layer in the directory (T14).
        struct Frame {
            fd: OwnedFd,
            keep: Vec<OsString>,
        }
        let sweep = |fd: OwnedFd| -> Result<Frame, ArchiveError> {
            let id = fsops::fstat(fd.as_fd())
                .map_err(io_err("stat", shown))?
                .id();
            let written = self.written.get(&id);
            let mut keep = Vec::new();
            for name in fsops::read_dir(fd.as_fd()).map_err(io_err("read directory", shown))? {
                let Some(st) = fsops::lstat_at(fd.as_fd(), &name).map_err(io_err("stat", shown))?
                else {
                    continue;
                };
                let ours = written.is_some_and(|w| w.contains(&name));
                let holds_ours = st.kind == FileKind::Dir && self.holders.contains(&st.id());
                if ours || holds_ours {
                    if st.kind == FileKind::Dir {
                        keep.push(name);
                    }
                } else {
                    fsops::remove_all_at(fd.as_fd(), &name)
                        .map_err(io_err("remove a lower entry", shown))?;
                }
            }
            Ok(Frame { fd, keep })
        };
        let mut stack = vec![sweep(dir)?];
        loop {
            let next = match stack.last_mut() {
                Some(top) => top.keep.pop(),
                None => return Ok(()),
            };
            match (next, stack.last()) {
                (Some(name), Some(top)) => {
                    let fd = fsops::open_dir_at(top.fd.as_fd(), &name)
                        .map_err(io_err("open directory", shown))?;
                    let frame = sweep(fd)?;
                    stack.push(frame);
                }
                _ => {
                    stack.pop();
                }
            }
        }
    }

    /// A whiteout (`DIR/.wh.NAME`).
    fn whiteout(
        &mut self,
        dir: BorrowedFd<'_>,
        target: &OsStr,
        e: &Described,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        if self.lowers.is_none() {
            // Removes a symlink itself, never what it points at (T7).
            return fsops::remove_all_at(dir, target).map_err(io_err("remove", shown));
        }
        let existing = fsops::lstat_at(dir, target).map_err(io_err("stat", shown))?;
        self.replace(dir, target, existing, shown)?;
        fsops::mknod_at(dir, target, FileKind::CharDevice, 0, 0, 0)
            .map_err(io_err("create a whiteout device", shown))?;
        let h = fsops::open_path_at(dir, target).map_err(io_err("open", shown))?;
        fsops::chown(h.as_fd(), e.uid, e.gid).map_err(io_err("chown", shown))
    }

    /// Removes whatever is at `name` so a new entry can take its place.
    fn replace(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        existing: Option<Meta>,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        match existing {
            None => Ok(()),
            Some(st) if st.kind == FileKind::Dir => {
                fsops::remove_all_at(dir, name).map_err(io_err("remove a directory", shown))
            }
            Some(_) => fsops::unlink_at(dir, name).map_err(io_err("remove", shown)),
        }
    }

    /// Writes a non-whiteout entry as `base` in `dir`.
    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: BorrowedFd<'_>,
        comps: &[OsString],
        e: &Described,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let Some(base) = comps.last() else {
            return Ok(());
        };
        let base = base.as_os_str();
        let existing = fsops::lstat_at(dir, base).map_err(io_err("stat", shown))?;
        match e.kind {
            Kind::Dir => {
                // An existing directory stays (its entries from below merge with ours); a
                // symlink to one does not (T10).
                if existing.is_none_or(|st| st.kind != FileKind::Dir) {
                    self.replace(dir, base, existing, shown)?;
                    fsops::mkdir_at(dir, base, 0o700).map_err(io_err("create directory", shown))?;
                }
                let fd = fsops::open_dir_at(dir, base).map_err(io_err("open directory", shown))?;
                self.set_meta(fd.as_fd(), FileKind::Dir, e, shown)?;
                let id = fsops::fstat(fd.as_fd())
                    .map_err(io_err("stat", shown))?
                    .id();
                self.dir_times.push(DirTimes {
                    path: comps.to_vec(),
                    id,
                    atime: e.atime,
                    mtime: e.mtime,
                });
            }
            Kind::File => {
                // Unlink first: writing through an existing name could follow a symlink or
                // change a hardlinked inode elsewhere (T12, RUSTSEC-2018-0002).
                self.replace(dir, base, existing, shown)?;
                let mut file =
                    fsops::create_file_at(dir, base).map_err(io_err("create file", shown))?;
                self.write_data(entry, &mut file, e.size, shown)?;
                self.set_meta(file.as_fd(), FileKind::File, e, shown)?;
            }
            Kind::Symlink => {
                let target = e
                    .link
                    .as_deref()
                    .filter(|t| !t.is_empty() && !t.contains(&0))
                    .ok_or_else(|| invalid(shown, "a symlink without a valid target"))?;
                self.replace(dir, base, existing, shown)?;
                fsops::symlink_at(OsStr::from_bytes(target), dir, base)
                    .map_err(io_err("create symlink", shown))?;
                let h = fsops::open_path_at(dir, base).map_err(io_err("open symlink", shown))?;
                self.set_meta(h.as_fd(), FileKind::Symlink, e, shown)?;
            }
            Kind::Hardlink => self.hardlink(dir, base, existing, e, shown)?,
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                let kind = match e.kind {
                    Kind::CharDevice => FileKind::CharDevice,
                    Kind::BlockDevice => FileKind::BlockDevice,
                    _ => FileKind::Fifo,
                };
                self.replace(dir, base, existing, shown)?;
                match fsops::mknod_at(dir, base, kind, 0o600, e.device.0, e.device.1) {
                    Ok(()) => {}
                    // In a user namespace (or without CAP_MKNOD) devices can't be created;
                    // containerd skips them there too (T17).
                    Err(err)
                        if kind != FileKind::Fifo
                            && err.kind() == io::ErrorKind::PermissionDenied =>
                    {
                        tracing::warn!(entry = %shown, error = %err, "device node skipped: not permitted here");
                        return Ok(());
                    }
                    Err(err) => return Err(io_err("create a device or fifo", shown)(err)),
                }
                let h = fsops::open_path_at(dir, base).map_err(io_err("open", shown))?;
                self.set_meta(h.as_fd(), kind, e, shown)?;
            }
            Kind::GlobalHeader => return Ok(()),
        }
        self.mark_written(dir, base, shown)
    }

    /// Streams an entry's data into `file`.
    fn write_data<R: Read>(
        &mut self,
        data: &mut R,
        file: &mut File,
        size: u64,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        self.account(size)?;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => return Err(invalid(shown, "the archive ends inside this file's data")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::Read(e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(io_err("write file data", shown))?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Counts bytes about to be written to files against the size cap.
    fn account(&mut self, size: u64) -> Result<(), ArchiveError> {
        self.expanded = self.expanded.saturating_add(size);
        if self.expanded > self.max_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    /// A hardlink. The target resolves inside the root like any name (T3, T4, T5) and may be
    /// anything but a directory; a symlink target is linked itself, never followed, as link(2)
    /// and containerd do.
    fn hardlink(
        &mut self,
        dir: BorrowedFd<'_>,
        base: &OsStr,
        existing: Option<Meta>,
        e: &Described,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let link = e
            .link
            .as_deref()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| invalid(shown, "a hardlink without a target"))?;
        let target = names::clean(link)?;
        let Some((tbase, tparents)) = target.split_last() else {
            return Err(invalid(shown, "a hardlink to the root directory"));
        };
        let overlay = self.lowers.is_some();
        let found = if overlay {
            // Kernel resolution only, so a whiteout device on the way reads as a deletion.
            self.lookup(self.root.as_fd(), tparents, tbase, true, shown)?
        } else {
            match self.walk_dir(tparents, false, shown)? {
                Some(tdir) => self.lookup_in(tdir, tbase, false, shown)?,
                None => Lookup::Missing,
            }
        };
        match found {
            Lookup::Found(tdir, st) => {
                if st.kind == FileKind::Dir {
                    return Err(invalid(shown, "a hardlink to a directory"));
                }
                if existing.is_none_or(|x| x.id() != st.id()) {
                    self.replace(dir, base, existing, shown)?;
                    fsops::hardlink_at(tdir.as_fd(), tbase, dir, base)
                        .map_err(io_err("create hardlink", shown))?;
                }
            }
            Lookup::Hidden | Lookup::Missing if !overlay => {
                return Err(invalid(
                    shown,
                    &format!("hardlink target {:?} does not exist", names::display(link)),
                ))
            }
            Lookup::Hidden => {
                return Err(invalid(
                    shown,
                    &format!("hardlink target {:?} was deleted", names::display(link)),
                ))
            }
            Lookup::Missing => {
                if !self.copy_up(tparents, tbase, dir, base, existing, shown)? {
                    return Err(invalid(
                        shown,
                        &format!(
                            "hardlink target {:?} is in neither this layer nor its lowers",
                            names::display(link)
                        ),
                    ));
                }
            }
        }
        let h = fsops::open_path_at(dir, base).map_err(io_err("open", shown))?;
        let kind = fsops::fstat(h.as_fd()).map_err(io_err("stat", shown))?.kind;
        self.set_meta(h.as_fd(), kind, e, shown)
    }

    /// Finds `tparents/tbase` in one layer. With `whiteouts`, a 0:0 character device hides the
    /// name and an opaque parent hides what the layers below have.
    fn lookup(
        &self,
        layer: BorrowedFd<'_>,
        tparents: &[OsString],
        tbase: &OsStr,
        whiteouts: bool,
        shown: &str,
    ) -> Result<Lookup, ArchiveError> {
        let tdir = match fsops::open_dir_in_root(layer, &names::join(tparents)) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            // A parent is a file or a whiteout device here.
            Err(e) if fsops::is_bad_path(&e) => {
                return Ok(if whiteouts {
                    Lookup::Hidden
                } else {
                    Lookup::Missing
                })
            }
            Err(e) => return Err(io_err("resolve the hardlink target", shown)(e)),
        };
        self.lookup_in(tdir, tbase, whiteouts, shown)
    }

    /// Finds `tbase` in the directory `tdir` of one layer (see [`Self::lookup`]).
    fn lookup_in(
        &self,
        tdir: OwnedFd,
        tbase: &OsStr,
        whiteouts: bool,
        shown: &str,
    ) -> Result<Lookup, ArchiveError> {
        match fsops::lstat_at(tdir.as_fd(), tbase)
            .map_err(io_err("stat the hardlink target", shown))?
        {
            Some(st) if whiteouts && st.is_whiteout() => Ok(Lookup::Hidden),
            Some(st) => Ok(Lookup::Found(tdir, st)),
            None if whiteouts && self.is_opaque(tdir.as_fd(), shown)? => Ok(Lookup::Hidden),
            None => Ok(Lookup::Missing),
        }
    }

    fn is_opaque(&self, dir: BorrowedFd<'_>, shown: &str) -> Result<bool, ArchiveError> {
        Ok(fsops::get_xattr(dir, OsStr::new(OPAQUE_XATTR))
            .map_err(io_err("read the opaque xattr", shown))?
            .is_some_and(|v| v == b"y"))
    }

    /// Overlay mode: a hardlink can't cross from the upper dir into a lower one, so the target
    /// is copied from the top-most lower that has it. Only the target's direct parent is
    /// checked for opacity. Returns false if no lower has it.
    fn copy_up(
        &mut self,
        tparents: &[OsString],
        tbase: &OsStr,
        dir: BorrowedFd<'_>,
        base: &OsStr,
        existing: Option<Meta>,
        shown: &str,
    ) -> Result<bool, ArchiveError> {
        let count = self.lowers.as_ref().map_or(0, Vec::len);
        for i in 0..count {
            let Some(lower) = self.lowers.as_ref().and_then(|l| l.get(i)) else {
                break;
            };
            let (tdir, st) = match self.lookup(lower.as_fd(), tparents, tbase, true, shown)? {
                Lookup::Found(tdir, st) => (tdir, st),
                Lookup::Hidden => return Ok(false),
                Lookup::Missing => continue,
            };
            self.replace(dir, base, existing, shown)?;
            match st.kind {
                FileKind::File => {
                    let mut src = fsops::open_file_at(tdir.as_fd(), tbase)
                        .map_err(io_err("open the hardlink target", shown))?;
                    let mut dst =
                        fsops::create_file_at(dir, base).map_err(io_err("create file", shown))?;
                    self.account(st.size)?;
                    io::copy(&mut src, &mut dst)
                        .map_err(io_err("copy the hardlink target from a lower", shown))?;
                    self.copy_xattrs(src.as_fd(), dst.as_fd(), shown)?;
                }
                FileKind::Symlink => {
                    let target = fsops::readlink_at(tdir.as_fd(), tbase)
                        .map_err(io_err("read the hardlink target", shown))?;
                    fsops::symlink_at(&target, dir, base)
                        .map_err(io_err("create symlink", shown))?;
                }
                FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo => {
                    fsops::mknod_at(dir, base, st.kind, st.mode, st.rdev_major, st.rdev_minor)
                        .map_err(io_err("create a device or fifo", shown))?;
                }
                FileKind::Dir => return Err(invalid(shown, "a hardlink to a directory")),
                FileKind::Socket | FileKind::Unknown => {
                    return Err(invalid(shown, "a hardlink to a socket"))
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Ownership, xattrs, mode and times, in containerd's order: chown clears setuid bits and
    /// file capabilities, so it goes first. Directory times wait for [`Self::finish`].
    fn set_meta(
        &self,
        fd: BorrowedFd<'_>,
        kind: FileKind,
        e: &Described,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        fsops::chown(fd, e.uid, e.gid).map_err(io_err("chown", shown))?;
        for (key, value) in &e.xattrs {
            let name = key.as_bytes();
            // trusted.overlay.* (or user.overlay.* under userxattr) would let a layer forge
            // whiteouts and opacity (T16); containerd drops all of trusted.*.
            if name.starts_with(b"trusted.") || name.starts_with(b"user.overlay.") {
                tracing::warn!(entry = %shown, xattr = %key.to_string_lossy(), "xattr from the layer dropped");
                continue;
            }
            self.set_xattr(fd, key, value, shown)?;
        }
        if kind != FileKind::Symlink {
            fsops::chmod(fd, e.mode).map_err(io_err("chmod", shown))?;
        }
        if kind != FileKind::Dir {
            fsops::set_times(fd, e.atime, e.mtime).map_err(io_err("set times", shown))?;
        }
        Ok(())
    }

    /// Sets one xattr. A filesystem without xattr support, or `user.*` where the kernel allows
    /// it only on files and directories, is a warning, as in containerd (T19).
    fn set_xattr(
        &self,
        fd: BorrowedFd<'_>,
        key: &OsStr,
        value: &[u8],
        shown: &str,
    ) -> Result<(), ArchiveError> {
        match fsops::set_xattr(fd, key, value) {
            Ok(()) => Ok(()),
            Err(err)
                if fsops::is_unsupported(&err)
                    || (key.as_bytes().starts_with(b"user.")
                        && err.kind() == io::ErrorKind::PermissionDenied) =>
            {
                tracing::warn!(entry = %shown, xattr = %key.to_string_lossy(), error = %err, "xattr not supported here; skipped");
                Ok(())
            }
            Err(err) => Err(io_err("set xattr", shown)(err)),
        }
    }
}
