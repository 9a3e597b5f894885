//! Registry client: the Registry HTTP API v2 for pulls (manifests, indexes, blobs), with
//! Basic and Bearer auth, mirrors, per-host plain HTTP / TLS settings, a per-host connection
//! limit and retries.
//!
//! Manifests are returned as the exact bytes the registry sent: their digest is the identity
//! of the image, and re-serialising would change it. Blob content is *not* verified here;
//! the content store hashes what it writes.

mod auth;
mod endpoint;
mod error;
mod push;
mod select;
mod tls;
mod transport;

pub use auth::{auth_address_host, Credentials};
pub use endpoint::DOCKER_HUB_API;
pub use error::RegistryError;
pub use push::{
    BlobOutcome, PushBlob, PushManifest, PushOptions, PushReport, DEFAULT_CHUNK_SIZE,
    DEFAULT_CHUNK_THRESHOLD,
};

use crate::config::RegistryConfig;
use crate::oci::{Digest, Platform, Reference};
use auth::AuthCache;
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use oci_spec::image::ImageManifest;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

pub const DEFAULT_EXTRA_CA_DIR: &str = "/usr/local/share/ca-certificates";
/// BuildKit's `resolver/limited` default.
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: usize = 4;
/// containerd's `MaxManifestSize`; the distribution spec asks registries to accept 4 MB.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// How deep indexes may nest before we call it a loop.
const MAX_INDEX_DEPTH: usize = 4;

pub fn is_index_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_LIST
}

pub fn is_manifest_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `[registry."HOST"]` settings by host (`docker.io`, `127.0.0.1:5000`, a mirror host).
    pub hosts: BTreeMap<String, RegistryConfig>,
    /// Every `*.crt` / `*.pem` here is trusted for every registry.
    pub extra_ca_dir: Option<PathBuf>,
    pub credentials: Credentials,
    /// Concurrent requests (and so connections) per registry host.
    pub max_connections_per_host: usize,
    pub max_manifest_bytes: u64,
    /// Chunked or monolithic blob uploads.
    pub push: PushOptions,
}

impl Default for RegistryOptions {
    /// No per-host settings, the system's extra CA directory, anonymous access.
    fn default() -> Self {
        RegistryOptions {
            hosts: BTreeMap::new(),
            extra_ca_dir: Some(PathBuf::from(DEFAULT_EXTRA_CA_DIR)),
            credentials: Credentials::none(),
            max_connections_per_host: DEFAULT_MAX_CONNECTIONS_PER_HOST,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            push: PushOptions::default(),
        }
    }
}

/// A manifest or index exactly as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    /// Which mirror or origin served it (`scheme://host/v2[/path]`), for logs.
    pub endpoint: String,
}

impl FetchedManifest {
    pub fn is_index(&self) -> bool {
        is_index_type(&self.media_type)
    }
}

/// An image resolved for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The index (or manifest list) the reference pointed at, if it pointed at one. With
    /// nested indexes this is the outermost.
    pub index: Option<FetchedManifest>,
    pub manifest: FetchedManifest,
    /// `manifest.bytes` parsed (OCI and Docker schema 2 share this shape).
    pub parsed: ImageManifest,
    /// The config blob's digest and size.
    pub config: (Digest, u64),
}

/// A blob body, capped at the size the caller expects.
pub struct BlobStream {
    /// The server ignored our Range request and sent the blob from byte 0: the caller must
    /// discard what it had.
    pub restarted: bool,
    /// Where in the blob the stream starts (the requested offset, or 0 when `restarted`).
    pub offset: u64,
    /// Which mirror or origin serves it, for logs.
    pub endpoint: String,
    pub stream: BoxStream<'static, Result<Bytes, RegistryError>>,
}

