//! The exec network (`dagger_engine::network`) against the real kernel, as root.
//!
//! Each test has its own bridge name and /24 (10.200.<n>.0/24, fake upstreams in
//! 10.201.<n>.0/24), so tests run in parallel and never touch a real `dagger0`. Every address
//! is private and created here; nothing leaves the machine. Bridge names are fixed per test so
//! that a run killed half-way is cleaned up by the next one (setup adopts the bridge and
//! deletes leftovers; the guards below remove the rest).
//!
//! Needs: nsenter (util-linux), busybox (busybox-static), ip (iproute2), nft (nftables).

use dagger_engine::config::DnsConfig;
use dagger_engine::error::{Classify, ErrorKind};
use dagger_engine::network::{Attachment, Network, NetworkError, NetworkOptions};
use dagger_engine::sys::netns;
use dagger_integration_tests::require_root;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- helpers ----

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed? see scripts/install-deps.sh)"))
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside the namespace pinned at `ns`, as `ip netns exec` would.
fn in_netns(ns: &Path, args: &[&str]) -> Output {
    let mut full = vec![format!("--net={}", ns.display())];
    full.extend(args.iter().map(|a| a.to_string()));
    Command::new("nsenter")
        .args(&full)
        .output()
        .expect("nsenter")
}

