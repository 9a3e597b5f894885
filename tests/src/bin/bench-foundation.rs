//! `bench-foundation`: start-up, idle memory and request throughput of the release
//! `dagger-engine`. A benchmark, not a test: it prints numbers against the goals and fails only
//! when the engine misbehaves (exits, answers wrongly, or stops answering).
//!
//! Usage: `bench-foundation [PATH/TO/dagger-engine]` (or `DAGGER_ENGINE_BIN`; default: the
//! `dagger-engine` next to this executable). Must run as root, like the engine.
//!
//! Environment:
//! - `BENCH_RUNS` (10): cold starts to time.
//! - `BENCH_CONCURRENCY` (4): client threads, one keep-alive connection each.
//! - `BENCH_SECONDS` (5): length of the throughput run.
//! - `BENCH_STATE_PARENT` (/dev/shm): where the temporary state dirs and sockets go.

use anyhow::{bail, ensure, Context as _, Result};
use dagger_integration_tests::bench::{
    describe_fs, engine_bin, env_or, min_med_max, ms, runs, terminate_quietly,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const QUERY_BODY: &str = r#"{"query":"{ version }"}"#;
/// How long one engine may take to answer its first query before the bench gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the engine may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Read/write timeout on every socket the bench opens.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(1);

const GOAL_COLD_START_MS: f64 = 200.0;
const GOAL_IDLE_RSS_MB: f64 = 30.0;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-foundation: {e:#}");
        std::process::exit(1);
    }
}

struct Settings {
    engine_bin: PathBuf,
    runs: usize,
    concurrency: usize,
    seconds: f64,
    state_parent: PathBuf,
}

fn settings() -> Result<Settings> {
    let engine_bin = engine_bin()?;
    let runs = runs(10)?;
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 4)?;
    let seconds: f64 = env_or("BENCH_SECONDS", 5.0)?;
    ensure!(concurrency >= 1, "BENCH_CONCURRENCY must be at least 1");
    ensure!(
        seconds > 0.0 && seconds <= 3600.0,
        "BENCH_SECONDS must be in (0, 3600]"
    );
    let state_parent = match std::env::var_os("BENCH_STATE_PARENT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("/dev/shm"),
    };
    ensure!(
        state_parent.is_dir(),
        "state parent {} is not a directory; set BENCH_STATE_PARENT",
        state_parent.display()
    );
    Ok(Settings {
        engine_bin,
        runs,
        concurrency,
        seconds,
        state_parent,
    })
}

fn run() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "must run as root: the engine refuses to start otherwise (it mounts filesystems)"
    );
    let s = settings()?;
    let fs = describe_fs(&s.state_parent);
    println!("engine:     {}", s.engine_bin.display());
    println!("state dirs: under {} ({fs})", s.state_parent.display());
    println!();

    // 1. Cold start.
    println!(
        "cold start: {} runs, fresh state dir each, poll every {} ms",
        s.runs,
        POLL_INTERVAL.as_millis()
    );
    let mut ready = Vec::with_capacity(s.runs);
    let mut accepting = Vec::with_capacity(s.runs);
    let mut stopping = Vec::with_capacity(s.runs);
    let mut snapshotter_line = None;
    for i in 0..s.runs {
        let mut engine = Engine::spawn(&s)?;
        let t = engine.wait_ready()?;
        let stop = engine.stop()?;
        println!(
            "  run {:>2}: socket accepting {:>7.2} ms, first answer {:>7.2} ms, SIGTERM to exit {:>7.2} ms",
            i + 1,
            ms(t.accepting),
            ms(t.answered),
            ms(stop)
        );
        ready.push(ms(t.answered));
        accepting.push(ms(t.accepting));
        stopping.push(ms(stop));
        if snapshotter_line.is_none() {
            snapshotter_line = engine.log_line_containing("snapshotter:");
        }
    }
    let (rmin, rmed, rmax) = min_med_max(&mut ready);
    let (_, amed, _) = min_med_max(&mut accepting);
    let (_, smed, _) = min_med_max(&mut stopping);
    println!(
        "  first answered query: min {rmin:.2} ms, median {rmed:.2} ms, max {rmax:.2} ms \
         (socket accepting: median {amed:.2} ms; SIGTERM to exit: median {smed:.2} ms)"
    );
    if let Some(line) = &snapshotter_line {
        println!("  engine log: {line}");
    }
    println!();

    // 2. Idle RSS, on the engine that then serves the throughput run.
    let mut engine = Engine::spawn(&s)?;
    engine.wait_ready()?;
    std::thread::sleep(IDLE_BEFORE_RSS);
    let idle = ProcStatus::read(engine.pid())?;
    println!(
        "idle RSS (after first query + {} s idle): VmRSS {:.2} MB, VmHWM {:.2} MB, {} threads",
        IDLE_BEFORE_RSS.as_secs(),
        idle.rss_mb,
        idle.hwm_mb,
        idle.threads
    );
    println!();

    // 3. Throughput.
    println!(
        "throughput: {} connection(s), {} s, POST /query {}",
        s.concurrency, s.seconds, QUERY_BODY
    );
    let tp = throughput(&engine, s.concurrency, Duration::from_secs_f64(s.seconds))?;
    let loaded = ProcStatus::read(engine.pid())?;
    let stop = engine.stop()?;
    println!(
        "  {} requests in {:.2} s: {:.0} req/s; latency min {} us, p50 {} us, p99 {} us, max {} us",
        tp.requests, tp.elapsed_s, tp.rps, tp.min_us, tp.p50_us, tp.p99_us, tp.max_us
    );
    println!(
        "  after load: VmRSS {:.2} MB, VmHWM {:.2} MB, {} threads; SIGTERM to exit {:.2} ms",
        loaded.rss_mb,
        loaded.hwm_mb,
        loaded.threads,
        ms(stop)
    );
    println!();

    // 4. Summary.
    println!("summary (state dirs on {fs}):");
    println!(
        "  cold start to first answered query: median {rmed:.1} ms (goal <= {GOAL_COLD_START_MS:.0} ms, ratio {rmed:.1}/{GOAL_COLD_START_MS:.0} = {:.2})",
        rmed / GOAL_COLD_START_MS
    );
    println!(
        "  idle RSS: {:.1} MB (goal <= {GOAL_IDLE_RSS_MB:.0} MB, ratio {:.2})",
        idle.rss_mb,
        idle.rss_mb / GOAL_IDLE_RSS_MB
    );
    println!(
        "  {{ version }} over unix socket: {:.0} req/s with {} connections, p50 {} us, p99 {} us",
        tp.rps, s.concurrency, tp.p50_us, tp.p99_us
    );
    Ok(())
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- the engine process ----------------------------------------------------------------------

