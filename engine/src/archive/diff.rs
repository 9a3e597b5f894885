//! Layer diff: a deterministic tar of one snapshot's own changes relative to its parent, and the
//! small ustar/PAX writer it uses (the `tar` crate is only used for parsing in this codebase).
//!
//! * **Overlay** snapshots hold exactly their changes in their upper directory: it is walked
//!   as is; a 0:0 character device (an overlay whiteout) becomes a `.wh.<name>` entry and a
//!   directory with `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry after its own.
//! * **Native** snapshots are full trees: the tree is compared with its parent's tree; what
//!   was added or changed is written, what was removed becomes a `.wh.<name>` entry.
//!
//! Deterministic: entries in byte order of their names (a directory before its contents),
//! modification times as recorded (whole seconds, no atime or ctime), numeric owners only (no
//! user or group names), PAX records only where ustar cannot hold a value (long names, large
//! numbers, extended attributes). The same tree always gives the same bytes.
//!
//! Every file is reached by fd-relative calls from the snapshot root, never following a
//! symlink; devices and fifos are described, never opened; sockets are skipped (tar cannot
//! hold them, as Docker and containerd also skip them).

use super::ArchiveError;
use crate::sys::fsops::{self, FileKind, Meta};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BLOCK: usize = 512;
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What the layer is the difference of.
#[derive(Debug, Clone, Copy)]
pub enum DiffSource<'a> {
    /// An overlay upper directory: its contents are the changes.
    Overlay { upper: &'a Path },
    /// A full tree and its parent's full tree (`None`: the layer adds everything).
    Native {
        tree: &'a Path,
        parent: Option<&'a Path>,
    },
}

/// The type of a tar entry and what it needs beyond the common fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry of the same archive (its name).
    Hardlink(Vec<u8>),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

/// One entry's header, as [`TarWriter::append`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Relative name without a leading `./` or a trailing `/` (added for directories).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data that follow (regular files only).
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, sorted by name.
    pub xattrs: Xattrs,
}

impl Header {
    fn new(path: Vec<u8>, kind: EntryKind, mode: u32, mtime: i64) -> Self {
        Header {
            path,
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime,
            xattrs: Vec::new(),
        }
    }
}

/// A minimal, deterministic ustar writer with PAX extended headers where needed.
pub struct TarWriter<W: Write> {
    out: W,
    pax_seq: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out, pax_seq: 0 }
    }

    /// Writes one entry; `data` must yield exactly `header.size` bytes for a regular file.
    pub fn append(&mut self, header: &Header, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut name = header.path.clone();
        if header.kind == EntryKind::Dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let size = if header.kind == EntryKind::File {
            header.size
        } else {
            0
        };
        let (flag, link, dev) = match &header.kind {
            EntryKind::File => (b'0', &[][..], (0, 0)),
            EntryKind::Hardlink(t) => (b'1', &t[..], (0, 0)),
            EntryKind::Symlink(t) => (b'2', &t[..], (0, 0)),
            EntryKind::CharDevice(a, b) => (b'3', &[][..], (*a, *b)),
            EntryKind::BlockDevice(a, b) => (b'4', &[][..], (*a, *b)),
            EntryKind::Dir => (b'5', &[][..], (0, 0)),
            EntryKind::Fifo => (b'6', &[][..], (0, 0)),
        };
        let mut pax: Vec<(&[u8], Vec<u8>)> = Vec::new();
        if name.len() > 100 {
            pax.push((b"path", name.clone()));
        }
        if link.len() > 100 {
            pax.push((b"linkpath", link.to_vec()));
        }
        const MAX7: u64 = 0o7777777;
        const MAX11: u64 = 0o77777777777;
        if header.uid > MAX7 {
            pax.push((b"uid", header.uid.to_string().into_bytes()));
        }
        if header.gid > MAX7 {
            pax.push((b"gid", header.gid.to_string().into_bytes()));
        }
        if size > MAX11 {
            pax.push((b"size", size.to_string().into_bytes()));
        }
        if header.mtime < 0 || header.mtime as u64 > MAX11 {
            pax.push((b"mtime", header.mtime.to_string().into_bytes()));
        }
        let xattr_keys: Vec<Vec<u8>> = header
            .xattrs
            .iter()
            .map(|(k, _)| [&b"SCHILY.xattr."[..], k].concat())
            .collect();
        let mut records = Vec::new();
        for (k, v) in &pax {
            records.extend(pax_record(k, v));
        }
        for (key, (_, v)) in xattr_keys.iter().zip(&header.xattrs) {
            records.extend(pax_record(key, v));
        }
        if !records.is_empty() {
            let mut pax_name = format!("PaxHeaders.{}/", self.pax_seq).into_bytes();
            self.pax_seq += 1;
            let base = name
                .split(|b| *b == b'/')
                .rfind(|c| !c.is_empty())
                .unwrap_or(b"entry");
            pax_name.extend(&base[..base.len().min(80)]);
            let block = ustar_block(
                &pax_name,
                0o644,
                0,
                0,
                records.len() as u64,
                0,
                b'x',
                b"",
                (0, 0),
            );
            self.out.write_all(&block)?;
            self.out.write_all(&records)?;
            pad(&mut self.out, records.len() as u64)?;
        }
        let short = |v: &[u8]| -> Vec<u8> { v[..v.len().min(100)].to_vec() };
        let block = ustar_block(
            &short(&name),
            header.mode & 0o7777,
            header.uid.min(MAX7),
            header.gid.min(MAX7),
            size.min(MAX11),
            header.mtime.clamp(0, MAX11 as i64) as u64,
            flag,
            &short(link),
            dev,
        );
        self.out.write_all(&block)?;
        if size > 0 {
            let data = data.ok_or_else(|| io::Error::other("file entry without data"))?;
            let copied = io::copy(&mut data.take(size), &mut self.out)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} changed while archived: {copied} of {size} bytes",
                        String::from_utf8_lossy(&header.path)
                    ),
                ));
            }
            pad(&mut self.out, size)?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn pad(out: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (len % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// `"<len> <key>=<value>\n"`, where len counts the whole record, itself included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend(key);
    r.push(b'=');
    r.extend(value);
    r.push(b'\n');
    r
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

#[allow(clippy::too_many_arguments)]
fn ustar_block(
    name: &[u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    flag: u8,
    link: &[u8],
    dev: (u32, u32),
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], mode as u64);
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = flag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], dev.0 as u64);
    octal(&mut b[337..345], dev.1 as u64);
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|x| *x as u64).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    b
}

