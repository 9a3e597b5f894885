//! Helpers the benchmark binaries (`src/bin/bench-*.rs`) share: settings from the
//! environment, tool lookup, timing statistics, CPU accounting from /proc, describing the disk a
//! run used, and starting and querying a release engine.

use anyhow::{bail, ensure, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// "ext4 on /dev/loop0, journaled, mounted at /x, statfs magic 0xef53" for the filesystem
/// holding `dir`.
pub fn describe_fs(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some((unescape_mount(point), fstype.to_string(), dev.to_string()))
        })
        .filter(|(point, _, _)| dir.starts_with(point))
        .fold(None::<(PathBuf, String, String)>, |best, cur| match &best {
            Some((p, _, _)) if p.as_os_str().len() > cur.0.as_os_str().len() => best,
            _ => Some(cur),
        });
    let magic = nix::sys::statfs::statfs(&dir)
        .map(|st| format!("statfs magic {:#x}", st.filesystem_type().0))
        .unwrap_or_else(|e| format!("statfs failed: {e}"));
    match best {
        Some((point, fstype, dev)) => {
            let journal = if fstype == "ext4" {
                let name = dev.rsplit('/').next().unwrap_or_default();
                let journaled = std::fs::read_dir("/proc/fs/jbd2")
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with(name))
                    })
                    .unwrap_or(false);
                if journaled {
                    ", journaled"
                } else {
                    ", NO journal"
                }
            } else {
                ""
            };
            format!(
                "{fstype} on {dev}{journal}, mounted at {}, {magic}",
                point.display()
            )
        }
        None => format!("unknown filesystem, {magic}"),
    }
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
pub fn unescape_mount(s: &str) -> PathBuf {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

pub fn env_or<T>(name: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => bail!("{name}: {e}"),
    }
}

pub fn which(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} is not on PATH: install the Debian package {package} (the bench script installs it)"
            )
        })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sorts `v` and returns its min, median (mean of the middle two for even lengths) and max.
pub fn min_med_max(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], med, v[n - 1])
}

pub fn run_checked(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    check_output(&out, what)?;
    Ok(out)
}

/// Fails, with both outputs, unless `out` is a successful exit.
pub fn check_output(out: &std::process::Output, what: &str) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Unmounts whatever is still mounted under `dir`, then deletes it.
pub fn remove_tree(dir: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut under: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount)
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first.
    under.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for m in under {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

// ---- settings shared by the bench binaries -----------------------------------------------------

/// The engine binary: the first argument, else `DAGGER_ENGINE_BIN`, else the `dagger-engine`
/// next to this executable. It must exist.
pub fn engine_bin() -> Result<PathBuf> {
    let engine_bin = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("DAGGER_ENGINE_BIN") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .context("cannot find this executable's path")?
                .with_file_name("dagger-engine"),
        },
    };
    ensure!(
        engine_bin.is_file(),
        "engine binary {} not found; build it with `cargo build --release -p dagger-engine` and pass its path",
        engine_bin.display()
    );
    Ok(engine_bin)
}

/// `BENCH_LAYOUT`: the OCI layout holding the image (`script` sets it up).
pub fn oci_layout(script: &str) -> Result<PathBuf> {
    let layout = PathBuf::from(std::env::var_os("BENCH_LAYOUT").with_context(|| {
        format!("set BENCH_LAYOUT to the OCI layout holding the image ({script} does)")
    })?);
    ensure!(
        layout.join("index.json").is_file(),
        "{} is not an OCI layout",
        layout.display()
    );
    Ok(layout)
}

/// `BENCH_STATE_PARENT`: the directory on the filesystem being measured (`script` mounts it).
pub fn state_parent(script: &str) -> Result<PathBuf> {
    let parent = PathBuf::from(std::env::var_os("BENCH_STATE_PARENT").with_context(|| {
        format!(
            "set BENCH_STATE_PARENT to a directory on the filesystem to measure ({script} does)"
        )
    })?);
    ensure!(
        parent.is_dir(),
        "BENCH_STATE_PARENT {} is not a directory",
        parent.display()
    );
    Ok(parent)
}

/// `BENCH_RUNS`: timed runs per tool, at least one.
pub fn runs(default: usize) -> Result<usize> {
    let runs: usize = env_or("BENCH_RUNS", default)?;
    ensure!(runs >= 1, "BENCH_RUNS must be at least 1");
    Ok(runs)
}

