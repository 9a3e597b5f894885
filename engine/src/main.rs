//! `dagger-engine`: the daemon.

use anyhow::Context as _;
use clap::Parser;
use dagger_engine::config::{self, Config, Overrides};
use dagger_engine::content::ContentStore;
use dagger_engine::exec::{Executor, ExecutorOptions};
use dagger_engine::gc::{self, Gc};
use dagger_engine::git::GitService;
use dagger_engine::image::ImageService;
use dagger_engine::metadata::{self, Metadata};
use dagger_engine::network::{Network, NetworkOptions};
use dagger_engine::registry::{Credentials, RegistryClient, RegistryOptions};
use dagger_engine::snapshot::{self, SnapshotKind};
use dagger_engine::solver::{Execution, Solver};
use dagger_engine::state::{Snapshotter, StateDir};
use dagger_engine::{api, oci, server, sys};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "dagger-engine", version = dagger_engine::VERSION, about = "The Dagger-compatible engine daemon")]
struct Args {
    /// Configuration file (BuildKit-style TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory; overrides `root` in the file.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Listen address (unix:///PATH or tcp://HOST:PORT); repeatable; replaces `[grpc] address`.
    #[arg(long = "addr", value_name = "ADDR")]
    addr: Vec<String>,
    /// Debug logging.
    #[arg(long)]
    debug: bool,
    /// Trace logging.
    #[arg(long)]
    trace: bool,
    /// Grant an entitlement (security.insecure, network.host); repeatable; replaces the file's list.
    #[arg(long = "allow-insecure-entitlement", value_name = "ENTITLEMENT")]
    allow_insecure_entitlement: Vec<String>,
    /// Name of the exec network; the bridge is NAME0.
    #[arg(long = "network-name", value_name = "NAME", default_value = "dagger")]
    network_name: String,
    /// Subnet of the exec network.
    #[arg(
        long = "network-cidr",
        value_name = "CIDR",
        default_value = "10.87.0.0/16"
    )]
    network_cidr: String,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

#[derive(clap::Subcommand, Debug)]
enum Subcommand {
    /// Join standard input and output to the engine's unix socket (for `docker exec -i`,
    /// `kubectl exec -i`, ssh). Also reached as `buildctl [--addr ADDR] dial-stdio`.
    DialStdio {
        /// The engine socket (unix:///PATH); default: the first unix address of the config.
        #[arg(long = "addr", value_name = "ADDR")]
        addr: Option<String>,
    },
}

