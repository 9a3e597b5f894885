//! `bench-exec`: container start latency, side by side in one process run: the release
//! `dagger-engine` running `withExec(["/bin/true", "<n>"])` on an already pulled busybox image
//! (end to end through GraphQL over its unix socket; distinct args every run, so nothing is
//! cached), raw `runc run` of an equivalent bundle (umoci unpack of the same image), and
//! `podman run --rm` of the same image with `--network=none` and with its default (CNI bridge)
//! network. Prints every run, the medians and p90s, the ratios ours/runc and ours/podman against
//! the goal (ours <= 1.2 x runc), and where the engine's time went, phase by phase, from its own
//! debug log lines. A benchmark, not a test: it fails only when a tool fails or the engine
//! answers wrongly.
//!
//! Usage: `bench-exec [PATH/TO/dagger-engine]` (or `DAGGER_ENGINE_BIN`; default: the
//! `dagger-engine` next to this executable). Must run as root. `bench/exec.sh` installs the
//! packages, builds, mounts the disk and then runs this; see bench/README.md.
//!
//! Environment:
//! - `BENCH_STATE_PARENT` (required): the directory all state goes under (the engine's root,
//!   the runc bundle and runc's `--root`, podman's storage), on the filesystem being measured
//!   (bench/exec.sh mounts a fresh tmpfs or journaled loop ext4 there).
//! - `BENCH_DISK` (`tmpfs`): what `BENCH_STATE_PARENT` is, for the report.
//! - `BENCH_RUNS` (30): timed runs per tool.
//! - `BENCH_WARMUP` (3): untimed rounds first.
//! - `BENCH_TOOLS` (`engine,runc,podman-none,podman`): which tools to run.

use anyhow::{ensure, Context as _, Result};
use dagger_integration_tests::bench::{
    check_output, common, describe_fs, ms, remove_tree, run_checked, stat_fields, unescape_mount,
    which, Common, EngineProc,
};
use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{Mode, TestRegistry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one run of any tool (or the engine's pull) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// ours / raw runc.
const GOAL_RATIO: f64 = 1.2;
const REPO: &str = "bench/busybox:1";
/// The engine's default (info) logging, plus the per-exec timing lines of the solver, the
/// executor and the HTTP server (`query elapsed_us=...`).
const ENGINE_LOG_FILTER: &str =
    "info,dagger_engine::solver=debug,dagger_engine::exec=debug,dagger_engine::server=debug";
/// podman refuses a runroot longer than this.
const PODMAN_RUNROOT_MAX: usize = 50;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-exec: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Engine,
    Runc,
    PodmanNone,
    Podman,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Engine => "engine",
            Tool::Runc => "runc",
            Tool::PodmanNone => "podman-none",
            Tool::Podman => "podman",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Tool::Engine => {
                "dagger-engine withExec([\"/bin/true\", n]) { exitCode }: POST sent -> answer read"
            }
            Tool::Runc => "runc run of a umoci-unpacked bundle (/bin/true): spawn -> exit",
            Tool::PodmanNone => "podman run --rm --network=none --runtime runc: spawn -> exit",
            Tool::Podman => {
                "podman run --rm --runtime runc (default CNI bridge network): spawn -> exit"
            }
        }
    }
}

struct Settings {
    common: Common<Tool>,
    runc: PathBuf,
    umoci: PathBuf,
    podman: PathBuf,
}

fn settings() -> Result<Settings> {
    Ok(Settings {
        common: common(
            "bench/exec.sh",
            "tmpfs",
            30,
            3,
            "engine,runc,podman-none,podman",
            &[
                ("engine", Tool::Engine),
                ("runc", Tool::Runc),
                ("podman-none", Tool::PodmanNone),
                ("podman", Tool::Podman),
            ],
        )?,
        runc: which("runc", "runc")?,
        umoci: which("umoci", "umoci")?,
        podman: which("podman", "podman")?,
    })
}

