//! The `/etc/resolv.conf` and `/etc/hosts` an exec sees.

use crate::config::DnsConfig;
use std::net::IpAddr;

/// What the engine host's resolv.conf says, as far as execs care.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HostResolv {
    pub(crate) nameservers: Vec<IpAddr>,
    pub(crate) search: Vec<String>,
    pub(crate) options: Vec<String>,
}

/// Parses resolv.conf the way glibc does: keywords at the start of a line, `#`/`;` comments,
/// the last `search` or `domain` line wins, `options` lines add up.
pub(crate) fn parse_resolv_conf(text: &str) -> HostResolv {
    let mut out = HostResolv::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword {
            "nameserver" => {
                // A scoped address (fe80::1%eth0) names a host interface that does not exist in
                // the exec's namespace, so it is useless there.
                if let Some(ip) = words
                    .next()
                    .filter(|w| !w.contains('%'))
                    .and_then(|w| w.parse().ok())
                {
                    out.nameservers.push(ip);
                }
            }
            "search" | "domain" => out.search = words.map(str::to_string).collect(),
            "options" => out.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    out
}

/// The exec's resolv.conf, plus a warning to log when its nameservers cannot work.
///
/// `[dns]` settings win over the host's, field by field. Host nameservers on loopback (e.g.
/// systemd-resolved's 127.0.0.53) are unreachable from an exec's namespace, so they are dropped
/// when the host also lists others. When it lists only loopback ones they are kept, with a
/// warning: pointing execs at the gateway would not help, as the engine runs no DNS forwarder on
/// the bridge yet (future work, like Dagger's dnsmasq on 10.87.0.1).
pub(crate) fn render_resolv_conf(dns: &DnsConfig, host: &HostResolv) -> (String, Option<String>) {
    let mut warning = None;
    let nameservers: Vec<IpAddr> = if !dns.nameservers.is_empty() {
        if dns.nameservers.iter().all(IpAddr::is_loopback) {
            warning = Some(format!(
                "[dns] nameservers {} are loopback addresses, which execs cannot reach from their own network namespace",
                join(&dns.nameservers)
            ));
        }
        dns.nameservers.clone()
    } else {
        let reachable: Vec<IpAddr> = host
            .nameservers
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect();
        if reachable.is_empty() && !host.nameservers.is_empty() {
            warning = Some(format!(
                "the host's nameservers {} are loopback addresses, which execs cannot reach from their own network namespace; set [dns] nameservers in engine.toml",
                join(&host.nameservers)
            ));
            host.nameservers.clone()
        } else {
            reachable
        }
    };
    let search = if dns.search_domains.is_empty() {
        &host.search
    } else {
        &dns.search_domains
    };
    let options = if dns.options.is_empty() {
        &host.options
    } else {
        &dns.options
    };

    let mut text = String::new();
    for ns in &nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    (text, warning)
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The exec's /etc/hosts (engine-facts §5.3).
pub(crate) fn render_hosts(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// A hostname goes verbatim into /etc/hosts, so anything that could break the line (spaces,
/// newlines, `#`) is refused.
pub(crate) fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}
