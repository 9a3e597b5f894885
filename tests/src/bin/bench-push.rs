//! `bench-push`: push of a ~130 MB, 4-layer image to a NEW repository of a loopback registry,
//! by the release `dagger-engine` (`Container.publish` of a container holding the image) and
//! by `skopeo copy` from an OCI layout, in the same run. Prints every run, the medians, the
//! ratio ours/skopeo against the goal (<= 1.0) and where the engine's time went (its "pushed"
//! log line). A benchmark, not a test: it fails only when a tool fails or answers wrongly.
//!
//! How the engine gets the image: it pulls it once (untimed) from a *second* registry, so its
//! layers are in its content store as pulled, and no layer has a source repository on the
//! registry being measured (a cross-repository mount would skip the upload; skopeo's
//! blob-info cache, which would do the same for skopeo, is deleted before every skopeo run).
//! Every run publishes to a new repository, so every blob is uploaded.
//!
//! Usage: `bench-push [PATH/TO/dagger-engine]` (or `DAGGER_ENGINE_BIN`; default: the
//! `dagger-engine` next to this executable). Must run as root. `bench/push.sh` sets up the
//! image, the disk and the packages and then runs this; see bench/README.md.
//!
//! Environment:
//! - `BENCH_LAYOUT` (required): an OCI layout holding the image (bench/scripts/build-large-image.sh).
//! - `BENCH_TAG` (`large`): its tag in the layout.
//! - `BENCH_STATE_PARENT` (required): where the engine's state goes (bench/push.sh mounts a
//!   fresh loop ext4 or tmpfs there).
//! - `BENCH_DISK` (`loop`): what `BENCH_STATE_PARENT` is, for the report.
//! - `BENCH_RUNS` (5): timed runs per tool.
//! - `BENCH_WARMUP` (1): untimed rounds first.
//! - `BENCH_TOOLS` (`engine,skopeo`): which tools to run.

use anyhow::{ensure, Context as _, Result};
use dagger_integration_tests::bench::{
    children_cpu, common, containers_env, describe_fs, env_or, layer_sizes, log_fields, mb, median,
    min_med_max, ms, oci_layout, process_ticks_cpu, run_checked, sync_fs, which, Common,
    EngineProc, Measured,
};
use dagger_integration_tests::registry::{Mode, TestRegistry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long one query (the untimed pull, a publish) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);
const GOAL_RATIO: f64 = 1.0;
/// Where skopeo keeps its blob-info cache when running as root. Deleted before every run.
const SYSTEM_BLOB_INFO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";
const SOURCE_REPO: &str = "bench/source";
/// The engine's log filter: its default (info) shows the "pushed" summary line.
const ENGINE_LOG_FILTER: &str = "info";

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-push: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Engine,
    Skopeo,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Engine => "engine",
            Tool::Skopeo => "skopeo",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Tool::Engine => {
                "dagger-engine: publish query sent -> answer (engine running, image in its store)"
            }
            Tool::Skopeo => "skopeo copy oci-layout -> registry: process start -> exit",
        }
    }
}

struct Settings {
    common: Common<Tool>,
    layout: PathBuf,
    tag: String,
    skopeo: PathBuf,
}

fn settings() -> Result<Settings> {
    Ok(Settings {
        common: common(
            "bench/push.sh",
            "loop",
            5,
            1,
            "engine,skopeo",
            &[("engine", Tool::Engine), ("skopeo", Tool::Skopeo)],
        )?,
        layout: oci_layout("bench/push.sh")?,
        tag: env_or("BENCH_TAG", "large".to_string())?,
        skopeo: which("skopeo", "skopeo")?,
    })
}

