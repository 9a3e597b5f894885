//! The default network: every exec gets its own network namespace, plugged into an
//! engine-managed bridge (engine-facts §5.4: `dagger0`, 10.87.0.0/16, gateway `.1`, NAT out).
//!
//! Setup (once per engine start) creates or adopts the bridge, enables forwarding and installs
//! the masquerade rule. Each [`Network::attach`] then costs a namespace, one veth pair and a
//! handful of netlink requests; [`Attachment::release`] undoes it, leaving the veth's deletion
//! to a background batch (see `reaper.rs`). All link and address work is netlink
//! ([`rtnetlink`]); only the NAT rules go through `nft` (see `nat.rs` for why).
//!
//! One [`Network`] per bridge per host: setup treats every veth on the bridge and every file in
//! the state directory as a leftover of a crashed run and deletes them.

mod dns;
mod ipam;
mod nat;
mod netlink;
mod reaper;

#[cfg(test)]
mod tests;

use crate::config::DnsConfig;
use crate::error::{Classify, ErrorKind};
use crate::sys::netns;
use ipam::Ipam;
pub use ipnet::Ipv4Net;
use reaper::{lock, Reaper, Retired};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, TokioSocket};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

pub const DEFAULT_BRIDGE: &str = "dagger0";
pub const DEFAULT_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 87, 0, 0), 16);
pub const DEFAULT_HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The MTU when the host has no default route to copy it from.
const FALLBACK_MTU: u32 = 1500;

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("invalid network options: {0}")]
    InvalidOptions(String),
    #[error("invalid hostname {0:?}: use 1 to 253 letters, digits, '-', '_' and '.'")]
    InvalidHostname(String),
    #[error("no free address in {cidr}: all {capacity} are in use")]
    PoolExhausted { cidr: Ipv4Net, capacity: u32 },
    #[error("{name} exists and is not a bridge")]
    NotABridge { name: String },
    #[error("netlink: {op}: {source}")]
    Netlink { op: String, source: io::Error },
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("nft is not installed (Debian package nftables); it sets up NAT for execs")]
    NftMissing,
    #[error("nft failed: {0}")]
    Nft(String),
}

impl Classify for NetworkError {
    fn kind(&self) -> ErrorKind {
        match self {
            NetworkError::InvalidOptions(_) | NetworkError::InvalidHostname(_) => {
                ErrorKind::InvalidArgument
            }
            NetworkError::PoolExhausted { .. } | NetworkError::NftMissing => ErrorKind::Unavailable,
            NetworkError::NotABridge { .. } => ErrorKind::AlreadyExists,
            NetworkError::Netlink { source, .. } | NetworkError::Io { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                ErrorKind::PermissionDenied
            }
            NetworkError::Netlink { .. } | NetworkError::Io { .. } | NetworkError::Nft(_) => {
                ErrorKind::Internal
            }
        }
    }
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let op = op.into();
    move |source| NetworkError::Io { op, source }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// The bridge interface (at most 15 characters).
    pub bridge: String,
    /// The pool; its first host address is the gateway, on the bridge.
    pub cidr: Ipv4Net,
    pub dns: DnsConfig,
    /// `<state>/net`: pinned namespaces (`netns/`) and generated resolv.conf/hosts (`files/`).
    pub state_dir: PathBuf,
    /// Where the host's nameservers, search domains and options come from.
    pub host_resolv_conf: PathBuf,
}