impl BlobStream {
    /// The next chunk; `None` once the whole expected size has arrived.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, RegistryError>> {
        self.stream.next().await
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("restarted", &self.restarted)
            .field("offset", &self.offset)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The registry client. Cheap to clone; clones share connection pools, tokens and limits.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("hosts", &self.inner.hosts.keys().collect::<Vec<_>>())
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// One view of the client: its credentials, and the state every view shares (TLS clients,
/// connection limits, tokens; tokens are kept per credentials, see [`AuthCache`]).
pub(crate) struct Inner {
    hosts: BTreeMap<String, RegistryConfig>,
    credentials: Credentials,
    max_connections_per_host: usize,
    max_manifest_bytes: u64,
    push: PushOptions,
    clients: Arc<tls::ClientCache>,
    semaphores: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    auth: Arc<AuthCache>,
}

impl RegistryClient {
    /// Checks the mirror settings and loads the extra CA directory; TLS clients are built
    /// when a host first needs one.
    pub fn new(opts: RegistryOptions) -> Result<Self, RegistryError> {
        for host in opts.hosts.keys() {
            endpoint::endpoints(host, &opts.hosts)?;
        }
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                clients: Arc::new(tls::ClientCache::new(opts.extra_ca_dir.as_deref())),
                hosts: opts.hosts,
                credentials: opts.credentials,
                max_connections_per_host: opts.max_connections_per_host.max(1),
                max_manifest_bytes: opts.max_manifest_bytes,
                push: opts.push,
                semaphores: Arc::new(Mutex::new(HashMap::new())),
                auth: Arc::new(AuthCache::default()),
            }),
        })
    }

    /// This client with `overlay`'s credentials taking precedence over its own, host by host
    /// (`withRegistryAuth`). It shares connection pools, limits and the token cache with
    /// `self`; tokens are cached per credentials, so none crosses from one view to another
    /// with different credentials. Only the caller holding the view uses the overlay.
    pub fn with_credentials(&self, overlay: &Credentials) -> RegistryClient {
        if overlay.is_empty() {
            return self.clone();
        }
        let base = &self.inner;
        RegistryClient {
            inner: Arc::new(Inner {
                hosts: base.hosts.clone(),
                credentials: base.credentials.overlaid(overlay),
                max_connections_per_host: base.max_connections_per_host,
                max_manifest_bytes: base.max_manifest_bytes,
                push: base.push,
                clients: base.clients.clone(),
                semaphores: base.semaphores.clone(),
                auth: base.auth.clone(),
            }),
        }
    }

    /// GETs the manifest (by tag or digest) from the first endpoint that has it: mirrors in
    /// order, then the origin. The digest is sha256 of the raw bytes and must equal the
    /// reference's digest when there is one, and a non-empty `Docker-Content-Digest`.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let endpoints = endpoint::endpoints(&reference.registry, &self.inner.hosts)?;
        let mut errors = Vec::new();
        for ep in &endpoints {
            match self.inner.fetch_manifest_at(ep, reference).await {
                Ok(m) => {
                    tracing::debug!(%reference, digest = %m.digest, endpoint = %ep.base, "fetched manifest");
                    return Ok(m);
                }
                Err(e) => {
                    if ep.mirror {
                        tracing::debug!(%reference, endpoint = %ep.base, error = %e, "mirror failed; trying the next endpoint");
                    }
                    errors.push(e);
                }
            }
        }
        Err(first_useful_error(errors))
    }

    /// Resolves `reference` to the image manifest for `platform`, following (nested) indexes.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let mut current = self.fetch_manifest(reference).await?;
        let mut current_ref = reference.clone();
        let mut index = None;
        for _ in 0..=MAX_INDEX_DEPTH {
            if current.is_index() {
                let invalid = |reason: String| RegistryError::InvalidManifest {
                    reference: current_ref.to_string(),
                    reason,
                };
                let doc: select::IndexDoc = serde_json::from_slice(&current.bytes)
                    .map_err(|e| invalid(format!("not an image index: {e}")))?;
                let entry = match select::select(&doc.manifests, platform) {
                    Ok(select::Choice::Manifest(e) | select::Choice::Index(e)) => e.clone(),
                    Err(available) => {
                        return Err(RegistryError::NoMatchingPlatform {
                            reference: current_ref.to_string(),
                            platform: platform.to_string(),
                            available,
                        })
                    }
                };
                let digest = Digest::parse(&entry.digest)
                    .map_err(|e| invalid(format!("index entry: {e}")))?;
                let next_ref = reference.with_digest(digest);
                let next = self.fetch_manifest(&next_ref).await?;
                if next.bytes.len() as u64 != entry.size {
                    return Err(RegistryError::InvalidManifest {
                        reference: next_ref.to_string(),
                        reason: format!(
                            "the index says {} bytes, the registry served {}",
                            entry.size,
                            next.bytes.len()
                        ),
                    });
                }
                index.get_or_insert(current);
                current = next;
                current_ref = next_ref;
                continue;
            }
            let invalid = |reason: String| RegistryError::InvalidManifest {
                reference: current_ref.to_string(),
                reason,
            };
            if !is_manifest_type(&current.media_type) {
                return Err(invalid(format!(
                    "unsupported media type {:?}",
                    current.media_type
                )));
            }
            let parsed: ImageManifest = serde_json::from_slice(&current.bytes)
                .map_err(|e| invalid(format!("not an image manifest: {e}")))?;
            if parsed.schema_version() != 2 {
                return Err(invalid(format!(
                    "schema version {} is not supported",
                    parsed.schema_version()
                )));
            }
            let config_digest = Digest::parse(parsed.config().digest().as_ref())
                .map_err(|e| invalid(format!("config: {e}")))?;
            let config_size = parsed.config().size();
            return Ok(ResolvedImage {
                index,
                manifest: current,
                parsed,
                config: (config_digest, config_size),
            });
        }
        Err(RegistryError::InvalidManifest {
            reference: reference.to_string(),
            reason: format!("indexes nested more than {MAX_INDEX_DEPTH} deep"),
        })
    }

    /// Streams blob `digest` from byte `offset` (a Range request when `offset > 0`). The
    /// stream ends with an error if the server sends more than `expected_size` in total, or
    /// stops short of it. Content is not verified here. The stream holds one of the host's
    /// connection slots until it ends or is dropped, so don't park more open streams per host
    /// than `max_connections_per_host` while waiting for another request to that host.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        expected_size: u64,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        if offset > expected_size {
            return Err(RegistryError::InvalidRequest(format!(
                "resume offset {offset} is past the end of blob {digest} ({expected_size} bytes)"
            )));
        }
        let endpoints = endpoint::endpoints(&reference.registry, &self.inner.hosts)?;
        if offset > 0 && offset == expected_size {
            // Nothing left to read; a `bytes=N-` range would only earn a 416.
            return Ok(BlobStream {
                restarted: false,
                offset,
                endpoint: endpoints.last().map(|e| e.base.clone()).unwrap_or_default(),
                stream: futures_util::stream::empty().boxed(),
            });
        }
        let mut errors = Vec::new();
        for ep in &endpoints {
            match self
                .inner
                .fetch_blob_at(ep, reference, digest, expected_size, offset)
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if ep.mirror {
                        tracing::debug!(%digest, endpoint = %ep.base, error = %e, "mirror failed; trying the next endpoint");
                    }
                    errors.push(e);
                }
            }
        }
        Err(first_useful_error(errors))
    }
}

