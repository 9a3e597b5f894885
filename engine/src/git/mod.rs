//! Git sources: remote repositories fetched with the (hardened) git CLI into a bare-repository
//! cache, and commits checked out into snapshots.
//!
//! Layout under the directory the engine hands in (`<state>/git`):
//!
//! * `<sha256 of the URL (and credentials)>/`: one bare repository per remote, fetched into on
//!   demand (`refs/dagger/<commit>` keeps each fetched commit);
//! * `home/`: an empty directory, git's `HOME`;
//! * `tmp/`: repositories being created, known_hosts files; emptied at start-up.
//!
//! Operations on one cached repository are serialized (an async mutex per repository). A
//! checkout is written into a fresh snapshot and kept in memory by (repository, commit,
//! `.git` kept or not, depth), so the same tree is never checked out twice in a run.

mod cli;
mod refs;
mod url;

pub use refs::{check_user_ref, is_commit_sha, LookupError, Ref, RemoteRefs};
pub use url::{GitUrl, HttpCredentials, Scheme, DEFAULT_TOKEN_USERNAME};

use crate::error::{Classify, ErrorKind};
use crate::snapshot::{SnapshotError, SnapshotId, Snapshotter};
use crate::util::Singleflight;
use cli::{CmdError, GitCli, RemoteCtx};
use sha2::Digest as _;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GitError {
    #[error("invalid git URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("git URL {url:?}: {reason}")]
    Unsupported { url: String, reason: String },
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidRef {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("{url}: repository does not contain ref {name:?}")]
    RefNotFound { url: String, name: String },
    #[error("{url}: commit {sha} not found: {detail}")]
    CommitNotFound {
        url: String,
        sha: String,
        detail: String,
    },
    #[error("{url}: repository not found: {detail}")]
    RepoNotFound { url: String, detail: String },
    #[error("{url}: authentication failed (check the credentials in the URL): {detail}")]
    Auth { url: String, detail: String },
    #[error("{url}: refusing what the remote sent: {detail}")]
    UnsafeRemote { url: String, detail: String },
    #[error("{url}: git {op} failed: {detail}")]
    Remote {
        url: String,
        op: &'static str,
        detail: String,
    },
    #[error("{url}: a submodule uses a transport this engine does not allow: {detail}")]
    SubmoduleBlocked { url: String, detail: String },
    #[error("{url}: updating submodules failed: {detail}")]
    Submodule { url: String, detail: String },
    #[error("git {op} failed: {detail}")]
    Local { op: String, detail: String },
    #[error("cannot run git (is it installed?): {0}")]
    Spawn(std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for GitError {
    fn kind(&self) -> ErrorKind {
        match self {
            GitError::InvalidUrl { .. }
            | GitError::Unsupported { .. }
            | GitError::InvalidRef { .. }
            | GitError::UnsafeRemote { .. } => ErrorKind::InvalidArgument,
            GitError::RefNotFound { .. }
            | GitError::CommitNotFound { .. }
            | GitError::RepoNotFound { .. } => ErrorKind::NotFound,
            GitError::Auth { .. } | GitError::SubmoduleBlocked { .. } => {
                ErrorKind::PermissionDenied
            }
            GitError::Remote { .. } | GitError::Submodule { .. } => ErrorKind::Unavailable,
            GitError::Local { .. }
            | GitError::Spawn(_)
            | GitError::Io { .. }
            | GitError::Internal(_) => ErrorKind::Internal,
            GitError::Snapshot(e) => e.kind(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + '_ {
    move |source| GitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A remote as `Query.git` received it: validated, credentials separated.
#[derive(Clone, Debug)]
pub struct GitRemote {
    url: GitUrl,
    known_hosts: String,
    /// The stand-in for the client's SSH agent socket (ssh URLs).
    ssh_agent: Option<PathBuf>,
    /// Names the cached repository (and keys its trees).
    key: String,
}

impl GitRemote {
    pub fn url(&self) -> &GitUrl {
        &self.url
    }
}

/// One checked-out tree: the same key always yields the same files.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TreeKey {
    repo: String,
    sha: String,
    keep_git_dir: bool,
    /// History depth in the kept `.git` (`None`: all of it).
    depth: Option<u32>,
    /// The ref checked out in the kept `.git` (its HEAD differs by ref).
    name: Option<String>,
}

/// Cheap to clone; clones share caches and locks.
#[derive(Clone)]
pub struct GitService {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    tmp: PathBuf,
    cli: GitCli,
    snapshots: Snapshotter,
    /// Per cached repository; the flag records that stale lock files were cleared this run.
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
    trees: Mutex<HashMap<TreeKey, SnapshotId>>,
    /// Held while a tree is checked out: a flight taken over from a cancelled caller waits
    /// for the detached checkout still running instead of starting a second one.
    tree_locks: Mutex<HashMap<TreeKey, Arc<tokio::sync::Mutex<()>>>>,
    flights: Singleflight<TreeKey, Result<SnapshotId, Arc<GitError>>>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

impl GitService {
    /// Opens the git cache in `dir` (created if missing), checking trees out into `snapshots`.
    pub fn new(dir: PathBuf, snapshots: Snapshotter) -> Result<Self, GitError> {
        let home = dir.join("home");
        let tmp = dir.join("tmp");
        // Both must start empty: leftovers are half-created repositories or, in home, files
        // git would read as configuration.
        for d in [&home, &tmp] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(io_err(d))?;
            }
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        Ok(GitService {
            inner: Arc::new(Inner {
                cli: GitCli::new(PathBuf::from("git"), home),
                root: dir,
                tmp,
                snapshots,
                repo_locks: Mutex::new(HashMap::new()),
                trees: Mutex::new(HashMap::new()),
                tree_locks: Mutex::new(HashMap::new()),
                flights: Singleflight::new(),
            }),
        })
    }

    /// Validates a remote. `credentials`, when given, replace any in the URL. ssh URLs need
    /// `ssh_agent`: a local socket reaching the client's agent, with a name for whose agent
    /// it is (repositories fetched through different agents are cached apart).
    pub fn remote(
        &self,
        url: &str,
        ssh_known_hosts: &str,
        credentials: Option<HttpCredentials>,
        ssh_agent: Option<(PathBuf, String)>,
    ) -> Result<GitRemote, GitError> {
        let mut url = GitUrl::parse(url)?;
        if let Some(creds) = credentials {
            url = url.with_credentials(creds)?;
        }
        let is_ssh = url.scheme() == Scheme::Ssh;
        if is_ssh && ssh_agent.is_none() {
            return Err(GitError::Unsupported {
                url: url.display().to_string(),
                reason: "ssh URLs need an SSH agent socket: pass sshAuthSocket (host.unixSocket of $SSH_AUTH_SOCK), or use an https URL".into(),
            });
        }
        let mut h = sha2::Sha256::new();
        h.update(url.remote().as_bytes());
        let ssh_agent = match ssh_agent {
            Some((path, identity)) if is_ssh => {
                h.update(b"\0ssh-agent\0");
                h.update(identity.as_bytes());
                Some(path)
            }
            _ => None,
        };
        if let Some(auth) = url.auth() {
            // Separate caches per credential: a commit fetched with one token must not be
            // served to a caller who cannot read the repository.
            h.update(b"\0");
            h.update(sha2::Sha256::digest(auth.header.as_bytes()));
        }
        Ok(GitRemote {
            key: hex::encode(h.finalize()),
            url,
            known_hosts: ssh_known_hosts.to_string(),
            ssh_agent,
        })
    }

    /// Lists the remote's refs (`git ls-remote --symref`).
    pub async fn ls_remote(&self, remote: &GitRemote) -> Result<RemoteRefs, GitError> {
        let op = crate::progress::start(&format!("git ls-remote {}", remote.url.display()), None);
        let result = self.ls_remote_inner(remote).await;
        op.finish(&result);
        result
    }

    async fn ls_remote_inner(&self, remote: &GitRemote) -> Result<RemoteRefs, GitError> {
        let known_hosts = KnownHosts::write(&self.inner.tmp, &remote.known_hosts)?;
        let ctx = RemoteCtx {
            url: Some(&remote.url),
            known_hosts: known_hosts.path(),
            ssh_agent: remote.ssh_agent.as_deref(),
        };
        let out = self
            .inner
            .cli
            .run(
                &self.inner.tmp,
                ctx,
                false,
                &argv(&["ls-remote", "--symref", "--", remote.url.remote()]),
            )
            .await
            .map_err(|e| remote_error(&remote.url, "ls-remote", e))?;
        RemoteRefs::parse(&out).map_err(|detail| GitError::UnsafeRemote {
            url: remote.url.display().to_string(),
            detail,
        })
    }

    /// The snapshot holding `r`'s tree, with its `.git` (history `depth` deep; all of it when
    /// `depth <= 0`) unless `keep_git_dir` is false. Checked out once per run.
    pub async fn tree(
        &self,
        remote: &GitRemote,
        r: &Ref,
        keep_git_dir: bool,
        depth: i32,
    ) -> Result<SnapshotId, Arc<GitError>> {
        if !is_commit_sha(&r.sha) {
            return Err(Arc::new(GitError::Internal(format!(
                "not a commit id: {:?}",
                r.sha
            ))));
        }
        let depth = match (keep_git_dir, u32::try_from(depth)) {
            (false, _) => Some(1),
            (true, Ok(d)) if d > 0 => Some(d),
            (true, _) => None,
        };
        let key = TreeKey {
            repo: remote.key.clone(),
            sha: r.sha.clone(),
            keep_git_dir,
            depth,
            name: if keep_git_dir { r.name.clone() } else { None },
        };
        let what = format!(
            "git tree {} {}",
            remote.url.display(),
            &r.sha[..12.min(r.sha.len())]
        );
        if let Some(id) = self.inner.cached(&key).map_err(Arc::new)? {
            tracing::debug!("git tree {} of {}: cached", r.sha, remote.url.display());
            crate::progress::cached(&what, None);
            return Ok(id);
        }
        // The URL as shown is credential-free (`GitUrl::display`).
        let op = crate::progress::start(&what, None);
        let inner = self.inner.clone();
        let (remote, r) = (remote.clone(), r.clone());
        let result = self
            .inner
            .flights
            .run(key.clone(), move || async move {
                // Detached: a client that goes away must not kill git halfway through a fetch
                // into the shared cache; the finished tree is cached for the next caller.
                let task = tokio::spawn(async move {
                    let lock = inner
                        .tree_locks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key.clone())
                        .or_default()
                        .clone();
                    let _checking_out = lock.lock().await;
                    if let Some(id) = inner.cached(&key)? {
                        return Ok(id);
                    }
                    let id = inner.checkout(&remote, &r, keep_git_dir, depth).await?;
                    inner
                        .trees
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, id.clone());
                    Ok(id)
                });
                match task.await {
                    Ok(res) => res.map_err(Arc::new),
                    Err(e) => Err(Arc::new(GitError::Internal(format!(
                        "checkout task failed: {e}"
                    )))),
                }
            })
            .await;
        op.finish(&result);
        result
    }
}

impl Inner {
    /// The checked-out tree for `key`, claimed for the running operation; a tree the garbage
    /// collector removed is forgotten (and checked out again by the caller).
    fn cached(&self, key: &TreeKey) -> Result<Option<SnapshotId>, GitError> {
        let found = self
            .trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        let Some(id) = found else {
            return Ok(None);
        };
        if self.snapshots.claim(&id)? {
            return Ok(Some(id));
        }
        let mut trees = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        if trees.get(key) == Some(&id) {
            trees.remove(key);
        }
        Ok(None)
    }

    fn repo_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<bool>> {
        self.repo_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    async fn git_local(
        &self,
        cwd: &Path,
        allow_local: bool,
        args: &[OsString],
    ) -> Result<String, GitError> {
        self.cli
            .run(cwd, RemoteCtx::default(), allow_local, args)
            .await
            .map_err(|e| local_error(args, e))
    }

    /// Checks `r` out into a new snapshot.
    async fn checkout(
        &self,
        remote: &GitRemote,
        r: &Ref,
        keep_git_dir: bool,
        depth: Option<u32>,
    ) -> Result<SnapshotId, GitError> {
        let url = &remote.url;
        let known_hosts = KnownHosts::write(&self.tmp, &remote.known_hosts)?;
        let ctx = RemoteCtx {
            url: Some(url),
            known_hosts: known_hosts.path(),
            ssh_agent: remote.ssh_agent.as_deref(),
        };
        let repo = self.root.join(&remote.key);
        let active = self.snapshots.prepare(None)?;
        let fs = active.fs();
        {
            let lock = self.repo_lock(&remote.key);
            let mut cleared = lock.lock().await;
            if !*cleared {
                clear_stale_locks(&repo);
                *cleared = true;
            }
            self.ensure_repo(&repo).await?;
            self.ensure_commit(&repo, url, r, depth, ctx).await?;
            self.git_local(&fs, false, &argv(&["init", "-q"])).await?;
            // Our own cache is the one local source git may read (`protocol.file.allow`).
            let mut fetch = argv(&["fetch", "-q", "--no-tags", "--no-write-fetch-head"]);
            if let Some(d) = depth {
                fetch.push(format!("--depth={d}").into());
            }
            fetch.push("--".into());
            fetch.push(repo.clone().into());
            fetch.push(format!("{}:refs/dagger/checkout", r.sha).into());
            self.git_local(&fs, true, &fetch).await?;
        }
        let sha = r.sha.as_str();
        let fs_dir: &Path = &fs;
        let git = |args: &[&str]| {
            let args = argv(args);
            async move { self.git_local(fs_dir, false, &args).await }
        };
        match r.name.as_deref() {
            Some(branch) if branch.starts_with("refs/heads/") => {
                git(&["update-ref", branch, sha]).await?;
                git(&["symbolic-ref", "HEAD", branch]).await?;
            }
            other => {
                if let Some(name) = other.filter(|n| n.starts_with("refs/")) {
                    git(&["update-ref", name, sha]).await?;
                }
                git(&["update-ref", "--no-deref", "HEAD", sha]).await?;
            }
        }
        git(&["reset", "-q", "--hard", sha]).await?;
        // Credential-free, so a kept .git (which may be exported) never holds a token.
        git(&["remote", "add", "--", "origin", url.remote()]).await?;
        git(&["update-ref", "-d", "refs/dagger/checkout"]).await?;
        git(&["reflog", "expire", "--all", "--expire=now"]).await?;
        if fs.join(".gitmodules").exists() {
            self.update_submodules(&fs, url, ctx).await?;
        }
        if keep_git_dir {
            // An index without stat data: the normalised timestamps below do not make every
            // file look modified.
            git(&["read-tree", "HEAD"]).await?;
        }
        let snapshots = self.snapshots.clone();
        let description = format!("git snapshot for {}#{sha}", url.display());
        tokio::task::spawn_blocking(move || -> Result<SnapshotId, GitError> {
            let size = finish_tree(&active.fs(), keep_git_dir)?;
            let id = snapshots.commit(active, None, None, size)?;
            if let Err(e) = snapshots.label(&id, "source.git.checkout", &description) {
                tracing::debug!("labelling git snapshot {id}: {e}");
            }
            Ok(id)
        })
        .await
        .map_err(|e| GitError::Internal(format!("snapshot commit task failed: {e}")))?
        .inspect(|id| tracing::debug!("git tree {sha} of {}: snapshot {id}", url.display()))
    }

    async fn ensure_repo(&self, repo: &Path) -> Result<(), GitError> {
        if repo.join("HEAD").is_file() {
            return Ok(());
        }
        // Created aside and renamed: a crash never leaves a half-initialized cache entry.
        let tmp = self.tmp.join(unique("repo-"));
        let mut init = argv(&["init", "-q", "--bare", "--"]);
        init.push(tmp.clone().into());
        self.git_local(&self.tmp, false, &init).await?;
        if repo.exists() {
            // Not a repository (no HEAD): whatever it is, it is ours to replace.
            std::fs::remove_dir_all(repo).map_err(io_err(repo))?;
        }
        std::fs::rename(&tmp, repo).map_err(io_err(repo))
    }

    /// Makes sure the cache holds `r.sha` with `depth` commits of history, fetching it (by id,
    /// or by name when the server refuses unadvertised objects) when it does not.
    async fn ensure_commit(
        &self,
        repo: &Path,
        url: &GitUrl,
        r: &Ref,
        depth: Option<u32>,
        ctx: RemoteCtx<'_>,
    ) -> Result<(), GitError> {
        let git_dir: OsString = {
            let mut s = OsString::from("--git-dir=");
            s.push(repo);
            s
        };
        let with_dir = |args: &[&str]| {
            let mut v = vec![git_dir.clone()];
            v.extend(argv(args));
            v
        };
        let shallow = repo.join("shallow").exists();
        if self
            .has_history(repo, &with_dir, &r.sha, depth, shallow)
            .await
        {
            return Ok(());
        }
        let depth_args: Vec<String> = match depth {
            Some(d) => vec![format!("--depth={d}")],
            None if shallow => vec!["--unshallow".into()],
            None => vec![],
        };
        let fetch = |refspec: String, depth_args: Vec<String>| {
            let mut a = with_dir(&[
                "fetch",
                "-q",
                "--no-tags",
                "--no-write-fetch-head",
                "--force",
                "--recurse-submodules=no",
            ]);
            a.extend(depth_args.into_iter().map(OsString::from));
            a.push("--".into());
            a.push(url.remote().into());
            a.push(refspec.into());
            a
        };
        let run = |refspec: String| {
            let depth_args = depth_args.clone();
            async move {
                let res = self
                    .cli
                    .run(&self.tmp, ctx, false, &fetch(refspec.clone(), depth_args))
                    .await;
                match res {
                    // Dumb-HTTP and some old servers cannot make shallow packs.
                    Err(e) if e.stderr().contains("shallow") && e.stderr().contains("support") => {
                        self.cli
                            .run(&self.tmp, ctx, false, &fetch(refspec, vec![]))
                            .await
                    }
                    other => other,
                }
            }
        };
        let dest = format!("refs/dagger/{}", r.sha);
        let by_sha = run(format!("+{}:{dest}", r.sha)).await;
        if let Err(e) = by_sha {
            let named = r
                .name
                .as_deref()
                .filter(|n| *n == "HEAD" || n.starts_with("refs/"));
            let retried = match (classify(&e), named) {
                (Class::Auth | Class::RepoNotFound | Class::Spawn, _) | (_, None) => Err(e),
                (_, Some(name)) => {
                    tracing::debug!("fetching {} by id failed; fetching {name}", r.sha);
                    run(format!("+{name}:{dest}")).await
                }
            };
            if let Err(e) = retried {
                return Err(match classify(&e) {
                    Class::Missing => GitError::CommitNotFound {
                        url: url.display().to_string(),
                        sha: r.sha.clone(),
                        detail: e.detail(),
                    },
                    _ => remote_error(url, "fetch", e),
                });
            }
        }
        let present = self
            .cli
            .run(
                &self.tmp,
                RemoteCtx::default(),
                false,
                &with_dir(&["cat-file", "-e", &format!("{}^{{commit}}", r.sha)]),
            )
            .await;
        if present.is_err() {
            // A named fetch got whatever the ref points at now, which moved since ls-remote.
            return Err(GitError::CommitNotFound {
                url: url.display().to_string(),
                sha: r.sha.clone(),
                detail: "the remote did not send it (did the ref move?)".into(),
            });
        }
        Ok(())
    }

    /// Whether the cache already has `sha` with `depth` commits of (first-parent) history.
    async fn has_history(
        &self,
        repo: &Path,
        with_dir: &impl Fn(&[&str]) -> Vec<OsString>,
        sha: &str,
        depth: Option<u32>,
        shallow: bool,
    ) -> bool {
        let run = |args: Vec<OsString>| async move {
            self.cli
                .run(&self.tmp, RemoteCtx::default(), false, &args)
                .await
        };
        if !repo.join("HEAD").is_file() {
            return false;
        }
        if run(with_dir(&["cat-file", "-e", &format!("{sha}^{{commit}}")]))
            .await
            .is_err()
        {
            return false;
        }
        match depth {
            Some(1) => true,
            _ if !shallow => true,
            None => false,
            Some(d) => {
                let count = run(with_dir(&[
                    "rev-list",
                    "--first-parent",
                    "--count",
                    &format!("--max-count={d}"),
                    sha,
                ]))
                .await;
                count.ok().and_then(|c| c.trim().parse::<u32>().ok()) >= Some(d)
            }
        }
    }

    async fn update_submodules(
        &self,
        fs: &Path,
        url: &GitUrl,
        ctx: RemoteCtx<'_>,
    ) -> Result<(), GitError> {
        let mut args = argv(&["submodule", "update", "--init", "--recursive", "--depth=1"]);
        let mut res = self.cli.run(fs, ctx, false, &args).await;
        if let Err(e) = &res {
            if e.stderr().contains("shallow") && e.stderr().contains("support") {
                args.retain(|a| a != "--depth=1");
                res = self.cli.run(fs, ctx, false, &args).await;
            }
        }
        res.map(|_| ()).map_err(|e| {
            let detail = e.detail();
            match e {
                CmdError::Spawn(e) => GitError::Spawn(e),
                // protocol.file.allow=never (G4), or ext::.
                _ if detail.contains("not allowed") => GitError::SubmoduleBlocked {
                    url: url.display().to_string(),
                    detail,
                },
                _ => GitError::Submodule {
                    url: url.display().to_string(),
                    detail,
                },
            }
        })
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

enum Class {
    Spawn,
    Auth,
    RepoNotFound,
    /// The object or ref asked for is not on the remote.
    Missing,
    Other,
}

fn classify(e: &CmdError) -> Class {
    let s = e.stderr();
    match e {
        CmdError::Spawn(_) => Class::Spawn,
        _ if s.contains("could not read Username")
            || s.contains("could not read Password")
            || s.contains("Authentication failed")
            || s.contains("returned error: 401")
            || s.contains("returned error: 403") =>
        {
            Class::Auth
        }
        _ if s.contains("does not appear to be a git repository")
            || s.contains("repository not exported")
            || s.contains("no such repository")
            || s.contains("returned error: 404")
            || (s.contains("repository") && s.contains("not found")) =>
        {
            Class::RepoNotFound
        }
        _ if s.contains("not our ref")
            || s.contains("unadvertised object")
            || s.contains("couldn't find remote ref")
            || s.contains("no such remote ref") =>
        {
            Class::Missing
        }
        _ => Class::Other,
    }
}

fn remote_error(url: &GitUrl, op: &'static str, e: CmdError) -> GitError {
    let shown = url.display().to_string();
    match classify(&e) {
        Class::Spawn => match e {
            CmdError::Spawn(e) => GitError::Spawn(e),
            _ => GitError::Internal("unreachable".into()),
        },
        Class::Auth => GitError::Auth {
            url: shown,
            detail: e.detail(),
        },
        Class::RepoNotFound => GitError::RepoNotFound {
            url: shown,
            detail: e.detail(),
        },
        Class::Missing | Class::Other => GitError::Remote {
            url: shown,
            op,
            detail: e.detail(),
        },
    }
}

fn local_error(args: &[OsString], e: CmdError) -> GitError {
    match e {
        CmdError::Spawn(e) => GitError::Spawn(e),
        e => GitError::Local {
            op: args
                .iter()
                .map(|a| a.to_string_lossy())
                .find(|a| !a.starts_with('-'))
                .unwrap_or_default()
                .into_owned(),
            detail: e.detail(),
        },
    }
}

/// Lock files left by a git killed mid-operation (an engine crash) would fail every later
/// command; under the repository mutex nothing else can be holding them.
fn clear_stale_locks(repo: &Path) {
    let is_lock = |p: &Path| p.extension().is_some_and(|e| e == "lock");
    let remove = |p: &Path| {
        tracing::warn!("removing stale git lock {}", p.display());
        let _ = std::fs::remove_file(p);
    };
    // HEAD.lock, config.lock, shallow.lock, packed-refs.lock, ...
    for entry in std::fs::read_dir(repo).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) && is_lock(&entry.path()) {
            remove(&entry.path());
        }
    }
    let mut dirs = vec![repo.join("refs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(t) if t.is_file() && is_lock(&entry.path()) => remove(&entry.path()),
                _ => {}
            }
        }
    }
}

/// Drops `.git` when not kept (with the gitlink files submodules leave), sets every mtime to a
/// fixed, non-zero time so a tree's metadata depends only on the commit, and returns the size.
fn finish_tree(fs: &Path, keep_git_dir: bool) -> Result<u64, GitError> {
    use rustix::fs::{utimensat, AtFlags, Timestamps, CWD};
    if !keep_git_dir {
        let dot_git = fs.join(".git");
        std::fs::remove_dir_all(&dot_git).map_err(io_err(&dot_git))?;
    }
    let one = rustix::fs::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: one,
        last_modification: one,
    };
    let set_times = |path: &Path| {
        utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| GitError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })
    };
    let mut size = 0u64;
    let mut pending = vec![fs.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if !keep_git_dir && entry.file_name() == ".git" && !meta.is_dir() {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            } else if meta.is_dir() {
                pending.push(path);
            } else {
                size += meta.len();
                set_times(&path)?;
            }
        }
        dirs.push(dir);
    }
    // Directories last: removing a gitlink above changed its directory's mtime.
    for dir in &dirs {
        set_times(dir)?;
    }
    Ok(size)
}