fn run() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "must run as root: the engine refuses to start otherwise, and runc and podman need it"
    );
    let s = settings()?;
    let fs = describe_fs(&s.common.parent);
    println!("machine: {}", machine());
    println!("engine:  {}", s.common.engine_bin.display());
    println!(
        "state:   BENCH_DISK={} - engine root, runc bundle + --root and podman storage under {} ({fs})",
        s.common.disk,
        s.common.parent.display()
    );
    let scratch = tempfile::Builder::new()
        .prefix("bx-")
        .tempdir_in(&s.common.parent)
        .context("cannot create the scratch dir")?;
    let scratch = scratch.path().to_path_buf();
    let result = bench(&s, &scratch, &fs);
    remove_tree(&scratch).ok();
    result
}

fn bench(s: &Settings, scratch: &Path, fs: &str) -> Result<()> {
    // The image: the test suite's offline busybox, pushed to a loopback registry.
    let registry = TestRegistry::start(Mode::Plain);
    let layout = images::layout();
    let digest = images::push(images::BUSYBOX, &registry, REPO, Format::Oci, None);
    let reference = format!("{}/{REPO}", registry.addr);
    println!(
        "image:   {reference} ({digest}), the test suite's busybox (1 layer), pushed with skopeo to docker-registry on {}",
        registry.addr
    );

    // CPU accounting: one cpuacct cgroup per tool, which this process joins before starting
    // the tool, so the tool, its children and its containers are charged there.
    let groups = CpuGroups::setup()?;
    match &groups {
        Some(g) => println!(
            "cpu:     per tool, from cpuacct.usage of cgroup v1 {}/<tool> (the tool, its children and containers; podman gets --cgroup-parent={}/<tool>)",
            g.base.display(),
            g.rel
        ),
        None => println!("cpu:     not measured (no cgroup v1 cpuacct hierarchy is mounted)"),
    }
    let enter = |tool: Tool| -> Result<()> {
        match &groups {
            Some(g) => g.enter(tool.name()),
            None => Ok(()),
        }
    };
    let usage = |tool: Tool| -> Option<Duration> { groups.as_ref()?.usage(tool.name()).ok() };

    // Set-up, untimed: the engine started and the image pulled once; the runc bundle unpacked
    // once; the image loaded into podman once.
    let mut engine = None;
    let mut bundle = None;
    let mut podman = None;
    for tool in &s.common.tools {
        match tool {
            Tool::Engine if engine.is_none() => {
                // The engine, and with it its execs, lives in the engine's group.
                enter(Tool::Engine)?;
                let started = Instant::now();
                let e = start_engine(s, &scratch.join("engine"))?;
                let ready = started.elapsed();
                let pulled = Instant::now();
                engine_pull(&e, &reference)?;
                println!(
                    "engine:  ready in {:.0} ms; pulled the image in {:.0} ms; log {}",
                    ms(ready),
                    ms(pulled.elapsed()),
                    e.log_path.display()
                );
                if let Some(line) = e.log().lines().find(|l| l.contains("snapshotter:")) {
                    println!("         {}", line.trim());
                }
                engine = Some(e);
            }
            Tool::Runc if bundle.is_none() => {
                let started = Instant::now();
                let b = RuncBundle::unpack(s, &scratch.join("runc"), layout)?;
                println!(
                    "runc:    {} ({}); bundle {} unpacked with umoci in {:.0} ms",
                    s.runc.display(),
                    first_line(&run_checked(
                        Command::new(&s.runc).arg("--version"),
                        "runc"
                    )?),
                    b.bundle.display(),
                    ms(started.elapsed())
                );
                bundle = Some(b);
            }
            Tool::PodmanNone | Tool::Podman if podman.is_none() => {
                let started = Instant::now();
                let p = PodmanStore::new(s, &scratch.join("podman"), &reference)?;
                println!(
                    "podman:  {} ({}); pulled the image in {:.0} ms; graphroot {}, runroot {}",
                    s.podman.display(),
                    first_line(&run_checked(
                        Command::new(&s.podman).arg("--version"),
                        "podman"
                    )?),
                    ms(started.elapsed()),
                    p.root.display(),
                    p.runroot.display()
                );
                podman = Some(p);
            }
            _ => {}
        }
    }
    println!();
    for t in &s.common.tools {
        println!("  {:<11} {}", t.name(), t.describe());
    }
    println!(
        "{} warm-up round(s), then {} timed rounds; every round runs each tool once, the order rotating",
        s.common.warmup, s.common.runs
    );
    println!();

    let mut times: BTreeMap<Tool, Vec<f64>> = BTreeMap::new();
    let mut cpu: BTreeMap<Tool, Vec<f64>> = BTreeMap::new();
    let mut profiles: Vec<ExecProfile> = Vec::new();
    let nonce = std::process::id();
    for round in 0..s.common.warmup + s.common.runs {
        let timed = round >= s.common.warmup;
        let label = if timed {
            format!("run {:>3}", round - s.common.warmup + 1)
        } else {
            format!("warm-up {}", round + 1)
        };
        let mut order = s.common.tools.clone();
        let shift = round % order.len();
        order.rotate_left(shift);
        let mut line = Vec::new();
        for tool in order {
            enter(tool)?;
            let cpu_before = usage(tool);
            let took = match tool {
                Tool::Engine => {
                    let e = engine.as_mut().expect("set up");
                    let (took, profile) = engine_exec(e, &reference, &format!("{nonce}-{round}"))?;
                    if timed {
                        profiles.push(profile);
                    }
                    took
                }
                Tool::Runc => bundle
                    .as_ref()
                    .expect("set up")
                    .run(s, &format!("bx-{nonce}-{round}"))?,
                Tool::PodmanNone | Tool::Podman => {
                    let parent = groups
                        .as_ref()
                        .map(|g| format!("{}/{}", g.rel, tool.name()));
                    podman.as_ref().expect("set up").run(
                        s,
                        &reference,
                        tool == Tool::PodmanNone,
                        parent.as_deref(),
                    )?
                }
            };
            let spent = cpu_before
                .zip(usage(tool))
                .map(|(before, after)| after.saturating_sub(before));
            line.push(format!("{} {:>5.1}", tool.name(), ms(took)));
            if timed {
                times.entry(tool).or_default().push(ms(took));
                if let Some(c) = spent {
                    cpu.entry(tool).or_default().push(ms(c));
                }
            }
        }
        println!("  {label}: {} ms", line.join(", "));
    }
    println!();

    if let Some(e) = engine.as_mut() {
        e.stop()?;
    }
    drop(podman);
    if !profiles.is_empty() {
        print_profile(
            &profiles,
            times.get(&Tool::Runc),
            cpu.get(&Tool::Engine),
            cpu.get(&Tool::Runc),
        );
    }

    // Summary.
    let stats: BTreeMap<Tool, Stats> = times.iter().map(|(t, v)| (*t, Stats::of(v))).collect();
    println!(
        "summary (/bin/true in busybox, {} timed runs per tool, interleaved; state on {} = {fs}):",
        s.common.runs, s.common.disk
    );
    for (t, st) in &stats {
        let c = cpu.get(t).map_or("-".to_string(), |v| {
            let c = Stats::of(v);
            format!("{:.1} ms (p90 {:.1})", c.median, c.p90)
        });
        println!(
            "  {:<11} median {:>6.1} ms  p90 {:>6.1}  min {:>6.1}  max {:>6.1}   CPU median {c}",
            t.name(),
            st.median,
            st.p90,
            st.min,
            st.max,
        );
    }
    if let Some(ours) = stats.get(&Tool::Engine) {
        let cpu_ratio = |other: Tool| -> String {
            match (cpu.get(&Tool::Engine), cpu.get(&other)) {
                (Some(a), Some(b)) => {
                    let (a, b) = (Stats::of(a).median, Stats::of(b).median);
                    format!("; CPU {a:.1}/{b:.1} = {:.2}", a / b)
                }
                _ => String::new(),
            }
        };
        if let Some(runc) = stats.get(&Tool::Runc) {
            let r = ours.median / runc.median;
            println!(
                "  ours/runc        = {:.1}/{:.1} = {r:.2} (p90 {:.2}{}; goal <= {GOAL_RATIO}: {})",
                ours.median,
                runc.median,
                ours.p90 / runc.p90,
                cpu_ratio(Tool::Runc),
                if r <= GOAL_RATIO {
                    "met".to_string()
                } else {
                    format!(
                        "missed by {:.1} ms; {:.1} ms would meet it",
                        ours.median - GOAL_RATIO * runc.median,
                        GOAL_RATIO * runc.median
                    )
                }
            );
            // Each round's engine and runc runs are close in time, so they share the machine's
            // load; the median of the per-round ratios is less sensitive to load swings.
            if let (Some(e), Some(r)) = (times.get(&Tool::Engine), times.get(&Tool::Runc)) {
                let paired: Vec<f64> = e.iter().zip(r).map(|(e, r)| e / r).collect();
                let p = Stats::of(&paired);
                println!(
                    "  ours/runc paired by round: median {:.2}, p90 {:.2} (the median of the {} per-round ratios)",
                    p.median,
                    p.p90,
                    paired.len()
                );
            }
        }
        for (tool, label) in [
            (Tool::PodmanNone, "ours/podman-none"),
            (Tool::Podman, "ours/podman     "),
        ] {
            if let Some(p) = stats.get(&tool) {
                println!(
                    "  {label} = {:.1}/{:.1} = {:.2} (p90 {:.2}{})",
                    ours.median,
                    p.median,
                    ours.median / p.median,
                    ours.p90 / p.p90,
                    cpu_ratio(tool)
                );
            }
        }
    }
    println!("  machine at the end: {}", machine());
    drop(registry);
    drop(groups);
    Ok(())
}

