//! `withExec`: run a process on a writable copy of the container's root filesystem with runc,
//! in its own network namespace, and keep the changes as a new snapshot. Results are cached
//! persistently by the content of what the process saw.

use super::node::{ExecArgs, Expect, MountSource};
use super::{fs, ContainerValue, Result, SolveError, Solver};
use crate::exec::{bind_mount, ExecRequest, Executor, Mount};
use crate::network::Network;
use crate::oci::Digest;
use crate::sys::inroot::Root;
use serde::{Deserialize, Serialize};
use std::io::Read as _;
use std::sync::Arc;
use std::time::Instant;

/// How much of each stream an exec error carries (the SDKs print it).
const ERROR_OUTPUT_LIMIT: usize = 64 << 10;
/// Characters of the command line kept in a cache entry's description.
const DESCRIPTION_LIMIT: usize = 1024;

/// What the last exec of a container produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub combined: String,
}

/// A process that exited with a code the caller did not expect.
#[derive(Debug, Clone)]
pub struct ExecFailure {
    pub cmd: Vec<String>,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub oom_killed: bool,
    pub expected_failure: bool,
}

impl ExecFailure {
    pub fn message(&self) -> String {
        let cmd = self.cmd.join(" ");
        if self.oom_killed {
            format!(
                "process \"{cmd}\" was killed by the kernel OOM killer (out of memory): exit code: {}",
                self.exit_code
            )
        } else if self.expected_failure {
            format!("process \"{cmd}\" succeeded, but a failure was expected: exit code: 0")
        } else {
            format!(
                "process \"{cmd}\" did not complete successfully: exit code: {}",
                self.exit_code
            )
        }
    }
}

/// What a process left, whether it ran or could not start.
struct Outcome {
    exit_code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    combined: Vec<u8>,
    oom_killed: bool,
}

/// Runs containers: the executor plus the network each exec joins.
#[derive(Clone)]
pub struct Execution {
    pub executor: Executor,
    pub network: Network,
}

/// The persisted form of an exec result.
#[derive(Serialize, Deserialize)]
struct Cached {
    rootfs: Option<String>,
    exec: ExecResult,
}

impl Execution {
    /// Runs the exec (or finds its cached result), reporting to `op` how it went.
    pub(super) async fn run(
        &self,
        solver: &Solver,
        parent: &ContainerValue,
        args: &ExecArgs,
        op: crate::progress::Op,
    ) -> Result<ContainerValue> {
        let mut cached = false;
        let result = self.run_inner(solver, parent, args, &mut cached).await;
        match &result {
            Ok(_) if cached => op.cached(),
            _ => op.finish(&result),
        }
        result
    }

    async fn run_inner(
        &self,
        solver: &Solver,
        parent: &ContainerValue,
        args: &ExecArgs,
        cached: &mut bool,
    ) -> Result<ContainerValue> {
        let started = Instant::now();
        let argv = argv(parent, args)?;
        let key = cache_key(solver, parent, args, &argv).await?;
        if let Some(hit) = solver.cached_result::<Cached>(&key).await? {
            *cached = true;
            return Ok(with_result(parent, hit.rootfs, hit.exec));
        }
        let lookup_us = micros(started);
        let (rootfs, exec) = self.execute(solver, parent, args, argv).await?;
        let recording = Instant::now();
        let cached = Cached {
            rootfs: rootfs.clone(),
            exec: exec.clone(),
        };
        solver
            .record_result(key, "exec", &cached, rootfs.clone())
            .await?;
        tracing::debug!(
            lookup_us,
            record_us = micros(recording),
            total_us = micros(started),
            "exec solve timing"
        );
        Ok(with_result(parent, rootfs, exec))
    }

