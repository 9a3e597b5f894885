//! Content digests of trees and files (`Directory.digest`, `File.digest`).
//!
//! A tree's digest covers, for every entry below it in name order: its relative path, type,
//! permission bits, owner, and its content (a file's bytes, a symlink's target, a device's
//! numbers). Times are left out, so rebuilding the same tree gives the same digest; the
//! directory's own metadata is left out, so a subdirectory digests the same wherever it sits.
//! Every field is length-prefixed or fixed-size, so two different trees cannot encode alike.

use super::fs::{io_error, FsError};
use crate::oci::{Digest, Hasher};
use crate::snapshot::SnapshotId;
use crate::sys::fsops::{self, FileKind, Meta};
use crate::sys::inroot::Root;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn kind_byte(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => b'f',
        FileKind::Dir => b'd',
        FileKind::Symlink => b'l',
        FileKind::CharDevice => b'c',
        FileKind::BlockDevice => b'b',
        FileKind::Fifo => b'p',
        FileKind::Socket => b's',
        FileKind::Unknown => b'?',
    }
}

fn put_bytes(h: &mut Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

/// The sha256 of everything `r` yields, and how many bytes that was.
pub fn content_digest(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((h.finish(), total));
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
}

/// One entry's record: header fields, then the content that identifies it.
fn record(
    h: &mut Hasher,
    path: &[u8],
    m: &Meta,
    content: &mut dyn FnMut() -> io::Result<Vec<u8>>,
) -> io::Result<()> {
    h.update(&[kind_byte(m.kind)]);
    put_bytes(h, path);
    h.update(&m.mode.to_le_bytes());
    h.update(&m.uid.to_le_bytes());
    h.update(&m.gid.to_le_bytes());
    put_bytes(h, &content()?);
    Ok(())
}

/// The digest of a regular file: with `metadata`, its mode and owner count too; without, it
/// is the plain sha256 of its bytes (what Dagger's `excludeMetadata` gives).
pub fn file_digest(file: &File, metadata: bool) -> io::Result<Digest> {
    let (content, size) = content_digest(file)?;
    if !metadata {
        return Ok(content);
    }
    let m = fsops::fstat(file.as_fd())?;
    let mut h = Hasher::new();
    record(&mut h, b"", &m, &mut || {
        let mut v = size.to_le_bytes().to_vec();
        v.extend_from_slice(content.hex().as_bytes());
        Ok(v)
    })?;
    Ok(h.finish())
}

/// The digest of the tree below the directory `dir`.
pub fn tree_digest(dir: BorrowedFd<'_>) -> io::Result<Digest> {
    let mut h = Hasher::new();
    fsops::walk_sorted(dir, &mut |dir, name, path, m| {
        record(&mut h, path, m, &mut || match m.kind {
            FileKind::File => {
                let (d, size) = content_digest(fsops::open_file_at(dir, name)?)?;
                let mut v = size.to_le_bytes().to_vec();
                v.extend_from_slice(d.hex().as_bytes());
                Ok(v)
            }
            FileKind::Symlink => Ok(fsops::readlink_at(dir, name)?.as_bytes().to_vec()),
            FileKind::CharDevice | FileKind::BlockDevice => {
                let mut v = m.rdev_major.to_le_bytes().to_vec();
                v.extend_from_slice(&m.rdev_minor.to_le_bytes());
                Ok(v)
            }
            _ => Ok(Vec::new()),
        })
    })?;
    Ok(h.finish())
}

impl super::Solver {
    /// `Directory.digest`: the digest of the evaluated directory's tree.
    pub async fn directory_digest(
        &self,
        node: &super::node::DirectoryNode,
    ) -> super::Result<String> {
        let t = self.directory(node).await?;
        let path = t.path.clone();
        let d = self
            .in_view(t.snapshot.clone(), move |root, _| {
                let rel = Path::new(path.trim_start_matches('/'));
                let dir = fsops::open_dir_in_root(root, rel).map_err(|e| io_error(&path, e))?;
                tree_digest(dir.as_fd()).map_err(|e| io_error(&path, e))
            })
            .await?;
        Ok(d.to_string())
    }

    /// `File.digest(excludeMetadata)`.
    pub async fn file_digest(
        &self,
        node: &super::node::FileNode,
        exclude_metadata: bool,
    ) -> super::Result<String> {
        let t = self.file(node).await?;
        let path = t.path.clone();
        let d = self
            .in_view(t.snapshot.clone(), move |_, dir| {
                let f = Root::open(dir)
                    .and_then(|r| r.open_file(&path))
                    .map_err(|e| io_error(&path, e))?;
                file_digest(&f, !exclude_metadata).map_err(|e| io_error(&path, e))
            })
            .await?;
        Ok(d.to_string())
    }

    /// Runs `f` on a read-only view of `snapshot` (its root fd and path), on a blocking thread.
    async fn in_view<T, F>(&self, snapshot: Option<SnapshotId>, f: F) -> super::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(BorrowedFd<'_>, &Path) -> Result<T, FsError> + Send + 'static,
    {
        let snapshots = self.snapshotter().clone();
        let out = tokio::task::spawn_blocking(move || -> Result<T, FsError> {
            let view = snapshots.view(snapshot.as_ref())?;
            let root = fsops::open_dir(view.root()).map_err(|e| io_error("/", e))?;
            f(root.as_fd(), view.root())
        })
        .await
        .map_err(|e| super::SolveError::Internal(e.to_string()))??;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn digest(p: &Path) -> Digest {
        let fd = fsops::open_dir(p).unwrap();
        tree_digest(fd.as_fd()).unwrap()
    }

    fn build(root: &Path, reversed: bool) {
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| std::fs::create_dir_all(root.join("a/b")).unwrap()),
            Box::new(|| std::fs::write(root.join("top.txt"), "top").unwrap()),
            Box::new(|| symlink("/etc/passwd", root.join("link")).unwrap()),
        ];
        if reversed {
            steps.reverse();
        }
        for s in steps {
            s();
        }
        std::fs::write(root.join("a/b/deep"), "deep").unwrap();
    }

    #[test]
    fn tree_digest_is_deterministic_and_ignores_times_and_order() {
        let t = tempfile::tempdir().unwrap();
        let (x, y) = (t.path().join("x"), t.path().join("y"));
        std::fs::create_dir(&x).unwrap();
        std::fs::create_dir(&y).unwrap();
        build(&x, false);
        std::thread::sleep(std::time::Duration::from_millis(20));
        build(&y, true);
        assert_eq!(digest(&x), digest(&y));
        // The root's own mode does not count; a child's does.
        std::fs::set_permissions(&y, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(digest(&x), digest(&y));
        std::fs::set_permissions(y.join("top.txt"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let changed_mode = digest(&y);
        assert_ne!(digest(&x), changed_mode);
        let x_mode = std::fs::metadata(x.join("top.txt")).unwrap().permissions();
        std::fs::set_permissions(y.join("top.txt"), x_mode).unwrap();
        assert_eq!(digest(&x), digest(&y));

        std::fs::write(y.join("a/b/deep"), "DEEP").unwrap();
        assert_ne!(digest(&x), digest(&y), "content counts");
        std::fs::write(y.join("a/b/deep"), "deep").unwrap();
        std::fs::remove_file(y.join("link")).unwrap();
        symlink("/etc/group", y.join("link")).unwrap();
        assert_ne!(digest(&x), digest(&y), "symlink targets count");
        std::fs::remove_file(y.join("link")).unwrap();
        symlink("/etc/passwd", y.join("link")).unwrap();
        assert_eq!(digest(&x), digest(&y));
        std::fs::rename(y.join("a/b/deep"), y.join("a/deep")).unwrap();
        assert_ne!(digest(&x), digest(&y), "paths count");
    }

    #[test]
    fn file_digest_without_metadata_is_sha256_of_the_bytes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, "hello world").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(file_digest(&f, false).unwrap(), Digest::of(b"hello world"));
        let with = file_digest(&File::open(&p).unwrap(), true).unwrap();
        assert_ne!(with, Digest::of(b"hello world"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = File::open(&p).unwrap();
        assert_ne!(file_digest(&f, true).unwrap(), with);
        let f = File::open(&p).unwrap();
        assert_eq!(file_digest(&f, false).unwrap(), Digest::of(b"hello world"));
    }
}
