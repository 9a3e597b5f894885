//! `bench-pull`: cold pull of a ~130 MB, 4-layer image from a loopback registry into usable
//! snapshots, by the release `dagger-engine`, by `podman pull` and by `skopeo copy` to a `dir:`
//! (the transfer-only floor), in the same run. Prints every run, the medians, the ratios
//! ours/podman and ours/skopeo against the goal (ours <= 0.5 x podman), and where the engine's
//! time went, layer by layer, from its own log lines. A benchmark, not a test: it fails only
//! when a tool fails or the engine answers wrongly.
//!
//! Usage: `bench-pull [PATH/TO/dagger-engine]` (or `DAGGER_ENGINE_BIN`; default: the
//! `dagger-engine` next to this executable). Must run as root. `bench/pull.sh` sets up the
//! image, the disk and the packages and then runs this; see bench/README.md.
//!
//! Environment:
//! - `BENCH_LAYOUT` (required): an OCI layout holding the image (bench/scripts/build-large-image.sh).
//! - `BENCH_TAG` (`large`): its tag in the layout.
//! - `BENCH_STATE_PARENT` (required): the directory every tool's storage goes under, on the
//!   filesystem being measured (bench/pull.sh mounts a fresh loop ext4 or tmpfs there).
//! - `BENCH_DISK` (`loop`): what `BENCH_STATE_PARENT` is, for the report.
//! - `BENCH_RUNS` (5): timed runs per tool.
//! - `BENCH_WARMUP` (1): untimed rounds first (loads the tools' binaries into the page cache).
//! - `BENCH_TOOLS` (`engine,podman,skopeo`): which tools to run.

use anyhow::{ensure, Context as _, Result};
use dagger_integration_tests::bench::{
    children_cpu, common, containers_env, describe_fs, env_or, layer_sizes, log_fields, mb, median,
    min_med_max, ms, oci_layout, post_query, process_ticks_cpu, remove_tree, run_checked, sync_fs,
    which, Common, EngineProc, Measured,
};
use dagger_integration_tests::registry::{Mode, TestRegistry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long one pull, by any tool, may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);
const GOAL_RATIO: f64 = 0.5;
/// Where skopeo and podman keep their blob-info cache when running as root with no
/// per-store override. Deleted before every skopeo and podman run.
const SYSTEM_BLOB_INFO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";
const REPO: &str = "bench/large";
/// The engine's log filter: its default (info), plus the image service's per-layer timings.
const ENGINE_LOG_FILTER: &str = "info,dagger_engine::image=debug";

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-pull: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Engine,
    Podman,
    Skopeo,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Engine => "engine",
            Tool::Podman => "podman",
            Tool::Skopeo => "skopeo",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Tool::Engine => "dagger-engine: query sent -> answer (engine already running)",
            Tool::Podman => "podman pull: process start -> exit",
            Tool::Skopeo => "skopeo copy to dir: (transfer only): process start -> exit",
        }
    }
}

struct Settings {
    common: Common<Tool>,
    layout: PathBuf,
    tag: String,
    skopeo: PathBuf,
    podman: PathBuf,
}

fn settings() -> Result<Settings> {
    Ok(Settings {
        common: common(
            "bench/pull.sh",
            "loop",
            5,
            1,
            "engine,podman,skopeo",
            &[
                ("engine", Tool::Engine),
                ("podman", Tool::Podman),
                ("skopeo", Tool::Skopeo),
            ],
        )?,
        layout: oci_layout("bench/pull.sh")?,
        tag: env_or("BENCH_TAG", "large".to_string())?,
        skopeo: which("skopeo", "skopeo")?,
        podman: which("podman", "podman")?,
    })
}