/// Like containerd: "not found" only when every endpoint said so, else the first real failure.
fn first_useful_error(errors: Vec<RegistryError>) -> RegistryError {
    let mut not_found = None;
    for e in errors {
        if e.is_not_found() {
            not_found.get_or_insert(e);
        } else {
            return e;
        }
    }
    not_found.unwrap_or_else(|| RegistryError::InvalidRequest("no registry endpoint".into()))
}

/// The only fields we look at to tell what a manifest is.
#[derive(Deserialize)]
struct ManifestProbe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

/// The media type of a manifest body: its own `mediaType` (covered by the digest, unlike the
/// header), else a known `Content-Type`, else its shape.
fn detect_media_type(content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    let probe: ManifestProbe =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON manifest: {e}"))?;
    if probe.schema_version == Some(1) {
        return Err("Docker schema 1 manifests are not supported".into());
    }
    if let Some(mt) = probe.media_type.filter(|m| !m.is_empty()) {
        return Ok(mt);
    }
    let header = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| is_index_type(c) || is_manifest_type(c));
    if let Some(h) = header {
        return Ok(h);
    }
    if probe.manifests.is_some() {
        Ok(MEDIA_TYPE_OCI_INDEX.into())
    } else if probe.config.is_some() {
        Ok(MEDIA_TYPE_OCI_MANIFEST.into())
    } else {
        Err("cannot tell what kind of manifest this is".into())
    }
}

/// Checks a `Docker-Content-Digest` header against the body. sha256 and sha512 are checked;
/// other algorithms cannot be and are ignored (the sha256 we computed is what we trust).
fn check_header_digest(header: &str, body: &[u8], sha256: &Digest) -> Result<(), ()> {
    let header = header.trim();
    match header.split_once(':') {
        Some(("sha256", _)) => match Digest::parse(header) {
            Ok(d) if &d == sha256 => Ok(()),
            _ => Err(()),
        },
        Some(("sha512", hex)) => {
            use sha2::Digest as _;
            if hex.eq_ignore_ascii_case(&hex::encode(sha2::Sha512::digest(body))) {
                Ok(())
            } else {
                Err(())
            }
        }
        _ => {
            tracing::debug!(
                header,
                "ignoring a Docker-Content-Digest with an unknown algorithm"
            );
            Ok(())
        }
    }
}

