//! Which URLs serve a registry: its mirrors in order, then the origin, each with its own
//! scheme and TLS settings (engine-facts §1.6, BuildKit `util/resolver`).

use super::RegistryError;
use crate::config::RegistryConfig;
use crate::oci::reference::DOCKER_HUB;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// The registry Docker Hub's API is actually served from.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// TLS settings that select one `reqwest::Client`; endpoints with equal keys share it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsKey {
    pub insecure: bool,
    pub ca: Vec<PathBuf>,
    /// (cert, key)
    pub keypairs: Vec<(PathBuf, PathBuf)>,
    pub tls_config_dirs: Vec<PathBuf>,
}

impl TlsKey {
    fn from_config(c: &RegistryConfig) -> Self {
        TlsKey {
            insecure: c.insecure,
            ca: c.ca.clone(),
            keypairs: c
                .keypairs
                .iter()
                .map(|k| (k.cert.clone(), k.key.clone()))
                .collect(),
            tls_config_dirs: c.tls_config_dirs.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]`: what we connect to, limit connections on, and look credentials up by.
    pub host: String,
    /// `scheme://host[:port]/v2[/mirror-path]`, without a trailing slash.
    pub base: String,
    pub mirror: bool,
    /// Try plain HTTP when the HTTPS connection fails (BuildKit's `httpFallback`).
    pub http_fallback: bool,
    pub tls: TlsKey,
}

impl Endpoint {
    pub fn url(&self, repository: &str, rest: &str) -> String {
        format!("{}/{}/{}", self.base, repository, rest)
    }
}

/// The endpoints to try, in order, for pulling from `registry` (a [`crate::oci::Reference`]
/// registry such as `docker.io` or `127.0.0.1:5000`).
pub(crate) fn endpoints(
    registry: &str,
    hosts: &BTreeMap<String, RegistryConfig>,
) -> Result<Vec<Endpoint>, RegistryError> {
    let origin_host = if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    };
    let default = RegistryConfig::default();
    let origin_cfg = hosts
        .get(registry)
        .or_else(|| hosts.get(origin_host))
        .unwrap_or(&default);

    let mut out = Vec::with_capacity(origin_cfg.mirrors.len() + 1);
    for mirror in &origin_cfg.mirrors {
        let (host, path) = split_mirror(mirror).map_err(|reason| RegistryError::Config {
            host: registry.to_string(),
            reason,
        })?;
        // A mirror uses its own settings when it has some, else the origin's (BuildKit v0.21).
        let cfg = hosts.get(&host).unwrap_or(origin_cfg);
        out.push(endpoint(&host, &path, cfg, true));
    }
    out.push(endpoint(origin_host, "", origin_cfg, false));
    Ok(out)
}

fn endpoint(host: &str, path: &str, cfg: &RegistryConfig, mirror: bool) -> Endpoint {
    let (scheme, http_fallback) = scheme_for(host, cfg);
    let mut base = format!("{scheme}://{host}/v2");
    if !path.is_empty() {
        base.push('/');
        base.push_str(path);
    }
    Endpoint {
        host: host.to_string(),
        base,
        mirror,
        http_fallback,
        tls: TlsKey::from_config(cfg),
    }
}

/// `http = true` → HTTP; unset → HTTP for loopback hosts only. `insecure` (or TLS material
/// with `http = true`) turns that into HTTPS that falls back to HTTP, as BuildKit does.
fn scheme_for(host: &str, cfg: &RegistryConfig) -> (&'static str, bool) {
    let plain = match cfg.http {
        Some(http) => http,
        None => is_loopback_host(host),
    };
    if !plain {
        return ("https", false);
    }
    let tls_material =
        !cfg.ca.is_empty() || !cfg.keypairs.is_empty() || !cfg.tls_config_dirs.is_empty();
    if cfg.insecure || (cfg.http == Some(true) && tls_material && port_of(host) != Some(80)) {
        ("https", true)
    } else {
        ("http", false)
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = host_without_port(host);
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // More than one ':' is a bare IPv6 address.
        Some((h, _)) if !h.contains(':') => h,
        _ => host,
    }
}

fn port_of(host: &str) -> Option<u16> {
    let after = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1.strip_prefix(':')?,
        None => {
            let (h, p) = host.rsplit_once(':')?;
            if h.contains(':') {
                return None;
            }
            p
        }
    };
    after.parse().ok()
}