fn main() -> ExitCode {
    if let Some(code) = buildctl_alias() {
        return code;
    }
    let mut args = Args::parse();
    if let Some(Subcommand::DialStdio { addr }) = args.command.take() {
        // `dagger-engine --addr unix:///x dial-stdio` as well as `... dial-stdio --addr ...`.
        let addr = addr.or_else(|| args.addr.first().cloned());
        return dial_stdio(addr.as_deref(), args.config.as_deref());
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dagger-engine: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Invoked as `buildctl` (the image's symlink): only `[--addr ADDR] dial-stdio` is served,
/// which is what BuildKit's connection helpers run.
fn buildctl_alias() -> Option<ExitCode> {
    let mut argv = std::env::args_os();
    let argv0 = PathBuf::from(argv.next()?);
    if argv0.file_name()? != "buildctl" {
        return None;
    }
    let (mut addr, mut dial, mut rest) =
        (None, false, argv.map(|a| a.to_string_lossy().into_owned()));
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "dial-stdio" => dial = true,
            "--addr" => addr = rest.next(),
            a if a.starts_with("--addr=") => addr = Some(a["--addr=".len()..].to_string()),
            other => {
                eprintln!("buildctl: {other:?} is not supported: this is dagger-engine, which serves only `buildctl [--addr unix:///PATH] dial-stdio`");
                return Some(ExitCode::from(2));
            }
        }
    }
    if !dial {
        eprintln!("buildctl: this is dagger-engine, which serves only `buildctl [--addr unix:///PATH] dial-stdio`");
        return Some(ExitCode::from(2));
    }
    Some(dial_stdio(addr.as_deref(), None))
}

/// `dial-stdio`: the socket from `--addr`, else from the config file (if it loads), else the
/// default one.
fn dial_stdio(addr: Option<&str>, config: Option<&std::path::Path>) -> ExitCode {
    let path = config
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    let loaded = Config::load(&path, false).ok().map(|l| l.config);
    let result = server::dial_stdio::socket_path(addr, loaded.as_ref())
        .map_err(anyhow::Error::msg)
        .and_then(|socket| server::dial_stdio::run(&socket).map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dagger-engine dial-stdio: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let args_network = NetworkArgs {
        name: args.network_name.clone(),
        cidr: args.network_cidr.clone(),
    };
    let explicit = args.config.is_some();
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    let loaded = Config::load(&config_path, explicit)?;
    let mut config = loaded.config;
    config.apply(&Overrides {
        root: args.root,
        addresses: args.addr,
        debug: args.debug,
        trace: args.trace,
        allow_insecure_entitlements: args.allow_insecure_entitlement,
    })?;
    init_logging(&config);
    match &loaded.source {
        Some(path) => tracing::info!("config loaded from {}", path.display()),
        None => tracing::info!(
            "no config file at {}; using defaults",
            config_path.display()
        ),
    }
    for key in &loaded.unknown_keys {
        tracing::warn!("{}: {key}", config_path.display());
    }

    if !sys::is_root() {
        anyhow::bail!(
            "dagger-engine must run as root (it mounts filesystems and runs containers); run it with sudo or as a privileged container"
        );
    }

    trust_extra_cas();

    let gc_settings = gc::Settings::from_config(&config.worker)?;
    let state = StateDir::open(&config.root, config.worker.snapshotter)?;
    report_snapshotter(&state);

    // GraphQL resolves nested selections recursively, one future inside the next: a deep
    // query (SDKs chain dozens of calls) needs more than the 2 MiB default, above all in debug
    // builds. Only the pages used are ever touched.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Registered before anything listens: a signal that arrives as soon as the first
        // query is answered must already mean "shut down", not the default "die".
        let shutdown = shutdown_signal()?;
        let listeners = server::bind(&config.grpc).await?;
        for l in &listeners {
            if let server::Listener::Tcp { .. } = l {
                tracing::warn!(
                    "{} serves plaintext HTTP with no authentication: anyone who can reach it can run containers as root on this host; keep it on loopback or a trusted network",
                    l.describe()
                );
            }
        }
        let (images, meta) = open_stores(&config, &state)?;
        let execution = start_execution(&config, &state, &args_network).await?;
        let network = execution.network.clone();
        let git = GitService::new(state.root().join("git"), images.snapshotter().clone())?;
        let content = images.content().clone();
        let solver = Solver::new(images, meta, Some(execution), state.cache_mounts_dir());
        let gc = Gc::new(
            solver.clone(),
            content,
            gc_settings,
            state.root().to_path_buf(),
        );
        let uploads = server::upload_routes(solver.clone());
        let sockets = dagger_engine::sockets::ClientSockets::new(state.root().join("sockets"))
            .context("preparing the client sockets directory")?;
        let socket_routes = server::socket_routes(sockets.clone());
        let api = api::Api::new(api::ApiState {
            default_platform: oci::Platform::host(),
            solver,
            git,
            gc: gc.clone(),
            sockets,
        });
        // After the consistency check (in `open_stores`): its first run is the start-up one.
        let gc_task = gc.start();
        let names: Vec<String> = listeners.iter().map(|l| l.describe()).collect();
        tracing::info!(
            version = dagger_engine::VERSION,
            root = %state.root().display(),
            "engine ready, listening on {}",
            names.join(", ")
        );
        server::serve(listeners, server::router(api).merge(uploads).merge(socket_routes), shutdown).await;
        if let Some(task) = gc_task {
            task.abort();
        }
        // A run in progress finishes before the state directory's lock is released.
        gc.wait_idle().await;
        if let Err(e) = network.teardown().await {
            tracing::warn!("network teardown: {e}");
        }
        drop(state);
        tracing::info!("engine stopped");
        anyhow::Ok(())
    })
}

/// Opens the content store, metadata and snapshotter, repairing what a crash left behind:
/// stale mounts, half-built snapshots, rows without files and files without rows.
fn open_stores(config: &Config, state: &StateDir) -> anyhow::Result<(ImageService, Metadata)> {
    for m in sys::mount::mounts_under(state.root()).context("reading mountinfo")? {
        // The state directory itself may be a mount (a volume, a loop image): keep it.
        if m == state.root() {
            continue;
        }
        tracing::warn!("unmounting {} left from an earlier run", m.display());
        if let Err(e) = sys::mount::unmount_detach(&m) {
            tracing::warn!("cannot unmount {}: {e}", m.display());
        }
    }
    let meta = Metadata::open(&state.metadata_dir().join(metadata::DB_FILE))?;
    let content = ContentStore::open(state.blobs_dir(), state.ingest_dir())?;
    let report = meta.check_consistency(&state.blobs_dir(), &state.snapshots_dir())?;
    for d in &report.removed_snapshots {
        tracing::warn!("snapshot {d} was missing its files or unfinished; forgotten");
    }
    for d in &report.removed_blobs {
        tracing::warn!("blob {d} was missing from the content store; forgotten");
    }
    for dir in &report.orphan_dirs {
        tracing::info!("removing unrecorded snapshot directory {}", dir.display());
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
    // A blob reaches blobs/ only after verification, so one without a row (a crash between
    // the rename and the insert) is adopted rather than thrown away.
    for path in &report.orphan_blobs {
        let adopted = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|hex| oci::Digest::parse(&format!("sha256:{hex}")).ok())
            .and_then(|d| {
                let size = std::fs::metadata(path).ok()?.len();
                meta.put_blob(&d, size, "").ok()
            });
        if adopted.is_none() {
            tracing::warn!("removing unrecognised file {}", path.display());
            let _ = std::fs::remove_file(path);
        }
    }
    let stale = content.clean_stale_ingests(Duration::from_secs(24 * 3600))?;
    if stale > 0 {
        tracing::info!("removed {stale} abandoned downloads");
    }
    // Never delete recursively through a mount that failed to go away.
    if sys::mount::mounts_under(&state.tmp_dir())?.is_empty() {
        let _ = std::fs::remove_dir_all(state.tmp_dir());
    }
    std::fs::create_dir_all(state.tmp_dir()).context("creating the tmp directory")?;

    let registry = RegistryClient::new(RegistryOptions {
        hosts: config.registries.clone(),
        credentials: Credentials::from_docker_config(),
        ..RegistryOptions::default()
    })?;
    let kind = match state.snapshotter() {
        Snapshotter::Overlayfs => SnapshotKind::Overlay,
        Snapshotter::Native { .. } => SnapshotKind::Native,
    };
    let snapshots =
        snapshot::Snapshotter::new(kind, state.snapshots_dir(), state.tmp_dir(), meta.clone());
    Ok((
        ImageService::new(registry, content, meta.clone(), snapshots),
        meta,
    ))
}