/// CPUs, load average and this process's nice value (other engineers' builds share the CPUs).
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    // Field 19 of /proc/self/stat: index 16 after the command name.
    let nice = stat_fields("/proc/self/stat")
        .ok()
        .and_then(|f| f.get(16).copied())
        .map_or("?".to_string(), |n| n.to_string());
    format!(
        "{cpus} CPUs, load average {} (1/5/15 min), nice {nice} (BENCH_NICE)",
        load.join(" ")
    )
}

struct Stats {
    min: f64,
    median: f64,
    p90: f64,
    max: f64,
}

impl Stats {
    fn of(v: &[f64]) -> Stats {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank.
        let p90 = v[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1];
        Stats {
            min: v[0],
            median,
            p90,
            max: v[n - 1],
        }
    }
}

fn first_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// CPU time of a running process (all its threads, including exited ones; not its children),
/// from its CPU-time clock: nanosecond resolution, unlike the ticks of /proc/<pid>/stat.
fn process_cpu(pid: u32) -> Option<Duration> {
    use nix::libc;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain system calls writing only to the two locals passed by pointer.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Runs `cmd` with stdin from /dev/null and both outputs captured; its wall time.
fn timed(cmd: &mut Command, what: &str) -> Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    let took = started.elapsed();
    check_output(&out, what)?;
    Ok(took)
}