fn run() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "must run as root: the engine refuses to start otherwise, and podman's overlay storage needs it"
    );
    let s = settings()?;
    let fs = describe_fs(&s.common.parent);
    let image = ImageStats::read(&s.layout, &s.tag)?;
    println!("engine:  {}", s.common.engine_bin.display());
    println!(
        "image:   {}:{} - {} layers, {:.1} MB compressed ({})",
        s.layout.display(),
        s.tag,
        image.layers.len(),
        mb(image.layers.iter().sum()),
        image
            .layers
            .iter()
            .map(|b| format!("{:.1}", mb(*b)))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    println!(
        "storage: BENCH_DISK={} - every tool's storage under {} ({fs})",
        s.common.disk,
        s.common.parent.display()
    );

    // The registry: Debian's docker-registry on 127.0.0.1:<free port>, plain HTTP.
    let registry = TestRegistry::start(Mode::Plain);
    let reference = format!("{}/{REPO}:latest", registry.addr);
    let scratch = tempfile::Builder::new()
        .prefix("bench-pull-")
        .tempdir_in(&s.common.parent)
        .context("cannot create the scratch dir")?;
    let empty = scratch.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let pushed = Instant::now();
    let digest = push(&s, &registry.addr, scratch.path())?;
    println!(
        "registry: docker-registry on {} (plain HTTP); pushed {reference} ({digest}) with skopeo in {:.0} ms",
        registry.addr,
        ms(pushed.elapsed())
    );
    println!();
    for t in &s.common.tools {
        println!("  {:<7} {}", t.name(), t.describe());
    }
    println!(
        "{} warm-up round(s), then {} timed runs; the tools' order rotates every run; fresh storage per run, synced before each timing",
        s.common.warmup, s.common.runs
    );
    println!();

    let mut times: BTreeMap<Tool, Vec<f64>> = BTreeMap::new();
    let mut cpu: BTreeMap<Tool, Vec<f64>> = BTreeMap::new();
    let mut podman_startup: Vec<f64> = Vec::new();
    let mut podman_cache: Option<String> = None;
    let mut profiles: Vec<EngineProfile> = Vec::new();
    let mut snapshotter = None;
    for round in 0..s.common.warmup + s.common.runs {
        let timed = round >= s.common.warmup;
        let label = if timed {
            format!("run {:>2}", round - s.common.warmup + 1)
        } else {
            format!("warm-up {}", round + 1)
        };
        let mut order = s.common.tools.clone();
        let shift = round % order.len();
        order.rotate_left(shift);
        let mut line = Vec::new();
        for tool in order {
            let dir = scratch.path().join(format!("{round}-{}", tool.name()));
            std::fs::create_dir_all(&dir)?;
            sync_fs(&s.common.parent);
            let took = match tool {
                Tool::Engine => {
                    let (took, profile, snap) = engine_pull(&s, &dir, &reference, &empty)?;
                    snapshotter = snapshotter.or(snap);
                    if timed {
                        profiles.push(profile);
                    }
                    took
                }
                Tool::Podman => {
                    let (took, notes) = podman_pull(&s, &dir, &reference)?;
                    if timed {
                        podman_startup.push(ms(notes.startup.wall));
                    }
                    podman_cache = Some(notes.blob_info_cache);
                    took
                }
                Tool::Skopeo => skopeo_copy(&s, &dir, &reference)?,
            };
            remove_tree(&dir)?;
            line.push(format!(
                "{} {:>6.0} ms (cpu {:>5.0} ms)",
                tool.name(),
                ms(took.wall),
                ms(took.cpu)
            ));
            if timed {
                times.entry(tool).or_default().push(ms(took.wall));
                cpu.entry(tool).or_default().push(ms(took.cpu));
            }
        }
        println!("  {label}: {}", line.join(", "));
    }
    println!();
    if let Some(line) = &snapshotter {
        println!("engine log: {line}");
    }
    if let Some(cache) = &podman_cache {
        println!("podman's blob-info cache: {cache}; skopeo's: {SYSTEM_BLOB_INFO_CACHE} (deleted before each run)");
    }

    // Where the engine's time went.
    if !profiles.is_empty() {
        print_profiles(&profiles, &image);
    }

    // Summary.
    let med: BTreeMap<Tool, (f64, f64, f64)> = times
        .iter_mut()
        .map(|(t, v)| (*t, min_med_max(v)))
        .collect();
    println!(
        "summary (cold pull of {}, {} layers, {:.1} MB compressed; storage on {} = {fs}; {} runs):",
        reference,
        image.layers.len(),
        mb(image.layers.iter().sum()),
        s.common.disk,
        s.common.runs
    );
    for (t, (lo, m, hi)) in &med {
        let c = cpu.get(t).map_or(0.0, |v| median(v));
        println!(
            "  {:<7} median {m:>6.0} ms  (min {lo:.0}, max {hi:.0}; CPU user+sys median {c:.0} ms)  {}",
            t.name(),
            t.describe()
        );
    }
    if !podman_startup.is_empty() {
        println!(
            "  (podman's time includes its own start-up: `podman images` on an empty store takes a median {:.0} ms; the engine's start-up is not in its time, see bench/foundation.sh)",
            median(&podman_startup)
        );
    }
    if let Some((_, ours, _)) = med.get(&Tool::Engine) {
        if let Some((_, podman, _)) = med.get(&Tool::Podman) {
            let r = ours / podman;
            println!(
                "  ours/podman = {ours:.0}/{podman:.0} = {r:.2} (goal <= {GOAL_RATIO}: {})",
                if r <= GOAL_RATIO {
                    "met".to_string()
                } else {
                    format!(
                        "missed by {:.0} ms; {:.0} ms would meet it",
                        ours - GOAL_RATIO * podman,
                        GOAL_RATIO * podman
                    )
                }
            );
        }
        if let Some((_, skopeo, _)) = med.get(&Tool::Skopeo) {
            println!(
                "  ours/skopeo = {ours:.0}/{skopeo:.0} = {:.2} (skopeo only transfers: no decompression, no files)",
                ours / skopeo
            );
        }
    }
    drop(registry);
    Ok(())
}