/// Network flags, as in Dagger's engine: the bridge is `<name>0`.
struct NetworkArgs {
    name: String,
    cidr: String,
}

/// The executor (runc) and the network execs join.
async fn start_execution(
    config: &Config,
    state: &StateDir,
    net: &NetworkArgs,
) -> anyhow::Result<Execution> {
    let mut opts = NetworkOptions::new(state.root().join("net"));
    opts.bridge = format!("{}0", net.name);
    opts.cidr = net
        .cidr
        .parse()
        .with_context(|| format!("--network-cidr {:?} is not an IPv4 CIDR", net.cidr))?;
    opts.dns = config.dns.clone();
    let network = Network::setup(opts).await?;
    let mut exec_opts = ExecutorOptions::from_config(config, state.executor_dir());
    exec_opts.extra_ca_certs = dagger_engine::exec::cacerts::load_dir(std::path::Path::new(
        dagger_engine::registry::DEFAULT_EXTRA_CA_DIR,
    ));
    if !exec_opts.extra_ca_certs.is_empty() {
        tracing::info!(
            "adding the CA certificates of {} to exec containers' CA bundles",
            dagger_engine::registry::DEFAULT_EXTRA_CA_DIR
        );
    }
    let executor = Executor::new(exec_opts).await?;
    Ok(Execution { executor, network })
}

/// Custom CAs in `/usr/local/share/ca-certificates` (mounted into the engine's container, or
/// baked into a derived image): registry pulls trust them directly; for git and anything else
/// that reads the system store, `update-ca-certificates` adds them to it when the store lacks
/// any of them. A failure is only a warning, as in Dagger.
fn trust_extra_cas() {
    let dir = std::path::Path::new(dagger_engine::registry::DEFAULT_EXTRA_CA_DIR);
    let extra = dagger_engine::exec::cacerts::load_dir(dir);
    if extra.is_empty() {
        return;
    }
    let store = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    if dagger_engine::exec::cacerts::contains_all(&store, &String::from_utf8_lossy(&extra)) {
        return;
    }
    match std::process::Command::new("update-ca-certificates")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            tracing::info!("added the CA certificates of {} to the system store", dir.display())
        }
        Ok(out) => tracing::warn!(
            "update-ca-certificates failed ({}): {}; registries still trust the certificates of {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            dir.display()
        ),
        Err(e) => tracing::warn!(
            "cannot run update-ca-certificates ({e}); registries still trust the certificates of {}, git and other tools do not",
            dir.display()
        ),
    }
}

fn init_logging(config: &Config) {
    let level = if config.trace {
        "trace"
    } else if config.debug {
        "debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAGGER_ENGINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn report_snapshotter(state: &StateDir) {
    let fs = state.backing_fs();
    match state.snapshotter() {
        Snapshotter::Overlayfs => tracing::info!(
            "snapshotter: overlayfs (state directory on {})",
            sys::fs_name(fs.magic)
        ),
        Snapshotter::Native {
            fallback_reason: None,
        } => tracing::info!("snapshotter: native (configured)"),
        Snapshotter::Native {
            fallback_reason: Some(reason),
        } => tracing::warn!(
            "state directory {root} cannot host overlay snapshots: {reason}. Falling back to the copying (native) snapshotter, which copies every image layer and every exec's filesystem: pulls and execs get much slower and use far more disk. Fix: give {root} its own volume, e.g. `docker run --privileged -v dagger-engine:/var/lib/dagger ...`, or a host directory on ext4/xfs (with d_type).",
            root = state.root().display()
        ),
    }
}

/// Installs the SIGTERM/SIGINT handlers now and returns the future that resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    })
}