struct Engine {
    child: Option<Child>,
    spawned_at: Instant,
    socket: PathBuf,
    log_path: PathBuf,
    /// Holds the state dir, socket and log; removed on drop, after the child has stopped.
    _dir: tempfile::TempDir,
}

struct Readiness {
    /// From spawn until a connect to the socket first succeeded.
    accepting: Duration,
    /// From spawn until the first `{ version }` answer with status 200.
    answered: Duration,
}

impl Engine {
    fn spawn(s: &Settings) -> Result<Engine> {
        let dir = tempfile::Builder::new()
            .prefix("dagger-bench-")
            .tempdir_in(&s.state_parent)
            .with_context(|| format!("cannot create a temp dir in {}", s.state_parent.display()))?;
        let socket = dir.path().join("engine.sock");
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").context("cannot write the empty config")?;
        let log_path = dir.path().join("engine.log");
        let log = std::fs::File::create(&log_path).context("cannot create the engine log")?;
        let mut cmd = Command::new(&s.engine_bin);
        cmd.arg("--root")
            .arg(dir.path().join("state"))
            .arg("--config")
            .arg(&config)
            .arg("--addr")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // The engine's default (info) logging, whatever the caller's environment says.
            .env_remove("DAGGER_ENGINE_LOG");
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", s.engine_bin.display()))?;
        Ok(Engine {
            child: Some(child),
            spawned_at,
            socket,
            log_path,
            _dir: dir,
        })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("engine running").id() as i32)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_line_containing(&self, needle: &str) -> Option<String> {
        self.log()
            .lines()
            .find(|l| l.contains(needle))
            .map(|l| l.trim().to_string())
    }

