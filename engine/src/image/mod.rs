//! Image pulls: resolve the manifest for a platform, fetch the config and layers into the
//! content store (verified), apply layers in order into committed snapshots keyed by their OCI
//! chain id, and record the image. Concurrent pulls of the same image share one flight, and
//! concurrent downloads of the same blob share one download.

mod config;
mod export;
mod import;
mod push;
mod stream;

pub use config::ImageConfig;
pub use export::{
    BlobRef, BuiltImage, ImageMediaTypes, ImageSpec, LayerCompression, DOCKER_CONFIG, DOCKER_INDEX,
    DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};

use crate::archive::{self, ApplyOptions};
use crate::content::{ContentError, ContentStore};
use crate::error::{Classify, ErrorKind};
use crate::metadata::{Metadata, ResourceKind};
use crate::oci::{Digest, Platform, Reference};
use crate::registry::{Credentials, RegistryClient, RegistryError};
use crate::snapshot::{SnapshotError, SnapshotId, Snapshotter};
use crate::util::Singleflight;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Cap on an image config blob; configs are small JSON documents.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error("image {reference}: {message}")]
    Invalid { reference: String, message: String },
    #[error("image {reference}: layer {index} ({digest}) unpacks to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        reference: String,
        index: usize,
        digest: Digest,
        expected: String,
        actual: Digest,
    },
    /// An error from a flight this caller joined.
    #[error("{0}")]
    Shared(Arc<ImageError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for ImageError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Registry(e) => e.kind(),
            ImageError::Content(e) => e.kind(),
            ImageError::Snapshot(e) => e.kind(),
            ImageError::Archive(e) => e.kind(),
            ImageError::Metadata(e) => e.kind(),
            ImageError::Invalid { .. } | ImageError::DiffIdMismatch { .. } => {
                ErrorKind::InvalidArgument
            }
            ImageError::Shared(e) => e.kind(),
            ImageError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// A pulled image: ready to use as a container's root filesystem.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference as asked for, pinned to the manifest digest.
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub platform: Platform,
    pub config: ImageConfig,
    /// The snapshot of the top layer; `None` for an image without layers.
    pub rootfs: Option<SnapshotId>,
}

type PullResult = Result<Arc<Image>, Arc<ImageError>>;

/// Cheap to clone; clones share flights.
#[derive(Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

struct Inner {
    registry: RegistryClient,
    content: ContentStore,
    meta: Metadata,
    snapshots: Snapshotter,
    /// By reference, platform and the fingerprint of the caller's credentials: a pull made
    /// with credentials is never joined by one without them (or with others).
    pulls: Singleflight<(String, String, String), PullResult>,
    downloads: Singleflight<Digest, Result<(), Arc<ImageError>>>,
}

impl ImageService {
    pub fn new(
        registry: RegistryClient,
        content: ContentStore,
        meta: Metadata,
        snapshots: Snapshotter,
    ) -> Self {
        ImageService {
            inner: Arc::new(Inner {
                registry,
                content,
                meta,
                snapshots,
                pulls: Singleflight::new(),
                downloads: Singleflight::new(),
            }),
        }
    }

    pub fn snapshotter(&self) -> &Snapshotter {
        &self.inner.snapshots
    }

    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// Pulls `reference` for `platform` with the engine's own credentials only, sharing the
    /// work with concurrent identical pulls.
    pub async fn pull(&self, reference: &Reference, platform: &Platform) -> PullResult {
        self.pull_with_auth(reference, platform, &Credentials::none())
            .await
    }