/// A known_hosts file for one operation, removed afterwards.
struct KnownHosts(Option<PathBuf>);

impl KnownHosts {
    fn write(tmp: &Path, content: &str) -> Result<KnownHosts, GitError> {
        if content.trim().is_empty() {
            return Ok(KnownHosts(None));
        }
        let path = tmp.join(unique("known_hosts-"));
        let mut text = content.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(io_err(&path))?;
        Ok(KnownHosts(Some(path)))
    }

    fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

impl Drop for KnownHosts {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finishing_a_tree_drops_git_metadata_and_fixes_times() {
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path();
        std::fs::create_dir_all(fs.join(".git/modules/sub")).unwrap();
        std::fs::create_dir_all(fs.join("sub")).unwrap();
        std::fs::write(fs.join("sub/.git"), "gitdir: ../.git/modules/sub\n").unwrap();
        std::fs::write(fs.join("sub/a.txt"), "12345").unwrap();
        std::fs::write(fs.join("b.txt"), "123").unwrap();
        std::os::unix::fs::symlink("/nonexistent", fs.join("link")).unwrap();
        let size = finish_tree(fs, false).unwrap();
        assert!(!fs.join(".git").exists());
        assert!(!fs.join("sub/.git").exists());
        assert_eq!(size, 8 + "/nonexistent".len() as u64);
        for p in ["", "sub", "sub/a.txt", "b.txt", "link"] {
            let m = std::fs::symlink_metadata(fs.join(p)).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(m.mtime(), 1, "{p}");
        }
        // Kept: .git stays, with fixed times too.
        std::fs::create_dir_all(fs.join(".git")).unwrap();
        std::fs::write(fs.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        finish_tree(fs, true).unwrap();
        assert!(fs.join(".git/HEAD").is_file());
    }