    /// Polls until `{ version }` is answered with 200.
    fn wait_ready(&mut self) -> Result<Readiness> {
        let deadline = self.spawned_at + READY_TIMEOUT;
        let mut accepting = None;
        loop {
            let last_err = match UnixStream::connect(&self.socket) {
                Ok(stream) => {
                    let connected = self.spawned_at.elapsed();
                    accepting.get_or_insert(connected);
                    match one_shot(stream) {
                        Ok((200, body)) if body.contains("version") => {
                            return Ok(Readiness {
                                accepting: accepting.unwrap_or(connected),
                                answered: self.spawned_at.elapsed(),
                            });
                        }
                        Ok((status, body)) => format!("HTTP {status}: {body}"),
                        Err(e) => format!("{e:#}"),
                    }
                }
                Err(e) => format!("connect: {e}"),
            };
            if let Some(status) = self.child.as_mut().expect("engine running").try_wait()? {
                bail!(
                    "engine exited before answering ({status}); log:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "engine did not answer {{ version }} within {}s (last: {last_err}); log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM, then waits; SIGKILL if it does not exit in time. Returns the time to exit.
    fn stop(&mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let pid = Pid::from_raw(child.id() as i32);
        let started = Instant::now();
        if child.try_wait()?.is_none() {
            kill(pid, Signal::SIGTERM).context("cannot send SIGTERM to the engine")?;
        }
        loop {
            if let Some(status) = child.try_wait()? {
                let took = started.elapsed();
                ensure!(
                    status.success(),
                    "engine exited with {status} after SIGTERM; log:\n{}",
                    self.log()
                );
                return Ok(took);
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "engine did not exit within {}s of SIGTERM; killed it. log:\n{}",
                    STOP_TIMEOUT.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate_quietly(child, STOP_TIMEOUT, Duration::from_millis(5));
        }
    }
}

struct ProcStatus {
    rss_mb: f64,
    hwm_mb: f64,
    threads: u64,
}

impl ProcStatus {
    fn read(pid: Pid) -> Result<ProcStatus> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| -> Result<u64> {
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .with_context(|| format!("{path} has no {name}"))?;
            let number = line.split_whitespace().next().unwrap_or_default();
            number
                .parse()
                .with_context(|| format!("{path}: bad {name} {line:?}"))
        };
        // /proc reports kB meaning KiB; MB here is MiB.
        Ok(ProcStatus {
            rss_mb: field("VmRSS")? as f64 / 1024.0,
            hwm_mb: field("VmHWM")? as f64 / 1024.0,
            threads: field("Threads")?,
        })
    }
}

// ---- HTTP/1.1 over the unix socket ----------------------------------------------------------

fn request_bytes(keep_alive: bool) -> Vec<u8> {
    format!(
        "POST /query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{QUERY_BODY}",
        QUERY_BODY.len(),
        if keep_alive { "" } else { "Connection: close\r\n" }
    )
    .into_bytes()
}

/// One request on a fresh connection (`Connection: close`), with timeouts.
fn one_shot(stream: UnixStream) -> Result<(u16, String)> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(&request_bytes(false))?;
    let mut reader = BufReader::new(&stream);
    let r = read_response(&mut reader)?;
    Ok((r.status, r.body))
}

struct Response {
    status: u16,
    body: String,
    close: bool,
}

/// Reads one response: status line, headers, then exactly `Content-Length` bytes of body.
fn read_response(reader: &mut impl BufRead) -> Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line).context("reading status line")?;
    ensure!(!line.is_empty(), "connection closed before a response");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut close = false;
    loop {
        line.clear();
        reader.read_line(&mut line).context("reading headers")?;
        ensure!(!line.is_empty(), "connection closed inside the headers");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            bail!("bad header line {header:?}");
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("unexpected Transfer-Encoding: {value} (this client reads Content-Length bodies only)");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let length = length.context("response without Content-Length")?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).context("reading body")?;
    Ok(Response {
        status,
        body: String::from_utf8(body).context("body is not UTF-8")?,
        close,
    })
}

// ---- throughput ------------------------------------------------------------------------------

struct Throughput {
    requests: usize,
    elapsed_s: f64,
    rps: f64,
    min_us: u32,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
}

fn throughput(engine: &Engine, connections: usize, duration: Duration) -> Result<Throughput> {
    let barrier = Arc::new(Barrier::new(connections + 1));
    let mut workers = Vec::with_capacity(connections);
    for i in 0..connections {
        let socket = engine.socket.clone();
        let barrier = barrier.clone();
        let worker = std::thread::Builder::new()
            .name(format!("client-{i}"))
            .spawn(move || client(&socket, &barrier, duration))
            .context("cannot start a client thread")?;
        workers.push(worker);
    }
    barrier.wait();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        match w.join() {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            Ok(Err(e)) => errors.push(format!("client {i}: {e:#}")),
            Err(_) => errors.push(format!("client {i} panicked")),
        }
    }
    let elapsed = started.elapsed();
    ensure!(
        errors.is_empty(),
        "throughput run failed: {}",
        errors.join("; ")
    );
    ensure!(!latencies.is_empty(), "no request completed");
    latencies.sort_unstable();
    Ok(Throughput {
        requests: latencies.len(),
        elapsed_s: elapsed.as_secs_f64(),
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        min_us: latencies[0],
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        max_us: latencies[latencies.len() - 1],
    })
}

/// One keep-alive connection sending `{ version }` until `duration` has passed. Returns the
/// latency of every request in microseconds.
fn client(socket: &Path, barrier: &Barrier, duration: Duration) -> Result<Vec<u32>> {
    let connected = UnixStream::connect(socket)
        .context("connect")
        .and_then(|s| {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(s)
        });
    // Always reach the barrier, so a failed connect cannot leave the others waiting.
    barrier.wait();
    let stream = connected?;
    let request = request_bytes(true);
    let mut reader = BufReader::new(&stream);
    let mut latencies = Vec::with_capacity(1 << 16);
    let deadline = Instant::now() + duration;
    loop {
        let sent = Instant::now();
        if sent >= deadline {
            break;
        }
        (&stream)
            .write_all(&request)
            .with_context(|| format!("request {}: write", latencies.len() + 1))?;
        let r = read_response(&mut reader)
            .with_context(|| format!("request {}", latencies.len() + 1))?;
        let took = sent.elapsed();
        ensure!(
            r.status == 200 && r.body.contains("version"),
            "request {}: HTTP {}: {}",
            latencies.len() + 1,
            r.status,
            r.body
        );
        ensure!(
            !r.close,
            "request {}: the engine closed the keep-alive connection",
            latencies.len() + 1
        );
        latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    }
    Ok(latencies)
}

// ---- which filesystem ------------------------------------------------------------------------
