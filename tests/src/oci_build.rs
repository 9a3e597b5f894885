//! Builds small, valid OCI images in memory and serves them from a [`FakeRegistry`] handler,
//! for the cases a real registry cannot produce (wrong bytes, slow or interrupted bodies) and
//! for counting requests.

use crate::registry::{FakeBody, FakeRequest, FakeResponse};
use dagger_engine::oci::Digest;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One file in a layer.
pub struct FileSpec {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl FileSpec {
    pub fn new(path: &str, contents: impl Into<Vec<u8>>) -> FileSpec {
        FileSpec {
            path: path.into(),
            contents: contents.into(),
            mode: 0o644,
        }
    }
}

pub struct Layer {
    /// As served (gzip or plain tar).
    pub blob: Vec<u8>,
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: &'static str,
}

pub struct TestImage {
    pub repo: String,
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    /// Blob bodies served in place of the real ones (by digest), for hostile cases.
    pub overrides: HashMap<Digest, Vec<u8>>,
    /// Blobs served slowly: (chunk size, pause).
    pub slow: Option<(usize, Duration)>,
    /// Delay before answering a blob request, so concurrent requests overlap.
    pub blob_delay: Duration,
}

/// A tar stream of `files` (parent directories first, implicitly).
pub fn tar_of(files: &[FileSpec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut parent = std::path::Path::new(&f.path).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_path_buf());
            parent = p.parent();
        }
        for d in chain.into_iter().rev() {
            if dirs.insert(d.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, format!("{}/", d.display()), std::io::empty())
                    .unwrap();
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(f.mode);
        h.set_size(f.contents.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, &f.path, &f.contents[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

impl TestImage {
    /// An image in `repo` with one layer per entry of `layers`; `compress` gzips them.
    pub fn new(repo: &str, layers: Vec<Vec<FileSpec>>, compress: bool) -> TestImage {
        let layers: Vec<Layer> = layers
            .iter()
            .map(|files| {
                let tar = tar_of(files);
                let diff_id = Digest::of(&tar);
                let (blob, media_type) = if compress {
                    (gzip(&tar), "application/vnd.oci.image.layer.v1.tar+gzip")
                } else {
                    (tar, "application/vnd.oci.image.layer.v1.tar")
                };
                Layer {
                    digest: Digest::of(&blob),
                    blob,
                    diff_id,
                    media_type,
                }
            })
            .collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "config": {"Env": ["PATH=/bin", "FROM_FAKE=yes"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        Self::assemble(repo, layers, config)
    }

    /// Rebuilds the manifest around `layers` and `config` (use after tampering with either).
    pub fn assemble(repo: &str, layers: Vec<Layer>, config: Vec<u8>) -> TestImage {
        let config_digest = Digest::of(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.blob.len()
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        TestImage {
            repo: repo.into(),
            manifest_digest: Digest::of(&manifest),
            manifest,
            config_digest,
            config,
            layers,
            overrides: HashMap::new(),
            slow: None,
            blob_delay: Duration::ZERO,
        }
    }

    /// The well-behaved answer, with Range support for blobs (206 from the offset).
    pub fn answer(&self, req: &FakeRequest) -> FakeResponse {
        let path = req.path();
        let base = format!("/v2/{}", self.repo);
        if path == format!("{base}/manifests/latest")
            || path == format!("{base}/manifests/{}", self.manifest_digest)
        {
            return FakeResponse::ok(self.manifest.clone())
                .header("Content-Type", OCI_MANIFEST)
                .header("Docker-Content-Digest", &self.manifest_digest.to_string());
        }
        let Some(digest) = path
            .strip_prefix(&format!("{base}/blobs/"))
            .and_then(|d| Digest::parse(d).ok())
        else {
            return FakeResponse::not_found();
        };
        let body = if let Some(b) = self.overrides.get(&digest) {
            b.clone()
        } else if digest == self.config_digest {
            self.config.clone()
        } else if let Some(l) = self.layers.iter().find(|l| l.digest == digest) {
            l.blob.clone()
        } else {
            return FakeResponse::not_found();
        };
        let start = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| *s < body.len());
        let (status, body) = match start {
            Some(s) => (206, body[s..].to_vec()),
            None => (200, body),
        };
        let total = self
            .layers
            .iter()
            .find(|l| l.digest == digest)
            .map(|l| l.blob.len())
            .unwrap_or(body.len());
        let mut resp = match self.slow {
            Some((chunk, pause)) => FakeResponse::new(status, Vec::new())
                .with_body(FakeBody::Slow { body, chunk, pause }),
            None => FakeResponse::new(status, body),
        };
        if let Some(s) = start {
            resp = resp.header("Content-Range", &format!("bytes {s}-{}/{total}", total - 1));
        }
        resp.delay(self.blob_delay)
    }

    /// `127.0.0.1:PORT/<repo>:latest`
    pub fn reference(&self, addr: &str) -> String {
        format!("{addr}/{}:latest", self.repo)
    }
}
