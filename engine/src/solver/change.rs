//! Filesystem operations (`withNewFile`, `withFile(s)`, `withDirectory`, `without*`,
//! `withSymlink`, `diff`, `Query.file`, `File.withName`, `Container.withRootfs`).
//!
//! Each one writes a **new** snapshot on top of its input's (overlay: a new upper directory;
//! native: a copy), never touching the input, which other nodes may share. Evaluation first
//! resolves every input (paths against the directory or the workdir, source objects to
//! snapshots, owner names to ids) into a [`Plan`]; the plan plus the base snapshot is the
//! persistent cache key, so the same change to the same content is written once, by any
//! client and across restarts.

use super::filter::{Decision, Filter};
use super::node::{ContainerNode, DirectoryNode, FileNode, FsChange};
use super::tree::{self, Attrs, Owner, PARENT_MODE};
use super::{fs, ContainerValue, Result, SolveError, Solver, TreeRef};
use crate::oci::Digest;
use crate::snapshot::{SnapshotId, Snapshotter, View};
use crate::sys::fsops::{self, FileKind, Meta};
use crate::sys::inroot::Root;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Cap on `/etc/passwd` and `/etc/group` when resolving an owner name.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// An evaluated File or Directory: where its content is.
#[derive(Debug, Clone, Serialize)]
struct Source {
    snapshot: Option<SnapshotId>,
    path: String,
}

impl From<&TreeRef> for Source {
    fn from(t: &TreeRef) -> Self {
        Source {
            snapshot: t.snapshot.clone(),
            path: t.path.clone(),
        }
    }
}

/// A change with every input resolved. Paths are absolute in the base snapshot. Serialized
/// into the cache key (a new file's bytes by their digest).
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Plan {
    NewFile {
        path: String,
        #[serde(skip)]
        contents: Vec<u8>,
        digest: String,
        mode: u32,
        owner: Option<Owner>,
    },
    NewDirectory {
        path: String,
        mode: u32,
    },
    /// To `path`, or into it under the source's name when it is a directory.
    CopyFile {
        path: String,
        source: Source,
        mode: Option<u32>,
        owner: Option<Owner>,
    },
    CopyFiles {
        dir: String,
        sources: Vec<Source>,
        mode: Option<u32>,
        owner: Option<Owner>,
    },
    /// The contents of `source` into the directory `path`.
    CopyDirectory {
        path: String,
        source: Source,
        include: Vec<String>,
        exclude: Vec<String>,
        mode: Option<u32>,
        owner: Option<Owner>,
    },
    /// `base` is the directory the result stands for: removing it empties it instead.
    Remove {
        paths: Vec<String>,
        base: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Diff {
        lower: Source,
        upper: Source,
    },
}

impl Plan {
    /// The paths written or removed.
    fn targets(&self) -> Vec<&str> {
        match self {
            Plan::NewFile { path, .. }
            | Plan::NewDirectory { path, .. }
            | Plan::CopyFile { path, .. }
            | Plan::CopyDirectory { path, .. }
            | Plan::Symlink { path, .. } => vec![path],
            Plan::CopyFiles { dir, .. } => vec![dir],
            Plan::Remove { paths, .. } => paths.iter().map(String::as_str).collect(),
            Plan::Diff { .. } => Vec::new(),
        }
    }

    fn sources(&self) -> Vec<&Source> {
        match self {
            Plan::CopyFile { source, .. } | Plan::CopyDirectory { source, .. } => vec![source],
            Plan::CopyFiles { sources, .. } => sources.iter().collect(),
            Plan::Diff { lower, upper } => vec![lower, upper],
            _ => Vec::new(),
        }
    }
}

/// What the persistent cache keeps: the resulting snapshot (the base itself when nothing
/// changed).
#[derive(Serialize, Deserialize)]
struct Cached {
    snapshot: Option<SnapshotId>,
}

fn invalid(msg: String) -> SolveError {
    SolveError::InvalidArgument(msg)
}

/// An API permission value: the 12 permission bits at most.
fn check_mode(p: i32) -> Result<u32> {
    if (0..=0o7777).contains(&p) {
        Ok(p as u32)
    } else {
        Err(invalid(format!(
            "permissions {p} is not a file mode (0 to 0o7777)"
        )))
    }
}

/// A permission argument with a default, where `0` also means the default (as in Dagger).
fn mode_arg(p: i32, default: u32) -> Result<u32> {
    Ok(match check_mode(p)? {
        0 => default,
        m => m,
    })
}

fn opt_mode(p: Option<i32>) -> Result<Option<u32>> {
    p.map(check_mode).transpose()
}

/// A single path component, as `Query.file` and `File.withName` take.
fn file_name(name: &str) -> Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(invalid(format!(
            "invalid file name {name:?}: a name, without '/'"
        )));
    }
    Ok(name)
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("")
}