    async fn execute(
        &self,
        solver: &Solver,
        parent: &ContainerValue,
        args: &ExecArgs,
        argv: Vec<String>,
    ) -> Result<(Option<String>, ExecResult)> {
        let snapshots = solver.snapshotter().clone();
        let base = parent.rootfs.clone();
        let phase = Instant::now();
        let root = {
            let s = snapshots.clone();
            tokio::task::spawn_blocking(move || s.prepare_exec(base.as_ref()))
                .await
                .map_err(|e| SolveError::Internal(e.to_string()))??
        };
        let cwd = parent.cwd().to_string();
        let stdin = if args.redirect_stdin.is_empty() {
            args.stdin.clone().into_bytes()
        } else {
            let path = fs::join(&cwd, &parent.expand(&args.redirect_stdin, args.expand));
            read_in_root(root.path(), &path)?
        };
        let prepare_us = micros(phase);
        let mounted = materialize(solver, parent, &solver.tmp_dir()).await?;
        let mut env = parent.config.env.clone();
        for ((name, _), value) in parent.secret_env.iter().zip(
            mounted.secret_values[mounted.secret_values.len() - parent.secret_env.len()..].iter(),
        ) {
            env.retain(|kv| kv.split_once('=').map(|(k, _)| k) != Some(name.as_str()));
            env.push(format!("{name}={}", String::from_utf8_lossy(value)));
        }
        let phase = Instant::now();
        let attachment = self
            .network
            .attach("dagger")
            .await
            .map_err(|e| classified(&e))?;
        let attach_us = micros(phase);
        let request = ExecRequest {
            rootfs: root.path().to_path_buf(),
            args: argv.clone(),
            env,
            cwd: cwd.clone(),
            user: parent.config.user.clone(),
            hostname: "dagger".into(),
            stdin: Some(stdin),
            insecure_root_capabilities: args.insecure_root_capabilities,
            no_init: args.no_init,
            netns: Some(attachment.netns.clone()),
            resolv_conf: Some(attachment.resolv_conf.clone()),
            hosts: Some(attachment.hosts.clone()),
            extra_mounts: mounted.specs.clone(),
            ..ExecRequest::default()
        };
        let phase = Instant::now();
        let output = self.executor.run(request).await;
        let run_us = micros(phase);
        let phase = Instant::now();
        if let Err(e) = attachment.release().await {
            tracing::warn!("releasing an exec's network: {e}");
        }
        let release_us = micros(phase);
        let output = match output {
            Ok(o) => Outcome {
                exit_code: o.exit_code,
                stdout: o.stdout,
                stderr: o.stderr,
                combined: o.combined,
                oom_killed: o.oom_killed,
            },
            // A command that cannot start is reported the way a shell reports it (127: not
            // found, 126: not executable), so `expect` and ExecError work as for any failure.
            Err(crate::exec::ExecError::Start(message)) => {
                let code = if message.contains("not found") {
                    127
                } else {
                    126
                };
                let line = format!("{message}\n").into_bytes();
                Outcome {
                    exit_code: code,
                    stdout: Vec::new(),
                    stderr: line.clone(),
                    combined: line,
                    oom_killed: false,
                }
            }
            Err(e) => return Err(classified(&e)),
        };
        let succeeded = match args.expect {
            Expect::Success => output.exit_code == 0,
            Expect::Failure => output.exit_code != 0,
            Expect::Any => true,
        };
        // Secret values never leave in outputs or errors.
        let secrets = mounted.secret_values.clone();
        let text = |b: &[u8]| super::secrets::scrub(&String::from_utf8_lossy(b), &secrets);
        let mut result = ExecResult {
            exit_code: output.exit_code,
            stdout: text(&output.stdout),
            stderr: text(&output.stderr),
            combined: text(&output.combined),
        };
        if !succeeded || output.oom_killed {
            return Err(SolveError::Exec(Box::new(ExecFailure {
                cmd: argv,
                exit_code: output.exit_code,
                stdout: clip(&result.stdout),
                stderr: clip(&result.stderr),
                oom_killed: output.oom_killed,
                expected_failure: args.expect == Expect::Failure && output.exit_code == 0,
            })));
        }
        for (target, stream) in [
            (&args.redirect_stdout, &mut result.stdout),
            (&args.redirect_stderr, &mut result.stderr),
        ] {
            if !target.is_empty() {
                let path = fs::join(&cwd, &parent.expand(target, args.expand));
                write_in_root(root.path(), &path, stream.as_bytes())?;
                stream.clear();
            }
        }
        let phase = Instant::now();
        drop(mounted);
        // What cache listings call this snapshot (secret values never appear there either).
        let description: String = format!(
            "mount / from exec {}",
            super::secrets::scrub(&argv.join(" "), &secrets)
        )
        .chars()
        .take(DESCRIPTION_LIMIT)
        .collect();
        let meta = solver.metadata().clone();
        let snapshot = tokio::task::spawn_blocking(move || -> Result<String> {
            let id = snapshots.commit_exec(root)?;
            if let Err(e) = meta.label_snapshot(&id, "regular", &description) {
                tracing::debug!("labelling exec snapshot {id}: {e}");
            }
            Ok(id)
        })
        .await
        .map_err(|e| SolveError::Internal(e.to_string()))??;
        tracing::debug!(
            prepare_us,
            attach_us,
            run_us,
            release_us,
            commit_us = micros(phase),
            "exec timing"
        );
        Ok((Some(snapshot), result))
    }
}

