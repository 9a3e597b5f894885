//! Unit tests that need no root: address allocation, the generated files, names and rules.

use super::dns::{parse_resolv_conf, render_hosts, render_resolv_conf, valid_hostname, HostResolv};
use super::ipam::Ipam;
use super::*;
use std::collections::HashSet;
use std::net::IpAddr;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipam_skips_network_gateway_and_broadcast() {
    let mut ipam = Ipam::new(net("10.200.1.0/29"));
    assert_eq!(ipam.capacity(), 5, ".2 to .6");
    let got: Vec<Ipv4Addr> = std::iter::from_fn(|| ipam.allocate()).collect();
    let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 200, 1, i)).collect();
    assert_eq!(got, want);
    assert_eq!(ipam.in_use(), 5);
}

#[test]
fn ipam_exhausts_then_reuses_released_addresses() {
    let mut ipam = Ipam::new(net("10.200.2.0/28"));
    let all: Vec<_> = std::iter::from_fn(|| ipam.allocate()).collect();
    assert_eq!(all.len(), 13);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 13, "unique");
    assert_eq!(ipam.allocate(), None, "exhausted");

    let freed = all[7];
    assert!(ipam.release(freed));
    assert!(!ipam.release(freed), "double release is refused");
    assert_eq!(
        ipam.allocate(),
        Some(freed),
        "the only free address comes back"
    );
    assert_eq!(ipam.allocate(), None);

    assert!(
        !ipam.release(Ipv4Addr::new(10, 200, 2, 1)),
        "the gateway is never handed out"
    );
    assert!(
        !ipam.release(Ipv4Addr::new(10, 200, 3, 5)),
        "outside the pool"
    );
    assert_eq!(ipam.in_use(), 13);
}

#[test]
fn ipam_hands_out_released_addresses_last() {
    // Next-fit: a just-released address is not reused while others are free, so peers' ARP
    // caches do not point a new exec's address at a dead veth.
    let mut ipam = Ipam::new(net("10.200.3.0/24"));
    let a = ipam.allocate().unwrap();
    assert!(ipam.release(a));
    let next = ipam.allocate().unwrap();
    assert_ne!(next, a);
    // Wraps around to the start once the end is reached.
    while ipam.allocate().is_some() {}
    assert!(ipam.release(a));
    assert_eq!(ipam.allocate(), Some(a));
}

#[test]
fn ipam_smallest_pool() {
    let mut ipam = Ipam::new(net("10.200.4.0/30"));
    assert_eq!(ipam.allocate(), Some(Ipv4Addr::new(10, 200, 4, 2)));
    assert_eq!(ipam.allocate(), None);
}

#[test]
fn ipam_default_pool_size() {
    let mut ipam = Ipam::new(DEFAULT_CIDR);
    assert_eq!(ipam.capacity(), 65533);
    for _ in 0..65533 {
        assert!(ipam.allocate().is_some());
    }
    assert_eq!(ipam.allocate(), None);
    assert!(ipam.release(Ipv4Addr::new(10, 87, 255, 254)));
    assert_eq!(ipam.allocate(), Some(Ipv4Addr::new(10, 87, 255, 254)));
}

#[test]
fn parses_host_resolv_conf() {
    let host = parse_resolv_conf(
        "# generated\n\
         ; also a comment\n\
         nameserver 192.0.2.53\n\
         nameserver fe80::1%eth0\n\
         nameserver 2001:db8::53  # trailing words are ignored\n\
         nameserver not-an-ip\n\
         domain old.example\n\
         search corp.example example.com\n\
         options ndots:2\n\
         options timeout:1 attempts:3\n\
         sortlist 130.155.160.0/255.255.240.0\n",
    );
    assert_eq!(host.nameservers, vec![ip("192.0.2.53"), ip("2001:db8::53")]);
    assert_eq!(
        host.search,
        vec!["corp.example", "example.com"],
        "last of search/domain wins"
    );
    assert_eq!(host.options, vec!["ndots:2", "timeout:1", "attempts:3"]);
}