/// `BENCH_TOOLS` (comma-separated names, `default` when unset), each one of `known`.
pub fn tools<T: Copy>(default: &str, known: &[(&str, T)]) -> Result<Vec<T>> {
    let tools = env_or("BENCH_TOOLS", default.to_string())?
        .split(',')
        .map(|t| {
            let t = t.trim();
            match known.iter().find(|(name, _)| *name == t) {
                Some((_, tool)) => Ok(*tool),
                None => bail!(
                    "BENCH_TOOLS: unknown tool {t:?} ({})",
                    known
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(!tools.is_empty(), "BENCH_TOOLS is empty");
    Ok(tools)
}

/// The settings the tool-comparing benches (pull, push, exec) share.
pub struct Common<T> {
    pub engine_bin: PathBuf,
    /// `BENCH_STATE_PARENT`.
    pub parent: PathBuf,
    /// `BENCH_DISK`: what `parent` is, for the report.
    pub disk: String,
    pub runs: usize,
    /// `BENCH_WARMUP`: untimed rounds first.
    pub warmup: usize,
    pub tools: Vec<T>,
}

/// Reads [`Common`]; `script` is the bench script that sets the environment up, the other
/// arguments the defaults of `BENCH_DISK`, `BENCH_RUNS`, `BENCH_WARMUP` and `BENCH_TOOLS`.
pub fn common<T: Copy>(
    script: &str,
    disk: &str,
    runs_default: usize,
    warmup: usize,
    tools_default: &str,
    known: &[(&str, T)],
) -> Result<Common<T>> {
    Ok(Common {
        engine_bin: engine_bin()?,
        parent: state_parent(script)?,
        disk: env_or("BENCH_DISK", disk.to_string())?,
        runs: runs(runs_default)?,
        warmup: env_or("BENCH_WARMUP", warmup)?,
        tools: tools(tools_default, known)?,
    })
}

// ---- measuring ---------------------------------------------------------------------------------

/// One tool's run: wall time, and the CPU time (user + system) its processes used meanwhile.
#[derive(Clone, Copy)]
pub struct Measured {
    pub wall: Duration,
    pub cpu: Duration,
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    min_med_max(&mut v).1
}

/// /proc times are in USER_HZ, which is 100 on Linux.
pub fn ticks(t: i64) -> Duration {
    Duration::from_millis(t.max(0) as u64 * 10)
}

/// Fields of /proc/<pid>/stat after the command name (the first is field 3, the state).
pub fn stat_fields(path: &str) -> Result<Vec<i64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let rest = text
        .rsplit_once(')')
        .with_context(|| format!("bad {path}"))?
        .1;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// CPU time (utime + stime, all threads) of a running process, in /proc ticks.
pub fn process_ticks_cpu(pid: u32) -> Result<Duration> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    // utime and stime are fields 14 and 15: indexes 11 and 12 from field 3.
    Ok(ticks(f[11] + f[12]))
}

/// CPU time of this process's waited-for children (cutime + cstime), so far.
pub fn children_cpu() -> Duration {
    stat_fields("/proc/self/stat")
        .map(|f| ticks(f[13] + f[14]))
        .unwrap_or_default()
}

/// Writes back everything dirty on the measured filesystem, so one tool's writeback does not
/// land in the next one's timing.
pub fn sync_fs(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f));
    }
}

/// `key=value` fields of a log line.
pub fn log_fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

// ---- the image and the containers tools --------------------------------------------------------

/// Compressed layer sizes of the layout's tag, bottom first.
pub fn layer_sizes(layout: &Path, tag: &str) -> Result<Vec<u64>> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no tag {tag} in {}", layout.display()))?;
    let digest = manifest["digest"].as_str().context("manifest digest")?;
    let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex))?)?;
    Ok(m["layers"]
        .as_array()
        .context("manifest has no layers")?
        .iter()
        .map(|l| l["size"].as_u64().unwrap_or(0))
        .collect())
}

/// Environment that keeps the machine's containers configuration (registries.conf mirrors,
/// auth files) out of skopeo and podman.
pub fn containers_env(cmd: &mut Command, dir: &Path) -> Result<()> {
    let registries = dir.join("registries.conf");
    std::fs::write(&registries, "")?;
    let auth = dir.join("auth.json");
    std::fs::write(&auth, "{}")?;
    cmd.env("REGISTRY_AUTH_FILE", auth)
        .env("CONTAINERS_REGISTRIES_CONF", registries)
        .env("TMPDIR", dir);
    Ok(())
}