fn wget(ns: &Path, url: &str, timeout_s: u32) -> Result<String, String> {
    let t = timeout_s.to_string();
    // busybox 1.35's `wget -T` segfaults (Debian 12's busybox-static), so coreutils' timeout.
    let out = in_netns(
        ns,
        &["timeout", &t, "busybox", "wget", "-q", "-O", "-", url],
    );
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    // What the namespace looked like, for the failure message.
    let mut diag = format!(
        "wget {url}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [&["ip", "addr"][..], &["ip", "route"], &["ip", "neigh"]] {
        let o = in_netns(ns, args);
        diag.push_str(&format!(
            "\n$ {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    Err(diag)
}

/// A one-line HTTP/1.0 server on its own thread. Returns its address and the peers it saw.
fn serve(listener: TcpListener, body: &'static str) -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Ok(peer) = stream.peer_addr() {
                seen.lock().unwrap().push(peer);
            }
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, peers)
}

fn options(bridge: &str, third_octet: u8, state: &Path) -> NetworkOptions {
    let host_resolv = state.join("host-resolv.conf");
    std::fs::write(
        &host_resolv,
        "# test host\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.test\noptions ndots:2\n",
    )
    .unwrap();
    NetworkOptions {
        bridge: bridge.to_string(),
        cidr: format!("10.200.{third_octet}.0/24").parse().unwrap(),
        dns: DnsConfig::default(),
        state_dir: state.join("net"),
        host_resolv_conf: host_resolv,
    }
}

/// Deletes the bridge and nft table of a test network however the test ends (setup of the
/// next run would adopt them anyway; this keeps the machine tidy).
struct BridgeGuard {
    bridge: String,
    table: String,
}

impl BridgeGuard {
    fn new(bridge: &str) -> Self {
        let table = bridge.strip_suffix('0').unwrap_or(bridge).replace('-', "_");
        BridgeGuard {
            bridge: bridge.to_string(),
            table,
        }
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = run("nft", &["delete", "table", "ip", &self.table]);
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

fn nft_table(table: &str) -> Option<String> {
    let out = run("nft", &["list", "table", "ip", table]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Links that belong to the network: ports of its bridge and anything named with its prefix.
fn our_links(net: &Network) -> Vec<String> {
    let master = format!(" master {} ", net.bridge());
    let mut names: Vec<String> = run_ok("ip", &["-o", "link"])
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?.split('@').next()?;
            (name.starts_with(net.veth_prefix()) || l.contains(&master)).then(|| name.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Host addresses inside the network's pool (the bridge's gateway address among them).
fn pool_addresses(net: &Network) -> Vec<String> {
    let prefix = format!("{}.", {
        let o = net.cidr().network().octets();
        format!("{}.{}.{}", o[0], o[1], o[2])
    });
    run_ok("ip", &["-o", "-4", "addr"])
        .lines()
        .filter(|l| l.contains(&format!("inet {prefix}")))
        .map(str::to_string)
        .collect()
}

fn mounts_under(dir: &Path) -> usize {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(dir)))
        .count()
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// A test's state directory. Unpins whatever namespaces a failed test left in it, so that the
/// directory itself can go.
struct State(tempfile::TempDir);

impl State {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        for pin in dir_entries(&self.path().join("net/netns")) {
            let _ = netns::remove_pinned(&pin);
        }
    }
}

fn tempdir() -> State {
    // tmpfs: the root fs here has no journal and slows down after mass deletes (test-environment
    // §0.3), which would measure the disk rather than the network code.
    State(
        tempfile::Builder::new()
            .prefix("dgt-net-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap(),
    )
}

// ---- tests ----

/// (1) An attached namespace reaches a server on the gateway address, and a server inside a
/// second attachment's namespace (container to container through the bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_reaches_gateway_and_other_attachment() {
    require_root();
    let bridge = "dgt-attach";
    let _guard = BridgeGuard::new(bridge);
    let state = tempdir();
    let net = Network::setup(options(bridge, 1, state.path()))
        .await
        .unwrap();
    assert_eq!(net.gateway(), Ipv4Addr::new(10, 200, 1, 1));

    let a = net.attach("dagger").await.unwrap();
    let b = net.attach("svc-b").await.unwrap();
    assert_ne!(a.ip, b.ip);
    assert_ne!(a.veth(), b.veth());
    for att in [&a, &b] {
        assert!(net.cidr().contains(&att.ip), "{}", att.ip);
        assert!(att.veth().len() <= 15, "{}", att.veth());
        assert!(att.netns.starts_with(state.path()));
    }
    assert_eq!(net.addresses_in_use(), 2);

    // The files the executor bind-mounts.
    assert_eq!(
        std::fs::read_to_string(&a.hosts).unwrap(),
        "127.0.0.1\tlocalhost dagger\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    assert_eq!(
        std::fs::read_to_string(&b.hosts).unwrap(),
        "127.0.0.1\tlocalhost svc-b\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    assert_eq!(
        std::fs::read_to_string(&a.resolv_conf).unwrap(),
        "nameserver 192.0.2.53\nsearch example.test\noptions ndots:2\n",
        "the loopback stub is dropped, search and options kept"
    );

    // Inside: eth0 with the address, lo up, default route via the gateway, the bridge's MTU.
    let addrs = String::from_utf8_lossy(&in_netns(&a.netns, &["ip", "-o", "-4", "addr"]).stdout)
        .into_owned();
    assert!(
        addrs.contains(&format!("eth0    inet {}/24", a.ip)),
        "{addrs}"
    );
    assert!(
        addrs.contains("lo    inet 127.0.0.1/8"),
        "lo is up: {addrs}"
    );
    let routes =
        String::from_utf8_lossy(&in_netns(&a.netns, &["ip", "-4", "route"]).stdout).into_owned();
    assert!(
        routes.contains("default via 10.200.1.1 dev eth0"),
        "{routes}"
    );
    let link =
        String::from_utf8_lossy(&in_netns(&a.netns, &["ip", "-o", "link", "show", "eth0"]).stdout)
            .into_owned();
    assert!(link.contains(&format!("mtu {}", net.mtu())), "{link}");

    // Host side: the veth is a port of the bridge.
    let ports = run_ok("ip", &["-o", "link", "show", "master", bridge]);
    assert!(
        ports.contains(a.veth()) && ports.contains(b.veth()),
        "{ports}"
    );

    // A server on the gateway address.
    let (gw_addr, gw_peers) = serve(TcpListener::bind((net.gateway(), 0)).unwrap(), "gateway ok");
    let body = wget(&a.netns, &format!("http://{gw_addr}/"), 5).unwrap();
    assert_eq!(body, "gateway ok");
    assert_eq!(
        gw_peers.lock().unwrap()[0].ip(),
        a.ip,
        "no NAT on the bridge"
    );
    let ping = in_netns(
        &a.netns,
        &["busybox", "ping", "-c", "1", "-W", "2", "10.200.1.1"],
    );
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // A server inside b's namespace: the socket is made there and served from here.
    let b_ip = b.ip;
    let listener = netns::run_in(&b.netns, move || TcpListener::bind((b_ip, 0)))
        .unwrap()
        .unwrap();
    let (b_addr, b_peers) = serve(listener, "hello from b");
    assert_eq!(
        wget(&a.netns, &format!("http://{b_addr}/"), 5).unwrap(),
        "hello from b"
    );
    assert_eq!(
        b_peers.lock().unwrap()[0].ip(),
        a.ip,
        "direct, not masqueraded"
    );

    let (a_netns, b_netns) = (a.netns.clone(), b.netns.clone());
    let (a_veth, b_veth) = (a.veth().to_string(), b.veth().to_string());
    let (a_files, b_files) = (
        [a.resolv_conf.clone(), a.hosts.clone()],
        [b.resolv_conf.clone(), b.hosts.clone()],
    );
    a.release().await.unwrap();
    b.release().await.unwrap();
    net.settle().await;
    for p in [&a_netns, &b_netns]
        .into_iter()
        .chain(a_files.iter())
        .chain(b_files.iter())
    {
        assert!(!p.exists(), "{} removed", p.display());
    }
    assert!(!link_exists(&a_veth) && !link_exists(&b_veth));
    assert_eq!(net.addresses_in_use(), 0);
    net.teardown().await.unwrap();
}

/// (2) Egress through the engine's masquerade to a fake upstream: a separate namespace on its
/// own veth pair to the host (10.201.2.0/24), which has no route back to the pool. Replies can
/// only come back if the source was rewritten to the host's 10.201.2.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_masqueraded() {
    require_root();
    let bridge = "dgt-nat";
    let _guard = BridgeGuard::new(bridge);
    let upstream = Upstream::new("dgt-nat", 2);
    let state = tempdir();
    let net = Network::setup(options(bridge, 2, state.path()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let table = nft_table(net.nft_table()).expect("the nft table exists");
    assert!(
        table.contains("ip saddr 10.200.2.0/24 oifname != \"dgt-nat\" masquerade"),
        "{table}"
    );

    let listener = netns::run_in(&upstream.netns_path(), || {
        TcpListener::bind((Ipv4Addr::new(10, 201, 2, 2), 0))
    })
    .unwrap()
    .unwrap();
    let (addr, peers) = serve(listener, "upstream ok");

    let a = net.attach("dagger").await.unwrap();
    assert_eq!(
        wget(&a.netns, &format!("http://{addr}/"), 5).unwrap(),
        "upstream ok"
    );
    assert_eq!(
        peers.lock().unwrap().last().unwrap().ip(),
        Ipv4Addr::new(10, 201, 2, 1),
        "the upstream saw the host's address, not {}",
        a.ip
    );

    // Control: without the table, the same request gets no answer.
    run_ok("nft", &["delete", "table", "ip", net.nft_table()]);
    assert!(wget(&a.netns, &format!("http://{addr}/"), 2).is_err());

    a.release().await.unwrap();
    net.teardown().await.unwrap();
}

/// A namespace standing in for the outside world, on a veth pair to the host.
struct Upstream {
    name: String,
}

impl Upstream {
    fn new(name: &str, n: u8) -> Self {
        let up = Upstream {
            name: name.to_string(),
        };
        up.down();
        let (host_if, peer_if) = (format!("{name}-h"), format!("{name}-u"));
        let (host_ip, peer_ip) = (format!("10.201.{n}.1/24"), format!("10.201.{n}.2/24"));
        for args in [
            vec!["netns", "add", name],
            vec![
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ],
            vec!["link", "set", &peer_if, "netns", name],
            vec!["addr", "add", &host_ip, "dev", &host_if],
            vec!["link", "set", &host_if, "up"],
            vec!["-n", name, "addr", "add", &peer_ip, "dev", &peer_if],
            vec!["-n", name, "link", "set", &peer_if, "up"],
            vec!["-n", name, "link", "set", "lo", "up"],
        ] {
            run_ok("ip", &args);
        }
        up
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn down(&self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &format!("{}-h", self.name)]);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.down();
    }
}

/// (3) 1000 attach/release cycles leave nothing behind: no pinned files or mounts, no veths,
/// no addresses, the same nft rules. Also measures attach+release latency, and runs a batch of
/// parallel attaches that must not collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_release_cycles_do_not_leak() {
    require_root();
    let bridge = "dgt-leak";
    let _guard = BridgeGuard::new(bridge);
    let state = tempdir();
    let opts = options(bridge, 3, state.path());
    let net_dir = opts.state_dir.clone();
    let net = Network::setup(opts).await.unwrap();

    let links_before = our_links(&net);
    let addrs_before = pool_addresses(&net);
    let rules_before = nft_table(net.nft_table()).unwrap();
    assert_eq!(mounts_under(state.path()), 0);
    assert!(links_before.is_empty(), "{links_before:?}");
    assert_eq!(addrs_before.len(), 1, "just the gateway: {addrs_before:?}");

    const CYCLES: usize = 1000;
    let started = Instant::now();
    let mut attach_times = Vec::with_capacity(CYCLES);
    let mut cycle_times = Vec::with_capacity(CYCLES);
    for _ in 0..CYCLES {
        let t0 = Instant::now();
        let a = net.attach("dagger").await.unwrap();
        let t1 = Instant::now();
        a.release().await.unwrap();
        attach_times.push(t1 - t0);
        cycle_times.push(t0.elapsed());
    }
    let total = started.elapsed();
    attach_times.sort();
    cycle_times.sort();
    let pct = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    eprintln!(
        "attach+release x{CYCLES}: total {total:?}; attach+release median {:?} p90 {:?} p99 {:?}; attach alone median {:?}",
        pct(&cycle_times, 50),
        pct(&cycle_times, 90),
        pct(&cycle_times, 99),
        pct(&attach_times, 50),
    );

    // Released veths are deleted (and their addresses freed) by a background batch: let it
    // finish, so the counts below are this phase's only (a loaded machine lags behind).
    net.settle().await;

    // Many at once: unique addresses and veth names, all cleaned up.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let net = net.clone();
        set.spawn(async move { net.attach(&format!("p{i}")).await });
    }
    let mut live: Vec<Attachment> = Vec::new();
    while let Some(r) = set.join_next().await {
        live.push(r.unwrap().unwrap());
    }
    assert_eq!(live.iter().map(|a| a.ip).collect::<HashSet<_>>().len(), 64);
    assert_eq!(
        live.iter()
            .map(|a| a.veth().to_string())
            .collect::<HashSet<_>>()
            .len(),
        64
    );
    assert_eq!(net.addresses_in_use(), 64);
    assert_eq!(mounts_under(state.path()), 64);
    assert_eq!(our_links(&net).len(), 64);
    let mut set = tokio::task::JoinSet::new();
    for a in live {
        set.spawn(a.release());
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }

    // One dropped without release: Drop cleans up synchronously.
    let dropped = net.attach("dropped").await.unwrap();
    let dropped_netns = dropped.netns.clone();
    drop(dropped);
    assert!(!dropped_netns.exists());

    net.settle().await;
    assert_eq!(net.addresses_in_use(), 0);
    assert_eq!(our_links(&net), links_before, "no veth left");
    assert_eq!(pool_addresses(&net), addrs_before, "no address left");
    assert_eq!(mounts_under(state.path()), 0, "no pinned namespace left");
    assert_eq!(dir_entries(&net_dir.join("netns")), Vec::<PathBuf>::new());
    assert_eq!(dir_entries(&net_dir.join("files")), Vec::<PathBuf>::new());
    assert_eq!(
        nft_table(net.nft_table()).unwrap(),
        rules_before,
        "same rules"
    );
    net.teardown().await.unwrap();
}

/// (4) Setup is idempotent, adopts and cleans a crashed run's leftovers, teardown removes the
/// bridge and the table (twice is fine), and a name that is not a bridge is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_teardown_and_crash_recovery() {
    require_root();
    let bridge = "dgt-life";
    let guard = BridgeGuard::new(bridge);
    let state = tempdir();
    let opts = options(bridge, 4, state.path());
    let net_dir = opts.state_dir.clone();

    let net = Network::setup(opts.clone()).await.unwrap();
    assert_eq!(net.nft_table(), guard.table);
    assert!(link_exists(bridge));
    let again = Network::setup(opts.clone()).await.unwrap();
    assert_eq!(pool_addresses(&again).len(), 1, "one gateway address");
    let addr = run_ok("ip", &["-o", "-4", "addr", "show", "dev", bridge]);
    assert!(addr.contains("inet 10.200.4.1/24"), "{addr}");
    let rules = nft_table(again.nft_table()).unwrap();
    assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
    drop(net);

    // A crash: attachments never released, an orphan veth with our prefix, and an address
    // from an earlier run with another pool.
    let mut crashed = Vec::new();
    for _ in 0..3 {
        crashed.push(again.attach("dagger").await.unwrap());
    }
    let pins: Vec<PathBuf> = crashed.iter().map(|a| a.netns.clone()).collect();
    let orphan = format!("{}ffff0", again.veth_prefix());
    run_ok(
        "ip",
        &[
            "link",
            "add",
            &orphan,
            "type",
            "veth",
            "peer",
            "name",
            "dgt-orphan-p",
        ],
    );
    run_ok("ip", &["addr", "add", "10.200.99.1/24", "dev", bridge]);
    crashed.into_iter().for_each(std::mem::forget);
    assert_eq!(mounts_under(state.path()), 3);
    assert_eq!(our_links(&again).len(), 3 + 1);

    let net = Network::setup(opts.clone()).await.unwrap();
    assert_eq!(
        our_links(&net),
        Vec::<String>::new(),
        "leftover veths deleted"
    );
    assert!(!link_exists("dgt-orphan-p"));
    assert_eq!(mounts_under(state.path()), 0, "leftover pins unmounted");
    for pin in &pins {
        assert!(!pin.exists());
    }
    assert_eq!(dir_entries(&net_dir.join("files")), Vec::<PathBuf>::new());
    let addr = run_ok("ip", &["-o", "-4", "addr", "show", "dev", bridge]);
    assert!(
        !addr.contains("10.200.99.1"),
        "stale address removed: {addr}"
    );
    assert!(addr.contains("inet 10.200.4.1/24"), "{addr}");

    // Works after recovery.
    let a = net.attach("dagger").await.unwrap();
    let ping = in_netns(
        &a.netns,
        &["busybox", "ping", "-c", "1", "-W", "2", "10.200.4.1"],
    );
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    a.release().await.unwrap();

    net.teardown().await.unwrap();
    assert!(!link_exists(bridge), "bridge removed");
    assert!(nft_table(net.nft_table()).is_none(), "table removed");
    net.teardown().await.unwrap();

    // A link of another kind under the bridge's name is not adopted.
    let not_bridge = "dgt-notbr";
    let _g2 = BridgeGuard::new(not_bridge);
    let _ = run("ip", &["link", "del", not_bridge]);
    run_ok(
        "ip",
        &[
            "link",
            "add",
            not_bridge,
            "type",
            "veth",
            "peer",
            "name",
            "dgt-notbr-p",
        ],
    );
    let err = Network::setup(NetworkOptions {
        bridge: not_bridge.into(),
        ..opts.clone()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, NetworkError::NotABridge { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    // Bad input is refused before touching anything.
    let err = Network::setup(NetworkOptions {
        bridge: "far-too-long-bridge".into(),
        ..opts
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = again.attach("bad host").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}
