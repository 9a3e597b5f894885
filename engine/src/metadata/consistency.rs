//! The startup reconciliation of rows with the files they describe (containerd's snapshotter
//! `Cleanup()` plus the content-store half of it).
//!
//! Rows are removed here, in one transaction, because a row that points at nothing is a lie
//! every later layer would trip over. Files are only reported: deleting data is the caller's
//! decision (it may adopt an orphan blob instead, or must unmount before deleting a directory).

use super::{validate_snapshot_id, Metadata, MetadataError, Result, SnapshotState};
use crate::oci::Digest;
use rusqlite::TransactionBehavior;
use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// What [`Metadata::check_consistency`] changed and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyReport {
    /// Blob rows removed because `blobs_dir/<hex>` is missing.
    pub removed_blobs: Vec<Digest>,
    /// Images `(name, platform)` removed because their manifest or config blob is missing.
    pub removed_images: Vec<(String, String)>,
    /// Snapshot rows removed: active ones (left by a crash), ones whose directory is missing,
    /// and the descendants of both.
    pub removed_snapshots: Vec<String>,
    /// Files under `blobs_dir` with no row: committed by the content store just before a crash
    /// (adopt or delete them), or debris whose name is not a digest.
    pub orphan_blobs: Vec<PathBuf>,
    /// Entries under `snapshots_dir` with no row, including every `new-*`/`tmp-*` (a snapshot
    /// under construction when the engine stopped) and the directories of removed rows.
    pub orphan_dirs: Vec<PathBuf>,
}

impl ConsistencyReport {
    /// Whether nothing was removed or found.
    pub fn is_clean(&self) -> bool {
        *self == ConsistencyReport::default()
    }
}

impl Metadata {
    /// Reconciles the database with `blobs_dir` (the content store's `blobs/sha256`) and
    /// `snapshots_dir` (snapshot `<id>` directories). Run it at startup, before anything
    /// writes: an active snapshot is assumed to be left over from a crash. Both directories
    /// must exist (a missing one is more likely a wrong path than a store that lost everything).
    pub fn check_consistency(
        &self,
        blobs_dir: &Path,
        snapshots_dir: &Path,
    ) -> Result<ConsistencyReport> {
        let blob_files = list_dir(blobs_dir)?;
        let snapshot_entries = list_dir(snapshots_dir)?;
        let mut report = ConsistencyReport::default();

        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;

        // Blob rows whose file is missing.
        let mut known_blobs = HashSet::new();
        let rows: Vec<String> = {
            let mut stmt = tx.prepare("SELECT digest FROM blobs")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for text in rows {
            match present_blob(blobs_dir, &text)? {
                Some(d) => {
                    known_blobs.insert(d.hex().to_string());
                }
                None => {
                    tx.execute("DELETE FROM blobs WHERE digest = ?1", [&text])?;
                    if let Ok(d) = Digest::parse(&text) {
                        report.removed_blobs.push(d);
                    }
                }
            }
        }

        // Images whose manifest or config is gone can't be used; the next pull recreates them.
        let images: Vec<(String, String, String, String)> = {
            let mut stmt =
                tx.prepare("SELECT name, platform, manifest_digest, config_digest FROM images")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (name, platform, manifest, config) in images {
            let mut usable = true;
            for text in [&manifest, &config] {
                usable &= present_blob(blobs_dir, text)?.is_some();
            }
            if !usable {
                tx.execute(
                    "DELETE FROM images WHERE name = ?1 AND platform = ?2",
                    [&name, &platform],
                )?;
                report.removed_images.push((name, platform));
            }
        }

        // Snapshots: active ones and ones without a directory go, with their descendants.
        let snapshots: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT id, state FROM snapshots")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut doomed = Vec::new();
        for (id, state) in &snapshots {
            let active = state != SnapshotState::Committed.as_str();
            // An invalid id (a hand-edited row) is never joined to a path.
            if active
                || validate_snapshot_id(id).is_err()
                || !is_kind(&snapshots_dir.join(id), true)?
            {
                doomed.push(id.clone());
            }
        }
        let mut removed = HashSet::new();
        for id in doomed {
            if removed.contains(&id) {
                continue; // already gone as a descendant
            }
            let subtree: Vec<String> = {
                let mut stmt = tx.prepare_cached(
                    "WITH RECURSIVE subtree(id) AS (
                         SELECT ?1
                         UNION SELECT s.id FROM snapshots s JOIN subtree t ON s.parent = t.id
                     )
                     SELECT id FROM subtree",
                )?;
                let rows = stmt.query_map([&id], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            // Cached results that point into the subtree go first (their foreign key would
            // refuse the delete); the solver recomputes them.
            tx.execute(
                "WITH RECURSIVE subtree(id) AS (
                     SELECT ?1
                     UNION SELECT s.id FROM snapshots s JOIN subtree t ON s.parent = t.id
                 )
                 DELETE FROM results WHERE snapshot IN (SELECT id FROM subtree)",
                [&id],
            )?;
            // One statement, so the parent/child foreign key is checked only once the whole
            // subtree is gone.
            tx.execute(
                "WITH RECURSIVE subtree(id) AS (
                     SELECT ?1
                     UNION SELECT s.id FROM snapshots s JOIN subtree t ON s.parent = t.id
                 )
                 DELETE FROM snapshots WHERE id IN (SELECT id FROM subtree)",
                [&id],
            )?;
            for s in subtree {
                if removed.insert(s.clone()) {
                    report.removed_snapshots.push(s);
                }
            }
        }

        tx.commit()?;
        drop(conn);

        // Orphans, against the rows that survived.
        for name in blob_files {
            if !name.to_str().is_some_and(|n| known_blobs.contains(n)) {
                report.orphan_blobs.push(blobs_dir.join(&name));
            }
        }
        let live: HashSet<&str> = snapshots
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !removed.contains(*id))
            .collect();
        for name in snapshot_entries {
            // new-*/tmp-* can never be rows (validate_snapshot_id), so they are always orphans.
            if !name.to_str().is_some_and(|n| live.contains(n)) {
                report.orphan_dirs.push(snapshots_dir.join(&name));
            }
        }
        report.removed_blobs.sort();
        report.removed_snapshots.sort();
        report.orphan_blobs.sort();
        report.orphan_dirs.sort();

        if !report.is_clean() {
            tracing::warn!(
                "metadata consistency check: removed {} blob rows, {} images, {} snapshots; \
                 found {} orphan blobs and {} orphan snapshot directories",
                report.removed_blobs.len(),
                report.removed_images.len(),
                report.removed_snapshots.len(),
                report.orphan_blobs.len(),
                report.orphan_dirs.len()
            );
        }
        Ok(report)
    }
}

/// Entry names in `dir`.
fn list_dir(dir: &Path) -> Result<Vec<OsString>> {
    let io_err = |source| MetadataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        names.push(entry.map_err(io_err)?.file_name());
    }
    Ok(names)
}

/// The digest `text` names when its blob is a regular file in `blobs_dir`; `None` when it is
/// missing or `text` is not a digest (an unusable row).
fn present_blob(blobs_dir: &Path, text: &str) -> Result<Option<Digest>> {
    match Digest::parse(text) {
        Ok(d) => Ok(is_kind(&blobs_dir.join(d.hex()), false)?.then_some(d)),
        Err(_) => Ok(None),
    }
}

/// Whether `path` exists as a directory (`dir`) or a regular file. Errors other than "not
/// there" are returned, never taken as absence: a transient EACCES or EIO must not delete rows.
fn is_kind(path: &Path, dir: bool) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(if dir { m.is_dir() } else { m.is_file() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(MetadataError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
