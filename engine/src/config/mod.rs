//! Engine configuration: a BuildKit-style `engine.toml`, with command-line flags on top.
//!
//! Parsing is strict about values and lenient about keys: a bad value stops the daemon with the
//! file, key and line; an unknown key is reported as a warning and otherwise ignored, so a
//! config written for the original engine still starts this one.

mod address;
mod locate;
mod units;

pub use address::ListenAddr;
pub use units::{ConfigDuration, DiskSpace};

use crate::error::{Classify, ErrorKind};
use locate::{format_key_path, segments_of, KeySegment, Locator};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::Spanned;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/dagger/engine.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/dagger";
pub const DEFAULT_ADDRESS: &str = "unix:///run/dagger/engine.sock";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A malformed file or a bad value. `line` is 1-based.
    #[error("{}", format_invalid(path, *line, key, message))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
    /// A bad command-line flag value.
    #[error("invalid value for {flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

fn format_invalid(path: &Path, line: Option<usize>, key: &Option<String>, message: &str) -> String {
    let mut out = format!("invalid config file {}", path.display());
    if let Some(line) = line {
        out.push_str(&format!(", line {line}"));
    }
    if let Some(key) = key {
        out.push_str(&format!(", key `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

impl Classify for ConfigError {
    fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            ConfigError::Read { .. } => ErrorKind::Unavailable,
            ConfigError::Invalid { .. } | ConfigError::Flag { .. } => ErrorKind::InvalidArgument,
        }
    }
}

/// An entitlement that `insecure-entitlements` may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    /// `security.insecure`: `withExec(insecureRootCapabilities: true)`.
    SecurityInsecure,
    /// `network.host`: host networking for execs.
    NetworkHost,
}

impl Entitlement {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "security.insecure" => Ok(Entitlement::SecurityInsecure),
            "network.host" => Ok(Entitlement::NetworkHost),
            other => Err(format!(
                "unknown entitlement {other:?}: expected \"security.insecure\" or \"network.host\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Entitlement::SecurityInsecure => "security.insecure",
            Entitlement::NetworkHost => "network.host",
        }
    }
}

impl fmt::Display for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which snapshotter the worker uses; `Auto` lets the state directory probe decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotterChoice {
    #[default]
    Auto,
    Overlayfs,
    Native,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcConfig {
    pub addresses: Vec<ListenAddr>,
    /// Owner of the unix sockets; `None` keeps the engine's own.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryConfig {
    /// Mirror hosts (optionally with a path), tried in order before the origin for pulls.
    pub mirrors: Vec<String>,
    /// `Some(true)`: plain HTTP. `None`: HTTP only for localhost and 127.0.0.1.
    pub http: Option<bool>,
    /// Skip TLS verification.
    pub insecure: bool,
    pub ca: Vec<PathBuf>,
    pub keypairs: Vec<KeyPair>,
    pub tls_config_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcPolicy {
    pub all: bool,
    pub filters: Vec<String>,
    pub keep_duration: Option<ConfigDuration>,
    pub keep_bytes: Option<DiskSpace>,
    pub reserved_space: Option<DiskSpace>,
    pub max_used_space: Option<DiskSpace>,
    pub min_free_space: Option<DiskSpace>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    pub snapshotter: SnapshotterChoice,
    /// The runc binary: a path, or a name looked up on `PATH`.
    pub binary: PathBuf,
    /// Upper bound on concurrently running operations; `None` means the number of CPUs.
    pub max_parallelism: Option<usize>,
    pub gc: bool,
    pub gc_keep_storage: Option<DiskSpace>,
    pub reserved_space: Option<DiskSpace>,
    pub max_used_space: Option<DiskSpace>,
    pub min_free_space: Option<DiskSpace>,
    pub gc_policies: Vec<GcPolicy>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            snapshotter: SnapshotterChoice::Auto,
            binary: PathBuf::from("runc"),
            max_parallelism: None,
            gc: true,
            gc_keep_storage: None,
            reserved_space: None,
            max_used_space: None,
            min_free_space: None,
            gc_policies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    pub nameservers: Vec<IpAddr>,
    pub options: Vec<String>,
    pub search_domains: Vec<String>,
}

/// The effective engine configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub debug: bool,
    pub trace: bool,
    pub root: PathBuf,
    pub insecure_entitlements: BTreeSet<Entitlement>,
    pub grpc: GrpcConfig,
    pub registries: BTreeMap<String, RegistryConfig>,
    pub worker: WorkerConfig,
    pub dns: DnsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            debug: false,
            trace: false,
            root: PathBuf::from(DEFAULT_ROOT),
            insecure_entitlements: BTreeSet::new(),
            grpc: GrpcConfig {
                addresses: vec![ListenAddr::parse(DEFAULT_ADDRESS).expect("valid default")],
                ..Default::default()
            },
            registries: BTreeMap::new(),
            worker: WorkerConfig::default(),
            dns: DnsConfig::default(),
        }
    }
}

