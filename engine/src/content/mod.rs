//! Content store: blobs by digest under `content/`, written through a verified ingest.
//!
//! The layout follows containerd's local store:
//!
//! - `blobs/sha256/<hex>`: committed blobs, read-only (0444). A file only ever appears here
//!   through `rename` of a fully written, fsynced and verified ingest, so anything under
//!   `blobs/` is complete and matches its name.
//! - `ingest/<hex>/{lock,data}`: one in-progress download per digest. `data` survives a crash or
//!   a dropped writer so the download can resume with an HTTP Range request from
//!   [`IngestWriter::offset`]. `lock` carries an `flock`, which makes "one writer per digest"
//!   hold across processes as well as threads.
//! - `ingest/.trash-*`: an ingest being removed. Removal renames the whole ingest directory away
//!   first (while holding its lock), so a racing writer that opened the old lock file can tell,
//!   after locking, that its lock no longer guards the live ingest (see [`lock_ingest`]).
//!
//! All methods block on disk I/O; async callers run them in `spawn_blocking` (or write small
//! chunks).

mod writer;

#[cfg(test)]
mod tests;

pub use writer::IngestWriter;

use crate::error::{Classify, ErrorKind};
use crate::oci::Digest;
use crate::sys;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;

const LOCK_FILE: &str = "lock";
const DATA_FILE: &str = "data";
const TRASH_PREFIX: &str = ".trash-";

#[derive(Debug, Error)]
pub enum ContentError {
    #[error("content {digest} not found")]
    NotFound { digest: Digest },
    #[error("content {digest} already exists")]
    AlreadyExists { digest: Digest },
    #[error("content {digest} is being written by another writer; try again later")]
    Busy { digest: Digest },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// `actual` is a lower bound when the writer refused a write past the expected size.
    #[error("content {digest} size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("content {digest} is {size} bytes, more than the {max} allowed here")]
    TooLarge { digest: Digest, size: u64, max: u64 },
    #[error("content store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classify for ContentError {
    fn kind(&self) -> ErrorKind {
        match self {
            ContentError::NotFound { .. } => ErrorKind::NotFound,
            ContentError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            ContentError::Busy { .. } => ErrorKind::Unavailable,
            // containerd reports these as FailedPrecondition; we have no such kind, and the
            // cause is bad input (a descriptor or a registry that does not match its content).
            ContentError::DigestMismatch { .. }
            | ContentError::SizeMismatch { .. }
            | ContentError::TooLarge { .. } => ErrorKind::InvalidArgument,
            // Like `StateError::Io`: disk full, EIO and friends are environmental.
            ContentError::Io { .. } => ErrorKind::Unavailable,
        }
    }
}

/// Adds the path to an `io::Error`.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A content store rooted at a blobs directory and an ingest directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    blobs_dir: PathBuf,
    ingest_dir: PathBuf,
    /// Makes trash names unique within the process (the pid makes them unique across).
    trash_seq: AtomicU64,
}

impl ContentStore {
    /// Opens (creating the directories if needed) a store with blobs at `blobs_dir/<hex>` and
    /// ingests under `ingest_dir`. Cleans nothing up: see [`ContentStore::clean_stale_ingests`].
    pub fn open(blobs_dir: PathBuf, ingest_dir: PathBuf) -> Result<Self, ContentError> {
        for dir in [&blobs_dir, &ingest_dir] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        Ok(ContentStore {
            inner: Arc::new(Inner {
                blobs_dir,
                ingest_dir,
                trash_seq: AtomicU64::new(0),
            }),
        })
    }