impl NetworkOptions {
    /// The defaults for a state directory (`state_dir` is the `net` directory itself).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        NetworkOptions {
            bridge: DEFAULT_BRIDGE.to_string(),
            cidr: DEFAULT_CIDR,
            dns: DnsConfig::default(),
            state_dir: state_dir.into(),
            host_resolv_conf: PathBuf::from(DEFAULT_HOST_RESOLV_CONF),
        }
    }

    fn validate(&self) -> Result<(), NetworkError> {
        let b = &self.bridge;
        // Also a valid nft identifier once '-' becomes '_' (see nat::table_name).
        if b.is_empty()
            || b.len() > 15
            || !b.starts_with(|c: char| c.is_ascii_alphabetic())
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        {
            return Err(NetworkError::InvalidOptions(format!(
                "bridge name {b:?} must be 1 to 15 letters, digits, '-' or '_', starting with a letter"
            )));
        }
        if self.cidr.prefix_len() > 30 || self.cidr.prefix_len() < 8 {
            return Err(NetworkError::InvalidOptions(format!(
                "pool {} must have a prefix length between 8 and 30",
                self.cidr
            )));
        }
        if self.cidr.addr() != self.cidr.network() {
            return Err(NetworkError::InvalidOptions(format!(
                "pool {} has host bits set; did you mean {}?",
                self.cidr,
                self.cidr.trunc()
            )));
        }
        Ok(())
    }
}

/// The engine's exec network. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    bridge: String,
    bridge_index: u32,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u32,
    nft_table: String,
    /// Host-side veth names: this prefix and a per-network counter.
    veth_prefix: String,
    next_id: AtomicU32,
    netns_dir: PathBuf,
    files_dir: PathBuf,
    /// Rendered once at setup, so the loopback warning is logged once.
    resolv_conf: String,
    ipam: Arc<Mutex<Ipam>>,
    reaper: Arc<Reaper>,
    handle: rtnetlink::Handle,
    /// The netlink connection and the reaper. Veths the reaper still had queued stay retired
    /// (down, in our group, on the bridge) until the next setup deletes them as leftovers.
    _tasks: Tasks,
}