// ---- CPU accounting ----------------------------------------------------------------------------

/// `bench-exec-<pid>/<tool>` cgroups in the cgroup v1 cpuacct hierarchy. This process joins a
/// tool's group before starting the tool (outside the timed window: moving a process between
/// v1 cgroups can wait for an RCU grace period), so the tool's processes, their children and the
/// containers runc creates below its own cgroup are all charged there; `cpuacct.usage` is in
/// nanoseconds, unlike the 10 ms ticks of /proc/<pid>/stat. On drop this process goes back to
/// its own cgroup and every `bench-exec-<pid>` directory (in any hierarchy, since podman's
/// --cgroup-parent creates it in all of them) is removed.
struct CpuGroups {
    /// `<cpuacct mount>/<own cgroup>/bench-exec-<pid>`.
    base: PathBuf,
    /// The same, relative to the hierarchy's root (`/bench-exec-<pid>` when this process sits
    /// in the root cgroup): podman's `--cgroup-parent`.
    rel: String,
    /// This process's own cgroup directory in the cpuacct hierarchy.
    home: PathBuf,
}

impl CpuGroups {
    fn setup() -> Result<Option<CpuGroups>> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let Some(mount) = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            let (fstype, _src, opts) = (r.next()?, r.next()?, r.next()?);
            (fstype == "cgroup" && opts.split(',').any(|o| o == "cpuacct"))
                .then(|| unescape_mount(left.split(' ').nth(4).unwrap_or_default()))
        }) else {
            return Ok(None);
        };
        let own = std::fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == "cpuacct")
                    .then(|| path.to_string())
            })
            .context("/proc/self/cgroup has no cpuacct line")?;
        let rel = format!(
            "{}/bench-exec-{}",
            own.trim_end_matches('/'),
            std::process::id()
        );
        let home = mount.join(own.trim_start_matches('/'));
        let base = mount.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&base)
            .with_context(|| format!("cannot create cgroup {}", base.display()))?;
        Ok(Some(CpuGroups { base, rel, home }))
    }

    fn enter(&self, group: &str) -> Result<()> {
        let dir = self.base.join(group);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("cannot join cgroup {}", dir.display()))
    }

    fn usage(&self, group: &str) -> Result<Duration> {
        let path = self.base.join(group).join("cpuacct.usage");
        let text = std::fs::read_to_string(&path)?;
        Ok(Duration::from_nanos(text.trim().parse()?))
    }
}