    /// Where the committed blob for `d` lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        // `Digest` guarantees 64 lowercase hex characters: a safe single path component.
        self.inner.blobs_dir.join(d.hex())
    }

    fn ingest_path(&self, d: &Digest) -> PathBuf {
        self.inner.ingest_dir.join(d.hex())
    }

    /// The size of the committed blob `d`, or `None` if it is not committed.
    pub fn info(&self, d: &Digest) -> Option<u64> {
        std::fs::symlink_metadata(self.blob_path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Opens the committed blob `d` for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File, ContentError> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound { digest: d.clone() },
            _ => ContentError::Io { path, source: e },
        })
    }

    /// Reads a whole blob that must not exceed `max` bytes (manifests, indexes, configs), so a
    /// hostile or corrupt blob can't make us buffer gigabytes.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, ContentError> {
        let path = self.blob_path(d);
        let file = self.open_blob(d)?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        if size > max {
            return Err(ContentError::TooLarge {
                digest: d.clone(),
                size,
                max,
            });
        }
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // `take` guards against the file growing after the size check (it should be read-only).
        file.take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(io_err(&path))?;
        if buf.len() as u64 > max {
            return Err(ContentError::TooLarge {
                digest: d.clone(),
                size: buf.len() as u64,
                max,
            });
        }
        Ok(buf)
    }

    /// Starts or resumes the ingest of `expected` (`expected_size` bytes, from a descriptor).
    ///
    /// Errors: `AlreadyExists` if the blob is committed (a leftover ingest for it is removed
    /// unless a writer holds it),
    /// `Busy` if another writer, in this process or another, holds this digest.
    pub fn writer(
        &self,
        expected: &Digest,
        expected_size: u64,
    ) -> Result<IngestWriter, ContentError> {
        let exists = || ContentError::AlreadyExists {
            digest: expected.clone(),
        };
        let dir = self.ingest_path(expected);
        if self.info(expected).is_some() {
            // A crash between the rename and the ingest's removal leaves one behind.
            if dir.exists() {
                if let Some(_lock) = lock_ingest(&dir, false)? {
                    self.remove_ingest_locked(&dir)?;
                }
            }
            return Err(exists());
        }
        let lock = lock_ingest(&dir, true)?.ok_or_else(|| ContentError::Busy {
            digest: expected.clone(),
        })?;
        // Another writer may have committed between the check above and taking the lock; the
        // committed blob is visible before its writer lets the lock go, so this check is final.
        if self.info(expected).is_some() {
            self.remove_ingest_locked(&dir)?;
            return Err(exists());
        }
        IngestWriter::open(self.clone(), expected.clone(), expected_size, dir, lock)
    }

    /// Deletes the committed blob `d`.
    pub fn delete(&self, d: &Digest) -> Result<(), ContentError> {
        let path = self.blob_path(d);
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound { digest: d.clone() },
            _ => ContentError::Io { path, source: e },
        })
    }

    /// Every committed blob with its size, sorted by digest. Files whose names are not digests
    /// are skipped (nothing of ours creates them).
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let dir = &self.inner.blobs_dir;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            else {
                tracing::debug!(
                    "content store: ignoring {} (not a digest)",
                    entry.path().display()
                );
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Deleted while we listed it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&entry.path())(e)),
            };
            if meta.is_file() {
                out.push((digest, meta.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes ingests that no writer holds and that were last written more than `max_age` ago,
    /// plus any half-removed ingest a crash left behind. Returns how many ingests were removed.
    /// Meant for startup; safe to run while writers are active (held ingests are skipped).
    pub fn clean_stale_ingests(&self, max_age: Duration) -> Result<usize, ContentError> {
        let root = &self.inner.ingest_dir;
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in std::fs::read_dir(root).map_err(io_err(root))? {
            let entry = entry.map_err(io_err(root))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TRASH_PREFIX) {
                // No live writer ever uses a trashed directory (see `lock_ingest`).
                remove_dir_all_quiet(&path)?;
                continue;
            }
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir || Digest::parse(&format!("sha256:{name}")).is_err() {
                tracing::debug!("content store: ignoring {} (not an ingest)", path.display());
                continue;
            }
            let Some(lock) = lock_ingest(&path, false)? else {
                continue; // held by a writer
            };
            if age_of(&path, now) >= max_age {
                self.remove_ingest_locked(&path)?;
                removed += 1;
            }
            drop(lock);
        }
        Ok(removed)
    }

    /// Removes an ingest directory whose lock the caller holds: rename it out of the way first
    /// (atomic, so no writer can ever lock a half-removed ingest), then delete it.
    fn remove_ingest_locked(&self, dir: &Path) -> Result<(), ContentError> {
        let seq = self.inner.trash_seq.fetch_add(1, Ordering::Relaxed);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trash = self
            .inner
            .ingest_dir
            .join(format!("{TRASH_PREFIX}{name}-{}-{seq}", std::process::id()));
        match std::fs::rename(dir, &trash) {
            Ok(()) => remove_dir_all_quiet(&trash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(dir)(e)),
        }
    }
}

fn remove_dir_all_quiet(path: &Path) -> Result<(), ContentError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// How long ago the ingest at `dir` was last written (its data file, else the directory).
fn age_of(dir: &Path, now: SystemTime) -> Duration {
    let modified = std::fs::metadata(dir.join(DATA_FILE))
        .or_else(|_| std::fs::metadata(dir))
        .and_then(|m| m.modified());
    match modified {
        Ok(t) => now.duration_since(t).unwrap_or_default(),
        // Unreadable times: treat as old, the lock already says no one is using it.
        Err(_) => Duration::MAX,
    }
}

/// Takes the per-digest lock of the ingest directory `dir` (creating the directory when
/// `create`). `Ok(None)` means another writer holds it, or (without `create`) that the
/// directory vanished.
///
/// An `flock` guards an inode, not a path: a racer may open `dir/lock` just before a remover
/// renames `dir` away, and lock that dead inode once the remover lets go. So after locking we
/// check that `dir/lock` is still the inode we opened. We keep our own handle open meanwhile so
/// the inode number can't be reused, and since lock files are never renamed back, a match means
/// the file `try_lock_exclusive` opened (between our open and the check) was that inode too.
fn lock_ingest(dir: &Path, create: bool) -> Result<Option<sys::ExclusiveLock>, ContentError> {
    let lock_path = dir.join(LOCK_FILE);
    // A remover renames at most once per attempt; a few retries absorb back-to-back removals.
    for _ in 0..16 {
        if create {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let pinned = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&lock_path)(e)),
        };
        let lock = match sys::try_lock_exclusive(&lock_path) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&lock_path)(e)),
        };
        let pinned_meta = pinned.metadata().map_err(io_err(&lock_path))?;
        match std::fs::metadata(&lock_path) {
            Ok(m) if m.dev() == pinned_meta.dev() && m.ino() == pinned_meta.ino() => {
                return Ok(Some(lock))
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if create {
                    continue;
                }
                return Ok(None);
            }
            Err(e) => return Err(io_err(&lock_path)(e)),
        }
    }
    // Only reachable if the ingest is removed and recreated over and over: someone else is
    // actively working on it.
    Ok(None)
}