/// Background tasks that stop when their owner goes.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(|t| t.abort());
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("bridge", &self.inner.bridge)
            .field("cidr", &self.inner.cidr)
            .field("mtu", &self.inner.mtu)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Creates (or adopts, if it exists from an earlier run) the bridge with the gateway
    /// address, enables forwarding (net.ipv4.ip_forward=1), installs NAT (masquerade for the
    /// subnet out of non-bridge interfaces) idempotently, and removes leftovers (netns files,
    /// veths with our prefix) from a crashed earlier run.
    pub async fn setup(opts: NetworkOptions) -> Result<Self, NetworkError> {
        opts.validate()?;
        let gateway = opts.cidr.hosts().next().ok_or_else(|| {
            NetworkError::InvalidOptions(format!("pool {} has no host address", opts.cidr))
        })?;
        let resolv_conf = host_resolv_conf(&opts.host_resolv_conf, &opts.dns)?;
        let netns_dir = opts.state_dir.join("netns");
        let files_dir = opts.state_dir.join("files");
        let veth_prefix = veth_prefix(&opts.bridge);
        {
            let (netns_dir, files_dir) = (netns_dir.clone(), files_dir.clone());
            tokio::task::spawn_blocking(move || clean_state_dirs(&netns_dir, &files_dir))
                .await
                .map_err(|e| io_err("clean the network state directory")(io::Error::other(e)))??;
        }

        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetworkError::Netlink {
                op: "open a netlink socket".into(),
                source,
            })?;
        let connection = tokio::spawn(connection);
        let ipam = Arc::new(Mutex::new(Ipam::new(opts.cidr)));
        let reaper = Arc::new(Reaper::new(link_group(&opts.bridge), ipam.clone()));
        let reaper_task = tokio::spawn(reaper.clone().run(handle.clone()));
        // Stops both on every error path below.
        let tasks = Tasks(vec![connection, reaper_task]);
        let mtu = netlink::uplink_mtu(&handle).await?.unwrap_or(FALLBACK_MTU);
        let bridge_index =
            netlink::ensure_bridge(&handle, &opts.bridge, bridge_mac(&opts.bridge), mtu).await?;
        let inner = Inner {
            nft_table: nat::table_name(&opts.bridge),
            bridge: opts.bridge,
            bridge_index,
            cidr: opts.cidr,
            gateway,
            mtu,
            veth_prefix,
            next_id: AtomicU32::new(0),
            netns_dir,
            files_dir,
            resolv_conf,
            ipam,
            reaper,
            handle,
            _tasks: tasks,
        };
        let group = inner.reaper.group;
        let stale = netlink::stale_veths(&inner.handle, bridge_index, &inner.veth_prefix).await?;
        if !stale.is_empty() {
            tracing::info!(count = stale.len(), "removing veths left by an earlier run");
        }
        for name in &stale {
            netlink::retire_link(&inner.handle, name, group).await?;
        }
        // Also whatever a crashed run had retired and not yet deleted.
        netlink::delete_group(&inner.handle, group).await?;
        netlink::ensure_bridge_address(
            &inner.handle,
            bridge_index,
            gateway,
            inner.cidr.prefix_len(),
        )
        .await?;
        enable_forwarding().await?;
        nat::apply(&nat::setup_script(
            &inner.nft_table,
            &inner.bridge,
            inner.cidr,
        ))
        .await?;
        tracing::info!(
            bridge = %inner.bridge,
            cidr = %inner.cidr,
            gateway = %gateway,
            mtu,
            nft_table = %inner.nft_table,
            "exec network ready"
        );
        Ok(Network {
            inner: Arc::new(inner),
        })
    }

    /// A fresh network namespace with a veth pair into the bridge, an address from the pool
    /// (IPAM in memory, released on drop), lo up, default route via the gateway; plus per-exec
    /// resolv.conf and hosts files.
    pub async fn attach(&self, hostname: &str) -> Result<Attachment, NetworkError> {
        if !dns::valid_hostname(hostname) {
            return Err(NetworkError::InvalidHostname(hostname.to_string()));
        }
        let inner = &self.inner;
        let ip = {
            let mut ipam = lock(&inner.ipam);
            ipam.allocate().ok_or(NetworkError::PoolExhausted {
                cidr: inner.cidr,
                capacity: ipam.capacity(),
            })?
        };
        // A u32 counter wraps after 4 billion attaches, long after the first one is gone.
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{id:x}", inner.veth_prefix);
        let attachment = Attachment {
            netns: inner.netns_dir.join(&name),
            ip,
            resolv_conf: inner.files_dir.join(format!("{name}.resolv.conf")),
            hosts: inner.files_dir.join(format!("{name}.hosts")),
            veth: name,
            network: self.inner.clone(),
            cleaned: AtomicBool::new(false),
        };
        match attachment.plug(hostname).await {
            Ok(()) => Ok(attachment),
            Err(e) => {
                if let Err(cleanup) = attachment.unplug().await {
                    tracing::warn!(error = %cleanup, "cleanup after a failed attach");
                }
                Err(e)
            }
        }
    }

    /// Removes NAT rules and the bridge (engine shutdown). Idempotent. Attachments still alive
    /// lose connectivity; releasing them afterwards is still fine.
    pub async fn teardown(&self) -> Result<(), NetworkError> {
        let inner = &self.inner;
        inner.reaper.settle().await;
        nat::apply(&nat::teardown_script(&inner.nft_table)).await?;
        netlink::delete_link(&inner.handle, &inner.bridge).await?;
        Ok(())
    }

    pub fn bridge(&self) -> &str {
        &self.inner.bridge
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.inner.cidr
    }

    /// The bridge's address: execs' default route.
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.gateway
    }

    /// The MTU of the bridge and of every veth.
    pub fn mtu(&self) -> u32 {
        self.inner.mtu
    }

    /// The nftables table holding the NAT rules (`ip` family).
    pub fn nft_table(&self) -> &str {
        &self.inner.nft_table
    }

    /// Host-side veth names are this prefix plus a counter.
    pub fn veth_prefix(&self) -> &str {
        &self.inner.veth_prefix
    }

    /// Addresses currently handed out, including those of released attachments whose veth is
    /// not deleted yet.
    pub fn addresses_in_use(&self) -> u32 {
        lock(&self.inner.ipam).in_use()
    }

    /// Waits until the veths of every attachment released so far are deleted and their
    /// addresses back in the pool (release leaves that to a background batch).
    pub async fn settle(&self) {
        self.inner.reaper.settle().await
    }
}