#[test]
fn resolv_conf_copies_the_host() {
    let host = parse_resolv_conf("nameserver 192.0.2.53\nsearch example.com\noptions ndots:2\n");
    let (text, warning) = render_resolv_conf(&DnsConfig::default(), &host);
    assert_eq!(
        text,
        "nameserver 192.0.2.53\nsearch example.com\noptions ndots:2\n"
    );
    assert_eq!(warning, None);
}

#[test]
fn resolv_conf_drops_loopback_nameservers_when_others_exist() {
    let host = parse_resolv_conf(
        "nameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nnameserver 2001:db8::1\n",
    );
    let (text, warning) = render_resolv_conf(&DnsConfig::default(), &host);
    assert_eq!(text, "nameserver 192.0.2.53\nnameserver 2001:db8::1\n");
    assert_eq!(warning, None);
}

#[test]
fn resolv_conf_keeps_loopback_only_nameservers_with_a_warning() {
    // systemd-resolved's stub.
    let host = parse_resolv_conf("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n");
    let (text, warning) = render_resolv_conf(&DnsConfig::default(), &host);
    assert_eq!(
        text,
        "nameserver 127.0.0.53\nsearch lan\noptions edns0 trust-ad\n"
    );
    let warning = warning.expect("a warning");
    assert!(warning.contains("127.0.0.53"), "{warning}");
    assert!(warning.contains("[dns] nameservers"), "{warning}");
}

#[test]
fn resolv_conf_config_wins_field_by_field() {
    let host = parse_resolv_conf("nameserver 127.0.0.53\nsearch lan\noptions edns0\n");
    let dns = DnsConfig {
        nameservers: vec![ip("192.0.2.1"), ip("2001:db8::1")],
        options: vec![],
        search_domains: vec!["a.example".into(), "b.example".into()],
    };
    let (text, warning) = render_resolv_conf(&dns, &host);
    assert_eq!(
        text,
        "nameserver 192.0.2.1\nnameserver 2001:db8::1\nsearch a.example b.example\noptions edns0\n"
    );
    assert_eq!(warning, None, "the host's loopback stub is not used");

    let dns = DnsConfig {
        nameservers: vec![],
        options: vec!["ndots:5".into()],
        search_domains: vec![],
    };
    let (text, _) = render_resolv_conf(&dns, &host);
    assert_eq!(text, "nameserver 127.0.0.53\nsearch lan\noptions ndots:5\n");
}

#[test]
fn resolv_conf_warns_about_configured_loopback_nameservers() {
    let dns = DnsConfig {
        nameservers: vec![ip("127.0.0.1")],
        ..Default::default()
    };
    let (text, warning) = render_resolv_conf(&dns, &HostResolv::default());
    assert_eq!(text, "nameserver 127.0.0.1\n");
    assert!(warning.is_some());
}

#[test]
fn resolv_conf_from_an_empty_host_file() {
    let (text, warning) = render_resolv_conf(&DnsConfig::default(), &parse_resolv_conf(""));
    assert_eq!(text, "");
    assert_eq!(warning, None);
}