    /// Pulls `reference` for `platform` with `auth` (a request's `withRegistryAuth`) taking
    /// precedence over the engine's credentials. Only concurrent pulls with the same
    /// credentials share the work.
    pub async fn pull_with_auth(
        &self,
        reference: &Reference,
        platform: &Platform,
        auth: &Credentials,
    ) -> PullResult {
        let key = (
            reference.to_string(),
            platform.to_string(),
            auth.fingerprint(),
        );
        self.inner
            .pulls
            .run(key, || async {
                let registry = self.inner.registry.with_credentials(auth);
                self.pull_uncached(&registry, reference, platform)
                    .await
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .await
    }

    async fn pull_uncached(
        &self,
        registry: &RegistryClient,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Image, ImageError> {
        let started = std::time::Instant::now();
        let since = move || started.elapsed().as_millis() as u64;
        let lease = PullLease::new(&self.inner.meta)?;
        let resolved = registry.resolve(reference, platform).await?;
        let resolve_ms = since();
        let name = reference.to_string();
        let invalid = |message: String| ImageError::Invalid {
            reference: name.clone(),
            message,
        };

        let (config_digest, config_size) = resolved.config.clone();
        let mut held = vec![(ResourceKind::Blob, config_digest.to_string())];
        held.extend(
            resolved
                .parsed
                .layers()
                .iter()
                .map(|l| (ResourceKind::Blob, l.digest().to_string())),
        );
        held.extend(
            resolved
                .index
                .iter()
                .chain(std::iter::once(&resolved.manifest))
                .map(|m| (ResourceKind::Blob, m.digest.to_string())),
        );
        lease.hold(&held)?;
        self.ensure_blob(
            registry,
            reference,
            &config_digest,
            config_size,
            CONFIG_MEDIA_TYPE,
            None,
        )
        .await?;
        let raw_config = {
            let content = self.inner.content.clone();
            let d = config_digest.clone();
            tokio::task::spawn_blocking(move || content.read_blob(&d, MAX_CONFIG_BYTES))
                .await
                .map_err(|e| ImageError::Internal(e.to_string()))??
        };
        let config = ImageConfig::parse(&raw_config).map_err(invalid)?;
        let config_ms = since();

        let layers: Vec<(String, u64, String)> = resolved
            .parsed
            .layers()
            .iter()
            .map(|l| (l.digest().to_string(), l.size(), l.media_type().to_string()))
            .collect();
        if layers.len() != config.diff_ids.len() {
            return Err(invalid(format!(
                "the manifest has {} layers but the config lists {} diff_ids",
                layers.len(),
                config.diff_ids.len()
            )));
        }
        let diff_ids: Vec<Digest> = config
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d).map_err(|e| invalid(e.to_string())))
            .collect::<Result<_, _>>()?;
        let chain_ids = chain_ids(&diff_ids);

        // Reuse the longest prefix of layers that is already unpacked.
        let mut have = 0;
        let mut parent: Option<SnapshotId> = None;
        for (i, chain) in chain_ids.iter().enumerate().rev() {
            if let Some(id) = self.inner.snapshots.by_chain_id(chain)? {
                lease.hold(&[(ResourceKind::Snapshot, id.clone())])?;
                // Leased first, then checked: the collector may have taken it meanwhile.
                if self.inner.snapshots.claim(&id)? {
                    have = i + 1;
                    parent = Some(id);
                    break;
                }
            }
        }

        // Download every missing layer in parallel (the registry client bounds connections per
        // host) and apply each, in order. A layer whose turn comes while it is still
        // downloading from byte 0 unpacks as its bytes arrive (see `stream`); one that already
        // downloaded (or resumed an earlier download) unpacks from the content store. Either way
        // decompression runs on a second thread, and later layers keep downloading meanwhile.
        let mut downloads = Vec::new();
        for (digest, size, media_type) in &layers[have..] {
            let digest = Digest::parse(digest).map_err(|e| invalid(e.to_string()))?;
            downloads.push((digest, *size, media_type.clone(), stream::Tap::new()));
        }
        // An abandoned pull stops its appliers at their next read.
        let _abandon = AbandonTaps(downloads.iter().map(|d| d.3.clone()).collect());
        let mut fetches: std::collections::VecDeque<_> = downloads
            .iter()
            .map(|(digest, size, media_type, tap)| {
                let (svc, registry, reference, digest, size, media_type, tap) = (
                    self.clone(),
                    registry.clone(),
                    reference.clone(),
                    digest.clone(),
                    *size,
                    media_type.clone(),
                    tap.clone(),
                );
                // The download reports progress to the session that asked for the pull.
                let reporter = crate::progress::current();
                AbortOnDrop(tokio::spawn(crate::progress::scope(reporter, async move {
                    let _close = CloseTap(tap.clone());
                    let start = since();
                    svc.ensure_blob(&registry, &reference, &digest, size, &media_type, Some(tap))
                        .await
                        .map(|()| (start, since()))
                })))
            })
            .collect();

        for (offset, (blob, size, _, tap)) in downloads.iter().enumerate() {
            let index = have + offset;
            let turn = since();
            let mut fetch = fetches
                .pop_front()
                .ok_or_else(|| ImageError::Internal("a layer download went missing".into()))?;
            let reader = match tap.source_ready().await {
                stream::TapSource::Streaming => tap.attach(),
                _ => None,
            };
            let streaming = reader.is_some();
            let mut download = None;
            if !streaming {
                download = Some(
                    (&mut fetch.0)
                        .await
                        .map_err(|e| ImageError::Internal(e.to_string()))?,
                );
                if let Some(Err(e)) = download {
                    return Err(e);
                }
            }
            let apply_start = since();
            let active = self.inner.snapshots.prepare(parent.as_ref())?;
            let opts = ApplyOptions {
                whiteouts: active.whiteout_mode(),
                ..ApplyOptions::default()
            };
            let content = self.inner.content.clone();
            let blob_for_task = blob.clone();
            // The snapshot goes into the task and comes back with the result, so that it is
            // removed (when not committed) only after the task stopped writing into it.
            let apply = tokio::task::spawn_blocking(move || {
                let fs = active.fs();
                let result = match reader {
                    Some(reader) => {
                        stream::apply_pipelined(&fs, reader, &opts).map_err(ImageError::from)
                    }
                    None => content
                        .open_blob(&blob_for_task)
                        .map_err(ImageError::from)
                        .and_then(|file| {
                            let file = std::io::BufReader::with_capacity(1 << 20, file);
                            stream::apply_pipelined(&fs, file, &opts).map_err(ImageError::from)
                        }),
                };
                (active, result)
            });
            let applied = apply.await;
            if download.is_none() {
                // Streaming: the download's own error (a digest mismatch, say) explains a failed
                // apply better than the read error the applier saw.
                let done = (&mut fetch.0)
                    .await
                    .map_err(|e| ImageError::Internal(e.to_string()))?;
                download = Some(Ok(done?));
            }
            let (download_start, download_end) = match download {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e),
                None => (0, 0),
            };
            let (active, applied) = applied.map_err(|e| ImageError::Internal(e.to_string()))?;
            let (applied, stats) = applied?;
            let apply_end = since();
            if applied.diff_id != diff_ids[index] {
                return Err(ImageError::DiffIdMismatch {
                    reference: name.clone(),
                    index,
                    digest: blob.clone(),
                    expected: diff_ids[index].to_string(),
                    actual: applied.diff_id,
                });
            }
            let id = self.inner.snapshots.commit(
                active,
                Some(&chain_ids[index]),
                Some(&diff_ids[index]),
                applied.uncompressed_size,
            )?;
            lease.hold(&[(ResourceKind::Snapshot, id.clone())])?;
            // The pulled blob is this snapshot's layer as pulled: exports and pushes reuse it.
            self.record_pulled_layer(&id, blob, *size, &diff_ids[index], reference)
                .await;
            tracing::debug!(
                index,
                digest = %blob,
                mode = if streaming { "stream" } else { "file" },
                compressed_bytes = *size,
                uncompressed_bytes = applied.uncompressed_size,
                entries = applied.entries,
                download_start_ms = download_start,
                download_end_ms = download_end,
                apply_start_ms = apply_start,
                apply_end_ms = apply_end,
                apply_ms = apply_end - apply_start,
                wait_ms = (apply_start - turn) + stats.source_wait.as_millis() as u64,
                decode_ms = stats.decode.as_millis() as u64,
                write_ms = stats.write.as_millis() as u64,
                commit_ms = since() - apply_end,
                "layer timing"
            );
            parent = Some(id);
        }

        let layers_ms = since();
        // Keep the manifests too: the image record points at them, and export and push need
        // the exact bytes.
        for m in resolved
            .index
            .iter()
            .chain(std::iter::once(&resolved.manifest))
        {
            self.store_bytes(&m.digest, m.bytes.clone(), &m.media_type)
                .await?;
        }
        let pinned = reference.with_digest(resolved.manifest.digest.clone());
        self.inner.meta.put_image(
            &reference.to_string(),
            &platform.to_string(),
            &resolved.manifest.digest,
            &config_digest,
            resolved.index.as_ref().map(|i| &i.digest),
        )?;
        tracing::info!(
            image = %pinned,
            layers = layers.len(),
            reused = have,
            elapsed_ms = since(),
            resolve_ms,
            config_ms = config_ms - resolve_ms,
            layers_ms = layers_ms - config_ms,
            record_ms = since() - layers_ms,
            "pulled"
        );
        Ok(Image {
            reference: pinned,
            manifest_digest: resolved.manifest.digest.clone(),
            platform: platform.clone(),
            config,
            rootfs: parent,
        })
    }