/// Maps an I/O error at `path` to the solver's error, user mistakes as invalid arguments.
fn at(path: &str) -> impl FnOnce(io::Error) -> SolveError + '_ {
    move |e| match e.kind() {
        io::ErrorKind::IsADirectory => invalid(format!("{path}: is a directory")),
        io::ErrorKind::AlreadyExists => invalid(format!("{path}: already exists")),
        io::ErrorKind::InvalidInput => invalid(format!("{path}: {e}")),
        _ => SolveError::Fs(fs::io_error(path, e)),
    }
}

fn blocking_error(e: tokio::task::JoinError) -> SolveError {
    SolveError::Internal(e.to_string())
}

impl Solver {
    /// `Directory.with*`/`without*`: paths are relative to the directory and cannot leave it
    /// lexically (`..` stops at its root).
    pub(super) async fn changed_directory(
        &self,
        parent: &DirectoryNode,
        change: &FsChange,
    ) -> Result<TreeRef> {
        let d = self.directory(parent).await?;
        let base = d.path.clone();
        // Absolute paths are relative to the directory too: a Directory is its own root.
        let resolve = |p: &str| fs::join(&base, fs::join("/", p).trim_start_matches('/'));
        let plan = self
            .plan(change, &d.snapshot, &base, &resolve, &|s: &str| {
                s.to_string()
            })
            .await?;
        let snapshot = self.apply(d.snapshot.clone(), plan).await?;
        Ok(TreeRef {
            snapshot,
            path: d.path.clone(),
        })
    }

    /// `Container.with*`/`without*` on the rootfs: paths relative to the workdir, owner names
    /// from the rootfs' own account files.
    pub(super) async fn changed_container(
        &self,
        parent: &ContainerNode,
        change: &FsChange,
        expand: bool,
    ) -> Result<ContainerValue> {
        let p = self.container(parent).await?;
        let resolve = |s: &str| fs::join(p.cwd(), &p.expand(s, expand));
        let raw = |s: &str| p.expand(s, expand);
        let plan = self.plan(change, &p.rootfs, "/", &resolve, &raw).await?;
        // Writes go to the rootfs; one under a mount would be hidden by it in every exec.
        for target in plan.targets() {
            let under = |m: &str| target == m || target.starts_with(&format!("{m}/"));
            if let Some((m, _)) = p.mounts.iter().find(|(m, _)| m != "/" && under(m)) {
                return Err(invalid(format!(
                    "{target}: is under the mount at {m}; writing into mounts is not supported \
                     (unmount it first with withoutMount)"
                )));
            }
        }
        let rootfs = self.apply(p.rootfs.clone(), plan).await?;
        let mut next = (*p).clone();
        next.rootfs = rootfs;
        next.image_ref = None;
        Ok(next)
    }

    /// `Container.withRootfs(directory)`: a directory at the root of its snapshot is used as
    /// is; a subdirectory is copied to the root of a new one.
    pub(super) async fn with_rootfs(
        &self,
        parent: &ContainerNode,
        directory: &DirectoryNode,
    ) -> Result<ContainerValue> {
        let p = self.container(parent).await?;
        let d = self.directory(directory).await?;
        let rootfs = if d.path == "/" {
            d.snapshot.clone()
        } else {
            let plan = Plan::CopyDirectory {
                path: "/".into(),
                source: Source::from(&*d),
                include: Vec::new(),
                exclude: Vec::new(),
                mode: None,
                owner: None,
            };
            self.apply(None, plan).await?
        };
        let mut next = (*p).clone();
        next.rootfs = rootfs;
        next.image_ref = None;
        Ok(next)
    }