/// A blob body that refuses to run past its expected size and reports a short one. Holds the
/// host's connection permit until it ends or is dropped.
struct LimitedBody {
    inner: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Bytes still allowed.
    remaining: u64,
    offset: u64,
    expected_size: u64,
    host: String,
    digest: Digest,
    reference: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl LimitedBody {
    fn finish(&mut self) {
        // Dropping the body closes the connection if it was not read to the end.
        self.inner = None;
        self.permit = None;
    }
}

impl Stream for LimitedBody {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                if n > this.remaining {
                    this.finish();
                    return Poll::Ready(Some(Err(RegistryError::TooLarge {
                        what: format!("blob {}", this.digest),
                        reference: this.reference.clone(),
                        limit: this.expected_size,
                    })));
                }
                this.remaining -= n;
                this.offset += n;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(RegistryError::Unavailable {
                    host: this.host.clone(),
                    reason: format!(
                        "reading blob {} at byte {}: {}",
                        this.digest,
                        this.offset,
                        error::chain(&e)
                    ),
                })))
            }
            Poll::Ready(None) => {
                this.finish();
                if this.remaining > 0 {
                    Poll::Ready(Some(Err(RegistryError::Unavailable {
                        host: this.host.clone(),
                        reason: format!(
                            "blob {} ended after {} of {} bytes",
                            this.digest, this.offset, this.expected_size
                        ),
                    })))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_streams_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send + Unpin>() {}
        send_sync::<RegistryClient>();
        send_sync::<RegistryError>();
        send::<BlobStream>();
    }

    #[test]
    fn media_type_detection() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#;
        assert_eq!(
            detect_media_type(Some("application/json"), oci).unwrap(),
            MEDIA_TYPE_OCI_MANIFEST
        );
        // The body's mediaType wins over the header.
        assert_eq!(
            detect_media_type(Some(MEDIA_TYPE_DOCKER_LIST), oci).unwrap(),
            MEDIA_TYPE_OCI_MANIFEST
        );
        let bare = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            detect_media_type(
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
                bare
            )
            .unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        assert_eq!(
            detect_media_type(None, bare).unwrap(),
            MEDIA_TYPE_OCI_MANIFEST
        );
        assert_eq!(
            detect_media_type(Some("text/plain"), br#"{"schemaVersion":2,"manifests":[]}"#)
                .unwrap(),
            MEDIA_TYPE_OCI_INDEX
        );
        assert!(
            detect_media_type(None, br#"{"schemaVersion":1,"fsLayers":[]}"#)
                .unwrap_err()
                .contains("schema 1")
        );
        assert!(detect_media_type(None, b"<html>").is_err());
        assert!(detect_media_type(None, b"{}").is_err());
    }

    #[test]
    fn header_digest_checks() {
        let body = b"{}";
        let d = Digest::of(body);
        assert!(check_header_digest(&d.to_string(), body, &d).is_ok());
        assert!(check_header_digest(&format!(" {d} "), body, &d).is_ok());
        let other = Digest::of(b"x");
        assert!(check_header_digest(&other.to_string(), body, &d).is_err());
        assert!(check_header_digest("sha256:zz", body, &d).is_err());
        use sha2::Digest as _;
        let s512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(body)));
        assert!(check_header_digest(&s512, body, &d).is_ok());
        assert!(check_header_digest(&format!("sha512:{}", "0".repeat(128)), body, &d).is_err());
        assert!(check_header_digest("blake3:abc", body, &d).is_ok());
    }

    #[test]
    fn errors_prefer_real_failures_over_not_found() {
        let nf = || RegistryError::NotFound {
            what: "manifest",
            reference: "r".into(),
        };
        let down = RegistryError::Unavailable {
            host: "m".into(),
            reason: "x".into(),
        };
        assert!(first_useful_error(vec![nf(), nf()]).is_not_found());
        assert!(matches!(
            first_useful_error(vec![nf(), down]),
            RegistryError::Unavailable { .. }
        ));
    }

    #[test]
    fn new_validates_mirrors() {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "r.example.com".to_string(),
            RegistryConfig {
                mirrors: vec!["m.example.com/../x".into()],
                ..Default::default()
            },
        );
        let e = RegistryClient::new(RegistryOptions {
            hosts,
            extra_ca_dir: None,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, RegistryError::Config { .. }), "{e}");
    }
}