impl Drop for CpuGroups {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if !matches!(right.split(' ').next(), Some("cgroup" | "cgroup2")) {
                continue;
            }
            let mount = unescape_mount(left.split(' ').nth(4).unwrap_or_default());
            let top = mount.join(self.rel.trim_start_matches('/'));
            if top.is_dir() {
                remove_cgroup_tree(&top);
            }
        }
    }
}

/// Removes a cgroup directory and its descendants, deepest first (cgroups go with rmdir only).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("bench-exec: cannot remove cgroup {}: {e}", dir.display());
    }
}

// ---- raw runc ----------------------------------------------------------------------------------

struct RuncBundle {
    bundle: PathBuf,
    /// runc's `--root` (container state), next to the bundle.
    state: PathBuf,
}

impl RuncBundle {
    /// `umoci unpack` of the layout's busybox tag, then process.terminal=false and
    /// args=["/bin/true"] (as shared/reference/scripts/runc-bundle.sh does). umoci's default
    /// config: the small default capability set, new pid/net/ipc/uts/mount namespaces, no
    /// `cgroupsPath` (runc then uses `/<id>` below its own cgroup).
    fn unpack(s: &Settings, dir: &Path, layout: &Path) -> Result<RuncBundle> {
        std::fs::create_dir_all(dir)?;
        let bundle = dir.join("bundle");
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        run_checked(
            Command::new(&s.umoci)
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:{}", layout.display(), images::BUSYBOX))
                .arg(&bundle),
            "umoci unpack",
        )?;
        let config = bundle.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)
            .context("umoci wrote an unreadable config.json")?;
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["/bin/true"]);
        std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        Ok(RuncBundle { bundle, state })
    }

    /// `runc run` with a fresh container id; runc deletes the container when it exits.
    fn run(&self, s: &Settings, id: &str) -> Result<Duration> {
        timed(
            Command::new(&s.runc)
                .arg("--root")
                .arg(&self.state)
                .arg("run")
                .arg("--bundle")
                .arg(&self.bundle)
                .arg(id),
            "runc run",
        )
    }
}

// ---- podman ------------------------------------------------------------------------------------

/// A private podman store (graphroot and configuration on the measured disk) holding the image.
struct PodmanStore {
    podman: PathBuf,
    dir: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
    conf: PathBuf,
    storage_conf: PathBuf,
    _runroot_tmp: Option<tempfile::TempDir>,
}