    /// `Query.file` and `File.withName`: a file alone at the root of a new snapshot. Boxed:
    /// `withName` evaluates its source through `file`, which evaluates this.
    pub(super) fn standalone_file<'a>(
        &'a self,
        node: &'a FileNode,
    ) -> futures_util::future::BoxFuture<'a, Result<TreeRef>> {
        Box::pin(self.standalone_file_inner(node))
    }

    async fn standalone_file_inner(&self, node: &FileNode) -> Result<TreeRef> {
        let (name, plan) = match node {
            FileNode::New {
                name,
                contents,
                permissions,
            } => {
                let name = file_name(name)?;
                let plan = Plan::NewFile {
                    path: format!("/{name}"),
                    digest: Digest::of(contents.as_bytes()).to_string(),
                    contents: contents.clone().into_bytes(),
                    mode: mode_arg(*permissions, 0o644)?,
                    owner: None,
                };
                (name, plan)
            }
            FileNode::Renamed { file, name } => {
                let name = file_name(name)?;
                let source = self.file(file).await?;
                let plan = Plan::CopyFile {
                    path: format!("/{name}"),
                    source: Source::from(&*source),
                    mode: None,
                    owner: None,
                };
                (name, plan)
            }
            _ => return Err(SolveError::Internal("not a standalone file".into())),
        };
        let snapshot = self.apply(None, plan).await?;
        Ok(TreeRef {
            snapshot,
            path: format!("/{name}"),
        })
    }

    /// `Directory.diff`: the entries of `upper` that `lower` lacks or has differently (type,
    /// mode, owner, content), with the directories leading to them, in a new tree. Deletions
    /// cannot be shown in a plain tree and are left out.
    pub(super) async fn diff_directories(
        &self,
        lower: &DirectoryNode,
        upper: &DirectoryNode,
    ) -> Result<TreeRef> {
        let (l, u) = futures_util::try_join!(self.directory(lower), self.directory(upper))?;
        let plan = Plan::Diff {
            lower: Source::from(&*l),
            upper: Source::from(&*u),
        };
        let snapshot = self.apply(None, plan).await?;
        Ok(TreeRef {
            snapshot,
            path: "/".into(),
        })
    }

    /// Resolves a change's inputs. `resolve` turns an API path into an absolute one, `raw`
    /// expands other strings (a symlink target); `owner_root` is where the target tree's
    /// `/etc/passwd` is.
    async fn plan(
        &self,
        change: &FsChange,
        snapshot: &Option<SnapshotId>,
        owner_root: &str,
        resolve: &(dyn Fn(&str) -> String + Sync),
        raw: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<Plan> {
        Ok(match change {
            FsChange::NewFile {
                path,
                contents,
                permissions,
                owner,
            } => Plan::NewFile {
                path: resolve(path),
                digest: Digest::of(contents.as_bytes()).to_string(),
                contents: contents.clone().into_bytes(),
                mode: mode_arg(*permissions, 0o644)?,
                owner: self.owner(snapshot, owner_root, owner).await?,
            },
            FsChange::NewDirectory { path, permissions } => Plan::NewDirectory {
                path: resolve(path),
                mode: mode_arg(*permissions, 0o755)?,
            },
            FsChange::File {
                path,
                source,
                permissions,
                owner,
            } => Plan::CopyFile {
                path: resolve(path),
                source: Source::from(&*self.file(source).await?),
                mode: opt_mode(*permissions)?,
                owner: self.owner(snapshot, owner_root, owner).await?,
            },
            FsChange::Files {
                path,
                sources,
                permissions,
                owner,
            } => {
                let files =
                    futures_util::future::try_join_all(sources.iter().map(|s| self.file(s)))
                        .await?;
                Plan::CopyFiles {
                    dir: resolve(path),
                    sources: files.iter().map(|f| Source::from(&**f)).collect(),
                    mode: opt_mode(*permissions)?,
                    owner: self.owner(snapshot, owner_root, owner).await?,
                }
            }
            FsChange::Directory {
                path,
                source,
                include,
                exclude,
                owner,
                permissions,
            } => {
                Filter::new(include, exclude)?;
                Plan::CopyDirectory {
                    path: resolve(path),
                    source: Source::from(&*self.directory(source).await?),
                    include: include.clone(),
                    exclude: exclude.clone(),
                    mode: opt_mode(*permissions)?,
                    owner: self.owner(snapshot, owner_root, owner).await?,
                }
            }
            FsChange::Remove { paths } => Plan::Remove {
                paths: paths.iter().map(|p| resolve(p)).collect(),
                base: owner_root.to_string(),
            },
            FsChange::Symlink { target, link_name } => Plan::Symlink {
                target: raw(target),
                path: resolve(link_name),
            },
        })
    }

    /// `owner` (`uid`, `uid:gid`, `name`, `name:group`) resolved against the account files of
    /// the tree at `root` in `snapshot`. As in Dagger, a missing group means gid = uid.
    async fn owner(
        &self,
        snapshot: &Option<SnapshotId>,
        root: &str,
        spec: &str,
    ) -> Result<Option<Owner>> {
        if spec.is_empty() {
            return Ok(None);
        }
        let (passwd, group) = (fs::join(root, "etc/passwd"), fs::join(root, "etc/group"));
        let (passwd, group) = fs::with_root(self.snapshotter(), snapshot.clone(), move |r| {
            Ok((read_account_file(r, &passwd), read_account_file(r, &group)))
        })
        .await?;
        let user = crate::exec::user::resolve(spec, passwd.as_deref(), group.as_deref())
            .map_err(|e| invalid(format!("owner {spec:?}: {e}")))?;
        let gid = if spec.contains(':') {
            user.gid
        } else {
            user.uid
        };
        Ok(Some(Owner { uid: user.uid, gid }))
    }

    /// Writes `plan` on top of `base`, or takes the result from the persistent cache.
    async fn apply(&self, base: Option<SnapshotId>, plan: Plan) -> Result<Option<SnapshotId>> {
        let material = serde_json::json!({ "op": "fs/v1", "base": base, "plan": plan });
        let key = Digest::of(material.to_string().as_bytes());
        // Memoised and single-flight by content too: different nodes (IDs) that make the same
        // change to the same snapshot share one write.
        let memo = self
            .memoised(key.clone(), || async {
                let snapshot = self.apply_once(key, base, plan).await?;
                Ok(super::Memo::Tree(std::sync::Arc::new(TreeRef {
                    snapshot,
                    path: "/".into(),
                })))
            })
            .await?;
        match memo {
            super::Memo::Tree(t) => Ok(t.snapshot.clone()),
            _ => Err(SolveError::Internal("memo type mismatch".into())),
        }
    }

    async fn apply_once(
        &self,
        key: Digest,
        base: Option<SnapshotId>,
        plan: Plan,
    ) -> Result<Option<SnapshotId>> {
        let hit = self.cached_result::<Cached>(&key).await?;
        if let Some(hit) = hit {
            return Ok(hit.snapshot);
        }
        let snapshots = self.snapshotter().clone();
        let written = tokio::task::spawn_blocking(move || execute(&snapshots, base, &plan))
            .await
            .map_err(blocking_error)??;
        let cached = Cached {
            snapshot: written.clone(),
        };
        self.record_result(key, "fs", &cached, written.clone())
            .await?;
        Ok(written)
    }
}