/// `mirror.example.com/dockerhub/` → (`mirror.example.com`, `dockerhub`).
fn split_mirror(mirror: &str) -> Result<(String, String), String> {
    let m = mirror.trim();
    let (host, path) = match m.split_once('/') {
        Some((h, p)) => (h, p.trim_matches('/')),
        None => (m, ""),
    };
    let bad = |why: &str| Err(format!("mirror {m:?} {why}"));
    if host.is_empty() || m.contains("://") {
        return bad("must be HOST[:PORT][/PATH] without a scheme");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return bad("has an invalid host");
    }
    if path.split('/').any(|seg| seg == "." || seg == "..")
        || path.contains("//")
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
    {
        return bad("has an invalid path");
    }
    Ok((host.to_ascii_lowercase(), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[(&str, RegistryConfig)]) -> BTreeMap<String, RegistryConfig> {
        entries
            .iter()
            .map(|(h, c)| (h.to_string(), c.clone()))
            .collect()
    }

    fn bases(registry: &str, h: &BTreeMap<String, RegistryConfig>) -> Vec<String> {
        endpoints(registry, h)
            .unwrap()
            .into_iter()
            .map(|e| e.base)
            .collect()
    }

    #[test]
    fn origin_only_and_docker_hub_mapping() {
        let none = BTreeMap::new();
        assert_eq!(
            bases("docker.io", &none),
            ["https://registry-1.docker.io/v2"]
        );
        assert_eq!(bases("ghcr.io", &none), ["https://ghcr.io/v2"]);
        let e = &endpoints("docker.io", &none).unwrap()[0];
        assert_eq!(e.host, "registry-1.docker.io");
        assert!(!e.mirror);
        assert_eq!(
            e.url("library/alpine", "manifests/latest"),
            "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
        );
    }

    #[test]
    fn mirrors_first_in_order_then_origin_with_paths_under_v2() {
        let h = hosts(&[(
            "docker.io",
            RegistryConfig {
                mirrors: vec![
                    "mirror.example.com/dockerhub".into(),
                    "127.0.0.1:5001".into(),
                    "m3.example.com:8443/a/b/".into(),
                ],
                ..Default::default()
            },
        )]);
        let eps = endpoints("docker.io", &h).unwrap();
        let got: Vec<(&str, &str, bool)> = eps
            .iter()
            .map(|e| (e.host.as_str(), e.base.as_str(), e.mirror))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "mirror.example.com",
                    "https://mirror.example.com/v2/dockerhub",
                    true
                ),
                ("127.0.0.1:5001", "http://127.0.0.1:5001/v2", true),
                (
                    "m3.example.com:8443",
                    "https://m3.example.com:8443/v2/a/b",
                    true
                ),
                (
                    "registry-1.docker.io",
                    "https://registry-1.docker.io/v2",
                    false
                ),
            ]
        );
        assert_eq!(
            eps[0].url("library/alpine", "blobs/sha256:x"),
            "https://mirror.example.com/v2/dockerhub/library/alpine/blobs/sha256:x"
        );
    }

    #[test]
    fn mirror_uses_its_own_settings_else_the_origins() {
        let h = hosts(&[
            (
                "reg.example.com",
                RegistryConfig {
                    mirrors: vec!["m1.example.com".into(), "m2.example.com".into()],
                    insecure: true,
                    ca: vec!["/origin-ca.pem".into()],
                    ..Default::default()
                },
            ),
            (
                "m2.example.com",
                RegistryConfig {
                    http: Some(true),
                    ..Default::default()
                },
            ),
        ]);
        let eps = endpoints("reg.example.com", &h).unwrap();
        assert!(eps[0].tls.insecure);
        assert_eq!(eps[0].tls.ca, vec![PathBuf::from("/origin-ca.pem")]);
        assert_eq!(eps[1].base, "http://m2.example.com/v2");
        assert!(!eps[1].tls.insecure);
        assert!(eps[2].tls.insecure);
    }

    #[test]
    fn plain_http_rules() {
        let cfg = |http: Option<bool>, insecure: bool, ca: bool| RegistryConfig {
            http,
            insecure,
            ca: if ca { vec!["/ca.pem".into()] } else { vec![] },
            ..Default::default()
        };
        let scheme = |host: &str, c: RegistryConfig| scheme_for(host, &c);
        // Unset: HTTP for loopback only.
        for local in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert_eq!(
                scheme(local, cfg(None, false, false)),
                ("http", false),
                "{local}"
            );
        }
        for remote in [
            "example.com",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.example.com",
        ] {
            assert_eq!(
                scheme(remote, cfg(None, false, false)),
                ("https", false),
                "{remote}"
            );
        }
        assert_eq!(
            scheme("127.0.0.1:5000", cfg(Some(false), false, false)),
            ("https", false)
        );
        assert_eq!(
            scheme("example.com", cfg(Some(true), false, false)),
            ("http", false)
        );
        // insecure + plain → HTTPS without verification, falling back to HTTP.
        assert_eq!(
            scheme("example.com", cfg(Some(true), true, false)),
            ("https", true)
        );
        assert_eq!(
            scheme("127.0.0.1:5000", cfg(None, true, false)),
            ("https", true)
        );
        assert_eq!(
            scheme("example.com", cfg(None, true, false)),
            ("https", false)
        );
        // http = true with TLS material: HTTPS first (not on port 80).
        assert_eq!(
            scheme("example.com:5000", cfg(Some(true), false, true)),
            ("https", true)
        );
        assert_eq!(
            scheme("example.com:80", cfg(Some(true), false, true)),
            ("http", false)
        );
    }

    #[test]
    fn bad_mirrors_are_config_errors() {
        for bad in [
            "",
            "/path",
            "host/../x",
            "host/a//b",
            "host/a?b",
            "ho st",
            "http://x",
        ] {
            let h = hosts(&[(
                "r.example.com",
                RegistryConfig {
                    mirrors: vec![bad.into()],
                    ..Default::default()
                },
            )]);
            assert!(
                matches!(
                    endpoints("r.example.com", &h),
                    Err(RegistryError::Config { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