/// A configuration key that was not understood and is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub key: String,
    pub line: Option<usize>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "unknown key `{}` (line {line}) is ignored", self.key),
            None => write!(f, "unknown key `{}` is ignored", self.key),
        }
    }
}

/// Command-line flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    /// Replaces the file's `[grpc] address` list when non-empty.
    pub addresses: Vec<String>,
    pub debug: bool,
    pub trace: bool,
    /// Replaces the file's `insecure-entitlements` when non-empty.
    pub allow_insecure_entitlements: Vec<String>,
}

/// What loading produced: the configuration plus the warnings to log once logging is set up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, if any.
    pub source: Option<PathBuf>,
    pub unknown_keys: Vec<UnknownKey>,
}

impl Config {
    /// Loads `path`. A missing file at the default location means "all defaults" (as BuildKit
    /// does); a missing file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Loaded, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let (config, unknown_keys) = Self::parse(&text, path)?;
                Ok(Loaded {
                    config,
                    source: Some(path.to_path_buf()),
                    unknown_keys,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Loaded {
                config: Config::default(),
                source: None,
                unknown_keys: Vec::new(),
            }),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses the text of a config file; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<(Config, Vec<UnknownKey>), ConfigError> {
        let locator = Locator::new(text);
        let mut ignored = Vec::new();
        let de = toml::Deserializer::new(text);
        let file: FileConfig = serde_ignored::deserialize(de, |p| ignored.push(segments_of(&p)))
            .map_err(|e| {
                let offset = e.span().map(|s| s.start);
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line: offset.map(|o| locator.line_of(o)),
                    key: offset.and_then(|o| locator.key_at(o)),
                    message: e.message().trim().to_string(),
                }
            })?;
        let unknown_keys = ignored
            .into_iter()
            .map(|segments| UnknownKey {
                line: locator.line_of_key(&segments),
                key: format_key_path(&segments),
            })
            .collect();
        let config = file.resolve(&|key: &str, at: At, message: String| {
            let line = match at {
                At::Span(span) => Some(locator.line_of(span.start)),
                At::Key(segments) => locator.line_of_key(&segments),
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                key: Some(key.to_string()),
                message,
            }
        })?;
        Ok((config, unknown_keys))
    }

    /// Applies command-line flags on top of the file.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(root) = &o.root {
            self.root = absolute_root(root).map_err(|message| ConfigError::Flag {
                flag: "--root",
                message,
            })?;
        }
        if !o.addresses.is_empty() {
            self.grpc.addresses = o
                .addresses
                .iter()
                .map(|a| ListenAddr::parse(a))
                .collect::<Result<_, _>>()
                .map_err(|message| ConfigError::Flag {
                    flag: "--addr",
                    message,
                })?;
        }
        self.debug |= o.debug;
        self.trace |= o.trace;
        if !o.allow_insecure_entitlements.is_empty() {
            self.insecure_entitlements = o
                .allow_insecure_entitlements
                .iter()
                .map(|e| Entitlement::parse(e))
                .collect::<Result<_, _>>()
                .map_err(|message| ConfigError::Flag {
                    flag: "--allow-insecure-entitlement",
                    message,
                })?;
        }
        Ok(())
    }

    pub fn allows(&self, entitlement: Entitlement) -> bool {
        self.insecure_entitlements.contains(&entitlement)
    }
}

fn absolute_root(root: &Path) -> Result<PathBuf, String> {
    if root.as_os_str().is_empty() {
        return Err("the state directory must not be empty".into());
    }
    if root.is_absolute() {
        Ok(root.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(root))
            .map_err(|e| format!("cannot resolve relative path {}: {e}", root.display()))
    }
}

