//! Running one container process with runc.
//!
//! [`Executor::run`] takes an already-mounted, writable rootfs and a process description,
//! writes an OCI bundle (the default sandbox of engine-facts §5.3, or the insecure variant of
//! §5.1), runs `runc run` with piped stdio, and returns the exit code and the captured output.
//!
//! * **Entitlements.** Every path that starts a process goes through [`Executor::authorize`],
//!   whose [`Authorized`] proof the internal start function requires, so a future terminal or
//!   service path can't skip the `security.insecure` check (CVE-2024-23653).
//! * **Cancellation.** The process runs in a task of its own. Dropping the `run` future tells
//!   that task to `runc kill` the container, `runc delete --force` it, and remove its cgroups,
//!   mount stubs and bundle; [`Executor::wait_idle`] waits for that to finish (engine shutdown).
//!   If the runtime goes away first, the same cleanup runs synchronously.
//! * **Layout** under `state_dir`: `runc/` (runc's `--root`, ours alone), `bundles/<id>/`
//!   (`config.json`, `runc.log`; removed after each run) and `output/` (full copies of output
//!   that outgrew the in-memory limit, owned by [`OutputFile`]). One executor per state dir:
//!   [`Executor::new`] cleans up whatever a crashed engine left there.

pub mod cacerts;
mod cgroup;
mod init;
mod output;
mod rootfs;
mod runc;
mod spec;
pub mod user;

#[cfg(test)]
mod tests;

pub use oci_spec::runtime::{Mount, MountBuilder};
pub use output::OutputFile;
pub use spec::{DEFAULT_CAPS, DEFAULT_PATH, INIT_PATH, MASKED_PATHS, READONLY_PATHS};
pub use user::ResolvedUser;

use crate::error::{Classify, ErrorKind};
use cgroup::{ExecCgroup, Hierarchies};
use oci_spec::runtime::LinuxDevice;
use runc::Runc;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, Notify, Semaphore};

/// Bytes of each stream kept in memory unless the request says otherwise.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 << 20;
/// The init used when [`ExecutorOptions::init`] is `None` (Debian package `tini`).
pub const DEFAULT_INIT: &str = "/usr/bin/tini-static";
pub const DEFAULT_HOSTNAME: &str = "dagger";
/// The smallest memory limit accepted, so that a unit mix-up (bytes for MiB) fails clearly
/// instead of OOM-killing runc's own setup.
pub const MIN_MEMORY_LIMIT: u64 = 4 << 20;

const RUNC_ROOT_DIR: &str = "runc";
const BUNDLES_DIR: &str = "bundles";
const OUTPUT_DIR: &str = "output";

/// How the executor is set up.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The runc binary (`worker.oci.binary`): a path, or a name looked up on `PATH`.
    pub runc: PathBuf,
    /// Where bundles and runc state live (`<state>/executor`).
    pub state_dir: PathBuf,
    /// How many runc processes may run at once; 0 means the number of CPUs.
    pub max_parallelism: usize,
    /// Whether `security.insecure` is granted (`insecure-entitlements`).
    pub allow_insecure: bool,
    /// A static init binary, bind-mounted read-only at `/.init` as PID 1. `None`: [`DEFAULT_INIT`].
    pub init: Option<PathBuf>,
    /// Start even with a runc that is vulnerable to CVE-2024-21626 (tests of old hosts only).
    pub allow_old_runc: bool,
    /// Extra CA certificates (PEM, the engine's `/usr/local/share/ca-certificates`, read once
    /// at start-up) added to the CA bundle of every exec whose rootfs has one ([`cacerts`]).
    /// Empty: none.
    pub extra_ca_certs: Vec<u8>,
}

impl ExecutorOptions {
    /// The options the engine configuration implies, with state under `state_dir`.
    pub fn from_config(config: &crate::config::Config, state_dir: PathBuf) -> Self {
        ExecutorOptions {
            runc: config.worker.binary.clone(),
            state_dir,
            max_parallelism: config.worker.max_parallelism.unwrap_or(0),
            allow_insecure: config.allows(crate::config::Entitlement::SecurityInsecure),
            init: None,
            allow_old_runc: false,
            extra_ca_certs: Vec::new(),
        }
    }
}