fn read_account_file(root: &Root, path: &str) -> Option<String> {
    let mut buf = Vec::new();
    root.open_file(path)
        .ok()?
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Read-only views of the plan's sources, by snapshot; they stay mounted while it runs.
struct Sources {
    views: HashMap<Option<SnapshotId>, (View, OwnedFd)>,
}

impl Sources {
    fn open(snapshots: &Snapshotter, plan: &Plan) -> Result<Sources> {
        let mut views = HashMap::new();
        for s in plan.sources() {
            if views.contains_key(&s.snapshot) {
                continue;
            }
            let view = snapshots.view(s.snapshot.as_ref())?;
            let fd = fsops::open_dir(view.root()).map_err(at("/"))?;
            views.insert(s.snapshot.clone(), (view, fd));
        }
        Ok(Sources { views })
    }

    fn root(&self, s: &Source) -> Result<BorrowedFd<'_>> {
        self.views
            .get(&s.snapshot)
            .map(|(_, fd)| fd.as_fd())
            .ok_or_else(|| SolveError::Internal("source view missing".into()))
    }

    /// The source directory (symlinks on its path resolve in its snapshot).
    fn dir(&self, s: &Source) -> Result<OwnedFd> {
        fsops::open_dir_in_root(self.root(s)?, Path::new(s.path.trim_start_matches('/')))
            .map_err(at(&s.path))
    }

    /// The source file, opened for reading, and its metadata.
    fn file(&self, s: &Source) -> Result<(std::fs::File, Meta)> {
        let (view, _) = self
            .views
            .get(&s.snapshot)
            .ok_or_else(|| SolveError::Internal("source view missing".into()))?;
        let f = Root::open(view.root())
            .and_then(|r| r.open_file(&s.path))
            .map_err(at(&s.path))?;
        let m = fsops::fstat(f.as_fd()).map_err(at(&s.path))?;
        Ok((f, m))
    }
}