fn run() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "must run as root: the engine refuses to start otherwise"
    );
    let s = settings()?;
    let fs = describe_fs(&s.common.parent);
    let layers = layer_sizes(&s.layout, &s.tag)?;
    let total: u64 = layers.iter().sum();
    println!("engine:  {}", s.common.engine_bin.display());
    println!(
        "image:   {}:{} - {} layers, {:.1} MB compressed ({})",
        s.layout.display(),
        s.tag,
        layers.len(),
        mb(total),
        layers
            .iter()
            .map(|b| format!("{:.1}", mb(*b)))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    println!(
        "storage: BENCH_DISK={} - engine state under {} ({fs})",
        s.common.disk,
        s.common.parent.display()
    );

    // The registry pushed to, and a second one the engine pulls the image from.
    let target = TestRegistry::start(Mode::Plain);
    let source = TestRegistry::start(Mode::Plain);
    let scratch = tempfile::Builder::new()
        .prefix("bench-push-")
        .tempdir_in(&s.common.parent)
        .context("cannot create the scratch dir")?;
    skopeo_push(
        &s,
        scratch.path(),
        &format!("{}/{SOURCE_REPO}:latest", source.addr),
    )?;
    println!(
        "registries: docker-registry on {} (pushed to; plain HTTP, storage {}) and {} (the engine's source)",
        target.addr,
        target.dir.path().display(),
        source.addr
    );

    let mut engine = EngineProc::start(
        &s.common.engine_bin,
        scratch.path(),
        ENGINE_LOG_FILTER,
        None,
        &[],
    )?;
    let source_ref = format!("{}/{SOURCE_REPO}:latest", source.addr);
    let pulled = Instant::now();
    engine.query(
        &format!(r#"{{ container {{ from(address: "{source_ref}") {{ sync }} }} }}"#),
        QUERY_TIMEOUT,
    )?;
    println!(
        "engine pulled {source_ref} (untimed) in {:.0} ms",
        ms(pulled.elapsed())
    );
    println!();
    for t in &s.common.tools {
        println!("  {:<7} {}", t.name(), t.describe());
    }
    println!(
        "{} warm-up round(s), then {} timed runs; the tools' order rotates every run; a new repository per push",
        s.common.warmup, s.common.runs
    );
    println!();

    let mut times: BTreeMap<Tool, Vec<f64>> = BTreeMap::new();
    let mut cpu: BTreeMap<Tool, Vec<f64>> = BTreeMap::new();
    let mut pushed_lines = Vec::new();
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
            let repo = format!("bench/{}-{round}", tool.name());
            let dest = format!("{}/{repo}:latest", target.addr);
            sync_fs(&s.common.parent);
            let took = match tool {
                Tool::Engine => {
                    let log_before = engine.log().len();
                    let took = engine_publish(&mut engine, &source_ref, &dest)?;
                    let log = engine.log();
                    if let Some(l) = log[log_before.min(log.len())..]
                        .lines()
                        .find(|l| l.contains(" pushed "))
                    {
                        if timed {
                            pushed_lines.push(log_fields(l));
                        }
                    }
                    took
                }
                Tool::Skopeo => {
                    let _ = std::fs::remove_file(SYSTEM_BLOB_INFO_CACHE);
                    skopeo_push(&s, scratch.path(), &dest)?
                }
            };
            check_pushed(&target, &repo, layers.len())?;
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
    engine.stop()?;
    println!();

    if !pushed_lines.is_empty() {
        let med = |key: &str| -> String {
            let v: Vec<f64> = pushed_lines
                .iter()
                .filter_map(|f| f.get(key)?.parse().ok())
                .collect();
            if v.is_empty() {
                "-".into()
            } else {
                format!("{:.0}", median(&v))
            }
        };
        println!(
            "where the engine's time goes (medians, from its \"pushed\" log line): push {} ms, of which blobs {} ms; {} blobs uploaded ({} bytes), {} existed, {} mounted; the rest of the query is building the image (layers reused as pulled) and GraphQL",
            med("elapsed_ms"),
            med("blobs_ms"),
            med("uploaded"),
            med("uploaded_bytes"),
            med("existed"),
            med("mounted"),
        );
        println!();
    }

    let med: BTreeMap<Tool, (f64, f64, f64)> = times
        .iter_mut()
        .map(|(t, v)| (*t, min_med_max(v)))
        .collect();
    println!(
        "summary (push of {} layers, {:.1} MB compressed, to a new repository on a loopback docker-registry; engine state on {} = {fs}; {} runs):",
        layers.len(),
        mb(total),
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
    if let (Some((_, ours, _)), Some((_, skopeo, _))) =
        (med.get(&Tool::Engine), med.get(&Tool::Skopeo))
    {
        let r = ours / skopeo;
        println!(
            "  ours/skopeo = {ours:.0}/{skopeo:.0} = {r:.2} (goal <= {GOAL_RATIO}: {})",
            if r <= GOAL_RATIO {
                "met".to_string()
            } else {
                format!("missed by {:.0} ms", ours - GOAL_RATIO * skopeo)
            }
        );
    }
    Ok(())
}

/// `skopeo copy` of the layout's tag to `dest` (`host/repo:tag`).
fn skopeo_push(s: &Settings, scratch: &Path, dest: &str) -> Result<Measured> {
    let dir = scratch.join("skopeo");
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(&s.skopeo);
    containers_env(&mut cmd, &dir)?;
    cmd.args([
        "copy",
        "--insecure-policy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-no-creds",
    ])
    .arg(format!("oci:{}:{}", s.layout.display(), s.tag))
    .arg(format!("docker://{dest}"));
    let started = Instant::now();
    let cpu = children_cpu();
    run_checked(&mut cmd, "skopeo copy (push)")?;
    Ok(Measured {
        wall: started.elapsed(),
        cpu: children_cpu().saturating_sub(cpu),
    })
}

/// The pushed manifest lists every layer (checked with the registry's API, untimed).
fn check_pushed(target: &TestRegistry, repo: &str, layers: usize) -> Result<()> {
    let out = run_checked(
        Command::new("curl").args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            &format!("http://{}/v2/{repo}/manifests/latest", target.addr),
        ]),
        "curl (manifest check)",
    )?;
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let n = m["layers"].as_array().map_or(0, |l| l.len());
    ensure!(n == layers, "{repo}: {n} layers pushed, {layers} expected");
    Ok(())
}

fn engine_publish(engine: &mut EngineProc, source: &str, dest: &str) -> Result<Measured> {
    let pid = engine.pid();
    let cpu = process_ticks_cpu(pid)?;
    let started = Instant::now();
    let v = engine.query(
        &format!(
            r#"{{ container {{ from(address: "{source}") {{ publish(address: "{dest}") }} }} }}"#
        ),
        QUERY_TIMEOUT,
    )?;
    let took = Measured {
        wall: started.elapsed(),
        cpu: process_ticks_cpu(pid)?.saturating_sub(cpu),
    };
    let result = v["data"]["container"]["from"]["publish"]
        .as_str()
        .with_context(|| format!("no publish result: {v}"))?;
    ensure!(
        result.starts_with(&format!("{dest}@sha256:")),
        "publish answered {result:?}"
    );
    Ok(took)
}
