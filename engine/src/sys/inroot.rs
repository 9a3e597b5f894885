//! Reading inside a root directory (an image or snapshot tree) as if it were `/`: every path
//! is resolved with `openat2(RESOLVE_IN_ROOT)`, so absolute and `..` symlinks in the tree stay
//! inside it, and walks never follow symlinks.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{openat2, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::io;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl EntryKind {
    fn of(ft: FileType) -> Self {
        match ft {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        }
    }
}

/// What `stat` reports.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
}

/// An open root directory.
pub struct Root {
    fd: OwnedFd,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn rel(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    if p.is_empty() {
        "."
    } else {
        p
    }
}

impl Root {
    pub fn open(dir: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    fn resolve(&self, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
        Ok(openat2(
            self.fd.as_fd(),
            rel(path),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }

    /// Opens a regular file for reading (symlinks resolve inside the root).
    pub fn open_file(&self, path: &str) -> io::Result<File> {
        let fd = self.resolve(path, OFlags::RDONLY)?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!("{path}: not a regular file")));
        }
        Ok(file)
    }

    /// Creates (or truncates) `name` in directory `dir` and writes `bytes`. The final component
    /// is never followed, so a symlink planted there cannot redirect the write.
    pub fn create_file(&self, dir: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad file name {name:?}"),
            ));
        }
        let dirfd = self.resolve(dir, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let fd = rustix::fs::openat(
            &dirfd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let mut file = File::from(fd);
        std::io::Write::write_all(&mut file, bytes)
    }

    /// The host path `path` resolves to inside the root (symlinks resolved in the root). Safe
    /// to hand to a bind mount as long as nobody changes the tree meanwhile (snapshots are
    /// immutable or private to the caller).
    pub fn real_path(&self, path: &str) -> io::Result<std::path::PathBuf> {
        let fd = self.resolve(path, OFlags::PATH)?;
        let link = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
        std::fs::read_link(link)
    }

    /// `stat`, following a final symlink or not.
    pub fn stat(&self, path: &str, follow: bool) -> io::Result<Stat> {
        let mut flags = OFlags::PATH;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = self.resolve(path, flags)?;
        let st = rustix::fs::fstat(&fd)?;
        Ok(Stat {
            kind: EntryKind::of(FileType::from_raw_mode(st.st_mode)),
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
        })
    }

    /// The entries of a directory, sorted by name.
    pub fn read_dir(&self, path: &str) -> io::Result<Vec<(String, EntryKind)>> {
        let fd = self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        list(&fd)
    }

    /// Visits every entry below `path` (depth first, sorted, never following symlinks) with its
    /// path relative to `path`.
    pub fn walk(&self, path: &str, visit: &mut dyn FnMut(&str, EntryKind)) -> io::Result<()> {
        let fd = self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        walk_fd(&fd, "", visit)
    }
}

fn list(dir: &OwnedFd) -> io::Result<Vec<(String, EntryKind)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let kind = match entry.file_type() {
            FileType::Unknown => {
                let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                EntryKind::of(FileType::from_raw_mode(st.st_mode))
            }
            ft => EntryKind::of(ft),
        };
        out.push((name, kind));
    }
    out.sort();
    Ok(out)
}

fn walk_fd(dir: &OwnedFd, prefix: &str, visit: &mut dyn FnMut(&str, EntryKind)) -> io::Result<()> {
    for (name, kind) in list(dir)? {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        visit(&path, kind);
        if kind == EntryKind::Dir {
            let child = rustix::fs::openat(
                dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            walk_fd(&child, &path, visit)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("etc/passwd"), "inside").unwrap();
        std::fs::write(outside.join("secret"), "host").unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("up")).unwrap();
        symlink(&outside, root.join("escape")).unwrap();
        let r = Root::open(&root).unwrap();
        let read = |p: &str| {
            let mut s = String::new();
            r.open_file(p).unwrap().read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(read("/abs/passwd"), "inside");
        assert_eq!(read("up/passwd"), "inside");
        assert!(
            r.open_file("escape/secret").is_err(),
            "absolute link to a host path stays in root"
        );
        assert_eq!(r.stat("abs", false).unwrap().kind, EntryKind::Symlink);
        assert_eq!(r.stat("abs", true).unwrap().kind, EntryKind::Dir);
        assert!(r.open_file("etc").is_err());

        let names: Vec<_> = r
            .read_dir("/")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["abs", "escape", "etc", "up"]);
        let mut seen = Vec::new();
        r.walk("", &mut |p, k| seen.push((p.to_string(), k)))
            .unwrap();
        assert!(seen.contains(&("etc/passwd".into(), EntryKind::File)));
        assert!(seen.contains(&("abs".into(), EntryKind::Symlink)));
        assert!(
            !seen.iter().any(|(p, _)| p.starts_with("abs/")),
            "walk does not follow links"
        );
    }
}