/// Writes `plan` into a new snapshot on `base`; returns it, or `base` when nothing changed.
fn execute(
    snapshots: &Snapshotter,
    base: Option<SnapshotId>,
    plan: &Plan,
) -> Result<Option<SnapshotId>> {
    let sources = Sources::open(snapshots, plan)?;
    let root = snapshots.prepare_exec(base.as_ref())?;
    let changed = {
        let fd = fsops::open_dir(root.path()).map_err(at("/"))?;
        write(fd.as_fd(), plan, &sources)?
    };
    drop(sources);
    if !changed {
        return Ok(base); // dropping `root` discards the unused snapshot
    }
    Ok(Some(snapshots.commit_exec(root)?))
}

fn write(root: BorrowedFd<'_>, plan: &Plan, sources: &Sources) -> Result<bool> {
    let parent_of = |path: &str| -> Result<(OwnedFd, String)> {
        let (dir, name) =
            tree::split(path).ok_or_else(|| invalid(format!("{path}: is a directory")))?;
        let fd = tree::make_dirs(root, dir, PARENT_MODE, None).map_err(at(dir))?;
        Ok((fd, name.to_string_lossy().into_owned()))
    };
    match plan {
        Plan::NewFile {
            path,
            contents,
            mode,
            owner,
            ..
        } => {
            let (dir, name) = parent_of(path)?;
            tree::write_file(dir.as_fd(), OsStr::new(&name), contents, *mode, *owner)
                .map_err(at(path))?;
        }
        Plan::NewDirectory { path, mode } => {
            tree::make_dirs(root, path, *mode, None).map_err(at(path))?;
        }
        Plan::CopyFile {
            path,
            source,
            mode,
            owner,
        } => {
            let (file, meta) = sources.file(source)?;
            let attrs = Attrs {
                mode: *mode,
                owner: *owner,
            };
            let (dir, name) = match tree::open_dir(root, path).map_err(at(path))? {
                Some(dir) => (dir, base_name(&source.path).to_string()),
                None => parent_of(path)?,
            };
            tree::copy_file(&file, &meta, dir.as_fd(), OsStr::new(&name), &attrs, false)
                .map_err(at(path))?;
        }
        Plan::CopyFiles {
            dir,
            sources: files,
            mode,
            owner,
        } => {
            let d = tree::make_dirs(root, dir, PARENT_MODE, None).map_err(at(dir))?;
            let attrs = Attrs {
                mode: *mode,
                owner: *owner,
            };
            for s in files {
                let (file, meta) = sources.file(s)?;
                let name = base_name(&s.path);
                let shown = fs::join(dir, name);
                tree::copy_file(&file, &meta, d.as_fd(), OsStr::new(name), &attrs, false)
                    .map_err(at(&shown))?;
            }
        }
        Plan::CopyDirectory {
            path,
            source,
            include,
            exclude,
            mode,
            owner,
        } => {
            let filter = Filter::new(include, exclude)?;
            let src = sources.dir(source)?;
            let dest = tree::make_dirs(root, path, mode.unwrap_or(PARENT_MODE), *owner)
                .map_err(at(path))?;
            let mut decide = |p: &str, m: &Meta| Ok(filter.decide(p, m.kind == FileKind::Dir));
            let attrs = Attrs {
                mode: *mode,
                owner: *owner,
            };
            tree::Copier::new(dest, attrs, &mut decide)
                .copy_children(src.as_fd())
                .map_err(at(path))?;
        }
        Plan::Remove { paths, base } => {
            let mut removed = false;
            for pattern in paths {
                let matches = if pattern.contains('*') {
                    tree::glob(root, pattern).map_err(at(pattern))?
                } else {
                    vec![pattern.clone()]
                };
                for p in matches {
                    removed |= if p == *base {
                        tree::remove_children(root, &p)
                    } else {
                        tree::remove(root, &p)
                    }
                    .map_err(at(&p))?;
                }
            }
            return Ok(removed);
        }
        Plan::Symlink { target, path } => {
            let (dir, name) = parent_of(path)?;
            tree::make_symlink(dir.as_fd(), OsStr::new(&name), target).map_err(at(path))?;
        }
        Plan::Diff { lower, upper } => {
            let (l, u) = (sources.dir(lower)?, sources.dir(upper)?);
            let dest = fsops::open_dir_in_root(root, Path::new("")).map_err(at("/"))?;
            let mut differ = Differ {
                lower: l,
                upper: u.try_clone().map_err(at("/"))?,
                new_dirs: HashSet::new(),
            };
            let mut decide = |p: &str, m: &Meta| differ.decide(p, m);
            tree::Copier::new(dest, Attrs::default(), &mut decide)
                .copy_children(u.as_fd())
                .map_err(at(&upper.path))?;
        }
    }
    Ok(true)
}