impl PodmanStore {
    fn new(s: &Settings, dir: &Path, reference: &str) -> Result<PodmanStore> {
        let root = dir.join("root");
        let tmp = dir.join("tmp");
        let cni = dir.join("cni");
        for d in [&root, &tmp, &cni] {
            std::fs::create_dir_all(d)?;
        }
        // podman refuses a long runroot; it holds locks and container state. Next to the
        // graphroot when the path is short enough, else a temporary dir on the root fs.
        let near = dir.join("run");
        let (runroot, runroot_tmp) = if near.as_os_str().len() <= PODMAN_RUNROOT_MAX {
            std::fs::create_dir_all(&near)?;
            (near, None)
        } else {
            let t = tempfile::Builder::new()
                .prefix("bx-podman-")
                .tempdir()
                .context("cannot create podman's runroot")?;
            (t.path().to_path_buf(), Some(t))
        };
        // The ulimits this machine needs (shared/reference/test-environment.md §4: podman's
        // default nofile=1048576 is above the hard limit); events to a file on the measured disk;
        // CNI configuration in a private dir, so the machine's networks stay untouched (the
        // default network is built in memory: bridge cni-podman0, 10.88.0.0/16).
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
                 [engine]\nimage_copy_tmp_dir = \"{tmp}\"\nevents_logger = \"file\"\nevents_logfile_path = \"{events}\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{cni}\"\n",
                tmp = tmp.display(),
                events = dir.join("events.log").display(),
                cni = cni.display(),
            ),
        )?;
        let storage_conf = dir.join("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.display(),
                runroot.display()
            ),
        )?;
        std::fs::write(dir.join("registries.conf"), "")?;
        std::fs::write(dir.join("auth.json"), "{}")?;
        let store = PodmanStore {
            podman: s.podman.clone(),
            dir: dir.to_path_buf(),
            root,
            runroot,
            conf,
            storage_conf,
            _runroot_tmp: runroot_tmp,
        };
        run_checked(
            &mut store.command(s, &["pull", "--quiet", "--tls-verify=false", reference]),
            "podman pull",
        )?;
        Ok(store)
    }

    fn command(&self, s: &Settings, args: &[&str]) -> Command {
        let mut cmd = Command::new(&s.podman);
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("REGISTRY_AUTH_FILE", self.dir.join("auth.json"))
            .env("TMPDIR", self.dir.join("tmp"))
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
                "--runtime",
                "runc",
            ])
            .args(args);
        cmd
    }

    fn run(
        &self,
        s: &Settings,
        reference: &str,
        no_network: bool,
        cgroup_parent: Option<&str>,
    ) -> Result<Duration> {
        let parent_arg = cgroup_parent.map(|p| format!("--cgroup-parent={p}"));
        let mut args = vec!["run", "--rm", "--pull=never"];
        if let Some(a) = &parent_arg {
            args.push(a);
        }
        if no_network {
            args.push("--network=none");
        }
        args.extend([reference, "/bin/true"]);
        timed(
            &mut self.command(s, &args),
            &format!("podman {}", args.join(" ")),
        )
    }
}

