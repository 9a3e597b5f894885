//! Snapshotter: filesystem layers as directories under `<state>/snapshots`, in two flavours.
//!
//! * **overlayfs**: each snapshot directory holds only its own changes (`fs/`); a view of a
//!   snapshot stacks it on its ancestors with an overlay mount. Layer apply writes overlay
//!   whiteouts into a fresh `fs/`.
//! * **native** (the fallback when the state directory cannot host overlay upper dirs): each
//!   snapshot's `fs/` is a full copy of its parent plus its changes. Slow and disk-hungry, but
//!   it works anywhere.
//!
//! A snapshot is built in `new-<random>/` and renamed to its id in the same metadata
//! transaction that records it, so a crash leaves either nothing or a recorded, complete
//! snapshot; start-up cleanup removes the rest.

use crate::archive::WhiteoutMode;
use crate::error::{Classify, ErrorKind};
use crate::metadata::{Metadata, MetadataError, SnapshotKind as RowKind, SnapshotState};
use crate::oci::Digest;
use crate::sys::mount::{mount, unmount_detach, MountSpec};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

pub mod usage;

pub use usage::{Pin, Usage};

pub type SnapshotId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Overlay,
    Native,
}

impl SnapshotKind {
    fn row_kind(self) -> RowKind {
        match self {
            SnapshotKind::Overlay => RowKind::Overlay,
            SnapshotKind::Native => RowKind::Native,
        }
    }
}

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot {0} not found")]
    NotFound(SnapshotId),
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("copying snapshot {from} for the native snapshotter failed: {detail}")]
    Copy { from: PathBuf, detail: String },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