/// One process to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The root filesystem: an absolute path to a mounted, writable directory tree.
    pub rootfs: PathBuf,
    /// The command line; the first element is looked up on the `PATH` of `env`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries (image env, then the user's). A default `PATH` is added if missing.
    pub env: Vec<String>,
    /// The working directory, created (owned by the user) if missing. `""` means `/`.
    pub cwd: String,
    /// `""` (root), `uid`, `uid:gid`, `name` or `name:group`, resolved in the rootfs.
    pub user: String,
    /// `""` means [`DEFAULT_HOSTNAME`].
    pub hostname: String,
    /// Bytes fed to the process's stdin, which is then closed. `None`: `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// All the engine's capabilities, no masked or read-only paths, all devices. Needs
    /// `security.insecure`.
    pub insecure_root_capabilities: bool,
    /// Run the command as PID 1 instead of under the init.
    pub no_init: bool,
    /// The network namespace to join. `None`: a fresh one with only loopback.
    pub netns: Option<PathBuf>,
    /// A host file bind-mounted read-only at `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// A host file bind-mounted read-only at `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// More mounts (cache volumes, secrets); sources are host paths.
    pub extra_mounts: Vec<Mount>,
    /// Bytes of each stream kept in memory (the tail); 0 means [`DEFAULT_OUTPUT_LIMIT`].
    pub output_limit: usize,
    /// A memory limit in bytes for all the exec's processes (at least [`MIN_MEMORY_LIMIT`]).
    pub memory_limit: Option<u64>,
}

impl Default for ExecRequest {
    fn default() -> Self {
        ExecRequest {
            rootfs: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            hostname: DEFAULT_HOSTNAME.into(),
            stdin: None,
            insecure_root_capabilities: false,
            no_init: false,
            netns: None,
            resolv_conf: None,
            hosts: None,
            extra_mounts: Vec::new(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            memory_limit: None,
        }
    }
}

/// A bind mount of host path `source` at `destination` (`rbind`, plus `ro` if `readonly`),
/// for [`ExecRequest::extra_mounts`].
pub fn bind_mount(source: &Path, destination: &str, readonly: bool) -> Mount {
    let mut options = vec!["rbind".to_string()];
    if readonly {
        options.push("ro".to_string());
    }
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some("bind".into()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options));
    m
}

/// What a finished process left.
#[derive(Debug)]
pub struct ExecOutput {
    /// The exit status; 128 + the signal number when a signal ended it.
    pub exit_code: i32,
    /// The last `output_limit` bytes of stdout.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The last `output_limit` bytes of stdout and stderr interleaved as they arrived.
    pub combined: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub combined_truncated: bool,
    /// The kernel OOM killer acted on the exec's processes.
    pub oom_killed: bool,
    /// From starting runc to its exit.
    pub duration: Duration,
    /// The full stdout, when it outgrew `output_limit` (otherwise `stdout` is all of it).
    pub stdout_file: Option<OutputFile>,
    pub stderr_file: Option<OutputFile>,
}

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(
        "security.insecure is not allowed: insecureRootCapabilities needs the engine to grant \
         it (insecure-entitlements in engine.toml, or --allow-insecure-entitlement)"
    )]
    InsecureNotAllowed,
    #[error("invalid exec: {0}")]
    InvalidRequest(String),
    #[error("exec user {user:?}: {reason}")]
    User { user: String, reason: String },
    /// The executable or working directory is missing, or runc refused what was asked.
    #[error("{0}")]
    Start(String),
    /// runc failed for a reason that is not the request's fault.
    #[error("runc failed to run the container: {0}")]
    Runtime(String),
    #[error("runc binary {binary:?} not found (set worker.oci.binary or install runc)")]
    RuncNotFound { binary: PathBuf },
    #[error("{0}")]
    RuncTooOld(String),
    #[error("runc is unusable: {0}")]
    RuncUnusable(String),
    #[error("init binary {path}: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("exec cancelled")]
    Cancelled,
    #[error("exec: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("exec: {0}")]
    Internal(String),
}