/// One exec's network: what the executor puts in the runc spec (the namespace path, and
/// read-only binds of the two files over /etc/resolv.conf and /etc/hosts).
#[derive(Debug)]
pub struct Attachment {
    /// The pinned network namespace, for `linux.namespaces[type=network].path`.
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    /// The host end of the veth pair (the exec's end is `eth0`).
    veth: String,
    network: Arc<Inner>,
    /// Set once cleanup ran, so Drop does nothing more.
    cleaned: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("bridge", &self.bridge)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// The host end of the veth pair.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// Cuts the exec off (its veth goes down), unpins the namespace and removes the files. The
    /// veth pair is deleted, and then the address freed, in the background shortly after
    /// ([`Network::settle`] waits for that).
    pub async fn release(self) -> Result<(), NetworkError> {
        self.unplug().await
    }

    async fn plug(&self, hostname: &str) -> Result<(), NetworkError> {
        let net = &self.network;
        let runtime = tokio::runtime::Handle::current();
        let (pin, resolv_path, hosts_path) = (
            self.netns.clone(),
            self.resolv_conf.clone(),
            self.hosts.clone(),
        );
        let (resolv, hosts) = (net.resolv_conf.clone(), dns::render_hosts(hostname));
        let (socket, ns_file) = tokio::task::spawn_blocking(move || {
            std::fs::write(&resolv_path, resolv)
                .map_err(io_err(format!("write {}", resolv_path.display())))?;
            std::fs::write(&hosts_path, hosts)
                .map_err(io_err(format!("write {}", hosts_path.display())))?;
            netns::create_pinned(&pin, || {
                // The socket registers with the runtime's reactor, which needs its context.
                let _guard = runtime.enter();
                Ok((TokioSocket::new(NETLINK_ROUTE)?, netns::open_current()?))
            })
            .map_err(io_err(format!(
                "create network namespace {}",
                pin.display()
            )))
        })
        .await
        .map_err(|e| io_err("create network namespace")(io::Error::other(e)))??;
        // Dropping the socket and the namespace fd on every path keeps nothing but the pin
        // holding the namespace.
        netlink::create_veth(
            &net.handle,
            &self.veth,
            net.bridge_index,
            net.mtu,
            ns_file.as_fd(),
        )
        .await?;
        drop(ns_file);
        netlink::configure_inside(socket, self.ip, net.cidr.prefix_len(), net.gateway).await
    }

    /// Undoes whatever part of [`Self::plug`] happened; safe to call more than once.
    async fn unplug(&self) -> Result<(), NetworkError> {
        let net = &self.network;
        let retired = netlink::retire_link(&net.handle, &self.veth, net.reaper.group).await?;
        let files = [
            self.netns.clone(),
            self.resolv_conf.clone(),
            self.hosts.clone(),
        ];
        let netns = tokio::task::spawn_blocking(move || remove_files(&files))
            .await
            .map_err(|e| io_err("remove attachment files")(io::Error::other(e)))??;
        self.finish(retired, netns);
        Ok(())
    }

    /// Hands the address back: through the reaper once a retired veth is deleted, or at once if
    /// there was no veth.
    fn finish(&self, retired: bool, netns: Option<File>) {
        if self.cleaned.swap(true, Ordering::AcqRel) {
            return;
        }
        if retired {
            self.network.reaper.enqueue(Retired {
                veth: self.veth.clone(),
                ip: self.ip,
                netns,
            });
        } else {
            lock(&self.network.ipam).release(self.ip);
        }
    }
}