#[test]
fn hosts_file() {
    assert_eq!(
        render_hosts("dagger"),
        "127.0.0.1\tlocalhost dagger\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
}

#[test]
fn hostnames_that_would_break_the_hosts_file_are_refused() {
    for good in [
        "dagger",
        "buildkitsandbox",
        "svc-1.abc123.dagger.local",
        "a_b",
        "x",
    ] {
        assert!(valid_hostname(good), "{good}");
    }
    let long = "a".repeat(254);
    for bad in ["", "a b", "a\nb", "a#b", "-a", ".a", "a\t", long.as_str()] {
        assert!(!valid_hostname(bad), "{bad:?}");
    }
}

#[test]
fn options_are_validated() {
    let ok = NetworkOptions::new("/tmp/x");
    assert_eq!(ok.bridge, "dagger0");
    assert_eq!(ok.cidr, net("10.87.0.0/16"));
    assert_eq!(ok.host_resolv_conf, Path::new("/etc/resolv.conf"));
    ok.validate().unwrap();

    let with = |f: &dyn Fn(&mut NetworkOptions)| {
        let mut o = NetworkOptions::new("/tmp/x");
        f(&mut o);
        o.validate()
    };
    for bridge in ["", "0abc", "a-very-long-bridge", "br 0", "br/0", "br.0"] {
        let e = with(&|o| o.bridge = bridge.into()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bridge:?}: {e}");
    }
    with(&|o| o.bridge = "dgt-1_a".into()).unwrap();
    for cidr in ["10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/7", "10.87.0.5/16"] {
        let e = with(&|o| o.cidr = net(cidr)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{cidr}: {e}");
    }
    let e = with(&|o| o.cidr = net("10.87.0.5/16")).unwrap_err();
    assert!(e.to_string().contains("10.87.0.0/16"), "{e}");
}

#[test]
fn veth_names_fit_and_differ_per_bridge() {
    let a = veth_prefix("dagger0");
    let b = veth_prefix("dgt1a2b3c");
    assert_ne!(a, b);
    assert_eq!(a, veth_prefix("dagger0"), "stable across runs");
    assert_eq!(a.len(), 6);
    assert!(format!("{a}{:x}", u32::MAX).len() <= 15, "IFNAMSIZ");
    assert_eq!(bridge_mac("dagger0"), bridge_mac("dagger0"));
    assert_ne!(bridge_mac("dagger0"), bridge_mac("dagger1"));
    assert_eq!(
        bridge_mac("dagger0")[0] & 0x03,
        0x02,
        "locally administered unicast"
    );
}

#[test]
fn nat_table_and_rules() {
    assert_eq!(nat::table_name("dagger0"), "dagger");
    assert_eq!(nat::table_name("dgt1a2b"), "dgt1a2b");
    assert_eq!(nat::table_name("0"), "0");
    assert_eq!(nat::table_name("dg-x0"), "dg_x");
    let script = nat::setup_script("dagger", "dagger0", DEFAULT_CIDR);
    assert!(
        script.starts_with("table ip dagger {}\ndelete table ip dagger\n"),
        "{script}"
    );
    assert!(
        script.contains("ip saddr 10.87.0.0/16 oifname != \"dagger0\" masquerade"),
        "{script}"
    );
    assert!(
        script.contains("type nat hook postrouting priority srcnat"),
        "{script}"
    );
    assert_eq!(
        nat::teardown_script("dagger"),
        "table ip dagger {}\ndelete table ip dagger\n"
    );
}

#[test]
fn errors_are_classified() {
    let io = |kind| io::Error::new(kind, "x");
    let cases = [
        (
            NetworkError::InvalidHostname("a b".into()),
            ErrorKind::InvalidArgument,
        ),
        (
            NetworkError::PoolExhausted {
                cidr: net("10.0.0.0/30"),
                capacity: 1,
            },
            ErrorKind::Unavailable,
        ),
        (NetworkError::NftMissing, ErrorKind::Unavailable),
        (
            NetworkError::NotABridge {
                name: "eth0".into(),
            },
            ErrorKind::AlreadyExists,
        ),
        (
            NetworkError::Netlink {
                op: "x".into(),
                source: io::Error::from_raw_os_error(1),
            },
            ErrorKind::PermissionDenied,
        ),
        (
            NetworkError::Io {
                op: "x".into(),
                source: io(io::ErrorKind::Other),
            },
            ErrorKind::Internal,
        ),
        (NetworkError::Nft("x".into()), ErrorKind::Internal),
    ];
    for (e, kind) in cases {
        assert_eq!(e.kind(), kind, "{e}");
    }
}
