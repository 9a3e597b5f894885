//! The state directory (default `/var/lib/dagger`): its layout, the lock that keeps a second
//! engine out, and the probe of the backing filesystem that picks the snapshotter.

use crate::config::SnapshotterChoice;
use crate::error::{Classify, ErrorKind};
use crate::sys;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const LOCK_FILE: &str = "dagger-engine.lock";

/// Subdirectories the later layers own. Created up front so each layer can rely on them.
const LAYOUT: &[&str] = &[
    "content/blobs/sha256",
    "content/ingest",
    "snapshots",
    "metadata",
    "cachemounts",
    "executor",
    "tmp",
];

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot prepare state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {root} is in use by another dagger-engine (lock {lock} is held); stop that engine or pass a different --root")]
    Locked { root: PathBuf, lock: PathBuf },
    #[error("state directory {root} cannot host overlay snapshots ({reason}), but worker.oci.snapshotter = \"overlayfs\" was requested")]
    OverlayUnavailable { root: PathBuf, reason: String },
}

impl Classify for StateError {
    fn kind(&self) -> ErrorKind {
        match self {
            StateError::Io { .. } => ErrorKind::Unavailable,
            StateError::Locked { .. } => ErrorKind::AlreadyExists,
            StateError::OverlayUnavailable { .. } => ErrorKind::InvalidArgument,
        }
    }
}

/// The snapshotter the engine will use for this state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshotter {
    Overlayfs,
    /// The copying snapshotter, with why overlay could not be used (if it was not chosen).
    Native {
        fallback_reason: Option<String>,
    },
}

/// What the probe of the backing filesystem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFs {
    pub magic: i64,
    pub d_type: bool,
    /// Why overlay upper dirs cannot live here, if they cannot.
    pub overlay_problem: Option<String>,
}

impl BackingFs {
    pub fn probe(dir: &Path) -> std::io::Result<Self> {
        let magic = sys::fs_magic(dir)?;
        let d_type = sys::supports_d_type(dir)?;
        let overlay_problem = if magic == sys::magic::OVERLAYFS {
            Some(format!("{} is itself on overlayfs", dir.display()))
        } else if !d_type {
            Some(format!(
                "the filesystem under {} does not report d_type (an xfs made with ftype=0?)",
                dir.display()
            ))
        } else {
            sys::probe_overlay(dir)
                .err()
                .map(|e| format!("a test overlay mount under {} failed: {e}", dir.display()))
        };
        Ok(BackingFs {
            magic,
            d_type,
            overlay_problem,
        })
    }
}

/// Decides the snapshotter from the configuration and what the probe found. Pure, so the
/// decision is testable without mounting anything.
pub fn choose_snapshotter(
    root: &Path,
    choice: SnapshotterChoice,
    fs: &BackingFs,
) -> Result<Snapshotter, StateError> {
    match (choice, &fs.overlay_problem) {
        (SnapshotterChoice::Native, _) => Ok(Snapshotter::Native {
            fallback_reason: None,
        }),
        (_, None) => Ok(Snapshotter::Overlayfs),
        (SnapshotterChoice::Overlayfs, Some(reason)) => Err(StateError::OverlayUnavailable {
            root: root.to_path_buf(),
            reason: reason.clone(),
        }),
        (SnapshotterChoice::Auto, Some(reason)) => Ok(Snapshotter::Native {
            fallback_reason: Some(reason.clone()),
        }),
    }
}

/// An open, locked state directory.
pub struct StateDir {
    root: PathBuf,
    snapshotter: Snapshotter,
    backing: BackingFs,
    _lock: sys::ExclusiveLock,
}

impl StateDir {
    /// Creates the layout, takes the lock (failing at once if another engine holds it) and
    /// probes the backing filesystem.
    pub fn open(root: &Path, choice: SnapshotterChoice) -> Result<Self, StateError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = sys::try_lock_exclusive(&lock_path)
            .map_err(io_err(&lock_path))?
            .ok_or_else(|| StateError::Locked {
                root: root.to_path_buf(),
                lock: lock_path.clone(),
            })?;
        for sub in LAYOUT {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let snapshots = root.join("snapshots");
        let backing = BackingFs::probe(&snapshots).map_err(io_err(&snapshots))?;
        let snapshotter = choose_snapshotter(root, choice, &backing)?;
        Ok(StateDir {
            root: root.to_path_buf(),
            snapshotter,
            backing,
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn snapshotter(&self) -> &Snapshotter {
        &self.snapshotter
    }

    pub fn backing_fs(&self) -> &BackingFs {
        &self.backing
    }

    /// Verified blobs, `content/blobs/sha256/<hex>`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("content/blobs/sha256")
    }

    /// In-progress downloads; never read as content until verified and renamed.
    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("content/ingest")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.root.join("metadata")
    }

    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.root.join("cachemounts")
    }

    pub fn executor_dir(&self) -> PathBuf {
        self.root.join("executor")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(problem: Option<&str>) -> BackingFs {
        BackingFs {
            magic: sys::magic::EXT4,
            d_type: true,
            overlay_problem: problem.map(String::from),
        }
    }

    #[test]
    fn snapshotter_choice() {
        let root = Path::new("/var/lib/dagger");
        assert_eq!(
            choose_snapshotter(root, SnapshotterChoice::Auto, &fs(None)).unwrap(),
            Snapshotter::Overlayfs
        );
        assert_eq!(
            choose_snapshotter(root, SnapshotterChoice::Auto, &fs(Some("on overlayfs"))).unwrap(),
            Snapshotter::Native {
                fallback_reason: Some("on overlayfs".into())
            }
        );
        assert_eq!(
            choose_snapshotter(root, SnapshotterChoice::Native, &fs(None)).unwrap(),
            Snapshotter::Native {
                fallback_reason: None
            }
        );
        let err = choose_snapshotter(root, SnapshotterChoice::Overlayfs, &fs(Some("no d_type")))
            .unwrap_err();
        assert!(err.to_string().contains("no d_type"), "{err}");
    }

    #[test]
    fn second_open_of_the_same_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path(), SnapshotterChoice::Native).unwrap();
        assert!(first.blobs_dir().is_dir());
        assert!(first.ingest_dir().is_dir());
        match StateDir::open(dir.path(), SnapshotterChoice::Native) {
            Err(StateError::Locked { lock, .. }) => assert!(lock.ends_with(LOCK_FILE)),
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop(first);
        StateDir::open(dir.path(), SnapshotterChoice::Native).unwrap();
    }
}