impl Drop for PodmanStore {
    /// Removes containers a failed run may have left (and with them their mounts).
    fn drop(&mut self) {
        let _ = Command::new(&self.podman)
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "overlay", "rm", "--all", "--force"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---- the engine --------------------------------------------------------------------------------

/// Starts the engine on a fresh state dir under `dir`, with a private config, socket and exec
/// network (bridge `bx<hex>0`, a /24 of 10.248.0.0/16), and waits until it answers.
fn start_engine(s: &Settings, dir: &Path) -> Result<EngineProc> {
    let pid = std::process::id();
    EngineProc::start(
        &s.common.engine_bin,
        dir,
        ENGINE_LOG_FILTER,
        None,
        &[
            "--network-name".to_string(),
            format!("bx{:x}", pid & 0xffff),
            "--network-cidr".to_string(),
            format!("10.248.{}.0/24", pid % 256),
        ],
    )
}

fn engine_pull(engine: &EngineProc, reference: &str) -> Result<()> {
    let v = engine.query(
        &format!(
            r#"{{ container {{ from(address: "{reference}") {{ rootfs {{ entries }} }} }} }}"#
        ),
        RUN_TIMEOUT,
    )?;
    let entries = v["data"]["container"]["from"]["rootfs"]["entries"].to_string();
    ensure!(
        entries.contains("\"bin/\""),
        "the pulled rootfs has no bin/: {entries}"
    );
    Ok(())
}

/// One `withExec(["/bin/true", tag])`; its timing and the engine's log lines for it.
fn engine_exec(
    engine: &mut EngineProc,
    reference: &str,
    tag: &str,
) -> Result<(Duration, ExecProfile)> {
    let query = format!(
        r#"{{ container {{ from(address: "{reference}") {{ withExec(args: ["/bin/true", "{tag}"]) {{ exitCode }} }} }} }}"#
    );
    engine.new_log()?;
    let pid = engine.pid();
    let cpu_before = process_cpu(pid);
    let started = Instant::now();
    let v = engine.query(&query, RUN_TIMEOUT)?;
    let took = started.elapsed();
    let cpu_after = process_cpu(pid);
    let code = &v["data"]["container"]["from"]["withExec"]["exitCode"];
    ensure!(*code == 0, "withExec answered exitCode {code}: {v}");
    let mut profile = ExecProfile::parse(&engine.new_log()?);
    profile.client_us = took.as_micros() as f64;
    profile.engine_cpu_us = cpu_before
        .zip(cpu_after)
        .map(|(b, a)| a.saturating_sub(b).as_micros() as f64);
    ensure!(
        profile.fields.contains_key("exec timing"),
        "the engine logged no \"exec timing\" line for run {tag}: was the exec cached? log:\n{}",
        engine.log()
    );
    Ok((took, profile))
}

// ---- the engine's own timings ------------------------------------------------------------------

/// The timing lines the engine logs for one exec (engine/src/solver/exec.rs,
/// engine/src/exec/mod.rs, engine/src/server/http.rs): message -> numeric `*_us` fields.
#[derive(Default)]
struct ExecProfile {
    fields: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// The client's round trip, in microseconds.
    client_us: f64,
    /// CPU time of the engine process itself (all its threads, not its children).
    engine_cpu_us: Option<f64>,
}

/// The messages parsed, in the order the engine logs them.
const TIMING_LINES: [&str; 5] = [
    "executor timing",
    "executor cleanup timing",
    "exec timing",
    "exec solve timing",
    "query",
];

impl ExecProfile {
    fn parse(log: &str) -> ExecProfile {
        let mut p = ExecProfile::default();
        for line in log.lines() {
            for message in TIMING_LINES {
                // tracing's fmt layer: `... target: message key=value ...` (fields after the
                // message).
                if let Some(i) = line.find(&format!(": {message} ")) {
                    let rest = &line[i + message.len() + 3..];
                    let fields = rest
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .filter(|(k, _)| k.ends_with("_us"))
                        .filter_map(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()?)))
                        .collect();
                    p.fields.insert(message, fields);
                }
            }
        }
        p
    }

    fn get(&self, message: &str, key: &str) -> Option<f64> {
        self.fields.get(message)?.get(key).copied()
    }
}

