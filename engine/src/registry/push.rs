//! Pushes: blobs and manifests to a registry's origin (mirrors are for pulls only), with the
//! same per-host TLS settings, credentials, token cache, connection limit and retry policy as
//! pulls.
//!
//! A blob is first checked with `HEAD`; a blob the registry already holds in another
//! repository we know of is mounted (`POST .../blobs/uploads/?mount=&from=`), and when the
//! registry refuses the mount (202) the upload session it opened is used for a normal upload.
//! Blobs up to [`PushOptions::chunk_threshold`] go in one `PUT`; larger ones in `PATCH`
//! chunks then a closing `PUT`. Bodies stream from the blob's file. An upload that fails
//! part-way (connection lost, 5xx, 416) starts over from a new session, up to the transport's
//! attempt count with its backoff.
//!
//! Manifests go last, children before the index that lists them; the registry's
//! `Docker-Content-Digest` must equal the digest we computed.

use super::endpoint::{self, Endpoint};
use super::transport::{Request, Sent, MAX_ATTEMPTS};
use super::{Inner, RegistryClient, RegistryError};
use crate::oci::{Digest, Reference};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Blobs larger than this are uploaded in chunks.
pub const DEFAULT_CHUNK_THRESHOLD: u64 = 64 << 20;
/// The size of one `PATCH` (raised to the registry's `OCI-Chunk-Min-Length`).
pub const DEFAULT_CHUNK_SIZE: u64 = 32 << 20;
/// How much of the file one read takes into the request body.
const READ_CHUNK: usize = 1 << 20;
/// Cap on a registry's error document that we read for a message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Upload tuning, part of [`super::RegistryOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOptions {
    /// Blobs larger than this many bytes are uploaded in chunks, smaller ones in one request.
    pub chunk_threshold: u64,
    /// Bytes per chunk (at least the registry's `OCI-Chunk-Min-Length`).
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            chunk_threshold: DEFAULT_CHUNK_THRESHOLD,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// A blob to push, read from a file (a content-store blob).
#[derive(Debug, Clone)]
pub struct PushBlob {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
    /// Repositories on the target registry (`team/app`) that already hold this blob and may
    /// be mounted from.
    pub mount_from: Vec<String>,
}

/// A manifest or index to push, with its exact bytes.
#[derive(Debug, Clone)]
pub struct PushManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The repository already had it.
    Existed,
    /// Mounted from another repository of the registry.
    Mounted,
    Uploaded,
}

/// The result of [`RegistryClient::push_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The root manifest's digest, as the registry confirmed it.
    pub digest: Digest,
    pub existed: usize,
    pub mounted: usize,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
}

/// Counts shared by the concurrent blob pushes of one image.
#[derive(Default)]
struct Tally {
    existed: AtomicUsize,
    mounted: AtomicUsize,
    uploaded: AtomicUsize,
    uploaded_bytes: AtomicU64,
}

/// The token scopes a push needs: pull and push on the target, pull on mount sources.
fn push_scope<'a>(repo: &str, sources: impl IntoIterator<Item = &'a String>) -> String {
    let mut scope = format!("repository:{repo}:pull,push");
    let mut seen = std::collections::BTreeSet::new();
    for s in sources {
        if s != repo && seen.insert(s.as_str()) {
            scope.push_str(&format!(" repository:{s}:pull"));
        }
    }
    scope
}