/// Pushes the layout's tag to the registry; returns the manifest digest.
fn push(s: &Settings, addr: &str, scratch: &Path) -> Result<String> {
    let dir = scratch.join("push");
    std::fs::create_dir_all(&dir)?;
    let digest_file = dir.join("digest");
    let mut cmd = Command::new(&s.skopeo);
    containers_env(&mut cmd, &dir)?;
    cmd.args([
        "copy",
        "--insecure-policy",
        "--quiet",
        "--dest-tls-verify=false",
    ])
    .arg("--dest-no-creds")
    .arg("--digestfile")
    .arg(&digest_file)
    .arg(format!("oci:{}:{}", s.layout.display(), s.tag))
    .arg(format!("docker://{addr}/{REPO}:latest"));
    run_checked(&mut cmd, "skopeo copy (push)")?;
    let digest = std::fs::read_to_string(&digest_file)?.trim().to_string();
    std::fs::remove_dir_all(&dir)?;
    Ok(digest)
}

fn skopeo_copy(s: &Settings, dir: &Path, reference: &str) -> Result<Measured> {
    let _ = std::fs::remove_file(SYSTEM_BLOB_INFO_CACHE);
    let dest = dir.join("image");
    let mut cmd = Command::new(&s.skopeo);
    containers_env(&mut cmd, dir)?;
    cmd.args([
        "copy",
        "--insecure-policy",
        "--quiet",
        "--src-tls-verify=false",
    ])
    .arg("--src-no-creds")
    .arg(format!("docker://{reference}"))
    .arg(format!("dir:{}", dest.display()));
    let started = Instant::now();
    let cpu = children_cpu();
    run_checked(&mut cmd, "skopeo copy (pull)")?;
    let took = Measured {
        wall: started.elapsed(),
        cpu: children_cpu().saturating_sub(cpu),
    };
    ensure!(
        dest.join("manifest.json").is_file(),
        "skopeo wrote no manifest"
    );
    Ok(took)
}

/// What a podman run measured besides the pull.
struct PodmanNotes {
    /// `podman images` on another fresh, empty store: podman's own start-up, which its pull
    /// time includes (the engine's start-up is not in the engine's time).
    startup: Measured,
    /// Where podman kept its blob-info cache.
    blob_info_cache: String,
}

