//! Cache volumes: directories under `<state>/cachemounts` that persist across execs, queries
//! and restarts, shared between concurrent execs according to their sharing mode.
//!
//! * SHARED: every exec mounts the same directory at the same time.
//! * PRIVATE: an exec gets an instance nobody else is using (creating one if needed).
//! * LOCKED: execs take turns on the same directory.

use super::node::Sharing;
use super::{Result, SolveError};
use crate::oci::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Default)]
struct Volume {
    /// Instance directories and how many execs use each (index 0 is the main one).
    in_use: Vec<usize>,
    /// When each instance was last acquired or released (for the garbage collector).
    used_at: HashMap<usize, SystemTime>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// One volume instance directory used in this run, as the garbage collector sees it.
pub struct VolumeUsage {
    /// The directory's name under the cache directory.
    pub name: String,
    pub key: String,
    pub in_use: bool,
    pub last_used: Option<SystemTime>,
}

/// The directory name of instance `instance` of volume `key`.
fn instance_name(key: &str, instance: usize) -> String {
    // Keys are user text: the directory name is their digest.
    let name = Digest::of(key.as_bytes()).hex().to_string();
    if instance == 0 {
        name
    } else {
        format!("{name}-private-{instance}")
    }
}

pub struct CacheVolumes {
    dir: PathBuf,
    volumes: Arc<Mutex<HashMap<String, Volume>>>,
}

/// A mounted cache volume instance; released when dropped.
pub struct CacheLease {
    pub path: PathBuf,
    key: String,
    instance: usize,
    volumes: Arc<Mutex<HashMap<String, Volume>>>,
    _locked: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for CacheLease {
    fn drop(&mut self) {
        let mut v = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(vol) = v.get_mut(&self.key) {
            if let Some(n) = vol.in_use.get_mut(self.instance) {
                *n = n.saturating_sub(1);
            }
            vol.used_at.insert(self.instance, SystemTime::now());
        }
    }
}

impl CacheVolumes {
    pub fn new(dir: PathBuf) -> Self {
        CacheVolumes {
            dir,
            volumes: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn instance_path(&self, key: &str, instance: usize) -> PathBuf {
        self.dir.join(instance_name(key, instance))
    }

    /// Where the volume directories live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every instance directory used in this run: its key, whether an exec holds it now, and
    /// when it was last acquired or released.
    pub fn usage(&self) -> Vec<VolumeUsage> {
        let v = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (key, vol) in v.iter() {
            for (i, n) in vol.in_use.iter().enumerate() {
                out.push(VolumeUsage {
                    name: instance_name(key, i),
                    key: key.clone(),
                    in_use: *n > 0,
                    last_used: vol.used_at.get(&i).copied(),
                });
            }
        }
        out
    }

    /// Moves the instance directory `name` to `trash` unless an exec holds it; `Ok(false)`
    /// when it is in use or gone. Done under the volumes lock, so an exec acquiring it either
    /// came first (and it stays) or finds it missing and starts a fresh one.
    pub fn take_unused(&self, name: &str, trash: &Path) -> std::io::Result<bool> {
        let v = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        for (key, vol) in v.iter() {
            for (i, n) in vol.in_use.iter().enumerate() {
                if *n > 0 && instance_name(key, i) == name {
                    return Ok(false);
                }
            }
        }
        match std::fs::rename(self.dir.join(name), trash) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Mounts the volume `key` for one exec. `init` fills a directory the first time it is
    /// created (from the volume's `source`, and with its `owner`).
    pub async fn acquire(
        &self,
        key: &str,
        sharing: Sharing,
        init: impl Fn(&Path) -> Result<()>,
    ) -> Result<CacheLease> {
        let lock = {
            let mut v = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
            v.entry(key.to_string()).or_default().lock.clone()
        };
        let locked = match sharing {
            Sharing::Locked => Some(lock.lock_owned().await),
            _ => None,
        };
        let instance = {
            let mut v = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
            let vol = v.entry(key.to_string()).or_default();
            if vol.in_use.is_empty() {
                vol.in_use.push(0);
            }
            let i = match sharing {
                Sharing::Shared | Sharing::Locked => 0,
                Sharing::Private => match vol.in_use.iter().position(|n| *n == 0) {
                    Some(free) => free,
                    None => {
                        vol.in_use.push(0);
                        vol.in_use.len() - 1
                    }
                },
            };
            vol.in_use[i] += 1;
            vol.used_at.insert(i, SystemTime::now());
            i
        };
        let lease = CacheLease {
            path: self.instance_path(key, instance),
            key: key.to_string(),
            instance,
            volumes: self.volumes.clone(),
            _locked: locked,
        };
        if !lease.path.exists() {
            // Built beside and renamed, so a crash never leaves a half-initialised volume. The
            // name is unique per call: two execs creating the same volume at once must not
            // share (and delete) each other's directory; the second rename loses harmlessly.
            static NEXT_INIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let tmp = self.dir.join(format!(
                ".init-{}-{}-{}",
                lease
                    .path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("v"),
                std::process::id(),
                NEXT_INIT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)
                .map_err(|e| SolveError::Internal(format!("creating cache volume: {e}")))?;
            init(&tmp)?;
            // Never over a volume another exec created meanwhile (even an empty one: its
            // exec may be writing into it already).
            if let Err(e) = crate::sys::fsops::rename_noreplace(&tmp, &lease.path) {
                let _ = std::fs::remove_dir_all(&tmp);
                if !lease.path.exists() {
                    return Err(SolveError::Internal(format!("creating cache volume: {e}")));
                }
            }
        }
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sharing_modes() {
        let dir = tempfile::tempdir().unwrap();
        let vols = CacheVolumes::new(dir.path().to_path_buf());
        let ok = |_: &Path| Ok(());
        let a = vols.acquire("k", Sharing::Shared, ok).await.unwrap();
        let b = vols.acquire("k", Sharing::Shared, ok).await.unwrap();
        assert_eq!(a.path, b.path);
        let p1 = vols.acquire("p", Sharing::Private, ok).await.unwrap();
        let p2 = vols.acquire("p", Sharing::Private, ok).await.unwrap();
        assert_ne!(p1.path, p2.path);
        let first = p1.path.clone();
        drop(p1);
        let p3 = vols.acquire("p", Sharing::Private, ok).await.unwrap();
        assert_eq!(p3.path, first, "a free instance is reused");
        let l1 = vols.acquire("l", Sharing::Locked, ok).await.unwrap();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            vols.acquire("l", Sharing::Locked, ok),
        )
        .await;
        assert!(waiting.is_err(), "a second LOCKED user waits");
        drop(l1);
        vols.acquire("l", Sharing::Locked, ok).await.unwrap();
    }

    /// Many execs creating one new volume at once: all get it, and what the first one wrote
    /// is never replaced by another's fresh copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creation_shares_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let vols = Arc::new(CacheVolumes::new(dir.path().to_path_buf()));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let vols = vols.clone();
                tokio::spawn(async move {
                    let lease = vols
                        .acquire("shared", Sharing::Shared, |_: &Path| Ok(()))
                        .await
                        .unwrap();
                    std::fs::write(lease.path.join(format!("f{i}")), "x").unwrap();
                    lease
                })
            })
            .collect();
        let mut leases = Vec::new();
        for t in tasks {
            leases.push(t.await.unwrap());
        }
        let path = leases[0].path.clone();
        assert!(leases.iter().all(|l| l.path == path));
        let files = std::fs::read_dir(&path).unwrap().count();
        assert_eq!(files, 16, "every writer's file is in the one volume");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".init-"))
            .collect();
        assert!(leftovers.is_empty(), "no half-built volume is left behind");
    }
}
