//! The ingest writer: appends to `ingest/<hex>/data`, hashing as it goes, and commits by
//! verifying and renaming into `blobs/`.

use super::{io_err, ContentError, ContentStore, DATA_FILE};
use crate::oci::{Digest, Hasher};
use crate::sys;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Writes one blob. Holds the per-digest lock until committed or dropped; dropping without
/// committing keeps the data written so far for a later [`ContentStore::writer`] to resume.
pub struct IngestWriter {
    store: ContentStore,
    digest: Digest,
    expected_size: u64,
    dir: PathBuf,
    data_path: PathBuf,
    file: File,
    hasher: Hasher,
    offset: u64,
    /// Set when a write would have passed `expected_size`: the source is not what the
    /// descriptor promised, so the commit must fail even if later writes are never attempted.
    overflow: Option<u64>,
    _lock: sys::ExclusiveLock,
}

impl std::fmt::Debug for IngestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestWriter")
            .field("digest", &self.digest)
            .field("expected_size", &self.expected_size)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl IngestWriter {
    pub(super) fn open(
        store: ContentStore,
        digest: Digest,
        expected_size: u64,
        dir: PathBuf,
        lock: sys::ExclusiveLock,
    ) -> Result<Self, ContentError> {
        let data_path = dir.join(DATA_FILE);
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&data_path)
        };
        let mut file = match open() {
            // A crash between commit's chmod and its rename leaves a read-only ingest (which
            // only matters when not running as root).
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                std::fs::set_permissions(&data_path, std::fs::Permissions::from_mode(0o644))
                    .and_then(|()| open())
            }
            other => other,
        }
        .map_err(io_err(&data_path))?;
        let mut hasher = Hasher::new();
        let mut offset = 0u64;
        let existing = file.metadata().map_err(io_err(&data_path))?.len();
        if existing > expected_size {
            // Not a prefix of this blob (a corrupt ingest): start over.
            file.set_len(0).map_err(io_err(&data_path))?;
        } else if existing > 0 {
            // Resume: the hash state isn't persisted, so re-hash the prefix on disk.
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(&data_path)(e)),
                };
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            tracing::debug!(
                "content store: resuming ingest of {digest} at {offset} of {expected_size} bytes"
            );
        }
        // Writes continue exactly where the hashed prefix ends.
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err(&data_path))?;
        Ok(IngestWriter {
            store,
            digest,
            expected_size,
            dir,
            data_path,
            file,
            hasher,
            offset,
            overflow: None,
            _lock: lock,
        })
    }

    /// The digest being written.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes already written (after a resume, what is on disk): where an HTTP Range request
    /// should start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// `write_all` with the store's error type: a write past the expected size is
    /// `SizeMismatch`, anything else `Io`.
    pub fn write_chunk(&mut self, buf: &[u8]) -> Result<(), ContentError> {
        self.write_all(buf).map_err(|e| match self.overflow {
            Some(seen) => self.size_mismatch(seen),
            None => io_err(&self.data_path)(e),
        })
    }

    /// Discards what was written and restarts from 0 (a server ignored the Range request).
    pub fn truncate(&mut self) -> Result<(), ContentError> {
        self.file.set_len(0).map_err(io_err(&self.data_path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.data_path))?;
        self.hasher = Hasher::new();
        self.offset = 0;
        self.overflow = None;
        Ok(())
    }

    /// Verifies and publishes the blob: size check → digest check (the hash was computed as the
    /// bytes were written) → mode 0444 → fsync → rename into `blobs/` → fsync `blobs/`. On any
    /// mismatch the ingest is removed and nothing becomes visible. Returns the blob's size.
    ///
    /// Unlike containerd, the chmod comes before the rename, so a visible blob is never
    /// writable, and one fsync covers both the data and the mode.
    pub fn commit(mut self) -> Result<u64, ContentError> {
        if let Some(actual) = self.overflow {
            return Err(self.discard(self.size_mismatch(actual)));
        }
        self.file.flush().map_err(io_err(&self.data_path))?;
        let on_disk = self.file.metadata().map_err(io_err(&self.data_path))?.len();
        if self.offset != self.expected_size || on_disk != self.offset {
            return Err(self.discard(self.size_mismatch(on_disk.max(self.offset))));
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.digest {
            let err = ContentError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            };
            return Err(self.discard(err));
        }
        let target = self.store.blob_path(&self.digest);
        if target.exists() {
            // Unreachable through this API (the lock and the check in `writer`), but never
            // replace a committed blob.
            let err = ContentError::AlreadyExists {
                digest: self.digest.clone(),
            };
            return Err(self.discard(err));
        }
        let publish = || -> Result<(), ContentError> {
            self.file
                .set_permissions(std::fs::Permissions::from_mode(0o444))
                .map_err(io_err(&self.data_path))?;
            // Durable before visible: after a power loss either the rename is lost (and the
            // complete ingest resumes and verifies again) or the blob is whole.
            self.file.sync_all().map_err(io_err(&self.data_path))?;
            std::fs::rename(&self.data_path, &target).map_err(io_err(&target))
        };
        if let Err(e) = publish() {
            // Keep the ingest resumable (writable) for the next attempt.
            let _ = self
                .file
                .set_permissions(std::fs::Permissions::from_mode(0o644));
            return Err(e);
        }
        let blobs_dir = &self.store.inner.blobs_dir;
        File::open(blobs_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(blobs_dir))?;
        // The blob is durable; a failure to clean up leaves an ingest the next writer() or
        // clean_stale_ingests removes.
        if let Err(e) = self.store.remove_ingest_locked(&self.dir) {
            tracing::warn!("content store: {e}");
        }
        Ok(self.expected_size)
    }

    fn size_mismatch(&self, actual: u64) -> ContentError {
        ContentError::SizeMismatch {
            digest: self.digest.clone(),
            expected: self.expected_size,
            actual,
        }
    }

    /// Removes this ingest (we hold its lock) after a failed verification and returns `err`,
    /// which matters more to the caller than a failure to clean up.
    fn discard(&self, err: ContentError) -> ContentError {
        if let Err(e) = self.store.remove_ingest_locked(&self.dir) {
            tracing::warn!("content store: cannot remove a failed ingest: {e}");
        }
        err
    }
}

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = self.offset.saturating_add(buf.len() as u64);
        if self.overflow.is_some() || end > self.expected_size {
            // Refuse outright: a hostile registry must not be able to fill the disk.
            let seen = end.max(self.overflow.unwrap_or(0));
            self.overflow = Some(seen);
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                self.size_mismatch(seen),
            ));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