/// Decides what `Directory.diff` copies from the upper tree by comparing with the lower one.
struct Differ {
    lower: OwnedFd,
    upper: OwnedFd,
    /// Directories absent from (or not directories in) the lower tree: all below is new.
    new_dirs: HashSet<String>,
}

/// The entry at `rel` below `base`, without following any symlink: its parent and metadata.
fn lookup(base: BorrowedFd<'_>, rel: &str) -> io::Result<Option<(OwnedFd, Meta)>> {
    let mut dir = fsops::open_dir_in_root(base, Path::new(""))?;
    let mut comps = rel.split('/').filter(|c| !c.is_empty()).peekable();
    while let Some(c) = comps.next() {
        let Some(m) = fsops::lstat_at(dir.as_fd(), OsStr::new(c))? else {
            return Ok(None);
        };
        if comps.peek().is_none() {
            return Ok(Some((dir, m)));
        }
        if m.kind != FileKind::Dir {
            return Ok(None);
        }
        dir = fsops::open_dir_at(dir.as_fd(), OsStr::new(c))?;
    }
    Ok(None)
}

fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let (mut fa, mut fb) = (fsops::open_file_at(a, name)?, fsops::open_file_at(b, name)?);
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        match fb.read_exact(&mut bb[..n]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            other => other?,
        }
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

impl Differ {
    fn decide(&mut self, rel: &str, up: &Meta) -> io::Result<Decision> {
        let mut ancestor = rel;
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            if self.new_dirs.contains(parent) {
                return Ok(Decision::Copy);
            }
            ancestor = parent;
        }
        let low = lookup(self.lower.as_fd(), rel)?;
        let same_header =
            |l: &Meta| l.kind == up.kind && l.mode == up.mode && l.uid == up.uid && l.gid == up.gid;
        let Some((low_dir, l)) = low.filter(|(_, l)| l.kind == up.kind) else {
            if up.kind == FileKind::Dir {
                self.new_dirs.insert(rel.to_string());
            }
            return Ok(Decision::Copy);
        };
        let name = OsStr::new(base_name(rel));
        let same = same_header(&l)
            && match up.kind {
                FileKind::Dir => true,
                FileKind::File => {
                    l.size == up.size
                        && match lookup(self.upper.as_fd(), rel)? {
                            Some((up_dir, _)) => same_file(low_dir.as_fd(), up_dir.as_fd(), name)?,
                            None => false,
                        }
                }
                FileKind::Symlink => match lookup(self.upper.as_fd(), rel)? {
                    Some((up_dir, _)) => {
                        fsops::readlink_at(low_dir.as_fd(), name)?
                            == fsops::readlink_at(up_dir.as_fd(), name)?
                    }
                    None => false,
                },
                _ => l.rdev_major == up.rdev_major && l.rdev_minor == up.rdev_minor,
            };
        Ok(match (up.kind, same) {
            (FileKind::Dir, true) => Decision::Descend,
            (_, true) => Decision::Skip,
            (_, false) => Decision::Copy,
        })
    }
}
