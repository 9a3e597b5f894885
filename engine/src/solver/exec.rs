//! `withExec`: run a process on a writable copy of the container's root filesystem with runc,
//! in its own network namespace, and keep the changes as a new snapshot. Results are cached
//! persistently by the content of what the process saw.

use super::node::{ExecArgs, Expect};
use super::{fs, ContainerValue, Result, SolveError, Solver};
use crate::exec::{ExecRequest, Executor};
use crate::metadata::ResultRecord;
use crate::network::Network;
use crate::oci::Digest;
use crate::sys::inroot::Root;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;

/// How much of each stream an exec error carries (the SDKs print it).
const ERROR_OUTPUT_LIMIT: usize = 64 << 10;

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
    pub(super) async fn run(
        &self,
        solver: &Solver,
        parent: &ContainerValue,
        args: &ExecArgs,
    ) -> Result<ContainerValue> {
        let argv = argv(parent, args)?;
        let key = cache_key(parent, args, &argv);
        if let Some(hit) = self.cached(solver, &key).await? {
            return Ok(with_result(parent, hit.rootfs, hit.exec));
        }
        let (rootfs, exec) = self.execute(solver, parent, args, argv).await?;
        let record = ResultRecord {
            kind: "exec".into(),
            value: serde_json::to_string(&Cached {
                rootfs: rootfs.clone(),
                exec: exec.clone(),
            })
            .map_err(|e| SolveError::Internal(e.to_string()))?,
            snapshot: rootfs.clone(),
        };
        let meta = solver.metadata().clone();
        tokio::task::spawn_blocking(move || meta.put_result(&key, &record))
            .await
            .map_err(|e| SolveError::Internal(e.to_string()))??;
        Ok(with_result(parent, rootfs, exec))
    }

    async fn cached(&self, solver: &Solver, key: &Digest) -> Result<Option<Cached>> {
        let meta = solver.metadata().clone();
        let key = key.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<Cached>> {
            let Some(record) = meta.get_result(&key)? else {
                return Ok(None);
            };
            // A result whose snapshot is gone (or unreadable) is recomputed.
            if let Some(s) = &record.snapshot {
                if meta.get_snapshot(s)?.is_none() {
                    return Ok(None);
                }
            }
            Ok(serde_json::from_str(&record.value).ok())
        })
        .await
        .map_err(|e| SolveError::Internal(e.to_string()))??;
        Ok(found)
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
        let attachment = self
            .network
            .attach("dagger")
            .await
            .map_err(|e| classified(&e))?;
        let request = ExecRequest {
            rootfs: root.path().to_path_buf(),
            args: argv.clone(),
            env: parent.config.env.clone(),
            cwd: cwd.clone(),
            user: parent.config.user.clone(),
            hostname: "dagger".into(),
            stdin: Some(stdin),
            insecure_root_capabilities: args.insecure_root_capabilities,
            no_init: args.no_init,
            netns: Some(attachment.netns.clone()),
            resolv_conf: Some(attachment.resolv_conf.clone()),
            hosts: Some(attachment.hosts.clone()),
            ..ExecRequest::default()
        };
        let output = self.executor.run(request).await;
        if let Err(e) = attachment.release().await {
            tracing::warn!("releasing an exec's network: {e}");
        }
        let output = output.map_err(|e| classified(&e))?;
        let succeeded = match args.expect {
            Expect::Success => output.exit_code == 0,
            Expect::Failure => output.exit_code != 0,
            Expect::Any => true,
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
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
        let snapshot = tokio::task::spawn_blocking(move || snapshots.commit_exec(root))
            .await
            .map_err(|e| SolveError::Internal(e.to_string()))??;
        Ok((Some(snapshot), result))
    }
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
fn cache_key(parent: &ContainerValue, args: &ExecArgs, argv: &[String]) -> Digest {
    let material = serde_json::json!({
        "op": "exec/v1",
        "platform": parent.platform,
        "rootfs": parent.rootfs,
        "env": parent.config.env,
        "cwd": parent.cwd(),
        "user": parent.config.user,
        "argv": argv,
        "args": args,
    });
    Digest::of(material.to_string().as_bytes())
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