/// Writes the layer tar of `source` to `out` (uncompressed); returns `out` and the number of
/// entries. Blocking.
pub fn write_layer<W: Write>(out: W, source: DiffSource<'_>) -> Result<(W, u64), ArchiveError> {
    let mut d = Differ {
        tw: TarWriter::new(out),
        links: HashMap::new(),
        entries: 0,
        overlay: matches!(source, DiffSource::Overlay { .. }),
    };
    let open = |p: &Path| {
        fsops::open_dir(p).map_err(|source| ArchiveError::Io {
            op: "open the snapshot directory",
            path: p.display().to_string(),
            source,
        })
    };
    match source {
        DiffSource::Overlay { upper } => {
            let root = open(upper)?;
            d.walk(root.as_fd(), None, b"")?;
        }
        DiffSource::Native { tree, parent } => {
            let root = open(tree)?;
            let parent = parent.map(open).transpose()?;
            d.walk(root.as_fd(), parent.as_ref().map(|p| p.as_fd()), b"")?;
        }
    }
    let entries = d.entries;
    let out =
        d.tw.finish()
            .map_err(|e| io_error("finish the layer", b"", e))?;
    Ok((out, entries))
}

fn io_error(op: &'static str, path: &[u8], source: io::Error) -> ArchiveError {
    ArchiveError::Io {
        op,
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

struct Differ<W: Write> {
    tw: TarWriter<W>,
    /// Inodes with several links already written, by `(dev, ino)`: their first name.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    overlay: bool,
}

fn join(prefix: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend(name.as_bytes());
    p
}

fn sorted_names(dir: BorrowedFd<'_>, shown: &[u8]) -> Result<Vec<OsString>, ArchiveError> {
    let mut names = fsops::read_dir(dir).map_err(|e| io_error("list directory", shown, e))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Extended attributes as (name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn xattrs_of(fd: BorrowedFd<'_>, shown: &[u8]) -> Result<Xattrs, ArchiveError> {
    let mut out = Vec::new();
    let names = fsops::list_xattrs(fd).map_err(|e| io_error("list xattrs", shown, e))?;
    for n in names {
        if n.as_bytes().starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        if let Some(v) = fsops::get_xattr(fd, &n).map_err(|e| io_error("read xattr", shown, e))? {
            out.push((n.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether two regular files have the same bytes.
fn same_content(a: &mut std::fs::File, b: &mut std::fs::File) -> io::Result<bool> {
    let mut ba = vec![0u8; 64 << 10];
    let mut bb = vec![0u8; 64 << 10];
    loop {
        let n = read_full(a, &mut ba)?;
        let m = read_full(b, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<W: Write> Differ<W> {
    fn emit(&mut self, h: &Header, data: Option<&mut dyn Read>) -> Result<(), ArchiveError> {
        self.entries += 1;
        self.tw
            .append(h, data)
            .map_err(|e| io_error("write the layer entry", &h.path, e))
    }

    fn whiteout(&mut self, prefix: &[u8], name: &OsStr, mtime: i64) -> Result<(), ArchiveError> {
        let mut wh = WHITEOUT_PREFIX.to_vec();
        wh.extend(name.as_bytes());
        let path = join(prefix, OsStr::from_bytes(&wh));
        self.emit(&Header::new(path, EntryKind::File, 0, mtime), None)
    }

    /// Walks `dir` (and, in native mode, the same directory `parent` of the parent tree),
    /// writing what changed.
    fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: Option<BorrowedFd<'_>>,
        prefix: &[u8],
    ) -> Result<(), ArchiveError> {
        let names = sorted_names(dir, prefix)?;
        let old_names = match parent {
            Some(p) => sorted_names(p, prefix)?,
            None => Vec::new(),
        };
        // Merge the two sorted lists.
        let (mut i, mut j) = (0, 0);
        while i < names.len() || j < old_names.len() {
            let ord = match (names.get(i), old_names.get(j)) {
                (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    self.entry(dir, None, prefix, &names[i])?;
                    i += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.entry(dir, parent, prefix, &names[i])?;
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Greater => {
                    // Only in the parent: removed.
                    let mtime = fsops::fstat(dir)
                        .map(|m| m.mtime.secs)
                        .map_err(|e| io_error("stat directory", prefix, e))?;
                    self.whiteout(prefix, &old_names[j], mtime)?;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// One name of `dir`; `parent` is the parent tree's directory when it has the name too.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: Option<BorrowedFd<'_>>,
        prefix: &[u8],
        name: &OsStr,
    ) -> Result<(), ArchiveError> {
        let path = join(prefix, name);
        let Some(m) = fsops::lstat_at(dir, name).map_err(|e| io_error("stat", &path, e))? else {
            return Ok(());
        };
        if self.overlay && m.is_whiteout() {
            return self.whiteout(prefix, name, m.mtime.secs);
        }
        let old = match parent {
            Some(p) => fsops::lstat_at(p, name).map_err(|e| io_error("stat", &path, e))?,
            None => None,
        };
        match m.kind {
            FileKind::Dir => {
                let fd = fsops::open_dir_at(dir, name)
                    .map_err(|e| io_error("open directory", &path, e))?;
                let xattrs = xattrs_of(fd.as_fd(), &path)?;
                let opaque = self.overlay
                    && fsops::get_xattr(fd.as_fd(), OsStr::from_bytes(OPAQUE_XATTR))
                        .map_err(|e| io_error("read xattr", &path, e))?
                        .is_some_and(|v| v == b"y");
                let old_fd: Option<OwnedFd> = match &old {
                    Some(o) if o.kind == FileKind::Dir => Some(
                        fsops::open_dir_at(parent.expect("old implies parent"), name)
                            .map_err(|e| io_error("open directory", &path, e))?,
                    ),
                    _ => None,
                };
                let changed = match (&old, &old_fd) {
                    (Some(o), Some(ofd)) => {
                        !same_meta(&m, o) || xattrs_of(ofd.as_fd(), &path)? != xattrs
                    }
                    _ => true,
                };
                if changed {
                    let mut h = header_of(path.clone(), EntryKind::Dir, &m);
                    h.xattrs = xattrs;
                    self.emit(&h, None)?;
                }
                if opaque {
                    let marker = join(&path, OsStr::from_bytes(OPAQUE_MARKER));
                    self.emit(&Header::new(marker, EntryKind::File, 0, m.mtime.secs), None)?;
                }
                self.walk(fd.as_fd(), old_fd.as_ref().map(|f| f.as_fd()), &path)
            }
            FileKind::File => {
                let mut f =
                    fsops::open_file_at(dir, name).map_err(|e| io_error("open file", &path, e))?;
                let fm = fsops::fstat(f.as_fd()).map_err(|e| io_error("stat", &path, e))?;
                let xattrs = xattrs_of(f.as_fd(), &path)?;
                if let Some(o) = &old {
                    if o.kind == FileKind::File && same_meta(&fm, o) && o.size == fm.size {
                        let mut of = fsops::open_file_at(parent.expect("old implies parent"), name)
                            .map_err(|e| io_error("open file", &path, e))?;
                        let same = xattrs_of(of.as_fd(), &path)? == xattrs
                            && same_content(&mut f, &mut of)
                                .map_err(|e| io_error("compare file", &path, e))?;
                        if same {
                            return Ok(());
                        }
                        use std::io::Seek;
                        f.seek(io::SeekFrom::Start(0))
                            .map_err(|e| io_error("rewind file", &path, e))?;
                    }
                }
                if fm.nlink > 1 {
                    if let Some(first) = self.links.get(&fm.id()).cloned() {
                        let h = header_of(path, EntryKind::Hardlink(first), &fm);
                        return self.emit(&h, None);
                    }
                    self.links.insert(fm.id(), path.clone());
                }
                let mut h = header_of(path, EntryKind::File, &fm);
                h.size = fm.size;
                h.xattrs = xattrs;
                self.emit(&h, Some(&mut f))
            }
            FileKind::Symlink => {
                let target =
                    fsops::readlink_at(dir, name).map_err(|e| io_error("read link", &path, e))?;
                if let Some(o) = &old {
                    if o.kind == FileKind::Symlink && same_meta(&m, o) {
                        let old_target = fsops::readlink_at(parent.expect("old"), name)
                            .map_err(|e| io_error("read link", &path, e))?;
                        if old_target == target {
                            return Ok(());
                        }
                    }
                }
                let h = header_of(path, EntryKind::Symlink(target.as_bytes().to_vec()), &m);
                self.emit(&h, None)
            }
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo => {
                if let Some(o) = &old {
                    if o.kind == m.kind
                        && same_meta(&m, o)
                        && (o.rdev_major, o.rdev_minor) == (m.rdev_major, m.rdev_minor)
                    {
                        return Ok(());
                    }
                }
                let kind = match m.kind {
                    FileKind::CharDevice => EntryKind::CharDevice(m.rdev_major, m.rdev_minor),
                    FileKind::BlockDevice => EntryKind::BlockDevice(m.rdev_major, m.rdev_minor),
                    _ => EntryKind::Fifo,
                };
                self.emit(&header_of(path, kind, &m), None)
            }
            FileKind::Socket | FileKind::Unknown => {
                tracing::debug!(path = %String::from_utf8_lossy(&path), "socket or unknown file type left out of the layer");
                Ok(())
            }
        }
    }
}

fn same_meta(a: &Meta, b: &Meta) -> bool {
    a.kind == b.kind && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.mtime == b.mtime
}

fn header_of(path: Vec<u8>, kind: EntryKind, m: &Meta) -> Header {
    Header {
        path,
        kind,
        mode: m.mode,
        uid: m.uid as u64,
        gid: m.gid as u64,
        size: 0,
        mtime: m.mtime.secs,
        xattrs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    //! Round trips through [`crate::archive::apply_layer`], whiteouts, opaque directories and
    //! determinism. They run as root (mknod of whiteouts, trusted.* xattrs).
    use super::*;
    use crate::archive::{apply_layer, ApplyOptions};
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn require_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests need root (mknod, trusted.* xattrs)"
        );
    }

    /// A comparable description of a tree: path, kind, mode, owner, mtime, content or target.
    fn describe(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let m = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let what = if m.is_dir() {
                    stack.push(p.clone());
                    format!("dir mtime={}", m.mtime())
                } else if m.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&p).unwrap().display())
                } else if m.is_file() {
                    format!(
                        "file {:?} mtime={} nlink={}",
                        String::from_utf8_lossy(&fs::read(&p).unwrap()),
                        m.mtime(),
                        m.nlink()
                    )
                } else {
                    format!("special rdev={}", m.rdev())
                };
                out.push(format!(
                    "{rel} {what} mode={:o} {}:{}",
                    m.permissions().mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ));
            }
        }
        out.sort();
        out
    }

    fn entries(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                String::from_utf8_lossy(&e.path_bytes()).into_owned()
            })
            .collect()
    }

    fn cp(from: &Path, to: &Path) {
        let ok = std::process::Command::new("cp")
            .args(["-a", "--no-target-directory"])
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn write(p: &Path, s: &str) {
        fs::write(p, s).unwrap();
    }

    #[test]
    fn native_diff_round_trips_with_whiteouts_and_is_deterministic() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("parent");
        fs::create_dir_all(parent.join("etc/sub")).unwrap();
        fs::create_dir_all(parent.join("gone-dir/x")).unwrap();
        write(&parent.join("etc/keep"), "same");
        write(&parent.join("etc/change"), "old!");
        write(&parent.join("etc/sub/remove"), "bye");
        write(&parent.join("gone-dir/x/f"), "f");
        let tree = tmp.path().join("tree");
        cp(&parent, &tree);
        // Same size, new content and time: must be seen as changed. The time is set apart
        // explicitly: file times come from a coarse clock, and a fast run could otherwise write
        // both versions within one tick.
        write(&tree.join("etc/change"), "new!");
        fs::File::options()
            .write(true)
            .open(tree.join("etc/change"))
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000))
            .unwrap();
        fs::remove_file(tree.join("etc/sub/remove")).unwrap();
        fs::remove_dir_all(tree.join("gone-dir")).unwrap();
        fs::create_dir_all(tree.join("new/deep")).unwrap();
        write(&tree.join("new/deep/file"), "hello");
        fs::hard_link(tree.join("new/deep/file"), tree.join("new/link")).unwrap();
        symlink("../etc/keep", tree.join("new/sym")).unwrap();
        fs::set_permissions(
            tree.join("new/deep/file"),
            fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        std::os::unix::fs::lchown(tree.join("new/sym"), Some(7), Some(8)).unwrap();
        let long = "n".repeat(150);
        write(&tree.join("new").join(&long), "long name");

        let source = DiffSource::Native {
            tree: &tree,
            parent: Some(&parent),
        };
        let (a, n) = write_layer(Vec::new(), source).unwrap();
        let (b, _) = write_layer(Vec::new(), source).unwrap();
        assert_eq!(a, b, "two runs give the same bytes");
        assert!(n > 0);
        let names = entries(&a);
        assert!(
            names.contains(&"etc/sub/.wh.remove".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&".wh.gone-dir".to_string()), "{names:?}");
        assert!(names.contains(&"etc/change".to_string()));
        assert!(
            !names.contains(&"etc/keep".to_string()),
            "unchanged files stay out: {names:?}"
        );

        // Applying the layer onto the parent reproduces the tree.
        let out = tmp.path().join("out");
        cp(&parent, &out);
        apply_layer(&out, &a[..], &ApplyOptions::default()).unwrap();
        assert_eq!(describe(&out), describe(&tree));
    }

    #[test]
    fn overlay_upper_whiteouts_and_opaque_dirs() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        fs::create_dir_all(upper.join("opq")).unwrap();
        write(&upper.join("opq/kept"), "k");
        write(&upper.join("added"), "a");
        let ufd = fsops::open_dir(&upper).unwrap();
        fsops::mknod_at(
            ufd.as_fd(),
            OsStr::new("removed"),
            FileKind::CharDevice,
            0,
            0,
            0,
        )
        .unwrap();
        let ofd = fsops::open_dir(&upper.join("opq")).unwrap();
        fsops::set_xattr(ofd.as_fd(), OsStr::new("trusted.overlay.opaque"), b"y").unwrap();
        fsops::set_xattr(ofd.as_fd(), OsStr::new("user.note"), b"v").unwrap();

        let (tar, _) = write_layer(Vec::new(), DiffSource::Overlay { upper: &upper }).unwrap();
        let names = entries(&tar);
        assert_eq!(
            names,
            vec![
                "added",
                "opq/",
                "opq/.wh..wh..opq",
                "opq/kept",
                ".wh.removed"
            ]
        );
        // Overlay's own xattrs stay out, others are kept (as PAX records).
        let mut a = tar::Archive::new(&tar[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path_bytes().as_ref() == b"opq/" {
                let exts: Vec<String> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| x.unwrap().key().unwrap().to_string())
                    .collect();
                assert_eq!(exts, vec!["SCHILY.xattr.user.note"]);
            }
        }

        // Applied onto a lower tree, the layer removes, hides and adds.
        let lower = tmp.path().join("lower");
        fs::create_dir_all(lower.join("opq")).unwrap();
        write(&lower.join("opq/hidden"), "h");
        write(&lower.join("removed"), "r");
        write(&lower.join("stays"), "s");
        apply_layer(&lower, &tar[..], &ApplyOptions::default()).unwrap();
        assert!(!lower.join("removed").exists());
        assert!(!lower.join("opq/hidden").exists());
        assert_eq!(fs::read_to_string(lower.join("opq/kept")).unwrap(), "k");
        assert_eq!(fs::read_to_string(lower.join("added")).unwrap(), "a");
        assert!(lower.join("stays").exists());
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for (k, v) in [
            ("path", "x".repeat(5)),
            ("path", "y".repeat(93)),
            ("a", String::new()),
        ] {
            let r = pax_record(k.as_bytes(), v.as_bytes());
            let (len, _) = std::str::from_utf8(&r).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len());
        }
    }
}