    /// Records a pulled layer blob for its snapshot (compression by magic bytes: media types
    /// lie). Best effort: without the row, an export compresses the snapshot itself.
    async fn record_pulled_layer(
        &self,
        snapshot: &str,
        blob: &Digest,
        size: u64,
        diff_id: &Digest,
        reference: &Reference,
    ) {
        let content = self.inner.content.clone();
        let meta = self.inner.meta.clone();
        let rec = crate::metadata::LayerBlobRecord {
            snapshot: snapshot.to_string(),
            compression: String::new(),
            digest: blob.clone(),
            size,
            diff_id: diff_id.clone(),
            source: Some(reference.name()),
        };
        let done = tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
            let rec = crate::metadata::LayerBlobRecord {
                compression: stored_compression(&content, &rec.digest)?
                    .name()
                    .to_string(),
                ..rec
            };
            meta.put_layer_blob(&rec)?;
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("recording pulled layer {blob}: {e}"),
            Err(e) => tracing::warn!("recording pulled layer {blob}: {e}"),
        }
    }

    /// Stores bytes already verified against `digest` (a fetched manifest).
    async fn store_bytes(
        &self,
        digest: &Digest,
        bytes: bytes::Bytes,
        media_type: &str,
    ) -> Result<(), ImageError> {
        let size = bytes.len() as u64;
        let content = self.inner.content.clone();
        let d = digest.clone();
        let stored = tokio::task::spawn_blocking(move || -> Result<(), ContentError> {
            match content.writer(&d, bytes.len() as u64) {
                Ok(mut w) => {
                    w.truncate()?;
                    w.write_chunk(&bytes)?;
                    w.commit().map(|_| ())
                }
                Err(ContentError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| ImageError::Internal(e.to_string()))?;
        match stored {
            Ok(()) => Ok(self.inner.meta.put_blob(digest, size, media_type)?),
            // A concurrent pull of the same image is storing the same bytes and its row.
            Err(ContentError::Busy { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes sure a verified copy of `digest` is in the content store, downloading it (or
    /// resuming an earlier partial download) once however many callers ask at the same time.
    ///
    /// `tap`, when given, is fed the blob's bytes as they arrive if this call runs the download
    /// and the download starts at byte 0 (see `stream::Tap`).
    async fn ensure_blob(
        &self,
        registry: &RegistryClient,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        media_type: &str,
        tap: Option<Arc<stream::Tap>>,
    ) -> Result<(), ImageError> {
        if self.inner.content.info(digest).is_some() {
            return Ok(());
        }
        self.inner
            .downloads
            .run(digest.clone(), || async {
                self.download(registry, reference, digest, size, media_type, tap)
                    .await
                    .map_err(Arc::new)
            })
            .await
            .map_err(ImageError::Shared)
    }

    async fn download(
        &self,
        registry: &RegistryClient,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        media_type: &str,
        tap: Option<Arc<stream::Tap>>,
    ) -> Result<(), ImageError> {
        let mut writer = loop {
            match self.inner.content.writer(digest, size) {
                Ok(w) => break w,
                Err(ContentError::AlreadyExists { .. }) => return Ok(()),
                // Another engine process (or a just-cancelled flight) holds the ingest.
                Err(ContentError::Busy { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut stream = registry
            .fetch_blob(reference, digest, size, writer.offset())
            .await?;
        if stream.restarted {
            writer.truncate()?;
        }
        // Only a download from byte 0 can feed an applier; after a resume it reads the blob.
        let writer_offset = writer.offset();
        let tap = tap.filter(|_| writer.offset() == 0);
        if let Some(tap) = &tap {
            tap.start();
        }
        // Hand chunks to a blocking thread so disk writes never stall the async workers. The
        // blob is committed only after the last chunk (`None`): when the stream fails, the
        // writer is dropped instead, which keeps what was written for a later resume.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(16);
        let write_task = tokio::task::spawn_blocking(move || -> Result<u64, ContentError> {
            let feed = FeedTap(tap);
            let mut complete = false;
            while let Some(msg) = rx.blocking_recv() {
                let Some(chunk) = msg else {
                    complete = true;
                    break;
                };
                writer.write_chunk(&chunk)?;
                if let Some(tap) = &feed.0 {
                    tap.push(chunk);
                }
            }
            if !complete {
                return Err(ContentError::Io {
                    path: std::path::PathBuf::from(writer.digest().to_string()),
                    source: std::io::Error::other("the blob download stopped"),
                });
            }
            let started = std::time::Instant::now();
            let digest = writer.digest().clone();
            let committed = writer.commit();
            tracing::debug!(
                %digest,
                commit_ms = started.elapsed().as_millis() as u64,
                ok = committed.is_ok(),
                "blob commit timing"
            );
            if let Some(tap) = &feed.0 {
                tap.finish(committed.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
            committed
        });
        let hex = digest.hex();
        let mut op = crate::progress::start(
            &format!("pull {}:{}…", digest.algorithm(), &hex[..hex.len().min(12)]),
            None,
        );
        let mut received = writer_offset;
        let mut send_error = None;
        while let Some(chunk) = stream.next_chunk().await {
            match chunk {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    op.progress(received, Some(size));
                    if tx.send(Some(bytes)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    send_error = Some(e);
                    break;
                }
            }
        }
        if send_error.is_none() {
            let _ = tx.send(None).await;
        }
        drop(tx);
        let written = write_task.await;
        if let Some(e) = send_error {
            op.failed(&e.to_string());
            return Err(e.into());
        }
        let size = match written.map_err(|e| ImageError::Internal(e.to_string())) {
            Ok(Ok(size)) => size,
            Ok(Err(e)) => {
                op.failed(&e.to_string());
                return Err(e.into());
            }
            Err(e) => {
                op.failed(&e.to_string());
                return Err(e);
            }
        };
        op.progress(size, Some(size));
        op.done();
        self.inner.meta.put_blob(digest, size, media_type)?;
        Ok(())
    }
}

/// Keeps what a pull writes (blobs from before their first byte, snapshots as they are made)
/// from the garbage collector until the pull ends. Deleted on drop; after a crash it expires.
struct PullLease {
    meta: Metadata,
    id: String,
}

/// How long a pull's lease outlives a crash of the engine.
const PULL_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

impl PullLease {
    fn new(meta: &Metadata) -> Result<Self, ImageError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now();
        let stamp = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = format!("pull-{stamp:x}-{}-{n}", std::process::id());
        meta.create_lease(&id, Some(now + PULL_LEASE_TTL))?;
        Ok(PullLease {
            meta: meta.clone(),
            id,
        })
    }

    fn hold(&self, resources: &[(ResourceKind, String)]) -> Result<(), ImageError> {
        self.meta.with_tx(|tx| {
            for (kind, id) in resources {
                tx.add_resource(&self.id, *kind, id)?;
            }
            Ok::<_, crate::metadata::MetadataError>(())
        })?;
        Ok(())
    }
}

impl Drop for PullLease {
    fn drop(&mut self) {
        if let Err(e) = self.meta.delete_lease(&self.id) {
            tracing::warn!("releasing pull lease {}: {e}", self.id);
        }
    }
}

/// The download side of a tap: ends it with an error if the writer thread stops early.
struct FeedTap(Option<Arc<stream::Tap>>);

impl Drop for FeedTap {
    fn drop(&mut self) {
        if let Some(tap) = &self.0 {
            tap.finish(Err("the layer download failed".into()));
        }
    }
}

/// Closes a tap when its fetch task ends, however it ends.
struct CloseTap(Arc<stream::Tap>);

impl Drop for CloseTap {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Abandons a pull's taps when the pull ends (normally, with an error, or dropped).
struct AbandonTaps(Vec<Arc<stream::Tap>>);

impl Drop for AbandonTaps {
    fn drop(&mut self) {
        for tap in &self.0 {
            tap.abandon();
        }
    }
}

/// Aborts the task when a pull is abandoned, so its downloads do not run on unobserved. A
/// download that other pulls joined keeps going in their flight.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// OCI chain ids: `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
/// The compression of a layer blob in the content store, from its first bytes. Blocking.
pub(crate) fn stored_compression(
    content: &ContentStore,
    digest: &Digest,
) -> Result<LayerCompression, ImageError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(8);
    content
        .open_blob(digest)?
        .take(8)
        .read_to_end(&mut head)
        .map_err(|e| ImageError::Internal(format!("reading layer {digest}: {e}")))?;
    Ok(LayerCompression::detect(&head))
}

pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
    }
}