impl Classify for ExecError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExecError::InsecureNotAllowed => ErrorKind::PermissionDenied,
            ExecError::InvalidRequest(_) | ExecError::User { .. } | ExecError::Start(_) => {
                ErrorKind::InvalidArgument
            }
            ExecError::RuncNotFound { .. }
            | ExecError::RuncTooOld(_)
            | ExecError::RuncUnusable(_)
            | ExecError::Init { .. }
            | ExecError::Cancelled => ErrorKind::Unavailable,
            ExecError::Runtime(_) | ExecError::Io { .. } | ExecError::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Proof that [`Executor::authorize`] accepted a request; starting a process requires one.
#[derive(Debug)]
pub struct Authorized(());

/// Runs processes with runc. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    runc: Runc,
    runc_version: String,
    warnings: Vec<String>,
    bundles: PathBuf,
    output: PathBuf,
    init: PathBuf,
    allow_insecure: bool,
    /// What an insecure exec gets: the engine's capabilities within its bounding set.
    insecure_caps: u64,
    devices: Vec<LinuxDevice>,
    cgroups: Hierarchies,
    permits: Arc<Semaphore>,
    active: AtomicUsize,
    idle: Notify,
    /// `<engine pid>-<executor number>`: the pid tells the start-up sweep whether the engine
    /// that made an id is still alive.
    prefix: String,
    execs: AtomicU64,
    /// Extra CA certificates (PEM) added to each exec's CA bundle; see [`cacerts`].
    extra_cas: Vec<u8>,
}

static EXECUTOR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Inner {
    /// `<prefix>-<counter>-<time>`: unique on the host; see [`Executor::id_prefix`].
    fn new_id(&self) -> String {
        let n = self.execs.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!("{}-{n}-{t:08x}", self.prefix)
    }
}