impl Drop for Attachment {
    /// Best effort, synchronous: `release` was not called (a panic, a cancelled task) or failed.
    fn drop(&mut self) {
        if self.cleaned.load(Ordering::Acquire) {
            return;
        }
        let retired = netlink::retire_link_blocking(&self.veth, self.network.reaper.group);
        let files = [
            self.netns.clone(),
            self.resolv_conf.clone(),
            self.hosts.clone(),
        ];
        let netns = remove_files(&files).unwrap_or_else(|e| {
            tracing::warn!(netns = %self.netns.display(), error = %e, "cannot clean up a dropped attachment");
            None
        });
        match retired {
            Ok(retired) => self.finish(retired, netns),
            Err(e) => {
                // The address stays out of the pool: the veth may still be live on the bridge.
                tracing::warn!(veth = %self.veth, error = %e, "cannot retire a dropped attachment's veth");
                self.cleaned.store(true, Ordering::Release);
            }
        }
    }
}

/// Unpins the namespace (the first path) and removes the files; missing ones are fine. Returns
/// an fd that keeps the namespace alive, if it was still there (see `reaper.rs`).
fn remove_files(files: &[PathBuf; 3]) -> Result<Option<File>, NetworkError> {
    let [pin, rest @ ..] = files;
    let netns = File::open(pin).ok();
    netns::remove_pinned(pin).map_err(io_err(format!("unpin {}", pin.display())))?;
    for f in rest {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(format!("remove {}", f.display()))(e))
            }
            _ => {}
        }
    }
    Ok(netns)
}

/// Creates the state directories, unpinning and deleting whatever a crashed run left in them.
fn clean_state_dirs(netns_dir: &Path, files_dir: &Path) -> Result<(), NetworkError> {
    for dir in [netns_dir, files_dir] {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let mut stale = 0;
    for dir in [netns_dir, files_dir] {
        let entries = std::fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))?;
        for entry in entries {
            let path = entry
                .map_err(io_err(format!("list {}", dir.display())))?
                .path();
            if dir == netns_dir {
                netns::remove_pinned(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .map_err(io_err(format!("remove stale {}", path.display())))?;
            stale += 1;
        }
    }
    if stale > 0 {
        tracing::info!(
            files = stale,
            "removed network state left by an earlier run"
        );
    }
    Ok(())
}

/// Reads the host's resolv.conf and renders the one execs get. A missing host file means no
/// host nameservers (the [dns] section may still provide some).
fn host_resolv_conf(path: &Path, dns: &DnsConfig) -> Result<String, NetworkError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "no host resolv.conf; execs get only [dns] nameservers");
            String::new()
        }
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let (rendered, warning) = dns::render_resolv_conf(dns, &dns::parse_resolv_conf(&text));
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    Ok(rendered)
}

async fn enable_forwarding() -> Result<(), NetworkError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let current = tokio::fs::read_to_string(PATH)
        .await
        .map_err(io_err(format!("read {PATH}")))?;
    if current.trim() != "1" {
        tokio::fs::write(PATH, "1")
            .await
            .map_err(io_err(format!("enable forwarding ({PATH})")))?;
    }
    Ok(())
}

/// 16 bits of FNV-1a over the bridge name: distinct networks get distinct veth prefixes, and
/// the same bridge gets the same one across restarts (so leftovers are recognised).
fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `dg` + 4 hex digits; with an 8-digit counter that is 14 characters, within IFNAMSIZ-1.
fn veth_prefix(bridge: &str) -> String {
    let h = name_hash(bridge);
    format!("dg{:04x}", (h >> 16) ^ (h & 0xffff))
}

/// The link group retired veths wait in for deletion: "dg" and the same 16 bits as the veth
/// prefix, so distinct networks use distinct groups and a restart finds a crashed run's.
fn link_group(bridge: &str) -> u32 {
    let h = name_hash(bridge);
    0x6467_0000 | ((h >> 16) ^ (h & 0xffff))
}

/// A stable, locally administered unicast MAC for the bridge.
fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = name_hash(bridge).to_be_bytes();
    let g = name_hash(&format!("{bridge}/mac")).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], g[0]]
}