impl RegistryClient {
    /// Pushes an image to `target`: every blob (concurrently; the per-host connection limit
    /// bounds the requests), then the manifests in the given order (children before the
    /// index). The last manifest is the root: it is put under `target`'s tag (or its digest
    /// when the reference has no tag), the others by digest. Returns the root digest the
    /// registry confirmed.
    pub async fn push_image(
        &self,
        target: &Reference,
        blobs: Vec<PushBlob>,
        manifests: Vec<PushManifest>,
    ) -> Result<PushReport, RegistryError> {
        let ep = self.push_endpoint(target)?;
        let repo = target.repository.clone();
        let scope = push_scope(&repo, blobs.iter().flat_map(|b| b.mount_from.iter()));
        let tally = Arc::new(Tally::default());
        let started = std::time::Instant::now();
        let pushes = blobs.into_iter().map(|blob| {
            let (client, ep, repo, scope, tally) = (
                self.clone(),
                ep.clone(),
                repo.clone(),
                scope.clone(),
                tally.clone(),
            );
            async move {
                let outcome = client.inner.push_blob(&ep, &repo, &scope, &blob).await?;
                match outcome {
                    BlobOutcome::Existed => tally.existed.fetch_add(1, Ordering::Relaxed),
                    BlobOutcome::Mounted => tally.mounted.fetch_add(1, Ordering::Relaxed),
                    BlobOutcome::Uploaded => {
                        tally.uploaded_bytes.fetch_add(blob.size, Ordering::Relaxed);
                        tally.uploaded.fetch_add(1, Ordering::Relaxed)
                    }
                };
                Ok::<_, RegistryError>(())
            }
        });
        // Spawned so the uploads run on every worker thread, not only this one.
        let handles: Vec<_> = pushes.map(tokio::spawn).map(AbortOnDrop).collect();
        let mut first_error = None;
        for mut h in handles {
            let r = (&mut h.0).await.map_err(|e| {
                RegistryError::InvalidRequest(format!("a blob upload task failed: {e}"))
            });
            if let Err(e) = r.and_then(|r| r) {
                first_error.get_or_insert(e);
                break;
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let blobs_ms = started.elapsed().as_millis() as u64;
        let Some((root, children)) = manifests.split_last() else {
            return Err(RegistryError::InvalidRequest(
                "an image push needs at least one manifest".into(),
            ));
        };
        for m in children {
            self.inner
                .push_manifest(&ep, &repo, &scope, &m.digest.to_string(), m)
                .await?;
        }
        let root_ref = match (&target.tag, &target.digest) {
            (Some(tag), _) => tag.clone(),
            (None, _) => root.digest.to_string(),
        };
        let digest = self
            .inner
            .push_manifest(&ep, &repo, &scope, &root_ref, root)
            .await?;
        let report = PushReport {
            digest,
            existed: tally.existed.load(Ordering::Relaxed),
            mounted: tally.mounted.load(Ordering::Relaxed),
            uploaded: tally.uploaded.load(Ordering::Relaxed),
            uploaded_bytes: tally.uploaded_bytes.load(Ordering::Relaxed),
        };
        tracing::info!(
            target = %target,
            digest = %report.digest,
            existed = report.existed,
            mounted = report.mounted,
            uploaded = report.uploaded,
            uploaded_bytes = report.uploaded_bytes,
            blobs_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pushed"
        );
        Ok(report)
    }

    /// Pushes one blob to `target`'s repository.
    pub async fn push_blob(
        &self,
        target: &Reference,
        blob: &PushBlob,
    ) -> Result<BlobOutcome, RegistryError> {
        let ep = self.push_endpoint(target)?;
        let scope = push_scope(&target.repository, &blob.mount_from);
        self.inner
            .push_blob(&ep, &target.repository, &scope, blob)
            .await
    }

    /// The origin: pushes never go to mirrors.
    fn push_endpoint(&self, target: &Reference) -> Result<Endpoint, RegistryError> {
        endpoint::endpoints(&target.registry, &self.inner.hosts)?
            .into_iter()
            .find(|e| !e.mirror)
            .ok_or_else(|| RegistryError::InvalidRequest("no registry endpoint".into()))
    }
}

/// Aborts a spawned upload when the push is abandoned or another upload failed.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why an upload attempt failed, and whether a fresh session may succeed.
fn restartable(e: &RegistryError) -> bool {
    match e {
        RegistryError::Unavailable { .. } => true,
        RegistryError::UnexpectedStatus { status, .. } => *status == 416,
        _ => false,
    }
}

/// Push errors speak of push access: the shared transport's "credentials required" says pull.
fn push_auth_error(e: RegistryError) -> RegistryError {
    match e {
        RegistryError::CredentialsRequired { host, repository }
        | RegistryError::Denied { host, repository } => {
            RegistryError::PushDenied { host, repository }
        }
        other => other,
    }
}

fn octet_stream(len: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h
}

/// A request body streaming `len` bytes of `path` from `offset`, read on a blocking thread
/// so disk reads never stall the async workers. The file must be exactly `size` bytes.
fn file_body(
    path: &std::path::Path,
    size: u64,
    offset: u64,
    len: u64,
) -> Result<reqwest::Body, RegistryError> {
    let io = |e: std::io::Error| {
        RegistryError::InvalidRequest(format!("reading {} to upload it: {e}", path.display()))
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let actual = file.metadata().map_err(io)?.len();
    if actual != size {
        return Err(RegistryError::InvalidRequest(format!(
            "{} is {actual} bytes, the descriptor says {size}",
            path.display()
        )));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let n = left.min(READ_CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            let r = file.read_exact(&mut buf).map(|()| Bytes::from(buf));
            let failed = r.is_err();
            // A closed channel means the request was dropped: stop reading.
            if tx.blocking_send(r).is_err() || failed {
                return;
            }
            left -= n as u64;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// `location` (absolute, or relative to `base`) with `digest=` added to its query.
fn upload_url(
    base: &reqwest::Url,
    location: &str,
    digest: Option<&Digest>,
) -> Result<reqwest::Url, String> {
    let mut url = base
        .join(location)
        .map_err(|e| format!("bad upload location {location:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("upload location {location:?} is not HTTP(S)"));
    }
    if let Some(d) = digest {
        url.query_pairs_mut().append_pair("digest", &d.to_string());
    }
    Ok(url)
}

/// `RegistryError::Rejected` for `resp`: its status and the registry's error message.
async fn rejected(
    ep: &Endpoint,
    repo: &str,
    what: String,
    resp: reqwest::Response,
) -> RegistryError {
    RegistryError::Rejected {
        host: ep.host.clone(),
        repository: repo.to_string(),
        what,
        status: resp.status().as_u16(),
        message: error_message(resp).await,
    }
}

/// The registry's error document (`{"errors":[{"code","message","detail"}]}`) as one line,
/// or the start of the body when it is not one.
async fn error_message(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    if let Ok(doc) = serde_json::from_slice::<Doc>(&body) {
        if !doc.errors.is_empty() {
            return doc
                .errors
                .iter()
                .map(|e| {
                    let mut s = match (e.code.is_empty(), e.message.is_empty()) {
                        (false, false) => format!("{}: {}", e.code, e.message),
                        (false, true) => e.code.clone(),
                        _ => e.message.clone(),
                    };
                    if let Some(d) = e.detail.as_ref().filter(|d| !d.is_null()) {
                        let d = d.to_string();
                        s.push_str(&format!(" ({})", d.chars().take(300).collect::<String>()));
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        "no error details".to_string()
    } else {
        text.chars().take(300).collect()
    }
}

impl Inner {
    fn request(
        &self,
        method: Method,
        url: String,
        headers: HeaderMap,
        scope: &str,
        attempts: u32,
    ) -> Request<'static> {
        Request {
            method,
            url,
            headers,
            scope: scope.to_string(),
            body: None,
            attempts,
            authorize: true,
        }
    }

    async fn push_blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        scope: &str,
        blob: &PushBlob,
    ) -> Result<BlobOutcome, RegistryError> {
        let blob_ref = format!("{} in {}/{repo}", blob.digest, ep.host);
        // Does the repository have it already?
        let url = ep.url(repo, &format!("blobs/{}", blob.digest));
        let Sent { resp, permit } = self
            .send_request(
                ep,
                repo,
                self.request(Method::HEAD, url, HeaderMap::new(), scope, MAX_ATTEMPTS),
            )
            .await
            .map_err(push_auth_error)?;
        match resp.status() {
            StatusCode::OK => {
                tracing::debug!(blob = %blob_ref, "blob exists");
                return Ok(BlobOutcome::Existed);
            }
            StatusCode::NOT_FOUND => {}
            s => {
                return Err(RegistryError::UnexpectedStatus {
                    host: ep.host.clone(),
                    reference: blob_ref,
                    status: s.as_u16(),
                })
            }
        }
        drop(permit);

        let mut attempt = 1;
        loop {
            match self.upload_blob(ep, repo, scope, blob, attempt == 1).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if restartable(&e) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(blob = %blob_ref, attempt, error = %e, "upload failed; starting a new upload session");
                    tokio::time::sleep(Duration::from_millis(200) * (1 << (attempt - 1))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One upload session: a mount or a new session, then the body.
    async fn upload_blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        scope: &str,
        blob: &PushBlob,
        try_mount: bool,
    ) -> Result<BlobOutcome, RegistryError> {
        let blob_ref = format!("{} in {}/{repo}", blob.digest, ep.host);
        let mut url = ep.url(repo, "blobs/uploads/");
        let source = blob.mount_from.iter().find(|s| s.as_str() != repo);
        let mounting = try_mount && source.is_some();
        if let (true, Some(from)) = (mounting, source) {
            let mut u = reqwest::Url::parse(&url)
                .map_err(|e| RegistryError::InvalidRequest(e.to_string()))?;
            u.query_pairs_mut()
                .append_pair("mount", &blob.digest.to_string())
                .append_pair("from", from);
            url = u.to_string();
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
        let Sent { resp, permit } = self
            .send_request(
                ep,
                repo,
                self.request(Method::POST, url, headers, scope, MAX_ATTEMPTS),
            )
            .await
            .map_err(push_auth_error)?;
        match resp.status() {
            StatusCode::CREATED if mounting => {
                tracing::debug!(blob = %blob_ref, from = ?source, "blob mounted");
                return Ok(BlobOutcome::Mounted);
            }
            StatusCode::ACCEPTED => {
                if mounting {
                    tracing::debug!(blob = %blob_ref, from = ?source, "mount refused; uploading");
                }
            }
            _ => {
                let what = format!("the upload of blob {}", blob.digest);
                return Err(rejected(ep, repo, what, resp).await);
            }
        }
        let min_chunk = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut location = self.location(ep, &resp)?;
        drop(resp);
        drop(permit);

        let opts = self.push;
        if blob.size > opts.chunk_threshold {
            let chunk = opts.chunk_size.max(min_chunk).max(1);
            let mut offset = 0;
            while offset < blob.size {
                let len = chunk.min(blob.size - offset);
                let mut headers = octet_stream(len);
                let range = format!("{}-{}", offset, offset + len - 1);
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&range)
                        .map_err(|e| RegistryError::InvalidRequest(e.to_string()))?,
                );
                let path = blob.path.clone();
                let size = blob.size;
                let make = move || file_body(&path, size, offset, len);
                let resp = self
                    .send_body(ep, repo, scope, Method::PATCH, &location, headers, &make)
                    .await?;
                if resp.resp.status() != StatusCode::ACCEPTED {
                    return Err(self.upload_error(ep, repo, blob, resp.resp).await);
                }
                location = self.location(ep, &resp.resp)?;
                offset += len;
            }
            let url = upload_url(&location, "", Some(&blob.digest)).map_err(|reason| {
                RegistryError::InvalidResponse {
                    host: ep.host.clone(),
                    reason,
                }
            })?;
            let empty = || Ok(reqwest::Body::from(Vec::new()));
            let resp = self
                .send_body(ep, repo, scope, Method::PUT, &url, octet_stream(0), &empty)
                .await?;
            if resp.resp.status() != StatusCode::CREATED {
                return Err(self.upload_error(ep, repo, blob, resp.resp).await);
            }
        } else {
            let url = upload_url(&location, "", Some(&blob.digest)).map_err(|reason| {
                RegistryError::InvalidResponse {
                    host: ep.host.clone(),
                    reason,
                }
            })?;
            let path = blob.path.clone();
            let size = blob.size;
            let make = move || file_body(&path, size, 0, size);
            let resp = self
                .send_body(
                    ep,
                    repo,
                    scope,
                    Method::PUT,
                    &url,
                    octet_stream(size),
                    &make,
                )
                .await?;
            if resp.resp.status() != StatusCode::CREATED {
                return Err(self.upload_error(ep, repo, blob, resp.resp).await);
            }
        }
        tracing::debug!(blob = %blob_ref, bytes = blob.size, "blob uploaded");
        Ok(BlobOutcome::Uploaded)
    }

    /// The `Location` of an upload session, resolved against the request's URL.
    fn location(
        &self,
        ep: &Endpoint,
        resp: &reqwest::Response,
    ) -> Result<reqwest::Url, RegistryError> {
        let bad = |reason: String| RegistryError::InvalidResponse {
            host: ep.host.clone(),
            reason,
        };
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad("an upload response without a Location header".into()))?;
        upload_url(resp.url(), loc, None).map_err(bad)
    }

    /// A request with a body to an upload URL. Our credentials go only to the registry's own
    /// host; a session elsewhere (a storage redirect) gets none. Not retried here: a body the
    /// registry partly took cannot simply be sent again, so the caller restarts the session.
    #[allow(clippy::too_many_arguments)]
    async fn send_body(
        &self,
        ep: &Endpoint,
        repo: &str,
        scope: &str,
        method: Method,
        url: &reqwest::Url,
        headers: HeaderMap,
        make: &(dyn Fn() -> Result<reqwest::Body, RegistryError> + Send + Sync),
    ) -> Result<Sent, RegistryError> {
        let same_host = same_host(url, &ep.host);
        self.send_request(
            ep,
            repo,
            Request {
                method,
                url: url.to_string(),
                headers,
                scope: scope.to_string(),
                body: Some(make),
                attempts: 1,
                authorize: same_host,
            },
        )
        .await
        .map_err(push_auth_error)
    }

    async fn upload_error(
        &self,
        ep: &Endpoint,
        repo: &str,
        blob: &PushBlob,
        resp: reqwest::Response,
    ) -> RegistryError {
        let status = resp.status().as_u16();
        if status == 416 {
            return RegistryError::UnexpectedStatus {
                host: ep.host.clone(),
                reference: format!("{} in {}/{repo}", blob.digest, ep.host),
                status,
            };
        }
        rejected(ep, repo, format!("blob {}", blob.digest), resp).await
    }

    /// PUTs a manifest under `reference` (a tag or its digest) and checks the digest the
    /// registry reports.
    async fn push_manifest(
        &self,
        ep: &Endpoint,
        repo: &str,
        scope: &str,
        reference: &str,
        m: &PushManifest,
    ) -> Result<Digest, RegistryError> {
        let url = ep.url(repo, &format!("manifests/{reference}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&m.media_type).map_err(|_| {
                RegistryError::InvalidRequest(format!("bad media type {:?}", m.media_type))
            })?,
        );
        let bytes = m.bytes.clone();
        let make = move || Ok(reqwest::Body::from(bytes.clone()));
        let Sent { resp, permit } = self
            .send_request(
                ep,
                repo,
                Request {
                    method: Method::PUT,
                    url,
                    headers,
                    scope: scope.to_string(),
                    body: Some(&make),
                    attempts: MAX_ATTEMPTS,
                    authorize: true,
                },
            )
            .await
            .map_err(push_auth_error)?;
        let shown = format!("{}/{repo}:{reference}", ep.host);
        match resp.status() {
            StatusCode::CREATED | StatusCode::OK | StatusCode::ACCEPTED => {}
            _ => {
                let e = rejected(ep, repo, format!("manifest {}", m.digest), resp).await;
                drop(permit);
                return Err(e);
            }
        }
        let header = resp
            .headers()
            .get("docker-content-digest")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty());
        drop(resp);
        drop(permit);
        if let Some(h) = header {
            if super::check_header_digest(&h, &m.bytes, &m.digest).is_err() {
                return Err(RegistryError::HeaderDigestMismatch {
                    reference: shown,
                    header: h.chars().take(200).collect(),
                    actual: m.digest.clone(),
                });
            }
        }
        tracing::debug!(manifest = %shown, digest = %m.digest, "manifest pushed");
        Ok(m.digest.clone())
    }
}

/// Whether `url` points at `host` (`name[:port]`, the port defaulting to the URL scheme's).
fn same_host(url: &reqwest::Url, host: &str) -> bool {
    let (Some(name), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let theirs = format!("{name}:{port}");
    let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (!h.contains(':') || h.ends_with(']'))
    });
    let ours = if has_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    theirs.eq_ignore_ascii_case(&ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_target_and_mount_sources_once() {
        let a = "lib/a".to_string();
        let b = "lib/b".to_string();
        let me = "me/app".to_string();
        assert_eq!(
            push_scope("me/app", [&a, &b, &a, &me]),
            "repository:me/app:pull,push repository:lib/a:pull repository:lib/b:pull"
        );
        assert_eq!(push_scope("x", []), "repository:x:pull,push");
    }

    #[test]
    fn upload_locations_relative_and_absolute() {
        let base = reqwest::Url::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/").unwrap();
        let d = Digest::of(b"x");
        let u = upload_url(&base, "/v2/a/blobs/uploads/123?_state=s", Some(&d)).unwrap();
        assert_eq!(
            u.as_str(),
            format!(
                "http://127.0.0.1:5000/v2/a/blobs/uploads/123?_state=s&digest=sha256%3A{}",
                d.hex()
            )
        );
        let u = upload_url(&base, "https://other:443/up/1", None).unwrap();
        assert_eq!(u.as_str(), "https://other/up/1");
        let u = upload_url(&base, "456", None).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:5000/v2/a/blobs/uploads/456");
        assert!(upload_url(&base, "file:///etc/passwd", None).is_err());
    }

    #[test]
    fn credentials_only_go_to_the_registry_host() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(same_host(
            &u("http://127.0.0.1:5000/v2/x"),
            "127.0.0.1:5000"
        ));
        assert!(!same_host(
            &u("http://127.0.0.1:5001/v2/x"),
            "127.0.0.1:5000"
        ));
        assert!(same_host(
            &u("https://Registry.example.com/up"),
            "registry.example.com"
        ));
        assert!(same_host(
            &u("https://registry.example.com:443/up"),
            "registry.example.com"
        ));
        assert!(!same_host(
            &u("https://storage.example.com/up"),
            "registry.example.com"
        ));
        assert!(same_host(&u("http://[::1]:5000/v2/x"), "[::1]:5000"));
    }

    #[test]
    fn only_transient_failures_restart_an_upload() {
        assert!(restartable(&RegistryError::Unavailable {
            host: "h".into(),
            reason: "r".into()
        }));
        assert!(restartable(&RegistryError::UnexpectedStatus {
            host: "h".into(),
            reference: "r".into(),
            status: 416
        }));
        assert!(!restartable(&RegistryError::AuthFailed {
            host: "h".into(),
            repository: "r".into()
        }));
    }
}