impl Executor {
    /// Finds runc and checks its version, checks the init, prepares the state directory and
    /// cleans up after a previous engine that crashed.
    ///
    /// runc older than 1.1.12 is refused (CVE-2024-21626) unless `allow_old_runc`, except
    /// Debian 12's `1.1.5+ds1-1+deb12u1` (or a later Debian update), which backports that fix:
    /// it is accepted with a warning. Anything older than 1.2.8 (or 1.3.0–1.3.2) is accepted
    /// with a warning naming CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881.
    pub async fn new(opts: ExecutorOptions) -> Result<Self, ExecError> {
        let runc_path = runc::locate(&opts.runc).ok_or_else(|| ExecError::RuncNotFound {
            binary: opts.runc.clone(),
        })?;
        let state = &opts.state_dir;
        let runc = Runc {
            path: runc_path,
            root: state.join(RUNC_ROOT_DIR),
        };
        let text = runc.version().await.map_err(ExecError::RuncUnusable)?;
        let version = runc::parse_version(&text).ok_or_else(|| {
            ExecError::RuncUnusable(format!(
                "cannot read the version of {} from {:?}",
                runc.path.display(),
                text.trim()
            ))
        })?;
        let mut warnings = Vec::new();
        match runc::judge(&version) {
            runc::Verdict::Accept => {}
            runc::Verdict::Warn(w) => warnings.push(w),
            runc::Verdict::Refuse(r) if opts.allow_old_runc => {
                warnings.push(format!("{r} (allowed by allow_old_runc)"))
            }
            runc::Verdict::Refuse(r) => return Err(ExecError::RuncTooOld(r)),
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }

        let init = opts
            .init
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_INIT));
        init::check(&init).map_err(|reason| ExecError::Init {
            path: init.clone(),
            reason,
        })?;

        let (bundles, output) = (state.join(BUNDLES_DIR), state.join(OUTPUT_DIR));
        for dir in [state, &runc.root, &bundles, &output] {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let caps = crate::sys::caps::current()
            .map_err(|e| ExecError::Internal(format!("reading the engine's capabilities: {e}")))?;
        let parallelism = match opts.max_parallelism {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let executor = Executor {
            inner: Arc::new(Inner {
                runc,
                runc_version: version.raw,
                warnings,
                bundles,
                output,
                init,
                allow_insecure: opts.allow_insecure,
                insecure_caps: caps.grantable(),
                devices: if opts.allow_insecure {
                    spec::host_devices()
                } else {
                    Vec::new()
                },
                cgroups: Hierarchies::discover(),
                permits: Arc::new(Semaphore::new(parallelism)),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
                prefix: format!(
                    "{}-{}",
                    std::process::id(),
                    EXECUTOR_COUNTER.fetch_add(1, Ordering::Relaxed)
                ),
                execs: AtomicU64::new(0),
                extra_cas: opts.extra_ca_certs,
            }),
        };
        executor.sweep().await;
        Ok(executor)
    }

    /// The runc version in use, as `runc --version` prints it.
    pub fn runc_version(&self) -> &str {
        &self.inner.runc_version
    }

    /// Warnings about the setup (a runc with known CVEs), already logged.
    pub fn warnings(&self) -> &[String] {
        &self.inner.warnings
    }

    /// runc's `--root`: `runc --root <this> list` shows the executor's containers.
    pub fn runc_root(&self) -> &Path {
        &self.inner.runc.root
    }

    /// Every exec id of this executor (runc container name, cgroup name `dagger-exec/<id>`)
    /// starts with this and a dash.
    pub fn id_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// How many execs are running or cleaning up.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Waits until no exec is running or cleaning up: after dropping `run` futures (engine
    /// shutdown), this returns once their containers, cgroups and bundles are gone.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The entitlement check, in one place: every path that starts a process (run, and any
    /// future terminal or service) must call it, and gets the proof that starting requires.
    /// `insecureRootCapabilities` needs `security.insecure`.
    pub fn authorize(&self, req: &ExecRequest) -> Result<Authorized, ExecError> {
        if req.insecure_root_capabilities && !self.inner.allow_insecure {
            return Err(ExecError::InsecureNotAllowed);
        }
        Ok(Authorized(()))
    }

    /// Runs one process to completion in `req.rootfs`. A non-zero exit is not an error; a
    /// process that could not start is. Dropping the future kills and removes the container.
    pub async fn run(&self, req: ExecRequest) -> Result<ExecOutput, ExecError> {
        let proof = self.authorize(&req)?;
        let req = normalize(req)?;
        let (_cancel, cancelled) = oneshot::channel::<()>();
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        let active = ActiveGuard(self.inner.clone());
        let this = self.clone();
        let task = tokio::spawn(async move {
            let _active = active;
            this.start(req, proof, cancelled).await
        });
        // `_cancel` lives until here: if this future is dropped first, the task sees it.
        task.await
            .map_err(|e| ExecError::Internal(format!("exec task failed: {e}")))?
    }

    async fn start(
        &self,
        req: ExecRequest,
        _proof: Authorized,
        mut cancelled: oneshot::Receiver<()>,
    ) -> Result<ExecOutput, ExecError> {
        let queued = Instant::now();
        let _permit = tokio::select! {
            p = self.inner.permits.clone().acquire_owned() => {
                p.map_err(|_| ExecError::Internal("the executor is closed".into()))?
            }
            _ = &mut cancelled => return Err(ExecError::Cancelled),
        };
        let permit_us = micros(queued);
        let id = self.inner.new_id();
        let mut cleanup = Cleanup::new(self.inner.clone(), &id, &req.rootfs);
        let result = self
            .start_inner(&id, req, &mut cleanup, &mut cancelled)
            .await;
        let cleaning = Instant::now();
        // Delivered output owns its spill files; otherwise they are the cleanup's.
        cleanup.run(result.is_ok()).await;
        tracing::debug!(
            id = %id,
            permit_us,
            cleanup_us = micros(cleaning),
            "executor cleanup timing"
        );
        result
    }

    async fn start_inner(
        &self,
        id: &str,
        mut req: ExecRequest,
        cleanup: &mut Cleanup,
        cancelled: &mut oneshot::Receiver<()>,
    ) -> Result<ExecOutput, ExecError> {
        let inner = &self.inner;
        let phase = Instant::now();
        let bundle = inner.bundles.join(id);
        std::fs::create_dir(&bundle).map_err(io_err("creating bundle", &bundle))?;
        cleanup.bundle = Some(bundle.clone());
        if !inner.extra_cas.is_empty() {
            // First, so that the request's own mounts at the same paths win.
            let ca_mounts = cacerts::bundle_mounts(&req.rootfs, &inner.extra_cas, &bundle);
            req.extra_mounts.splice(0..0, ca_mounts);
        }

        let mountpoints = self.mountpoints(&req);
        let prep = {
            let req = req.clone();
            let mountpoints = mountpoints.clone();
            tokio::task::spawn_blocking(move || prepare(&req, &mountpoints))
        };
        // Not raced against cancellation: the blocking task would go on creating stubs that
        // nobody removes. It is short; cancellation is checked right after.
        let prepared = prep
            .await
            .map_err(|e| ExecError::Internal(format!("preparing the rootfs: {e}")))??;
        cleanup.stubs = prepared.stubs;
        if !matches!(
            cancelled.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ) {
            return Err(ExecError::Cancelled);
        }
        let prepare_us = micros(phase);

        let phase = Instant::now();
        let cg = ExecCgroup::create(&inner.cgroups, id, req.memory_limit).map_err(|e| {
            if req.memory_limit.is_some() {
                ExecError::InvalidRequest(format!("cannot apply the memory limit: {e}"))
            } else {
                ExecError::Internal(format!("creating the exec's cgroup: {e}"))
            }
        })?;
        cleanup.cgroup = Some(cg);
        let cgroup_us = micros(phase);

        let phase = Instant::now();
        let mut args = Vec::with_capacity(req.args.len() + 2);
        if !req.no_init {
            args.extend([INIT_PATH.to_string(), "--".to_string()]);
        }
        args.extend(req.args.iter().cloned());
        let input = spec::SpecInput {
            rootfs: req.rootfs.clone(),
            args,
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            uid: prepared.user.uid,
            gid: prepared.user.gid,
            additional_gids: prepared.user.additional_gids.clone(),
            hostname: req.hostname.clone(),
            insecure_caps: req
                .insecure_root_capabilities
                .then_some(inner.insecure_caps),
            netns: req.netns.clone(),
            resolv_conf: req.resolv_conf.clone(),
            hosts: req.hosts.clone(),
            init: (!req.no_init).then(|| inner.init.clone()),
            extra_mounts: req.extra_mounts.clone(),
            cgroups_path: ExecCgroup::runc_path(id),
            cgroup_v2: inner.cgroups.unified,
            memory_limit: req.memory_limit,
            devices: inner.devices.clone(),
        };
        let spec = spec::build(&input).map_err(ExecError::InvalidRequest)?;
        let config = bundle.join("config.json");
        let json = serde_json::to_vec(&spec)
            .map_err(|e| ExecError::Internal(format!("serializing the runtime spec: {e}")))?;
        std::fs::write(&config, json).map_err(io_err("writing", &config))?;
        let spec_us = micros(phase);

        let log = bundle.join("runc.log");
        let (log_s, bundle_s) = (log.to_string_lossy(), bundle.to_string_lossy());
        let std_cmd = inner.runc.command(&[
            "--log",
            &log_s,
            "--log-format",
            "json",
            "run",
            "--bundle",
            &bundle_s,
            id,
        ]);
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(io_err("starting", &inner.runc.path))?;
        let spawn_us = micros(started);
        cleanup.started = true;

        let stdin_pipe = child.stdin.take();
        let stdin_data = req.stdin.unwrap_or_default();
        let feed = async move {
            if let Some(mut pipe) = stdin_pipe {
                // A process that exits without reading its stdin is not an error.
                let _ = pipe.write_all(&stdin_data).await;
            }
        };
        let spill = inner.output.join(id);
        cleanup.spill = Some(spill.clone());
        let capture = output::capture(
            child.stdout.take(),
            child.stderr.take(),
            req.output_limit,
            &spill,
        );
        let work = async {
            let (captured, status, ()) = tokio::join!(capture, child.wait(), feed);
            (captured, status)
        };
        let finished = tokio::select! {
            r = work => Some(r),
            _ = &mut *cancelled => None,
        };
        let Some((captured, status)) = finished else {
            stop(&inner.runc, id, &mut child).await;
            return Err(ExecError::Cancelled);
        };
        let duration = started.elapsed();
        let status = status.map_err(io_err("waiting for", &inner.runc.path))?;
        let exit_code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let oom_killed = cleanup.cgroup.as_ref().is_some_and(|cg| cg.oom_killed());

        if !status.success() {
            let log_text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
            let errors = runc::log_errors(&log_text);
            // runc's own fatal error starts so; a container exiting non-zero logs nothing.
            if let Some(failure) = errors
                .iter()
                .rev()
                .find_map(|m| m.strip_prefix("runc run failed: "))
            {
                return Err(if runc::is_user_error(failure) {
                    ExecError::Start(failure.to_string())
                } else {
                    ExecError::Runtime(failure.to_string())
                });
            }
            if !errors.is_empty() {
                tracing::debug!("runc logged for exec {id}: {}", errors.join("; "));
            }
        }
        tracing::debug!(
            id,
            prepare_us,
            cgroup_us,
            spec_us,
            spawn_us,
            runc_us = duration.as_micros() as u64,
            "executor timing"
        );
        Ok(ExecOutput {
            exit_code,
            stdout_truncated: captured.stdout.truncated(),
            stderr_truncated: captured.stderr.truncated(),
            combined_truncated: captured.combined.truncated(),
            stdout: captured.stdout.into_vec(),
            stderr: captured.stderr.into_vec(),
            combined: captured.combined.into_vec(),
            oom_killed,
            duration,
            stdout_file: captured.stdout_file,
            stderr_file: captured.stderr_file,
        })
    }

    /// The mount points the executor adds to the rootfs: `(path, directory?)`.
    fn mountpoints(&self, req: &ExecRequest) -> Vec<(String, rootfs::Leaf)> {
        let mut out = Vec::new();
        if !req.no_init {
            out.push((INIT_PATH.to_string(), rootfs::Leaf::File));
        }
        if req.resolv_conf.is_some() {
            out.push(("/etc/resolv.conf".to_string(), rootfs::Leaf::File));
        }
        if req.hosts.is_some() {
            out.push(("/etc/hosts".to_string(), rootfs::Leaf::File));
        }
        for m in &req.extra_mounts {
            let is_bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
            let file_source = is_bind && m.source().as_ref().is_some_and(|s| s.is_file());
            out.push((
                m.destination().to_string_lossy().into_owned(),
                if file_source {
                    rootfs::Leaf::File
                } else {
                    rootfs::Leaf::Dir
                },
            ));
        }
        out
    }

    /// Removes what a crashed engine left in this state directory: containers (killed), their
    /// cgroups, bundles and spilled output. Empty exec cgroups of engines that are gone are
    /// removed too; cgroups of live engines are never touched.
    async fn sweep(&self) {
        let inner = &self.inner;
        let mut ids: Vec<String> = std::fs::read_dir(&inner.bundles)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.extend(inner.runc.list().await.unwrap_or_default());
        ids.sort();
        ids.dedup();
        for id in &ids {
            tracing::info!("removing exec {id} left by a previous engine");
            let _ = inner.runc.call(&["delete", "--force", id]).await;
            ExecCgroup::existing(&inner.cgroups, id).remove().await;
            let _ = std::fs::remove_dir_all(inner.runc.root.join(id));
            let _ = std::fs::remove_dir_all(inner.bundles.join(id));
        }
        if let Ok(dir) = std::fs::read_dir(&inner.output) {
            for e in dir.filter_map(|e| e.ok()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for id in cgroup::leftover_ids(&inner.cgroups) {
            let pid = id.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !crate::sys::proc::process_exists(p)) {
                ExecCgroup::existing(&inner.cgroups, &id).try_remove(false);
            }
        }
    }
}

struct ActiveGuard(Arc<Inner>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Microseconds since `since`, for the debug timing lines.
fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Kills a running container: `runc kill` (retried while runc may still be creating it), then
/// waits for `runc run` to exit, SIGKILLing it if it won't, then `runc delete --force`.
async fn stop(runc: &Runc, id: &str, child: &mut tokio::process::Child) {
    for _ in 0..5 {
        if runc.call(&["kill", id, "KILL"]).await.is_ok() {
            break;
        }
        if !matches!(child.try_wait(), Ok(None)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let _ = runc.call(&["delete", "--force", id]).await;
}

/// Everything an exec leaves to undo, undone by [`Cleanup::run`], or synchronously on drop if
/// the task was dropped before it could run (the runtime shutting down).
struct Cleanup {
    inner: Arc<Inner>,
    id: String,
    rootfs: PathBuf,
    bundle: Option<PathBuf>,
    stubs: Vec<rootfs::Stub>,
    cgroup: Option<ExecCgroup>,
    /// Where output spills go (`<spill>.stdout`, `<spill>.stderr`).
    spill: Option<PathBuf>,
    /// runc was started: its state may need deleting.
    started: bool,
    armed: bool,
}

impl Cleanup {
    fn new(inner: Arc<Inner>, id: &str, rootfs: &Path) -> Cleanup {
        Cleanup {
            inner,
            id: id.to_string(),
            rootfs: rootfs.to_path_buf(),
            bundle: None,
            stubs: Vec::new(),
            cgroup: None,
            spill: None,
            started: false,
            armed: true,
        }
    }

    async fn run(&mut self, delivered: bool) {
        if let Some(cg) = &self.cgroup {
            if !cg.remove().await {
                tracing::warn!("exec {}: cgroups could not be removed", self.id);
            }
        }
        if delivered {
            self.spill = None;
        }
        self.finish_files();
        self.armed = false;
    }

    fn finish_files(&mut self) {
        if let Some(spill) = self.spill.take() {
            for ext in ["stdout", "stderr"] {
                let _ = std::fs::remove_file(spill.with_extension(ext));
            }
        }
        if self.started {
            // Only left behind when runc run died before it could clean up itself.
            let _ = std::fs::remove_dir_all(self.inner.runc.root.join(&self.id));
        }
        if let Err(e) = rootfs::remove_stubs(&self.rootfs, &self.stubs) {
            tracing::warn!("exec {}: removing mount stubs: {e}", self.id);
        }
        if let Some(b) = self.bundle.take() {
            let _ = std::fs::remove_dir_all(b);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.started {
            let runc = &self.inner.runc;
            let _ = runc.call_blocking(&["kill", &self.id, "KILL"]);
            let _ = runc.call_blocking(&["delete", "--force", &self.id]);
        }
        if let Some(cg) = &self.cgroup {
            cg.remove_blocking();
        }
        self.finish_files();
    }
}

/// Checks and normalizes a request: nothing runc would reject late, or that could reach the
/// host, gets through.
fn normalize(mut req: ExecRequest) -> Result<ExecRequest, ExecError> {
    let bad = |m: String| Err(ExecError::InvalidRequest(m));
    if req.args.first().is_none_or(|a| a.is_empty()) {
        return bad("no command to run: args is empty".into());
    }
    if !req.rootfs.is_absolute() {
        return bad(format!(
            "rootfs {} is not an absolute path",
            req.rootfs.display()
        ));
    }
    let nul = |s: &str| s.contains('\0');
    if req.args.iter().any(|a| nul(a))
        || req.env.iter().any(|e| nul(e))
        || nul(&req.cwd)
        || nul(&req.user)
        || nul(&req.hostname)
    {
        return bad("arguments, environment, working directory, user and hostname must not contain NUL bytes".into());
    }
    if let Some(e) = req
        .env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        return bad(format!("environment entry {e:?} is not KEY=VALUE"));
    }
    if !req.env.iter().any(|e| e.starts_with("PATH=")) {
        req.env.push(DEFAULT_PATH.to_string());
    }

    let cwd = rootfs::clean(&req.cwd);
    // /proc is procfs in the container; a working directory there (`/proc/self/fd/N`) is how
    // CVE-2024-21626 reached the host.
    if rootfs::is_under(&cwd, "/proc") {
        return bad(format!("working directory {:?} is inside /proc", req.cwd));
    }
    req.cwd = cwd;

    if req.hostname.is_empty() {
        req.hostname = DEFAULT_HOSTNAME.into();
    }
    if req.hostname.len() > 64 {
        return bad(format!(
            "hostname {:?} is longer than 64 bytes",
            req.hostname
        ));
    }
    if req.output_limit == 0 {
        req.output_limit = DEFAULT_OUTPUT_LIMIT;
    }
    if let Some(limit) = req.memory_limit {
        if limit < MIN_MEMORY_LIMIT {
            return bad(format!(
                "memory limit {limit} is below the minimum of {MIN_MEMORY_LIMIT} bytes"
            ));
        }
    }
    for m in &req.extra_mounts {
        let dest = m.destination().to_string_lossy();
        if !dest.starts_with('/') || nul(&dest) {
            return bad(format!(
                "mount destination {dest:?} is not an absolute path"
            ));
        }
        if rootfs::clean(&dest) == "/" || rootfs::is_under(&dest, "/proc") {
            return bad(format!("cannot mount over {dest:?}"));
        }
    }
    for (what, p) in [("resolv.conf", &req.resolv_conf), ("hosts", &req.hosts)] {
        if let Some(p) = p {
            if !p.is_file() {
                return bad(format!("{what} file {} does not exist", p.display()));
            }
        }
    }
    Ok(req)
}

struct Prepared {
    user: ResolvedUser,
    stubs: Vec<rootfs::Stub>,
}

/// The rootfs side of an exec (blocking): resolve the user, create the working directory,
/// check the executable, create mount stubs.
fn prepare(
    req: &ExecRequest,
    mountpoints: &[(String, rootfs::Leaf)],
) -> Result<Prepared, ExecError> {
    use std::os::fd::AsFd;
    let rootfs = &req.rootfs;
    let root = crate::sys::inroot::Root::open(rootfs)
        .map_err(|e| ExecError::InvalidRequest(format!("rootfs {}: {e}", rootfs.display())))?;
    let user = rootfs::resolve_user(&root, &req.user).map_err(|reason| ExecError::User {
        user: req.user.clone(),
        reason,
    })?;
    let root_fd = crate::sys::fsops::open_dir(rootfs).map_err(io_err("opening", rootfs))?;
    rootfs::ensure_path(
        root_fd.as_fd(),
        &req.cwd,
        rootfs::Leaf::Dir,
        Some((user.uid, user.gid)),
        &mut Vec::new(),
    )
    .map_err(|e| ExecError::Start(format!("cannot create working directory {}: {e}", req.cwd)))?;

    let path_env = req.env.iter().rev().find_map(|e| e.strip_prefix("PATH="));
    let hidden: Vec<String> = mountpoints.iter().map(|(p, _)| p.clone()).collect();
    let arg0 = req.args.first().map_or("", String::as_str);
    if let rootfs::Lookup::NotFound(message) =
        rootfs::find_executable(&root, arg0, path_env, &req.cwd, &hidden)
    {
        return Err(ExecError::Start(message));
    }

    let mut stubs = Vec::new();
    for (path, leaf) in mountpoints {
        if let Err(e) = rootfs::ensure_path(root_fd.as_fd(), path, *leaf, None, &mut stubs) {
            // runc resolves mount targets safely itself; it only leaves its stub behind.
            tracing::debug!("cannot create mount point {path} in the rootfs: {e}");
        }
    }
    rootfs::refresh_stubs(root_fd.as_fd(), &mut stubs);
    Ok(Prepared { user, stubs })
}
