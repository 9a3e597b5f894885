//! One `reqwest::Client` per distinct TLS configuration, built on first use and kept: clients
//! own the connection pools, so sharing them is what makes keep-alive work.

use super::endpoint::TlsKey;
use super::RegistryError;
use reqwest::{Certificate, Client, Identity};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Between two reads of a response; a stalled registry fails instead of hanging a pull.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct ClientCache {
    /// Trusted for every registry (e.g. /usr/local/share/ca-certificates).
    extra_roots: Vec<Certificate>,
    clients: Mutex<HashMap<TlsKey, Client>>,
}

impl ClientCache {
    pub fn new(extra_ca_dir: Option<&Path>) -> Self {
        let extra_roots = extra_ca_dir.map(load_ca_dir).unwrap_or_default();
        ClientCache {
            extra_roots,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `key`; `host` only names the registry in errors.
    pub fn get(&self, key: &TlsKey, host: &str) -> Result<Client, RegistryError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(key) {
            return Ok(c.clone());
        }
        let client = self.build(key).map_err(|reason| RegistryError::Config {
            host: host.to_string(),
            reason,
        })?;
        clients.insert(key.clone(), client.clone());
        Ok(client)
    }

    fn build(&self, key: &TlsKey) -> Result<Client, String> {
        let mut b = Client::builder()
            .user_agent(concat!("dagger-engine/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .tls_built_in_root_certs(true);
        for c in &self.extra_roots {
            b = b.add_root_certificate(c.clone());
        }
        for path in &key.ca {
            for c in read_certs(path)? {
                b = b.add_root_certificate(c);
            }
        }
        let mut pairs = key.keypairs.clone();
        for dir in &key.tls_config_dirs {
            let (cas, dir_pairs) = scan_tls_dir(dir)?;
            for path in cas {
                for c in read_certs(&path)? {
                    b = b.add_root_certificate(c);
                }
            }
            pairs.extend(dir_pairs);
        }
        // rustls presents one client certificate; the first configured pair wins.
        if let Some((cert, key_path)) = pairs.first() {
            if pairs.len() > 1 {
                tracing::warn!(
                    cert = %cert.display(),
                    "several client key pairs configured for one registry; using the first"
                );
            }
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key_path)?);
            let id = Identity::from_pem(&pem).map_err(|e| {
                format!("key pair {} / {}: {e}", cert.display(), key_path.display())
            })?;
            b = b.identity(id);
        }
        if key.insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        b.build()
            .map_err(|e| format!("cannot set up TLS: {}", super::error::chain(&e)))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<Certificate>, String> {
    let pem = read(path)?;
    let certs = Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// CA files, and (cert, key) pairs.
type TlsDir = (Vec<PathBuf>, Vec<(PathBuf, PathBuf)>);

/// Docker's `certs.d` layout: `*.crt` are CAs, `NAME.cert` + `NAME.key` are a client pair.
/// A missing directory is not an error (Docker ignores it too).
fn scan_tls_dir(dir: &Path) -> Result<TlsDir, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    let mut cas = Vec::new();
    let mut pairs = Vec::new();
    for p in names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => cas.push(p),
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.is_file() {
                    return Err(format!("{} has no matching {}", p.display(), key.display()));
                }
                pairs.push((p, key));
            }
            _ => {}
        }
    }
    Ok((cas, pairs))
}

/// Every `*.crt` / `*.pem` under `dir` (recursively, as update-ca-certificates reads it).
/// Unusable files are logged and skipped: this directory applies to every registry, and one
/// bad file must not break pulls from all of them.
fn load_ca_dir(dir: &Path) -> Vec<Certificate> {
    let mut out = Vec::new();
    for path in crate::util::ca_files(dir) {
        match read_certs(&path).and_then(|certs| {
            // Building a throwaway client is the only way to learn that rustls accepts them.
            let mut b = Client::builder().tls_built_in_root_certs(false);
            for c in &certs {
                b = b.add_root_certificate(c.clone());
            }
            b.build()
                .map(|_| certs)
                .map_err(|e| format!("{}: {}", path.display(), super::error::chain(&e)))
        }) {
            Ok(certs) => out.extend(certs),
            Err(reason) => tracing::warn!(%reason, "skipping unusable CA certificate"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certs_d_layout() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "ca.crt",
            "b.crt",
            "client.cert",
            "client.key",
            "README",
            "other.key",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let (cas, pairs) = scan_tls_dir(dir.path()).unwrap();
        let names = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&cas), ["b.crt", "ca.crt"]);
        assert_eq!(pairs.len(), 1);
        assert!(pairs[0].0.ends_with("client.cert") && pairs[0].1.ends_with("client.key"));
        std::fs::write(dir.path().join("lonely.cert"), b"x").unwrap();
        assert!(scan_tls_dir(dir.path()).unwrap_err().contains("lonely.key"));
        assert_eq!(
            scan_tls_dir(&dir.path().join("missing")).unwrap(),
            (vec![], vec![])
        );
    }

    #[test]
    fn bad_ca_files_are_config_errors_and_skipped_in_the_extra_dir() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.crt");
        std::fs::write(&bad, b"not a certificate").unwrap();
        let cache = ClientCache::new(Some(dir.path()));
        assert!(cache.extra_roots.is_empty());
        let key = TlsKey {
            ca: vec![bad],
            ..Default::default()
        };
        let e = cache.get(&key, "r.example.com").unwrap_err().to_string();
        assert!(e.contains("r.example.com") && e.contains("bad.crt"), "{e}");
        let missing = TlsKey {
            ca: vec![dir.path().join("missing.pem")],
            ..Default::default()
        };
        assert!(cache.get(&missing, "h").is_err());
        // The default client builds and is cached.
        cache.get(&TlsKey::default(), "h").unwrap();
        cache.get(&TlsKey::default(), "h").unwrap();
        assert_eq!(cache.clients.lock().unwrap().len(), 1);
    }
}
