//! The solver: evaluates the operation graph ([`node`]) lazily, caches every result by key,
//! and runs identical work once.
//!
//! * Nothing runs until a leaf (contents, entries, stdout, sync...) needs a value.
//! * Every evaluated node is memoised for the engine's lifetime by the digest of the node
//!   itself, so a chain re-sent by an SDK is not recomputed.
//! * Operations that do real work (execs) are also cached persistently, by a key made of the
//!   operation and the *content* of its inputs (snapshot ids and config), so the result is
//!   reused by any later session, any client, and after a restart.
//! * Concurrent evaluations of the same node share one flight.

mod cache_volumes;
mod change;
mod digest;
mod exec;
pub mod filter;
pub mod fs;
pub mod id;
mod image_io;
pub mod node;
pub mod secrets;
mod tree;

use crate::error::{Classify, ErrorKind};
use crate::image::{ImageConfig, ImageError, ImageService};
use crate::metadata::{Metadata, MetadataError};
use crate::oci::{Digest, Platform, Reference};
use crate::snapshot::SnapshotId;
use crate::util::Singleflight;
use node::{ConfigChange, ContainerNode, DirectoryNode, FileNode, MountSource, SecretNode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;

pub use cache_volumes::VolumeUsage;
pub use exec::{ExecFailure, ExecResult, Execution};
pub use fs::FsError;

#[derive(Debug, Error)]
pub enum SolveError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Id(#[from] id::IdError),
    #[error("{0}")]
    InvalidArgument(String),
    /// A process exited with a code the caller did not expect.
    #[error("{}", .0.message())]
    Exec(Box<ExecFailure>),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// An error from a flight this caller joined.
    #[error("{0}")]
    Shared(Arc<SolveError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for SolveError {
    fn kind(&self) -> ErrorKind {
        match self {
            SolveError::Image(e) => e.kind(),
            SolveError::Fs(e) => e.kind(),
            SolveError::Metadata(e) => e.kind(),
            SolveError::Snapshot(e) => e.kind(),
            SolveError::Id(_) | SolveError::InvalidArgument(_) | SolveError::Exec(_) => {
                ErrorKind::InvalidArgument
            }
            SolveError::Unavailable(_) => ErrorKind::Unavailable,
            SolveError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            SolveError::Shared(e) => e.kind(),
            SolveError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl SolveError {
    /// The exec failure behind this error, if it is one (also through a shared flight).
    pub fn exec_failure(&self) -> Option<&ExecFailure> {
        match self {
            SolveError::Exec(f) => Some(f),
            SolveError::Shared(e) => e.exec_failure(),
            _ => None,
        }
    }
}

pub type Result<T, E = SolveError> = std::result::Result<T, E>;

/// A container's computed state.
#[derive(Debug, Clone)]
pub struct ContainerValue {
    pub platform: String,
    pub rootfs: Option<SnapshotId>,
    pub config: ImageConfig,
    /// Set right after `from`; cleared by any change.
    pub image_ref: Option<String>,
    /// The last exec's outcome: what `stdout`, `stderr` and `exitCode` read.
    pub exec: Option<Arc<ExecResult>>,
    /// Mounted into execs at these absolute paths (not part of the rootfs).
    pub mounts: Vec<(String, MountSource)>,
    /// Environment variables whose values are secrets, set only for execs.
    pub secret_env: Vec<(String, SecretNode)>,
}

impl ContainerValue {
    /// The working directory processes start in and relative paths resolve against.
    pub fn cwd(&self) -> &str {
        if self.config.workdir.is_empty() {
            "/"
        } else {
            &self.config.workdir
        }
    }

    fn expand(&self, s: &str, expand: bool) -> String {
        if expand {
            crate::util::expand(s, crate::util::env_lookup(&self.config.env))
        } else {
            s.to_string()
        }
    }
}

/// A directory: a path inside a snapshot (`None` is the empty tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRef {
    pub snapshot: Option<SnapshotId>,
    /// Absolute, lexically clean path inside the snapshot.
    pub path: String,
}

#[derive(Clone)]
enum Memo {
    Container(Arc<ContainerValue>),
    Tree(Arc<TreeRef>),
}

impl Memo {
    /// The snapshot this value names, if any.
    fn snapshot(&self) -> Option<&str> {
        match self {
            Memo::Container(c) => c.rootfs.as_deref(),
            Memo::Tree(t) => t.snapshot.as_deref(),
        }
    }

    fn same(&self, other: &Memo) -> bool {
        match (self, other) {
            (Memo::Container(a), Memo::Container(b)) => Arc::ptr_eq(a, b),
            (Memo::Tree(a), Memo::Tree(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The solver. Cheap to clone.
#[derive(Clone)]
pub struct Solver {
    inner: Arc<Inner>,
}

struct Inner {
    images: ImageService,
    meta: Metadata,
    execution: Option<Execution>,
    secrets: secrets::Secrets,
    cache_volumes: cache_volumes::CacheVolumes,
    memo: Mutex<HashMap<Digest, Memo>>,
    flights: Singleflight<Digest, Result<Memo, Arc<SolveError>>>,
}

fn key_of<T: Serialize>(kind: &str, node: &T) -> Digest {
    let mut bytes = kind.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend(serde_json::to_vec(node).expect("nodes always serialize"));
    Digest::of(&bytes)
}

impl Solver {
    /// `execution` is `None` where containers cannot run (then `withExec` fails clearly).
    /// Cache volumes live under `cache_dir`.
    pub fn new(
        images: ImageService,
        meta: Metadata,
        execution: Option<Execution>,
        cache_dir: std::path::PathBuf,
    ) -> Self {
        let solver = Solver {
            inner: Arc::new(Inner {
                images,
                meta,
                execution,
                secrets: secrets::Secrets::new(),
                cache_volumes: cache_volumes::CacheVolumes::new(cache_dir),
                memo: Mutex::new(HashMap::new()),
                flights: Singleflight::new(),
            }),
        };
        // Weak: the registry lives in the snapshotter, which the solver owns.
        let weak = Arc::downgrade(&solver.inner);
        solver.snapshotter().usage().on_removed(move |ids| {
            if let Some(inner) = weak.upgrade() {
                Solver { inner }.forget_snapshots(ids);
            }
        });
        solver
    }

    /// Drops memoised values that name any of `ids` (snapshots the garbage collector removed),
    /// so the nodes are evaluated again when next asked for.
    pub fn forget_snapshots(&self, ids: &std::collections::HashSet<String>) {
        self.lock_memo()
            .retain(|_, m| m.snapshot().is_none_or(|s| !ids.contains(s)));
    }

    pub fn snapshotter(&self) -> &crate::snapshot::Snapshotter {
        self.inner.images.snapshotter()
    }

    /// The image service (pulls, image assembly, pushes).
    pub fn images(&self) -> &ImageService {
        &self.inner.images
    }

    /// Evaluates once per distinct node, sharing concurrent flights; errors are not kept.
    async fn memoised<F, Fut>(&self, key: Digest, compute: F) -> Result<Memo>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Memo>>,
    {
        let hit = self.lock_memo().get(&key).cloned();
        if let Some(m) = hit {
            // Stamp the snapshot for the running operation, then make sure the garbage
            // collector did not remove it first (it forgets such values under the same lock
            // the stamp takes); a forgotten value is computed again.
            if let Some(s) = m.snapshot() {
                self.snapshotter().usage().touch([s]);
            }
            if self.lock_memo().get(&key).is_some_and(|cur| cur.same(&m)) {
                return Ok(m);
            }
        }
        let memo = self
            .inner
            .flights
            .run(key.clone(), || async { compute().await.map_err(Arc::new) })
            .await
            .map_err(SolveError::Shared)?;
        self.lock_memo().insert(key, memo.clone());
        Ok(memo)
    }

    fn lock_memo(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Memo>> {
        self.inner.memo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `withRegistryAuth` credentials in effect for `node`: along its chain, the call
    /// nearest to `node` wins for each host, and a `withoutRegistryAuth` hides the earlier
    /// ones. They apply to this request's pulls and pushes only, on top of the engine's own.
    pub fn registry_auth(&self, node: &ContainerNode) -> Result<crate::registry::Credentials> {
        let mut seen = std::collections::BTreeSet::new();
        let mut creds = crate::registry::Credentials::none();
        let mut cur = Some(node);
        while let Some(n) = cur {
            match n {
                ContainerNode::RegistryAuth {
                    address,
                    username,
                    secret,
                    ..
                } if seen.insert(address.clone()) => {
                    let value = self.inner.secrets.plaintext(secret)?;
                    let password = String::from_utf8(value).map_err(|_| {
                        SolveError::InvalidArgument(format!(
                            "the registry secret for {address} is not UTF-8 text"
                        ))
                    })?;
                    creds.insert(address, username, &password);
                }
                ContainerNode::NoRegistryAuth { address, .. } => {
                    seen.insert(address.clone());
                }
                _ => {}
            }
            cur = n.parent();
        }
        Ok(creds)
    }

    pub async fn container(&self, node: &ContainerNode) -> Result<Arc<ContainerValue>> {
        let key = key_of("container", node);
        // Work already done (in any session) shows as cached in this one's progress.
        if let Some(name) = progress_name(node) {
            if self.lock_memo().contains_key(&key) {
                crate::progress::cached(&name, Some(key.to_string()));
            }
        }
        let memo = self
            .memoised(key, || async {
                Ok(Memo::Container(Arc::new(
                    self.compute_container(node).await?,
                )))
            })
            .await?;
        match memo {
            Memo::Container(c) => Ok(c),
            Memo::Tree(_) => Err(SolveError::Internal("memo type mismatch".into())),
        }
    }

    fn compute_container<'a>(
        &'a self,
        node: &'a ContainerNode,
    ) -> futures_util::future::BoxFuture<'a, Result<ContainerValue>> {
        Box::pin(async move {
            match node {
                ContainerNode::Scratch { platform } => Ok(ContainerValue {
                    platform: platform.clone(),
                    rootfs: None,
                    config: ImageConfig::default(),
                    image_ref: None,
                    exec: None,
                    mounts: Vec::new(),
                    secret_env: Vec::new(),
                }),
                ContainerNode::From { parent, address } => {
                    let p = self.container(parent).await?;
                    let reference = Reference::parse(address)
                        .map_err(|e| SolveError::InvalidArgument(e.to_string()))?;
                    let platform = Platform::parse(&p.platform)
                        .map_err(|e| SolveError::InvalidArgument(e.to_string()))?;
                    let op = crate::progress::start(
                        &format!("from {address}"),
                        Some(key_of("container", node).to_string()),
                    );
                    // The `withRegistryAuth` credentials in effect where `from` was called.
                    let auth = self.registry_auth(parent)?;
                    let pulled = self
                        .inner
                        .images
                        .pull_with_auth(&reference, &platform, &auth)
                        .await;
                    op.finish(&pulled);
                    let image = pulled.map_err(|e| SolveError::Image(ImageError::Shared(e)))?;
                    Ok(ContainerValue {
                        platform: p.platform.clone(),
                        rootfs: image.rootfs.clone(),
                        config: image.config.clone(),
                        image_ref: Some(image.reference.to_string()),
                        exec: None,
                        mounts: p.mounts.clone(),
                        secret_env: p.secret_env.clone(),
                    })
                }
                ContainerNode::Config { parent, change } => {
                    let p = self.container(parent).await?;
                    Ok(apply_config(&p, change))
                }
                ContainerNode::Mount { parent, mount } => {
                    let p = self.container(parent).await?;
                    let path = fs::join(p.cwd(), &p.expand(&mount.path, mount.expand));
                    if let MountSource::Secret { secret, .. } = &mount.source {
                        // Fail here, where the user wrote it, rather than at the first exec.
                        self.inner.secrets.plaintext(secret)?;
                    }
                    let mut next = (*p).clone();
                    next.image_ref = None;
                    next.mounts.retain(|(m, _)| *m != path);
                    next.mounts.push((path, mount.source.clone()));
                    Ok(next)
                }
                ContainerNode::Unmount {
                    parent,
                    path,
                    expand,
                } => {
                    let p = self.container(parent).await?;
                    let path = fs::join(p.cwd(), &p.expand(path, *expand));
                    if !p.mounts.iter().any(|(m, _)| *m == path) {
                        return Err(SolveError::InvalidArgument(format!(
                            "{path}: nothing is mounted there"
                        )));
                    }
                    let mut next = (*p).clone();
                    next.mounts.retain(|(m, _)| *m != path);
                    Ok(next)
                }
                ContainerNode::SecretEnv {
                    parent,
                    name,
                    secret,
                } => {
                    let p = self.container(parent).await?;
                    self.inner.secrets.plaintext(secret)?;
                    let mut next = (*p).clone();
                    next.secret_env.retain(|(n, _)| n != name);
                    next.secret_env.push((name.clone(), secret.clone()));
                    Ok(next)
                }
                ContainerNode::RegistryAuth { parent, secret, .. } => {
                    let p = self.container(parent).await?;
                    // Fail here, where the user wrote it, rather than at the pull or push.
                    self.inner.secrets.plaintext(secret)?;
                    Ok((*p).clone())
                }
                ContainerNode::NoRegistryAuth { parent, .. } => {
                    Ok((*self.container(parent).await?).clone())
                }
                ContainerNode::NoSecretEnv { parent, name } => {
                    let p = self.container(parent).await?;
                    let mut next = (*p).clone();
                    next.secret_env.retain(|(n, _)| n != name);
                    Ok(next)
                }
                ContainerNode::Exec { parent, exec } => {
                    let p = self.container(parent).await?;
                    let execution = self.inner.execution.as_ref().ok_or_else(|| {
                        SolveError::Unavailable(
                            "this engine cannot run containers (no executor)".into(),
                        )
                    })?;
                    let op = crate::progress::start(
                        &exec_progress_name(exec),
                        Some(key_of("container", node).to_string()),
                    );
                    execution.run(self, &p, exec, op).await
                }
                ContainerNode::Fs {
                    parent,
                    change,
                    expand,
                } => self.changed_container(parent, change, *expand).await,
                ContainerNode::WithRootfs { parent, directory } => {
                    self.with_rootfs(parent, directory).await
                }
                ContainerNode::Import {
                    parent,
                    source,
                    tag,
                } => self.import_container(parent, source, tag).await,
            }
        })
    }

    pub async fn directory(&self, node: &DirectoryNode) -> Result<Arc<TreeRef>> {
        let key = key_of("directory", node);
        let memo = self
            .memoised(key, || async {
                Ok(Memo::Tree(Arc::new(self.compute_directory(node).await?)))
            })
            .await?;
        match memo {
            Memo::Tree(t) => Ok(t),
            Memo::Container(_) => Err(SolveError::Internal("memo type mismatch".into())),
        }
    }

    fn compute_directory<'a>(
        &'a self,
        node: &'a DirectoryNode,
    ) -> futures_util::future::BoxFuture<'a, Result<TreeRef>> {
        Box::pin(async move {
            let (snapshot, path) = match node {
                DirectoryNode::Scratch => {
                    return Ok(TreeRef {
                        snapshot: None,
                        path: "/".into(),
                    })
                }
                DirectoryNode::Rootfs { container } => {
                    let c = self.container(container).await?;
                    return Ok(TreeRef {
                        snapshot: c.rootfs.clone(),
                        path: "/".into(),
                    });
                }
                DirectoryNode::InContainer { container, path } => {
                    let c = self.container(container).await?;
                    (c.rootfs.clone(), fs::join(c.cwd(), path))
                }
                DirectoryNode::Sub { parent, path } => {
                    let d = self.directory(parent).await?;
                    (d.snapshot.clone(), fs::join(&d.path, path))
                }
                DirectoryNode::Snapshot { snapshot } => {
                    // The id may come from a client-made ID: it must name a recorded
                    // snapshot, never a path.
                    let recorded = !snapshot.is_empty()
                        && snapshot
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && self.snapshotter().claim(snapshot)?;
                    if !recorded {
                        return Err(SolveError::InvalidArgument(format!(
                            "unknown snapshot {snapshot:?}"
                        )));
                    }
                    (Some(snapshot.clone()), "/".to_string())
                }
                DirectoryNode::Changed { parent, change } => {
                    return self.changed_directory(parent, change).await;
                }
                DirectoryNode::Diff { lower, upper } => {
                    return self.diff_directories(lower, upper).await;
                }
            };
            let check = path.clone();
            fs::with_root(self.snapshotter(), snapshot.clone(), move |root| {
                fs::require_dir(root, &check)
            })
            .await?;
            Ok(TreeRef { snapshot, path })
        })
    }

    pub async fn file(&self, node: &FileNode) -> Result<Arc<TreeRef>> {
        let key = key_of("file", node);
        let memo = self
            .memoised(key, || async {
                let (snapshot, path) = match node {
                    FileNode::InContainer { container, path } => {
                        let c = self.container(container).await?;
                        (c.rootfs.clone(), fs::join(c.cwd(), path))
                    }
                    FileNode::InDirectory { directory, path } => {
                        let d = self.directory(directory).await?;
                        (d.snapshot.clone(), fs::join(&d.path, path))
                    }
                    FileNode::New { .. } | FileNode::Renamed { .. } => {
                        let t = self.standalone_file(node).await?;
                        return Ok(Memo::Tree(Arc::new(t)));
                    }
                    FileNode::AsTarball {
                        container,
                        variants,
                        compression,
                        media_types,
                    } => {
                        let t = self
                            .as_tarball(container, variants, *compression, *media_types)
                            .await?;
                        return Ok(Memo::Tree(Arc::new(t)));
                    }
                };
                let check = path.clone();
                fs::with_root(self.snapshotter(), snapshot.clone(), move |root| {
                    fs::require_file(root, &check)
                })
                .await?;
                Ok(Memo::Tree(Arc::new(TreeRef { snapshot, path })))
            })
            .await?;
        match memo {
            Memo::Tree(t) => Ok(t),
            Memo::Container(_) => Err(SolveError::Internal("memo type mismatch".into())),
        }
    }

    pub(crate) fn metadata(&self) -> &Metadata {
        &self.inner.meta
    }

    /// The persistent result cached under `key`, if its snapshot still exists. The snapshot is
    /// claimed for the current operation, so the garbage collector keeps it while it is used.
    pub(crate) async fn cached_result<T>(&self, key: &Digest) -> Result<Option<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let meta = self.metadata().clone();
        let snapshots = self.snapshotter().clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<T>> {
            let Some(record) = meta.get_result(&key)? else {
                return Ok(None);
            };
            // A result whose snapshot is gone is recomputed.
            if let Some(s) = &record.snapshot {
                if !snapshots.claim(s)? {
                    return Ok(None);
                }
            }
            Ok(serde_json::from_str(&record.value).ok())
        })
        .await
        .map_err(|e| SolveError::Internal(e.to_string()))?
    }

    /// Records `value` as the persistent result for `key`, holding `snapshot`.
    pub(crate) async fn record_result<T: Serialize>(
        &self,
        key: Digest,
        kind: &str,
        value: &T,
        snapshot: Option<SnapshotId>,
    ) -> Result<()> {
        let record = crate::metadata::ResultRecord {
            kind: kind.into(),
            value: serde_json::to_string(value).map_err(|e| SolveError::Internal(e.to_string()))?,
            snapshot,
        };
        let meta = self.metadata().clone();
        tokio::task::spawn_blocking(move || meta.put_result(&key, &record))
            .await
            .map_err(|e| SolveError::Internal(e.to_string()))??;
        Ok(())
    }

    /// Stores a secret value in engine memory and returns the node that names it.
    pub fn set_secret(&self, name: &str, plaintext: &[u8]) -> SecretNode {
        self.inner.secrets.set(name, plaintext)
    }

    /// A secret's value (for `Secret.plaintext`).
    pub fn secret_plaintext(&self, node: &SecretNode) -> Result<Vec<u8>> {
        self.inner.secrets.plaintext(node)
    }

    pub(crate) fn tmp_dir(&self) -> std::path::PathBuf {
        self.snapshotter().tmp_dir().to_path_buf()
    }

    pub(crate) fn secrets(&self) -> &secrets::Secrets {
        &self.inner.secrets
    }

    pub(crate) fn cache_volumes(&self) -> &cache_volumes::CacheVolumes {
        &self.inner.cache_volumes
    }
}

/// The progress name of the operations worth showing (the ones that do real work).
fn progress_name(node: &ContainerNode) -> Option<String> {
    match node {
        ContainerNode::From { address, .. } => Some(format!("from {address}")),
        ContainerNode::Exec { exec, .. } => Some(exec_progress_name(exec)),
        _ => None,
    }
}

/// `withExec` and the arguments as written (before any `$VAR` expansion, so no value from
/// the environment shows; secrets only ever reach execs through env and mounts). Arguments
/// with spaces or quotes are quoted.
fn exec_progress_name(exec: &node::ExecArgs) -> String {
    let args: Vec<String> = exec
        .args
        .iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c))
            {
                a.clone()
            } else {
                format!("{a:?}")
            }
        })
        .collect();
    crate::progress::short_name(&format!("withExec {}", args.join(" ")))
}

fn env_name(kv: &str) -> &str {
    kv.split_once('=').map(|(k, _)| k).unwrap_or(kv)
}

/// A config change applied to an evaluated container.
fn apply_config(p: &ContainerValue, change: &ConfigChange) -> ContainerValue {
    let mut next = p.clone();
    next.image_ref = None;
    let cfg = &mut next.config;
    match change {
        ConfigChange::SetEnv {
            name,
            value,
            expand,
        } => {
            let entry = format!("{name}={}", p.expand(value, *expand));
            match cfg.env.iter_mut().find(|kv| env_name(kv) == name) {
                Some(existing) => *existing = entry,
                None => cfg.env.push(entry),
            }
        }
        ConfigChange::UnsetEnv { name } => cfg.env.retain(|kv| env_name(kv) != name),
        ConfigChange::Workdir { path, expand } => {
            cfg.workdir = fs::join(p.cwd(), &p.expand(path, *expand));
        }
        ConfigChange::NoWorkdir => cfg.workdir.clear(),
        ConfigChange::User { name } => cfg.user = name.clone(),
        ConfigChange::NoUser => cfg.user.clear(),
        ConfigChange::Entrypoint {
            args,
            keep_default_args,
        } => {
            cfg.entrypoint = args.clone();
            if !keep_default_args {
                cfg.cmd.clear();
            }
        }
        ConfigChange::NoEntrypoint { keep_default_args } => {
            cfg.entrypoint.clear();
            if !keep_default_args {
                cfg.cmd.clear();
            }
        }
        ConfigChange::DefaultArgs { args } => cfg.cmd = args.clone(),
        ConfigChange::NoDefaultArgs => cfg.cmd.clear(),
        ConfigChange::Label { name, value } => {
            cfg.labels.insert(name.clone(), value.clone());
        }
        ConfigChange::ExposePort {
            port,
            protocol,
            description,
        } => {
            let key = format!("{port}/{protocol}");
            if !cfg.exposed_ports.contains(&key) {
                cfg.exposed_ports.push(key.clone());
            }
            match description {
                Some(d) => cfg.port_descriptions.insert(key, d.clone()),
                None => cfg.port_descriptions.remove(&key),
            };
        }
        ConfigChange::UnexposePort { port, protocol } => {
            let key = format!("{port}/{protocol}");
            cfg.exposed_ports.retain(|p| *p != key);
            cfg.port_descriptions.remove(&key);
        }
        ConfigChange::NoLabel { name } => {
            cfg.labels.remove(name);
        }
    }
    next
}