    #[test]
    fn stale_locks_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        std::fs::create_dir_all(repo.join("refs/dagger")).unwrap();
        for f in [
            "shallow.lock",
            "HEAD",
            "refs/dagger/x.lock",
            "refs/dagger/y",
        ] {
            std::fs::write(repo.join(f), "").unwrap();
        }
        clear_stale_locks(repo);
        assert!(!repo.join("shallow.lock").exists());
        assert!(!repo.join("refs/dagger/x.lock").exists());
        assert!(repo.join("HEAD").exists());
        assert!(repo.join("refs/dagger/y").exists());
    }

    #[test]
    fn remotes_are_keyed_by_url_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::metadata::Metadata::open(&dir.path().join("m.db")).unwrap();
        let snaps = Snapshotter::new(
            crate::snapshot::SnapshotKind::Native,
            dir.path().join("snapshots"),
            dir.path().join("tmp"),
            meta,
        );
        let git = GitService::new(dir.path().join("git"), snaps).unwrap();
        let key = |u: &str| git.remote(u, "", None, None).unwrap().key;
        assert_eq!(
            key("https://Example.com/r.git"),
            key("https://example.com:443/r.git")
        );
        assert_ne!(
            key("https://example.com/r.git"),
            key("https://u:a@example.com/r.git")
        );
        assert_ne!(
            key("https://u:a@example.com/r.git"),
            key("https://u:b@example.com/r.git")
        );
        let e = git
            .remote("git@github.com:o/r.git", "", None, None)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("sshAuthSocket"), "{e}");
        assert!(dir.path().join("git/home").is_dir());
    }
}