/// Microseconds since `since`, for the debug timing lines.
fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Keeps a lower layer's error kind (and message) as it crosses into the solver.
fn classified<E: crate::error::Classify + std::fmt::Display>(e: &E) -> SolveError {
    match e.kind() {
        crate::ErrorKind::PermissionDenied => SolveError::PermissionDenied(e.to_string()),
        crate::ErrorKind::Unavailable => SolveError::Unavailable(e.to_string()),
        crate::ErrorKind::InvalidArgument | crate::ErrorKind::NotFound => {
            SolveError::InvalidArgument(e.to_string())
        }
        _ => SolveError::Internal(e.to_string()),
    }
}

/// The command line: args (or the default args), with the entrypoint in front if asked.
fn argv(parent: &ContainerValue, args: &ExecArgs) -> Result<Vec<String>> {
    let mut argv: Vec<String> = args
        .args
        .iter()
        .map(|a| parent.expand(a, args.expand))
        .collect();
    if argv.is_empty() {
        argv = parent.config.cmd.clone();
    }
    if args.use_entrypoint && !parent.config.entrypoint.is_empty() {
        let mut full = parent.config.entrypoint.clone();
        full.extend(argv);
        argv = full;
    }
    if argv.is_empty() {
        return Err(SolveError::InvalidArgument(
            "no command has been set: pass args to withExec or set default args".into(),
        ));
    }
    Ok(argv)
}

/// Everything the process could observe, by content: the same key means the same result.
/// Mounted trees count by their snapshots; a cache volume counts by its key only (its
/// contents are meant to change underneath); secrets count by a salted digest, never by value.
async fn cache_key(
    solver: &Solver,
    parent: &ContainerValue,
    args: &ExecArgs,
    argv: &[String],
) -> Result<Digest> {
    let mut mounts = Vec::new();
    for (path, source) in &parent.mounts {
        let what = match source {
            MountSource::Cache {
                volume, sharing, ..
            } => serde_json::json!({"cache": volume.key, "sharing": sharing}),
            MountSource::Directory { source, read_only } => {
                let t = solver.directory(source).await?;
                serde_json::json!({"dir": *t, "ro": read_only})
            }
            MountSource::File { source } => {
                let t = solver.file(source).await?;
                serde_json::json!({"file": *t})
            }
            MountSource::Temp { size } => serde_json::json!({"tmp": size}),
            MountSource::Secret {
                secret,
                owner,
                mode,
            } => serde_json::json!({
                "secret": solver.secrets().key_material(secret)?, "owner": owner, "mode": mode
            }),
        };
        mounts.push(serde_json::json!([path, what]));
    }
    let mut secret_env = Vec::new();
    for (name, secret) in &parent.secret_env {
        secret_env.push(serde_json::json!([
            name,
            solver.secrets().key_material(secret)?
        ]));
    }
    let material = serde_json::json!({
        "op": "exec/v1",
        "platform": parent.platform,
        "rootfs": parent.rootfs,
        "env": parent.config.env,
        "cwd": parent.cwd(),
        "user": parent.config.user,
        "argv": argv,
        "args": args,
        "mounts": mounts,
        "secretEnv": secret_env,
    });
    Ok(Digest::of(material.to_string().as_bytes()))
}