// ---- The file as written. Field names follow BuildKit's keys exactly. ----

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileConfig {
    debug: Option<bool>,
    trace: Option<bool>,
    root: Option<Spanned<String>>,
    #[serde(rename = "insecure-entitlements")]
    insecure_entitlements: Option<Spanned<Vec<String>>>,
    grpc: FileGrpc,
    registry: BTreeMap<String, FileRegistry>,
    worker: FileWorker,
    dns: FileDns,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileGrpc {
    address: Option<Spanned<Vec<String>>>,
    uid: Option<u32>,
    gid: Option<u32>,
    tls: Option<Spanned<FileTls>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileTls {
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileRegistry {
    mirrors: Vec<Spanned<String>>,
    http: Option<bool>,
    insecure: Option<bool>,
    ca: Vec<String>,
    keypair: Vec<FileKeyPair>,
    tlsconfigdir: Vec<String>,
}

#[derive(Deserialize)]
struct FileKeyPair {
    key: String,
    cert: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileWorker {
    oci: FileOci,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileOci {
    snapshotter: Option<Spanned<String>>,
    binary: Option<Spanned<String>>,
    #[serde(rename = "max-parallelism")]
    max_parallelism: Option<Spanned<i64>>,
    gc: Option<bool>,
    gckeepstorage: Option<DiskSpace>,
    #[serde(rename = "reservedSpace")]
    reserved_space: Option<DiskSpace>,
    #[serde(rename = "maxUsedSpace")]
    max_used_space: Option<DiskSpace>,
    #[serde(rename = "minFreeSpace")]
    min_free_space: Option<DiskSpace>,
    gcpolicy: Vec<FileGcPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileGcPolicy {
    all: bool,
    filters: Vec<String>,
    #[serde(rename = "keepDuration")]
    keep_duration: Option<ConfigDuration>,
    #[serde(rename = "keepBytes")]
    keep_bytes: Option<DiskSpace>,
    #[serde(rename = "reservedSpace")]
    reserved_space: Option<DiskSpace>,
    #[serde(rename = "maxUsedSpace")]
    max_used_space: Option<DiskSpace>,
    #[serde(rename = "minFreeSpace")]
    min_free_space: Option<DiskSpace>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileDns {
    nameservers: Vec<Spanned<String>>,
    options: Vec<String>,
    #[serde(rename = "searchDomains")]
    search_domains: Vec<String>,
}

/// Where a bad value was written: the span of the value, or the path of its key.
enum At {
    Span(std::ops::Range<usize>),
    Key(Vec<KeySegment>),
}

impl From<std::ops::Range<usize>> for At {
    fn from(span: std::ops::Range<usize>) -> Self {
        At::Span(span)
    }
}

type InvalidAt<'a> = dyn Fn(&str, At, String) -> ConfigError + 'a;

impl FileConfig {
    /// Checks the values serde cannot check and builds the effective configuration.
    fn resolve(self, invalid: &InvalidAt<'_>) -> Result<Config, ConfigError> {
        let mut cfg = Config {
            debug: self.debug.unwrap_or(false),
            trace: self.trace.unwrap_or(false),
            ..Config::default()
        };
        if let Some(root) = self.root {
            let p = Path::new(root.get_ref());
            if !p.is_absolute() {
                return Err(invalid(
                    "root",
                    root.span().into(),
                    format!("{:?} must be an absolute path", root.get_ref()),
                ));
            }
            cfg.root = p.to_path_buf();
        }
        if let Some(ents) = self.insecure_entitlements {
            let span = ents.span();
            cfg.insecure_entitlements = ents
                .into_inner()
                .iter()
                .map(|e| Entitlement::parse(e))
                .collect::<Result<_, _>>()
                .map_err(|m| invalid("insecure-entitlements", span.clone().into(), m))?;
        }

        if let Some(addrs) = self.grpc.address {
            let span = addrs.span();
            let list = addrs.into_inner();
            if list.is_empty() {
                return Err(invalid(
                    "grpc.address",
                    span.into(),
                    "at least one address is required".into(),
                ));
            }
            cfg.grpc.addresses = list
                .iter()
                .map(|a| ListenAddr::parse(a))
                .collect::<Result<_, _>>()
                .map_err(|m| invalid("grpc.address", span.clone().into(), m))?;
        }
        cfg.grpc.uid = self.grpc.uid;
        cfg.grpc.gid = self.grpc.gid;
        if let Some(tls) = self.grpc.tls {
            let span = tls.span();
            let tls = tls.into_inner();
            cfg.grpc.tls = match (tls.cert, tls.key) {
                (Some(cert), Some(key)) => Some(TlsConfig {
                    cert: cert.into(),
                    key: key.into(),
                    ca: tls.ca.map(PathBuf::from),
                }),
                (None, None) if tls.ca.is_none() => None,
                _ => {
                    return Err(invalid(
                        "grpc.tls",
                        span.into(),
                        "you must specify key and cert file if one is specified".into(),
                    ))
                }
            };
        }

        for (host, reg) in self.registry {
            if host.is_empty() || host.contains('/') || host.contains("://") {
                let key = vec![
                    KeySegment::Key("registry".into()),
                    KeySegment::Key(host.clone()),
                ];
                return Err(invalid(
                    &format_key_path(&key),
                    At::Key(key),
                    format!("{host:?} is not a registry host: write it as HOST or HOST:PORT"),
                ));
            }
            let mut mirrors = Vec::with_capacity(reg.mirrors.len());
            for m in reg.mirrors {
                let value = m.get_ref().trim().to_string();
                if value.is_empty() || value.contains("://") {
                    return Err(invalid(
                        &format_key_path(&[
                            KeySegment::Key("registry".into()),
                            KeySegment::Key(host.clone()),
                            KeySegment::Key("mirrors".into()),
                        ]),
                        m.span().into(),
                        format!("mirror {value:?} must be a host, optionally with a path, without a scheme"),
                    ));
                }
                mirrors.push(value);
            }
            cfg.registries.insert(
                host,
                RegistryConfig {
                    mirrors,
                    http: reg.http,
                    insecure: reg.insecure.unwrap_or(false),
                    ca: reg.ca.into_iter().map(PathBuf::from).collect(),
                    keypairs: reg
                        .keypair
                        .into_iter()
                        .map(|k| KeyPair {
                            key: k.key.into(),
                            cert: k.cert.into(),
                        })
                        .collect(),
                    tls_config_dirs: reg.tlsconfigdir.into_iter().map(PathBuf::from).collect(),
                },
            );
        }

        let oci = self.worker.oci;
        if let Some(s) = oci.snapshotter {
            cfg.worker.snapshotter = match s.get_ref().as_str() {
                "" | "auto" => SnapshotterChoice::Auto,
                "overlayfs" => SnapshotterChoice::Overlayfs,
                "native" => SnapshotterChoice::Native,
                other => {
                    return Err(invalid(
                        "worker.oci.snapshotter",
                        s.span().into(),
                        format!("unsupported snapshotter {other:?}: expected \"overlayfs\", \"native\" or \"auto\""),
                    ))
                }
            };
        }
        if let Some(b) = oci.binary {
            if b.get_ref().trim().is_empty() {
                return Err(invalid(
                    "worker.oci.binary",
                    b.span().into(),
                    "must name the runc binary".into(),
                ));
            }
            cfg.worker.binary = PathBuf::from(b.into_inner());
        }
        if let Some(p) = oci.max_parallelism {
            let n = *p.get_ref();
            if n < 1 {
                return Err(invalid(
                    "worker.oci.max-parallelism",
                    p.span().into(),
                    format!("{n} is not a positive number"),
                ));
            }
            cfg.worker.max_parallelism = Some(n as usize);
        }
        cfg.worker.gc = oci.gc.unwrap_or(true);
        cfg.worker.gc_keep_storage = oci.gckeepstorage;
        cfg.worker.reserved_space = oci.reserved_space;
        cfg.worker.max_used_space = oci.max_used_space;
        cfg.worker.min_free_space = oci.min_free_space;
        cfg.worker.gc_policies = oci
            .gcpolicy
            .into_iter()
            .map(|p| GcPolicy {
                all: p.all,
                filters: p.filters,
                keep_duration: p.keep_duration,
                keep_bytes: p.keep_bytes,
                reserved_space: p.reserved_space,
                max_used_space: p.max_used_space,
                min_free_space: p.min_free_space,
            })
            .collect();

        for ns in self.dns.nameservers {
            let ip = ns.get_ref().parse::<IpAddr>().map_err(|_| {
                invalid(
                    "dns.nameservers",
                    ns.span().into(),
                    format!("{:?} is not an IP address", ns.get_ref()),
                )
            })?;
            cfg.dns.nameservers.push(ip);
        }
        cfg.dns.options = self.dns.options;
        cfg.dns.search_domains = self.dns.search_domains;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