fn podman_pull(s: &Settings, dir: &Path, reference: &str) -> Result<(Measured, PodmanNotes)> {
    let _ = std::fs::remove_file(SYSTEM_BLOB_INFO_CACHE);
    let (root, tmp) = (dir.join("root"), dir.join("tmp"));
    for d in [&root, &tmp] {
        std::fs::create_dir_all(d)?;
    }
    // podman refuses a runroot longer than 50 characters; it holds only locks and state.
    let runroot_dir = tempfile::Builder::new()
        .prefix("bench-pull-")
        .tempdir()
        .context("cannot create podman's runroot")?;
    let runroot = runroot_dir.path().to_path_buf();
    // Only what the pull needs: blobs are staged in `tmp` (same disk) rather than /var/tmp.
    // (default_ulimits matter to `podman run` only, not to pulls.)
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[engine]\nimage_copy_tmp_dir = \"{}\"\nevents_logger = \"none\"\n",
            tmp.display()
        ),
    )?;
    let storage = dir.join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            root.display(),
            runroot.display()
        ),
    )?;
    let run_podman = |args: &[&str], root: &Path| -> Result<(Measured, std::process::Output)> {
        let mut cmd = Command::new(&s.podman);
        containers_env(&mut cmd, dir)?;
        cmd.env("CONTAINERS_CONF", &conf)
            .env("CONTAINERS_STORAGE_CONF", &storage)
            .arg("--root")
            .arg(root)
            .arg("--runroot")
            .arg(&runroot)
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        let started = Instant::now();
        let cpu = children_cpu();
        let out = run_checked(&mut cmd, &format!("podman {}", args.join(" ")))?;
        let took = Measured {
            wall: started.elapsed(),
            cpu: children_cpu().saturating_sub(cpu),
        };
        Ok((took, out))
    };
    let (took, _) = run_podman(&["pull", "--quiet", "--tls-verify=false", reference], &root)?;
    let (_, images) = run_podman(
        &["images", "--noheading", "--format", "{{.Repository}}"],
        &root,
    )?;
    ensure!(
        String::from_utf8_lossy(&images.stdout).contains(REPO),
        "podman images does not list the pulled image: {}",
        String::from_utf8_lossy(&images.stdout)
    );
    let store_cache = root.join("cache/blob-info-cache-v1.boltdb");
    let blob_info_cache = if store_cache.is_file() {
        format!("{} (fresh per run)", store_cache.display())
    } else if Path::new(SYSTEM_BLOB_INFO_CACHE).is_file() {
        format!("{SYSTEM_BLOB_INFO_CACHE} (deleted before each run)")
    } else {
        "none found".to_string()
    };
    let empty_root = dir.join("empty-root");
    std::fs::create_dir_all(&empty_root)?;
    let (startup, _) = run_podman(&["images", "--quiet"], &empty_root)?;
    remove_tree(&runroot)?;
    drop(runroot_dir);
    Ok((
        took,
        PodmanNotes {
            startup,
            blob_info_cache,
        },
    ))
}

// ---- the engine ------------------------------------------------------------------------------

/// Starts the engine on a fresh state dir under `dir`, sends the pull query, checks the answer,
/// stops the engine. Returns the query's round trip, the per-layer profile from the log, and
/// the log's snapshotter line.
fn engine_pull(
    s: &Settings,
    dir: &Path,
    reference: &str,
    empty_docker_config: &Path,
) -> Result<(Measured, EngineProfile, Option<String>)> {
    let mut engine = EngineProc::start(
        &s.common.engine_bin,
        dir,
        ENGINE_LOG_FILTER,
        Some(empty_docker_config),
        &[],
    )?;
    let body = serde_json::json!({
        "query": format!(r#"{{ container {{ from(address: "{reference}") {{ rootfs {{ entries }} }} }} }}"#)
    })
    .to_string();
    let pid = engine.pid();
    let cpu = process_ticks_cpu(pid)?;
    let started = Instant::now();
    let (status, answer) = post_query(&engine.socket, &body, PULL_TIMEOUT)
        .with_context(|| format!("pull query failed; engine log:\n{}", engine.log()))?;
    let took = Measured {
        wall: started.elapsed(),
        cpu: process_ticks_cpu(pid)?.saturating_sub(cpu),
    };
    ensure!(
        status == 200,
        "pull query: HTTP {status}: {answer}\nengine log:\n{}",
        engine.log()
    );
    let v: serde_json::Value = serde_json::from_str(&answer).context("answer is not JSON")?;
    ensure!(
        v.get("errors").is_none(),
        "pull query failed: {v}\nengine log:\n{}",
        engine.log()
    );
    let entries: Vec<&str> = v["data"]["container"]["from"]["rootfs"]["entries"]
        .as_array()
        .context("no rootfs entries in the answer")?
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    for want in ["bin/", "usr/", "opt/"] {
        ensure!(
            entries.contains(&want),
            "rootfs entries lack {want}: {entries:?}"
        );
    }
    engine.stop()?;
    let log = engine.log();
    let profile = EngineProfile::parse(&log);
    let snapshotter = log
        .lines()
        .find(|l| l.contains("snapshotter:"))
        .map(|l| l.trim().to_string());
    Ok((took, profile, snapshotter))
}

// ---- the engine's own timings ------------------------------------------------------------------

/// `key=value` fields of the engine's image log lines (see engine/src/image/mod.rs).
type Fields = BTreeMap<String, String>;

#[derive(Default)]
struct EngineProfile {
    /// "layer timing" lines, by layer index.
    layers: BTreeMap<usize, Fields>,
    /// "blob commit timing" lines (verify + fsync + rename into the content store), by digest.
    blob_commits: BTreeMap<String, Fields>,
    /// The "pulled" line.
    pulled: Option<Fields>,
}

impl EngineProfile {
    fn parse(log: &str) -> EngineProfile {
        let mut p = EngineProfile::default();
        for line in log.lines() {
            if let Some(rest) = after(line, "layer timing") {
                let f = log_fields(rest);
                if let Some(i) = f.get("index").and_then(|i| i.parse().ok()) {
                    p.layers.insert(i, f);
                }
            } else if let Some(rest) = after(line, "blob commit timing") {
                let f = log_fields(rest);
                if let Some(d) = f.get("digest") {
                    p.blob_commits.insert(d.clone(), f);
                }
            } else if let Some(rest) = after(line, "pulled") {
                p.pulled = Some(log_fields(rest));
            }
        }
        p
    }
}

fn after<'a>(line: &'a str, message: &str) -> Option<&'a str> {
    let i = line.find(&format!(": {message} "))?;
    Some(&line[i + message.len() + 3..])
}