impl Classify for SnapshotError {
    fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::NotFound(_) => ErrorKind::NotFound,
            SnapshotError::Io { .. } | SnapshotError::Copy { .. } => ErrorKind::Internal,
            SnapshotError::Metadata(e) => e.kind(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A snapshot being built. Dropping it without committing removes its directory.
pub struct Active {
    dir: PathBuf,
    parent: Option<SnapshotId>,
    whiteouts: WhiteoutMode,
    committed: bool,
    /// The parent's layers are this snapshot's lowers (or its copy source) until it is gone.
    _parent_pin: Option<Pin>,
}

impl Active {
    /// Where the layer's files go.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }

    /// How layer apply must treat whiteouts in this snapshot.
    pub fn whiteout_mode(&self) -> WhiteoutMode {
        self.whiteouts.clone()
    }

    pub fn parent(&self) -> Option<&SnapshotId> {
        self.parent.as_ref()
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A read-only view of a snapshot's full tree. Unmounted and removed when dropped.
pub struct View {
    root: PathBuf,
    mounted: bool,
    _pin: Option<Pin>,
}

impl View {
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount_detach(&self.root) {
                tracing::warn!("cannot unmount view {}: {e}", self.root.display());
                return; // never remove a directory that may still show snapshot contents
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[derive(Clone)]
pub struct Snapshotter {
    kind: SnapshotKind,
    dir: PathBuf,
    tmp: PathBuf,
    meta: Metadata,
    usage: Usage,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other call in this process (or an earlier run) will pick.
fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}{:x}-{}-{n}", t, std::process::id())
}

impl Snapshotter {
    pub fn new(
        kind: SnapshotKind,
        snapshots_dir: PathBuf,
        tmp_dir: PathBuf,
        meta: Metadata,
    ) -> Self {
        Snapshotter {
            kind,
            dir: snapshots_dir,
            tmp: tmp_dir,
            meta,
            usage: Usage::new(),
        }
    }

    /// What the garbage collector must leave alone; shared by every clone of this snapshotter.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Where committed snapshots live (`<dir>/<id>`).
    pub fn snapshots_dir(&self) -> &Path {
        &self.dir
    }

    /// Marks `id` as obtained by the running operation, then reports whether it still exists.
    /// In that order, a snapshot that passes cannot be collected while the operation runs
    /// (see [`usage`]).
    pub fn claim(&self, id: &str) -> Result<bool, SnapshotError> {
        self.usage.touch([id]);
        Ok(self.meta.get_snapshot(id)?.is_some())
    }

    /// Records what made snapshot `id` (a GC record type and a description) for cache
    /// listings. Best effort: a snapshot that is already gone is not an error.
    pub fn label(
        &self,
        id: &str,
        record_type: &str,
        description: &str,
    ) -> Result<(), SnapshotError> {
        Ok(self.meta.label_snapshot(id, record_type, description)?)
    }

    /// Removes the directory of a snapshot whose row is already gone: renamed to `tmp-*` first
    /// (a name the start-up check always treats as debris), so a crash halfway through leaves
    /// nothing that looks like a snapshot.
    pub fn remove_dir(&self, id: &str) -> Result<(), SnapshotError> {
        crate::metadata::validate_snapshot_id(id)?;
        let from = self.path_of(id);
        let trash = self.dir.join(unique("tmp-gc-"));
        match std::fs::rename(&from, &trash) {
            Ok(()) => std::fs::remove_dir_all(&trash).map_err(io_err(&trash)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&from)(e)),
        }
    }

    pub fn kind(&self) -> SnapshotKind {
        self.kind
    }

    /// Scratch space on the same filesystem (views, exec roots, secret tmpfs mounts).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The committed snapshot for an image layer chain, if it was built before.
    pub fn by_chain_id(&self, chain_id: &Digest) -> Result<Option<SnapshotId>, SnapshotError> {
        match self.meta.snapshot_by_chain_id(chain_id)? {
            Some(s) if self.claim(&s.id)? => Ok(Some(s.id)),
            _ => Ok(None),
        }
    }

    /// Starts a snapshot on top of `parent`.
    pub fn prepare(&self, parent: Option<&SnapshotId>) -> Result<Active, SnapshotError> {
        // Pinned before its rows are read (by `lowers`), so it cannot vanish after the check.
        let parent_pin = parent.map(|p| self.usage.pin(p));
        let dir = self.dir.join(unique("new-"));
        let fs = dir.join("fs");
        let whiteouts = match (self.kind, parent) {
            (SnapshotKind::Overlay, _) => {
                std::fs::create_dir_all(&fs).map_err(io_err(&fs))?;
                let lowers = match parent {
                    Some(p) => self.lowers(p)?,
                    None => Vec::new(),
                };
                WhiteoutMode::Overlay { lowers }
            }
            (SnapshotKind::Native, None) => {
                std::fs::create_dir_all(&fs).map_err(io_err(&fs))?;
                WhiteoutMode::Apply
            }
            (SnapshotKind::Native, Some(p)) => {
                let from = self.path_of(p).join("fs");
                if self.meta.get_snapshot(p)?.is_none() || !from.is_dir() {
                    return Err(SnapshotError::NotFound(p.clone()));
                }
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                copy_tree(&from, &fs).inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&dir);
                })?;
                WhiteoutMode::Apply
            }
        };
        Ok(Active {
            dir,
            parent: parent.cloned(),
            whiteouts,
            committed: false,
            _parent_pin: parent_pin,
        })
    }

    /// Records `active` as a committed snapshot: the directory is renamed to its id inside the
    /// metadata transaction that inserts its row. If another pull committed the same layer
    /// chain first, that snapshot is returned and this copy is discarded.
    pub fn commit(
        &self,
        mut active: Active,
        chain_id: Option<&Digest>,
        diff_id: Option<&Digest>,
        size: u64,
    ) -> Result<SnapshotId, SnapshotError> {
        let id = unique("");
        // Stamped before the row exists: the operation that builds it keeps it.
        self.usage.touch([id.as_str()]);
        let final_dir = self.path_of(&id);
        let from = active.dir.clone();
        let result = self.meta.with_tx(|tx| -> Result<(), SnapshotError> {
            if let Some(chain) = chain_id {
                if tx.snapshot_by_chain_id(chain)?.is_some() {
                    return Err(SnapshotError::Metadata(MetadataError::AlreadyExists {
                        what: format!("snapshot for chain {chain}"),
                    }));
                }
            }
            tx.insert_snapshot(
                &id,
                active.parent.as_deref(),
                self.kind.row_kind(),
                SnapshotState::Committed,
                chain_id,
                diff_id,
                size,
            )?;
            std::fs::rename(&from, &final_dir).map_err(io_err(&final_dir))?;
            Ok(())
        });
        match result {
            Ok(()) => {
                active.committed = true;
                Ok(id)
            }
            Err(SnapshotError::Metadata(MetadataError::AlreadyExists { .. }))
                if chain_id.is_some() =>
            {
                let chain = chain_id.expect("checked");
                self.by_chain_id(chain)?
                    .ok_or_else(|| SnapshotError::NotFound(chain.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// The `fs/` directories that make up a snapshot, top-most first.
    pub fn lowers(&self, id: &SnapshotId) -> Result<Vec<PathBuf>, SnapshotError> {
        if self.kind == SnapshotKind::Native {
            // Ids can arrive from clients inside object IDs: only a recorded one names a path.
            return match self.meta.get_snapshot(id)? {
                Some(row) => Ok(vec![self.path_of(&row.id).join("fs")]),
                None => Err(SnapshotError::NotFound(id.clone())),
            };
        }
        let mut out = Vec::new();
        let mut next = Some(id.clone());
        while let Some(cur) = next {
            let row = self
                .meta
                .get_snapshot(&cur)?
                .ok_or_else(|| SnapshotError::NotFound(cur.clone()))?;
            out.push(self.path_of(&row.id).join("fs"));
            next = row.parent;
        }
        Ok(out)
    }

    /// A read-only view of the full tree of `id` (an empty tree for `None`).
    pub fn view(&self, id: Option<&SnapshotId>) -> Result<View, SnapshotError> {
        let target = self.tmp.join(unique("view-"));
        std::fs::create_dir_all(&target).map_err(io_err(&target))?;
        let Some(id) = id else {
            // An empty directory is the empty tree; nothing to mount.
            return Ok(View {
                root: target,
                mounted: false,
                _pin: None,
            });
        };
        let pin = self.usage.pin(id);
        let lowers = match self.lowers(id) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&target);
                return Err(e);
            }
        };
        let spec = if lowers.len() == 1 {
            MountSpec::BindReadOnly(lowers[0].clone())
        } else {
            MountSpec::Overlay {
                lowers,
                upper: None,
            }
        };
        if let Err(e) = mount(&spec, &target) {
            let _ = std::fs::remove_dir(&target);
            return Err(SnapshotError::Io {
                path: target,
                source: e,
            });
        }
        Ok(View {
            root: target,
            mounted: true,
            _pin: Some(pin),
        })
    }
}

/// A writable root filesystem for one exec: an overlay of the parent's layers under a new
/// upper directory, or (native) a copy of the parent. Committing turns the changes into a
/// snapshot; dropping discards them.
pub struct ExecRoot {
    active: Active,
    root: PathBuf,
    mounted: bool,
}

impl ExecRoot {
    /// The merged tree the process sees as `/`.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn unmount(&mut self) -> Result<(), SnapshotError> {
        if self.mounted {
            unmount_detach(&self.root).map_err(io_err(&self.root))?;
            self.mounted = false;
            let _ = std::fs::remove_dir(&self.root);
        }
        Ok(())
    }
}

impl Drop for ExecRoot {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("cannot unmount exec root {}: {e}", self.root.display());
        }
    }
}