/// Medians over the timed runs of each phase, nested as the work is, in milliseconds; then
/// per-run differences (medians of differences, which under a noisy machine are not the
/// differences of medians).
fn print_profile(
    profiles: &[ExecProfile],
    runc: Option<&Vec<f64>>,
    engine_cpu: Option<&Vec<f64>>,
    runc_cpu: Option<&Vec<f64>>,
) {
    let per_run = |f: &dyn Fn(&ExecProfile) -> Option<f64>| -> Option<Stats> {
        let v: Vec<f64> = profiles
            .iter()
            .filter_map(f)
            .map(|us| us / 1000.0)
            .collect();
        (!v.is_empty()).then(|| Stats::of(&v))
    };
    let med = |message: &'static str, key: &'static str| -> Option<f64> {
        per_run(&|p: &ExecProfile| p.get(message, key)).map(|s| s.median)
    };
    let show = |v: Option<f64>| v.map_or("     -".to_string(), |v| format!("{v:>6.2}"));
    println!(
        "where the engine's time goes (medians over {} runs, ms; from its debug log, phases nested as they run):",
        profiles.len()
    );
    let rows: Vec<(usize, &str, Option<f64>)> = vec![
        (
            0,
            "client round trip (POST /query over the unix socket -> answer read)",
            per_run(&|p: &ExecProfile| Some(p.client_us)).map(|s| s.median),
        ),
        (
            1,
            "GraphQL request in the server (parse, resolve, serialize)",
            med("query", "elapsed_us"),
        ),
        (
            2,
            "withExec solve (cache lookup -> result recorded)",
            med("exec solve timing", "total_us"),
        ),
        (
            3,
            "cache lookup (key, metadata get_result)",
            med("exec solve timing", "lookup_us"),
        ),
        (
            3,
            "snapshot prepare (new upper dir + overlay mount)",
            med("exec timing", "prepare_us"),
        ),
        (
            3,
            "network attach (netns, veth into the bridge, address, routes, resolv.conf/hosts)",
            med("exec timing", "attach_us"),
        ),
        (3, "executor run", med("exec timing", "run_us")),
        (
            4,
            "wait for an exec permit",
            med("executor cleanup timing", "permit_us"),
        ),
        (
            4,
            "rootfs prepare (bundle dir, user, cwd, executable check, mount stubs)",
            med("executor timing", "prepare_us"),
        ),
        (
            4,
            "exec cgroup create (+ OOM eventfd)",
            med("executor timing", "cgroup_us"),
        ),
        (
            4,
            "spec build + config.json write",
            med("executor timing", "spec_us"),
        ),
        (
            4,
            "runc run (spawn -> exit, output captured; tini + /bin/true inside)",
            med("executor timing", "runc_us"),
        ),
        (
            5,
            "of which spawning runc (fork, close_range, exec: until exec succeeded)",
            med("executor timing", "spawn_us"),
        ),
        (
            4,
            "cleanup (cgroups, stubs, bundle dir)",
            med("executor cleanup timing", "cleanup_us"),
        ),
        (
            3,
            "network release (veth down, netns unpinned, files removed)",
            med("exec timing", "release_us"),
        ),
        (
            3,
            "snapshot commit (umount, size walk, metadata row + rename)",
            med("exec timing", "commit_us"),
        ),
        (
            3,
            "result record (metadata put_result)",
            med("exec solve timing", "record_us"),
        ),
    ];
    for (depth, what, v) in rows {
        println!("  {}{} {what}", "  ".repeat(depth), show(v));
    }

    // Per run: what the engine adds around runc, and what the phases above do not cover.
    let runc_us = |p: &ExecProfile| p.get("executor timing", "runc_us");
    let outside = per_run(&|p: &ExecProfile| Some(p.client_us - runc_us(p)?));
    let solve_phases = [
        ("exec solve timing", "lookup_us"),
        ("exec timing", "prepare_us"),
        ("exec timing", "attach_us"),
        ("exec timing", "run_us"),
        ("exec timing", "release_us"),
        ("exec timing", "commit_us"),
        ("exec solve timing", "record_us"),
    ];
    let unaccounted = per_run(&|p: &ExecProfile| {
        let mut rest = p.get("exec solve timing", "total_us")?;
        for (m, k) in solve_phases {
            rest -= p.get(m, k)?;
        }
        Some(rest)
    });
    let above_solve =
        per_run(&|p: &ExecProfile| Some(p.client_us - p.get("exec solve timing", "total_us")?));
    if let Some(o) = &outside {
        println!(
            "  per run, the engine outside runc run (round trip minus runc run): median {:.2} ms, p90 {:.2}",
            o.median, o.p90
        );
    }
    if let (Some(a), Some(u)) = (&above_solve, &unaccounted) {
        println!(
            "  per run, HTTP + GraphQL + client around the solve: median {:.2} ms; inside the solve but between the phases above: median {:.2} ms",
            a.median, u.median
        );
    }
    if let (Some(r), Some(raw)) = (med("executor timing", "runc_us"), runc) {
        let raw = Stats::of(raw).median;
        println!(
            "  runc run inside the engine vs raw runc: {r:.2} vs {raw:.2} ms ({:+.2} ms; the engine's spec adds tini as PID 1 and three binds, and joins a netns made beforehand instead of creating one)",
            r - raw
        );
    }
    let own = per_run(&|p: &ExecProfile| p.engine_cpu_us);
    if let (Some(total), Some(own)) = (engine_cpu, own) {
        let total = Stats::of(total).median;
        println!(
            "  CPU per exec (medians): {total:.2} ms in the engine's cgroup = engine process {:.2} ms + runc, tini, /bin/true and the client {:.2} ms{}",
            own.median,
            total - own.median,
            runc_cpu.map_or(String::new(), |r| format!(
                "; raw runc run: {:.2} ms",
                Stats::of(r).median
            ))
        );
    }
    println!();
}

// ---- which filesystem --------------------------------------------------------------------------