/// What an exec's mounts hold on to until it ends: writable copies of mounted directories,
/// read-only views, cache volume leases, secret tmpfs mounts.
#[derive(Default)]
struct Mounted {
    specs: Vec<Mount>,
    exec_roots: Vec<crate::snapshot::ExecRoot>,
    views: Vec<crate::snapshot::View>,
    caches: Vec<super::cache_volumes::CacheLease>,
    secret_dirs: Vec<SecretDir>,
    secret_values: Vec<Vec<u8>>,
}

/// A tmpfs holding one secret file; unmounted when the exec ends.
struct SecretDir(std::path::PathBuf);

impl Drop for SecretDir {
    fn drop(&mut self) {
        if let Err(e) = crate::sys::mount::unmount_detach(&self.0) {
            tracing::warn!("cannot unmount secret dir {}: {e}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

static SECRET_DIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn materialize(
    solver: &Solver,
    parent: &ContainerValue,
    tmp: &std::path::Path,
) -> Result<Mounted> {
    let mut m = Mounted::default();
    let snapshots = solver.snapshotter().clone();
    for (path, source) in &parent.mounts {
        match source {
            MountSource::Cache {
                volume,
                source,
                sharing,
                owner,
            } => {
                let seed = match source {
                    Some(d) => Some(solver.directory(d).await?),
                    None => None,
                };
                let ids = if owner.is_empty() {
                    None
                } else {
                    Some(resolve_owner(solver, parent, owner).await?)
                };
                let snaps = snapshots.clone();
                let lease = solver
                    .cache_volumes()
                    .acquire(&volume.key, *sharing, move |dir| {
                        if let Some(t) = &seed {
                            copy_tree_from(&snaps, t, dir)?;
                        }
                        if let Some((uid, gid)) = ids {
                            crate::sys::chown(dir, Some(uid), Some(gid)).map_err(|e| {
                                SolveError::Internal(format!("chown cache volume: {e}"))
                            })?;
                        }
                        Ok(())
                    })
                    .await?;
                m.specs.push(bind_mount(&lease.path, path, false));
                m.caches.push(lease);
            }
            MountSource::Directory { source, read_only } => {
                let t = solver.directory(source).await?;
                let s = snapshots.clone();
                let snap = t.snapshot.clone();
                let root = tokio::task::spawn_blocking(move || s.prepare_exec(snap.as_ref()))
                    .await
                    .map_err(|e| SolveError::Internal(e.to_string()))??;
                let host = Root::open(root.path())
                    .and_then(|r| r.real_path(&t.path))
                    .map_err(|e| SolveError::Fs(fs::io_error(&t.path, e)))?;
                m.specs.push(bind_mount(&host, path, *read_only));
                m.exec_roots.push(root);
            }
            MountSource::File { source } => {
                let t = solver.file(source).await?;
                let s = snapshots.clone();
                let snap = t.snapshot.clone();
                let view = tokio::task::spawn_blocking(move || s.view(snap.as_ref()))
                    .await
                    .map_err(|e| SolveError::Internal(e.to_string()))??;
                let host = Root::open(view.root())
                    .and_then(|r| r.real_path(&t.path))
                    .map_err(|e| SolveError::Fs(fs::io_error(&t.path, e)))?;
                m.specs.push(bind_mount(&host, path, true));
                m.views.push(view);
            }
            MountSource::Temp { size } => {
                let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                if let Some(bytes) = size.filter(|s| *s > 0) {
                    options.push(format!("size={bytes}"));
                }
                let mut spec = Mount::default();
                spec.set_destination(std::path::PathBuf::from(path))
                    .set_typ(Some("tmpfs".into()))
                    .set_source(Some("tmpfs".into()))
                    .set_options(Some(options));
                m.specs.push(spec);
            }
            MountSource::Secret {
                secret,
                owner,
                mode,
            } => {
                let value = solver.secrets().plaintext(secret)?;
                let n = SECRET_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir = tmp.join(format!("secret-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| SolveError::Internal(format!("secret dir: {e}")))?;
                crate::sys::mount::mount_tmpfs(&dir, (value.len() as u64 + 4096).max(65536), 0o700)
                    .map_err(|e| SolveError::Internal(format!("secret tmpfs: {e}")))?;
                let guard = SecretDir(dir.clone());
                let file = dir.join("secret");
                write_secret_file(&file, &value, *mode)?;
                if !owner.is_empty() {
                    let (uid, gid) = resolve_owner(solver, parent, owner).await?;
                    crate::sys::chown(&file, Some(uid), Some(gid))
                        .map_err(|e| SolveError::Internal(format!("chown secret: {e}")))?;
                }
                m.specs.push(bind_mount(&file, path, true));
                m.secret_dirs.push(guard);
                m.secret_values.push(value);
            }
        }
    }
    for (_, secret) in &parent.secret_env {
        m.secret_values.push(solver.secrets().plaintext(secret)?);
    }
    Ok(m)
}

fn write_secret_file(path: &std::path::Path, value: &[u8], mode: i32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode((mode as u32) & 0o7777)
        .open(path)
        .map_err(|e| SolveError::Internal(format!("secret file: {e}")))?;
    std::io::Write::write_all(&mut f, value)
        .map_err(|e| SolveError::Internal(format!("secret file: {e}")))?;
    std::fs::set_permissions(
        path,
        std::os::unix::fs::PermissionsExt::from_mode((mode as u32) & 0o7777),
    )
    .map_err(|e| SolveError::Internal(format!("secret file: {e}")))
}

/// `owner` (uid, uid:gid, name, name:group) against the container's /etc/passwd and /etc/group.
async fn resolve_owner(
    solver: &Solver,
    parent: &ContainerValue,
    owner: &str,
) -> Result<(u32, u32)> {
    let owner = owner.to_string();
    fs::with_root(solver.snapshotter(), parent.rootfs.clone(), move |root| {
        let read = |p: &str| {
            let mut s = String::new();
            root.open_file(p).ok()?.read_to_string(&mut s).ok()?;
            Some(s)
        };
        let (passwd, group) = (read("/etc/passwd"), read("/etc/group"));
        crate::exec::user::resolve(&owner, passwd.as_deref(), group.as_deref())
            .map(|u| (u.uid, u.gid))
            .map_err(|e| FsErrorShim(e).into())
    })
    .await
    .map_err(SolveError::from)
}

/// Carries an owner-resolution message through the fs error type.
struct FsErrorShim(String);

impl From<FsErrorShim> for fs::FsError {
    fn from(e: FsErrorShim) -> Self {
        fs::FsError::Io {
            path: "owner".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.0),
        }
    }
}

/// Seeds a new cache volume from a directory tree.
fn copy_tree_from(
    snapshots: &crate::snapshot::Snapshotter,
    tree: &super::TreeRef,
    dest: &std::path::Path,
) -> Result<()> {
    let view = snapshots.view(tree.snapshot.as_ref())?;
    let src = Root::open(view.root())
        .and_then(|r| r.real_path(&tree.path))
        .map_err(|e| SolveError::Fs(fs::io_error(&tree.path, e)))?;
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dest)
        .output()
        .map_err(|e| SolveError::Internal(format!("seeding cache volume: {e}")))?;
    if !out.status.success() {
        return Err(SolveError::Internal(format!(
            "seeding cache volume: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn with_result(
    parent: &ContainerValue,
    rootfs: Option<String>,
    exec: ExecResult,
) -> ContainerValue {
    let mut next = parent.clone();
    next.image_ref = None;
    next.rootfs = rootfs;
    next.exec = Some(Arc::new(exec));
    next
}

fn clip(s: &str) -> String {
    let t = s.trim();
    let mut start = t.len().saturating_sub(ERROR_OUTPUT_LIMIT);
    while !t.is_char_boundary(start) {
        start += 1;
    }
    t[start..].to_string()
}

fn read_in_root(root: &std::path::Path, path: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    Root::open(root)
        .and_then(|r| r.open_file(path))
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| SolveError::Fs(fs::io_error(path, e)))?;
    Ok(buf)
}

fn write_in_root(root: &std::path::Path, path: &str, bytes: &[u8]) -> Result<()> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("/", path));
    let dir = if dir.is_empty() { "/" } else { dir };
    Root::open(root)
        .and_then(|r| r.create_file(dir, name, bytes))
        .map_err(|e| SolveError::Fs(fs::io_error(path, e)))
}