impl Snapshotter {
    /// Prepares a writable root on top of `parent` for one exec.
    pub fn prepare_exec(&self, parent: Option<&SnapshotId>) -> Result<ExecRoot, SnapshotError> {
        let active = self.prepare(parent)?;
        if self.kind == SnapshotKind::Native {
            let root = active.fs();
            return Ok(ExecRoot {
                active,
                root,
                mounted: false,
            });
        }
        let work = active.dir.join("work");
        std::fs::create_dir_all(&work).map_err(io_err(&work))?;
        let mut lowers = match parent {
            Some(p) => self.lowers(p)?,
            None => Vec::new(),
        };
        if lowers.is_empty() {
            // Overlay needs at least one lower directory; an empty one stands for scratch.
            let empty = active.dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(io_err(&empty))?;
            lowers.push(empty);
        }
        let root = self.tmp.join(unique("exec-"));
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        let spec = MountSpec::Overlay {
            lowers,
            upper: Some((active.fs(), work)),
        };
        if let Err(e) = mount(&spec, &root) {
            let _ = std::fs::remove_dir(&root);
            return Err(SnapshotError::Io {
                path: root,
                source: e,
            });
        }
        Ok(ExecRoot {
            active,
            root,
            mounted: true,
        })
    }

    /// Records what the exec changed as a committed snapshot on top of its parent.
    pub fn commit_exec(&self, mut exec: ExecRoot) -> Result<SnapshotId, SnapshotError> {
        exec.unmount()?;
        let dir = exec.active.dir.clone();
        // The overlay work dir and the scratch lower are mount plumbing, not content.
        for aux in ["work", "empty"] {
            let p = dir.join(aux);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
            }
        }
        let size = dir_size(&exec.active.fs());
        // Move the active snapshot out; ExecRoot's Drop then has nothing left to do.
        let active = std::mem::replace(
            &mut exec.active,
            Active {
                dir: PathBuf::new(),
                parent: None,
                whiteouts: WhiteoutMode::Apply,
                committed: true,
                _parent_pin: None,
            },
        );
        self.commit(active, None, None, size)
    }
}

/// Bytes in regular files below `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Full copy for the native snapshotter. `cp -a` preserves hardlinks, ownership, modes, times,
/// xattrs and device nodes exactly, which a hand-written copy would have to re-implement.
fn copy_tree(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| SnapshotError::Copy {
            from: from.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SnapshotError::Copy {
            from: from.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