fn num(f: &Fields, key: &str) -> Option<f64> {
    f.get(key)?.parse().ok()
}

/// Medians over the runs of every numeric field of each layer line and of the "pulled" line.
fn print_profiles(profiles: &[EngineProfile], image: &ImageStats) {
    println!(
        "where the engine's time goes (medians over {} runs, from its debug log; ms from the start of the pull):",
        profiles.len()
    );
    let med = |get: &dyn Fn(&EngineProfile) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = profiles.iter().filter_map(get).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let layer_count = profiles.iter().map(|p| p.layers.len()).max().unwrap_or(0);
    if layer_count == 0 {
        println!("  (no \"layer timing\" lines in the engine log)");
    }
    for i in 0..layer_count {
        let field = |key: &'static str| {
            med(&|p: &EngineProfile| p.layers.get(&i).and_then(|f| num(f, key)))
        };
        let compressed = image.layers.get(i).copied().unwrap_or(0);
        let blob_commit = med(&|p: &EngineProfile| {
            let digest = p.layers.get(&i)?.get("digest")?;
            num(p.blob_commits.get(digest)?, "commit_ms")
        });
        let modes: Vec<&str> = profiles
            .iter()
            .filter_map(|p| p.layers.get(&i)?.get("mode").map(String::as_str))
            .collect();
        let streamed = modes.iter().filter(|m| **m == "stream").count();
        println!(
            "  layer {} ({:.1} MB gz -> {} MB, {} entries; unpacked while downloading in {streamed}/{} runs):",
            i + 1,
            mb(compressed),
            show(field("uncompressed_bytes").map(|b| b / 1e6)),
            show(field("entries")),
            modes.len(),
        );
        println!(
            "    download {}..{} ms (of which blob verify+fsync+rename {} ms); unpack {}..{} ms = {} ms; snapshot commit {} ms",
            show(field("download_start_ms")),
            show(field("download_end_ms")),
            show(blob_commit),
            show(field("apply_start_ms")),
            show(field("apply_end_ms")),
            show(field("apply_ms")),
            show(field("commit_ms")),
        );
        println!(
            "    unpack threads: {} ms waiting for downloaded bytes, {} ms decompressing, {} ms hashing+parsing+writing files",
            show(field("wait_ms")),
            show(field("decode_ms")),
            show(field("write_ms")),
        );
    }
    let pulled =
        |key: &'static str| med(&|p: &EngineProfile| p.pulled.as_ref().and_then(|f| num(f, key)));
    println!(
        "  whole pull (engine side): {} ms = resolve {} ms + config {} ms + layers {} ms + record {} ms",
        show(pulled("elapsed_ms")),
        show(pulled("resolve_ms")),
        show(pulled("config_ms")),
        show(pulled("layers_ms")),
        show(pulled("record_ms")),
    );
    println!();
}

// ---- the image ---------------------------------------------------------------------------------

struct ImageStats {
    /// Compressed layer sizes, bottom first.
    layers: Vec<u64>,
}

impl ImageStats {
    fn read(layout: &Path, tag: &str) -> Result<ImageStats> {
        Ok(ImageStats {
            layers: layer_sizes(layout, tag)?,
        })
    }
}

// ---- which filesystem --------------------------------------------------------------------------