// ---- the engine --------------------------------------------------------------------------------

const ENGINE_READY_TIMEOUT: Duration = Duration::from_secs(30);
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A release engine the bench started, on its own state dir, config, socket and log file.
pub struct EngineProc {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    /// How much of the log [`EngineProc::new_log`] has returned.
    log_offset: u64,
}

impl EngineProc {
    /// Starts `bin` on a fresh state dir under `dir` (created) with an empty config, the log
    /// filter `log_filter`, `DOCKER_CONFIG` set to `docker_config` (default: a new empty
    /// `dir/docker-config`) and `extra_args`, and waits until it answers.
    pub fn start(
        bin: &Path,
        dir: &Path,
        log_filter: &str,
        docker_config: Option<&Path>,
        extra_args: &[String],
    ) -> Result<EngineProc> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("engine.sock");
        let config = dir.join("empty.toml");
        std::fs::write(&config, "")?;
        let docker_config = match docker_config {
            Some(d) => d.to_path_buf(),
            None => {
                let d = dir.join("docker-config");
                std::fs::create_dir_all(&d)?;
                d
            }
        };
        let log_path = dir.join("engine.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("--root")
            .arg(dir.join("state"))
            .arg("--config")
            .arg(&config)
            .arg("--addr")
            .arg(format!("unix://{}", socket.display()))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("DAGGER_ENGINE_LOG", log_filter)
            .env("DOCKER_CONFIG", &docker_config)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut engine = EngineProc {
            child: Some(child),
            socket,
            log_path,
            log_offset: 0,
        };
        engine.wait_ready()?;
        Ok(engine)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log written since the last call.
    pub fn new_log(&mut self) -> Result<String> {
        let mut f = std::fs::File::open(&self.log_path)?;
        f.seek(std::io::SeekFrom::Start(self.log_offset))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        self.log_offset += text.len() as u64;
        Ok(text)
    }

    /// Sends one GraphQL query; the answer, which must be HTTP 200 with no errors.
    pub fn query(&self, query: &str, timeout: Duration) -> Result<serde_json::Value> {
        let body = serde_json::json!({ "query": query }).to_string();
        let (status, answer) = post_query(&self.socket, &body, timeout)
            .with_context(|| format!("query failed; engine log:\n{}", self.log()))?;
        ensure!(
            status == 200,
            "HTTP {status}: {answer}\nengine log:\n{}",
            self.log()
        );
        let v: serde_json::Value = serde_json::from_str(&answer).context("answer is not JSON")?;
        ensure!(
            v.get("errors").is_none(),
            "query {query} failed: {v}\nengine log:\n{}",
            self.log()
        );
        Ok(v)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + ENGINE_READY_TIMEOUT;
        let body = r#"{"query":"{ version }"}"#;
        loop {
            if let Ok((200, answer)) = post_query(&self.socket, body, Duration::from_secs(5)) {
                if answer.contains("version") {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.as_mut().expect("running").try_wait()? {
                bail!("engine exited early ({status}); log:\n{}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "engine did not answer within {}s; log:\n{}",
                ENGINE_READY_TIMEOUT.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGTERM, so the engine removes its network and mounts; it must exit cleanly.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + ENGINE_STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(
                    status.success(),
                    "engine exited with {status} after SIGTERM; log:\n{}",
                    self.log()
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("engine did not stop after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate_quietly(child, ENGINE_STOP_TIMEOUT, Duration::from_millis(10));
        }
    }
}

/// For `Drop`: SIGTERM `child`, check every `poll` for up to `timeout` whether it exited, then
/// SIGKILL it and reap it. Errors are ignored.
pub fn terminate_quietly(mut child: Child, timeout: Duration, poll: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(poll);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One HTTP/1.1 POST /query over the unix socket (`Connection: close`); status and body.
pub fn post_query(socket: &Path, body: &str, timeout: Duration) -> Result<(u16, String)> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        &stream,
        "POST /query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        ensure!(!line.is_empty(), "connection closed inside the headers");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
    }
    let mut out = Vec::new();
    match length {
        Some(n) => {
            out.resize(n, 0);
            reader.read_exact(&mut out)?;
        }
        None => {
            reader.read_to_end(&mut out)?;
        }
    }
    Ok((status, String::from_utf8(out)?))
}
