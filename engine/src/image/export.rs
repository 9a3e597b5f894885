//! Image assembly: containers (a platform, a config, a rootfs snapshot) into image blobs in the
//! content store — layers, configs, manifests and, for several platforms, an index — ready to
//! push or to write into a tarball.
//!
//! A rootfs snapshot's layers are its parent chain, one layer per snapshot (every snapshot is
//! one commit of changes on its parent: a pulled layer, an exec, a filesystem operation). Each
//! layer blob is recorded per (snapshot, compression) in metadata, so a snapshot is compressed
//! once; a pulled layer is reused as pulled when the compression matches, and recompressed from
//! its original blob (same diff id) when it does not.

use super::{ImageConfig, ImageError, ImageService};
use crate::archive::diff::{write_layer, DiffSource};
use crate::archive::{self, ArchiveError};
use crate::content::ContentError;
use crate::metadata::LayerBlobRecord;
use crate::oci::{Digest, Hasher, Platform};
use crate::snapshot::{SnapshotId, SnapshotKind};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// How layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerCompression {
    Gzip,
    Zstd,
    Uncompressed,
}

impl LayerCompression {
    /// The name recorded in metadata.
    pub fn name(self) -> &'static str {
        match self {
            LayerCompression::Gzip => "gzip",
            LayerCompression::Zstd => "zstd",
            LayerCompression::Uncompressed => "none",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "gzip" => Some(LayerCompression::Gzip),
            "zstd" => Some(LayerCompression::Zstd),
            "none" => Some(LayerCompression::Uncompressed),
            _ => None,
        }
    }

    /// From a layer's first bytes.
    pub fn detect(first_bytes: &[u8]) -> Self {
        match archive::detect_compression(first_bytes) {
            archive::Compression::Gzip => LayerCompression::Gzip,
            archive::Compression::Zstd => LayerCompression::Zstd,
            archive::Compression::None => LayerCompression::Uncompressed,
        }
    }

    /// The layer media type in the given flavour. Docker has no zstd type of its own; like
    /// BuildKit and containerd, `...rootfs.diff.tar.zstd` is used.
    pub fn media_type(self, media: ImageMediaTypes) -> &'static str {
        match (media, self) {
            (ImageMediaTypes::Oci, LayerCompression::Gzip) => {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            }
            (ImageMediaTypes::Oci, LayerCompression::Zstd) => {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            }
            (ImageMediaTypes::Oci, LayerCompression::Uncompressed) => {
                "application/vnd.oci.image.layer.v1.tar"
            }
            (ImageMediaTypes::Docker, LayerCompression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            (ImageMediaTypes::Docker, LayerCompression::Zstd) => {
                "application/vnd.docker.image.rootfs.diff.tar.zstd"
            }
            (ImageMediaTypes::Docker, LayerCompression::Uncompressed) => {
                "application/vnd.docker.image.rootfs.diff.tar"
            }
        }
    }
}

/// Which family of media types the manifests, configs and layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImageMediaTypes {
    #[default]
    Oci,
    Docker,
}

/// One platform variant of an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub platform: Platform,
    pub config: ImageConfig,
    pub rootfs: Option<SnapshotId>,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobRef {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// An assembled image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// What a tag points at: one manifest, or an index when several platform variants were given.
    pub root: BlobRef,
    /// Every blob, all committed in the content store, in push order: layers, configs,
    /// manifests, index last.
    pub blobs: Vec<BlobRef>,
    /// Per layer digest: repositories ("host/repo") it was pulled from, for cross-repository
    /// mounts (may be empty).
    pub layer_sources: HashMap<Digest, Vec<String>>,
    /// Per manifest (in `variants` order): its descriptor and platform.
    pub manifests: Vec<(BlobRef, Platform)>,
    /// Keeps every blob above from the garbage collector while this value (or a clone) lives.
    _hold: BlobHold,
}

/// A lease on an image's blobs, released when the last clone is dropped.
#[derive(Clone)]
struct BlobHold(std::sync::Arc<super::PullLease>);

impl std::fmt::Debug for BlobHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobHold")
    }
}

impl BlobHold {
    fn blob(&self, d: &Digest) -> Result<(), ImageError> {
        self.0
            .hold(&[(crate::metadata::ResourceKind::Blob, d.to_string())])
    }
}

#[derive(Serialize)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformJson<'a>>,
}

#[derive(Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct IndexJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: ContainerConfigJson<'a>,
    rootfs: RootfsJson,
    history: Vec<HistoryJson>,
}

#[derive(Serialize)]
struct ContainerConfigJson<'a> {
    #[serde(rename = "Env", skip_serializing_if = "<[_]>::is_empty")]
    env: &'a [String],
    #[serde(rename = "Entrypoint", skip_serializing_if = "<[_]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(rename = "Cmd", skip_serializing_if = "<[_]>::is_empty")]
    cmd: &'a [String],
    #[serde(rename = "WorkingDir", skip_serializing_if = "str::is_empty")]
    workdir: &'a str,
    #[serde(rename = "User", skip_serializing_if = "str::is_empty")]
    user: &'a str,
    #[serde(rename = "Labels", skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(rename = "ExposedPorts", skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<&'a str, serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize)]
struct RootfsJson {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct HistoryJson {
    created_by: String,
    comment: &'static str,
}

/// The image config JSON for `spec` with these layers' diff ids. Deterministic: no timestamps.
pub fn config_json(spec: &ImageSpec, diff_ids: &[Digest], descriptions: &[String]) -> Vec<u8> {
    let c = &spec.config;
    let json = ConfigJson {
        architecture: &spec.platform.architecture,
        os: &spec.platform.os,
        variant: spec.platform.variant.as_deref(),
        config: ContainerConfigJson {
            env: &c.env,
            entrypoint: &c.entrypoint,
            cmd: &c.cmd,
            workdir: &c.workdir,
            user: &c.user,
            labels: &c.labels,
            exposed_ports: c
                .exposed_ports
                .iter()
                .map(|p| (p.as_str(), serde_json::Map::new()))
                .collect(),
        },
        rootfs: RootfsJson {
            kind: "layers",
            diff_ids: diff_ids.iter().map(|d| d.to_string()).collect(),
        },
        history: descriptions
            .iter()
            .map(|d| HistoryJson {
                created_by: d.clone(),
                comment: "dagger-engine",
            })
            .collect(),
    };
    serde_json::to_vec(&json).expect("config serializes")
}

fn platform_json(p: &Platform) -> PlatformJson<'_> {
    PlatformJson {
        architecture: &p.architecture,
        os: &p.os,
        variant: p.variant.as_deref(),
    }
}

impl ImageService {
    /// Assembles the image of `variants` (one manifest, or an index of several) with every
    /// blob committed in the content store.
    ///
    /// `compression`: `None` keeps layers as they already are (pulled layers as pulled, new
    /// ones gzip); `Some` forces every layer into that compression.
    pub async fn build_image(
        &self,
        variants: &[ImageSpec],
        compression: Option<LayerCompression>,
        media: ImageMediaTypes,
    ) -> Result<BuiltImage, ImageError> {
        if variants.is_empty() {
            return Err(ImageError::Internal("no platform variants to build".into()));
        }
        let mut seen_platforms = HashSet::new();
        for v in variants {
            if !seen_platforms.insert(v.platform.to_string()) {
                return Err(ImageError::Invalid {
                    reference: "platformVariants".into(),
                    message: format!("platform {} is given more than once", v.platform),
                });
            }
        }
        let (manifest_type, config_type, index_type) = match media {
            ImageMediaTypes::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_INDEX),
            ImageMediaTypes::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_INDEX),
        };
        let mut blobs: Vec<BlobRef> = Vec::new();
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut configs = Vec::new();
        let mut manifests: Vec<(BlobRef, Platform)> = Vec::new();
        let mut layer_sources = HashMap::new();
        let mut pins = Vec::new();
        let hold = BlobHold(std::sync::Arc::new(super::PullLease::new(
            &self.inner.meta,
        )?));
        for spec in variants {
            let chain = self.layer_chain(spec.rootfs.as_ref(), &mut pins).await?;
            let mut layers = Vec::with_capacity(chain.len());
            for snap in &chain {
                let this = self.clone();
                let snap = snap.clone();
                let h = hold.clone();
                let rec =
                    tokio::task::spawn_blocking(move || this.layer_blob(&snap, compression, &h))
                        .await
                        .map_err(|e| ImageError::Internal(e.to_string()))??;
                layers.push(rec);
            }
            let mut layer_refs = Vec::new();
            for l in &layers {
                let c = LayerCompression::from_name(&l.compression).ok_or_else(|| {
                    ImageError::Internal(format!("unknown layer compression {}", l.compression))
                })?;
                let r = BlobRef {
                    media_type: c.media_type(media).to_string(),
                    digest: l.digest.clone(),
                    size: l.size,
                };
                if seen.insert(r.digest.clone()) {
                    blobs.push(r.clone());
                    let meta = self.inner.meta.clone();
                    let d = r.digest.clone();
                    let sources = meta.run(move |m| m.layer_sources(&d)).await?;
                    if !sources.is_empty() {
                        layer_sources.insert(r.digest.clone(), sources);
                    }
                }
                layer_refs.push(r);
            }
            let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
            let descriptions: Vec<String> = layers
                .iter()
                .map(|l| match &l.source {
                    Some(repo) => format!("layer pulled from {repo}"),
                    None => "layer built by dagger-engine".to_string(),
                })
                .collect();
            let config = config_json(spec, &diff_ids, &descriptions);
            let config_ref = BlobRef {
                media_type: config_type.to_string(),
                digest: Digest::of(&config),
                size: config.len() as u64,
            };
            hold.blob(&config_ref.digest)?;
            self.store_bytes(&config_ref.digest, config.into(), config_type)
                .await?;
            configs.push(config_ref.clone());
            let manifest = ManifestJson {
                schema_version: 2,
                media_type: manifest_type,
                config: Descriptor {
                    media_type: config_type,
                    digest: config_ref.digest.to_string(),
                    size: config_ref.size,
                    platform: None,
                },
                layers: layer_refs
                    .iter()
                    .map(|l| Descriptor {
                        media_type: &l.media_type,
                        digest: l.digest.to_string(),
                        size: l.size,
                        platform: None,
                    })
                    .collect(),
            };
            let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
            let mref = BlobRef {
                media_type: manifest_type.to_string(),
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
            };
            hold.blob(&mref.digest)?;
            self.store_bytes(&mref.digest, bytes.into(), manifest_type)
                .await?;
            manifests.push((mref, spec.platform.clone()));
        }
        for c in configs {
            if seen.insert(c.digest.clone()) {
                blobs.push(c);
            }
        }
        for (m, _) in &manifests {
            if seen.insert(m.digest.clone()) {
                blobs.push(m.clone());
            }
        }
        let root = if manifests.len() == 1 {
            manifests[0].0.clone()
        } else {
            let index = IndexJson {
                schema_version: 2,
                media_type: index_type,
                manifests: manifests
                    .iter()
                    .map(|(m, p)| Descriptor {
                        media_type: &m.media_type,
                        digest: m.digest.to_string(),
                        size: m.size,
                        platform: Some(platform_json(p)),
                    })
                    .collect(),
            };
            let bytes = serde_json::to_vec(&index).expect("index serializes");
            let iref = BlobRef {
                media_type: index_type.to_string(),
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
            };
            hold.blob(&iref.digest)?;
            self.store_bytes(&iref.digest, bytes.into(), index_type)
                .await?;
            blobs.push(iref.clone());
            iref
        };
        drop(pins);
        Ok(BuiltImage {
            root,
            blobs,
            layer_sources,
            manifests,
            _hold: hold,
        })
    }

    /// The snapshots from the bottom layer up to `top`, pinned (into `pins`) so the collector
    /// leaves them while the image is assembled.
    async fn layer_chain(
        &self,
        top: Option<&SnapshotId>,
        pins: &mut Vec<crate::snapshot::Pin>,
    ) -> Result<Vec<SnapshotId>, ImageError> {
        let mut chain = Vec::new();
        let mut next = top.cloned();
        while let Some(id) = next {
            pins.push(self.inner.snapshots.usage().pin(&id));
            let meta = self.inner.meta.clone();
            let lookup = id.clone();
            let row = meta
                .run(move |m| m.get_snapshot(&lookup))
                .await?
                .ok_or_else(|| crate::snapshot::SnapshotError::NotFound(id.clone()))?;
            next = row.parent;
            chain.push(id);
            if chain.len() > 10_000 {
                return Err(ImageError::Internal("snapshot chain too long".into()));
            }
        }
        chain.reverse();
        Ok(chain)
    }

    /// The layer blob of `snapshot` in `wanted` compression (any existing one for `None`),
    /// made and recorded if needed; `hold` keeps it from the collector. Blocking.
    fn layer_blob(
        &self,
        snapshot: &str,
        wanted: Option<LayerCompression>,
        hold: &BlobHold,
    ) -> Result<LayerBlobRecord, ImageError> {
        let meta = &self.inner.meta;
        let content = &self.inner.content;
        let rows = meta.layer_blobs(snapshot)?;
        // Leased first, then checked: a blob that passes stays.
        for r in &rows {
            hold.blob(&r.digest)?;
        }
        let mut rows: Vec<LayerBlobRecord> = rows
            .into_iter()
            .filter(|r| content.info(&r.digest) == Some(r.size))
            .collect();
        // Pulled blobs first (pushed as pulled, mountable across repositories), then gzip.
        rows.sort_by_key(|r| (r.source.is_none(), r.compression != "gzip"));
        let target = match wanted {
            // Any compressed blob there is (as Dagger: a mix of compressions is fine); an
            // uncompressed one only counts as a source for gzip.
            None => {
                if let Some(r) = rows.iter().find(|r| r.compression != "none") {
                    return Ok(r.clone());
                }
                LayerCompression::Gzip
            }
            Some(c) => {
                if let Some(r) = rows.iter().find(|r| r.compression == c.name()) {
                    return Ok(r.clone());
                }
                c
            }
        };
        let made = match rows.first() {
            // Same uncompressed bytes, so the diff id (and the chain) stays the pulled one.
            Some(src) => self.recompress(src, target, hold)?,
            None => self.make_layer(snapshot, target, hold)?,
        };
        meta.put_layer_blob(&made)?;
        Ok(made)
    }

    fn temp_path(&self) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .snapshots
            .tmp_dir()
            .join(format!("layer-{}-{n}", std::process::id()))
    }

    /// Writes a layer tar of `snapshot`'s own changes, compressed, into the content store.
    fn make_layer(
        &self,
        snapshot: &str,
        c: LayerCompression,
        hold: &BlobHold,
    ) -> Result<LayerBlobRecord, ImageError> {
        let snaps = &self.inner.snapshots;
        let row = self
            .inner
            .meta
            .get_snapshot(snapshot)?
            .ok_or_else(|| crate::snapshot::SnapshotError::NotFound(snapshot.to_string()))?;
        let fs_of = |id: &str| snaps.snapshots_dir().join(id).join("fs");
        let tree = fs_of(&row.id);
        let parent = row.parent.as_deref().map(fs_of);
        let source = match snaps.kind() {
            SnapshotKind::Overlay => DiffSource::Overlay { upper: &tree },
            SnapshotKind::Native => DiffSource::Native {
                tree: &tree,
                parent: parent.as_deref(),
            },
        };
        let tmp = TempFile(self.temp_path());
        let (diff_id, digest, size) = {
            let file = create_temp(&tmp.0)?;
            let mut sink = Compressor::new(file, c)?;
            let tar = HashWriter::new(&mut sink);
            let (tar, _) = write_layer(tar, source)?;
            let diff_id = tar.hasher.finish();
            let (digest, size) = sink.finish().map_err(io_archive("compress the layer"))?;
            (diff_id, digest, size)
        };
        hold.blob(&digest)?;
        self.commit_file(&tmp.0, &digest, size, c)?;
        tracing::debug!(snapshot, %digest, %diff_id, size, compression = c.name(), "layer made");
        Ok(LayerBlobRecord {
            snapshot: snapshot.to_string(),
            compression: c.name().to_string(),
            digest,
            size,
            diff_id,
            source: None,
        })
    }

    /// Another compression of an existing layer blob (same uncompressed bytes).
    fn recompress(
        &self,
        src: &LayerBlobRecord,
        c: LayerCompression,
        hold: &BlobHold,
    ) -> Result<LayerBlobRecord, ImageError> {
        let tmp = TempFile(self.temp_path());
        let (diff_id, digest, size) = {
            let blob = self.inner.content.open_blob(&src.digest)?;
            let mut reader = decompressor(io::BufReader::with_capacity(1 << 20, blob))
                .map_err(io_archive("read the layer blob"))?;
            let file = create_temp(&tmp.0)?;
            let mut sink = Compressor::new(file, c)?;
            let mut tar = HashWriter::new(&mut sink);
            io::copy(&mut reader, &mut tar).map_err(io_archive("recompress the layer"))?;
            let diff_id = tar.hasher.finish();
            let (digest, size) = sink.finish().map_err(io_archive("compress the layer"))?;
            (diff_id, digest, size)
        };
        if diff_id != src.diff_id {
            return Err(ImageError::Internal(format!(
                "layer blob {} uncompresses to {diff_id}, recorded as {}",
                src.digest, src.diff_id
            )));
        }
        hold.blob(&digest)?;
        self.commit_file(&tmp.0, &digest, size, c)?;
        Ok(LayerBlobRecord {
            snapshot: src.snapshot.clone(),
            compression: c.name().to_string(),
            digest,
            size,
            diff_id,
            source: None,
        })
    }

    /// Copies a finished temp file into the content store as `digest` (verified again by the
    /// ingest writer) and records the blob.
    fn commit_file(
        &self,
        path: &Path,
        digest: &Digest,
        size: u64,
        c: LayerCompression,
    ) -> Result<(), ImageError> {
        commit_path(&self.inner.content, path, digest, size)?;
        self.inner
            .meta
            .put_blob(digest, size, c.media_type(ImageMediaTypes::Oci))?;
        Ok(())
    }
}

/// Copies `path` into the content store as `digest`; a blob that is already there is fine.
pub(super) fn commit_path(
    content: &crate::content::ContentStore,
    path: &Path,
    digest: &Digest,
    size: u64,
) -> Result<(), ImageError> {
    let mut tries = 0;
    let mut w = loop {
        match content.writer(digest, size) {
            Ok(w) => break w,
            Err(ContentError::AlreadyExists { .. }) => return Ok(()),
            // Another build of the same layer is storing the same bytes.
            Err(ContentError::Busy { .. }) if tries < 6000 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    w.truncate()?;
    let mut f = std::fs::File::open(path).map_err(io_archive("reopen the layer"))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_archive("read the layer"))?;
        if n == 0 {
            break;
        }
        w.write_chunk(&buf[..n])?;
    }
    w.commit()?;
    Ok(())
}

fn io_archive(op: &'static str) -> impl Fn(io::Error) -> ImageError {
    move |source| {
        ImageError::Archive(ArchiveError::Io {
            op,
            path: String::new(),
            source,
        })
    }
}

fn create_temp(path: &Path) -> Result<std::fs::File, ImageError> {
    std::fs::File::create(path).map_err(io_archive("create a temporary layer file"))
}

/// Removes a temporary file when dropped.
pub(super) struct TempFile(pub(super) PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A decompressing reader chosen by the stream's magic bytes.
pub(super) fn decompressor<'a, R: io::BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?.to_vec();
    Ok(match LayerCompression::detect(&head) {
        LayerCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        LayerCompression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        LayerCompression::Uncompressed => Box::new(r),
    })
}

/// Hashes (and counts) what passes through.
pub(super) struct HashWriter<W> {
    inner: W,
    pub(super) hasher: Hasher,
    pub(super) count: u64,
}

impl<W> HashWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Hasher::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Out = HashWriter<io::BufWriter<std::fs::File>>;

/// Compresses into a file, hashing the compressed bytes. Deterministic: gzip without a name or
/// time in its header, zstd single-threaded.
enum Compressor {
    Gzip(flate2::write::GzEncoder<Out>),
    Zstd(zstd::stream::write::Encoder<'static, Out>),
    None(Out),
}

impl Compressor {
    fn new(file: std::fs::File, c: LayerCompression) -> Result<Self, ImageError> {
        let out = HashWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        Ok(match c {
            LayerCompression::Gzip => Compressor::Gzip(
                flate2::GzBuilder::new()
                    .operating_system(255)
                    .write(out, flate2::Compression::default()),
            ),
            LayerCompression::Zstd => Compressor::Zstd(
                zstd::stream::write::Encoder::new(out, 3).map_err(io_archive("start zstd"))?,
            ),
            LayerCompression::Uncompressed => Compressor::None(out),
        })
    }

    /// Ends the stream; returns the compressed digest and size.
    fn finish(self) -> io::Result<(Digest, u64)> {
        let out = match self {
            Compressor::Gzip(e) => e.finish()?,
            Compressor::Zstd(e) => e.finish()?,
            Compressor::None(o) => o,
        };
        let HashWriter {
            mut inner,
            hasher,
            count,
        } = out;
        inner.flush()?;
        inner.get_ref().sync_all()?;
        Ok((hasher.finish(), count))
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
            Compressor::None(o) => o.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
            Compressor::None(o) => o.flush(),
        }
    }
}

/// `docker load`'s view of one image in a tarball.
#[derive(Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

impl ImageService {
    /// Writes `built` as an OCI image layout tar (`oci-layout`, `index.json`, `blobs/...`)
    /// with a Docker `manifest.json` for the first manifest, so `docker load`, `podman load`
    /// and `skopeo copy oci-archive:` all accept it. `tag` (a full reference such as
    /// `registry/repo:tag`) names the image when given. Deterministic; blocking.
    pub fn write_image_tarball<W: Write>(
        &self,
        built: &BuiltImage,
        tag: Option<&str>,
        out: W,
    ) -> Result<W, ImageError> {
        use crate::archive::diff::{EntryKind, Header, TarWriter};
        let io_err = io_archive("write the image tarball");
        let mut tw = TarWriter::new(out);
        let file_header = |path: &str, size: u64| Header {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            xattrs: Vec::new(),
        };
        let add_bytes = |tw: &mut TarWriter<W>, path: &str, bytes: &[u8]| {
            tw.append(
                &file_header(path, bytes.len() as u64),
                Some(&mut &bytes[..]),
            )
        };
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add_bytes(&mut tw, "oci-layout", layout).map_err(&io_err)?;
        for dir in ["blobs", "blobs/sha256"] {
            let h = Header {
                kind: EntryKind::Dir,
                mode: 0o755,
                ..file_header(dir, 0)
            };
            tw.append(&h, None).map_err(&io_err)?;
        }
        let mut written = HashSet::new();
        for b in &built.blobs {
            if !written.insert(b.digest.clone()) {
                continue;
            }
            let mut f = self.inner.content.open_blob(&b.digest)?;
            let size = f.metadata().map_err(&io_err)?.len();
            if size != b.size {
                return Err(ImageError::Internal(format!(
                    "blob {} is {size} bytes, expected {}",
                    b.digest, b.size
                )));
            }
            tw.append(&file_header(&blob_name(&b.digest), size), Some(&mut f))
                .map_err(&io_err)?;
        }
        // index.json: the root, named by the tag.
        let mut root = serde_json::json!({
            "mediaType": built.root.media_type,
            "digest": built.root.digest.to_string(),
            "size": built.root.size,
        });
        if let Some(tag) = tag {
            let short = tag.rsplit_once(':').filter(|(_, t)| !t.contains('/'));
            root["annotations"] = serde_json::json!({
                "io.containerd.image.name": tag,
                "org.opencontainers.image.ref.name": short.map(|(_, t)| t).unwrap_or(tag),
            });
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [root],
        });
        add_bytes(&mut tw, "index.json", index.to_string().as_bytes()).map_err(&io_err)?;
        // manifest.json: the first platform's image, for docker load.
        let (first, _) = built
            .manifests
            .first()
            .ok_or_else(|| ImageError::Internal("an image without manifests".into()))?;
        let raw = self.inner.content.read_blob(&first.digest, 4 << 20)?;
        let m: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| ImageError::Internal(format!("reading back manifest: {e}")))?;
        let digest_at = |v: &serde_json::Value| -> Result<Digest, ImageError> {
            v["digest"]
                .as_str()
                .and_then(|d| Digest::parse(d).ok())
                .ok_or_else(|| ImageError::Internal("manifest without digests".into()))
        };
        let entry = DockerManifestEntry {
            config: blob_name(&digest_at(&m["config"])?),
            repo_tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
            layers: m["layers"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| digest_at(l).map(|d| blob_name(&d)))
                        .collect()
                })
                .unwrap_or_else(|| Ok(Vec::new()))?,
        };
        let manifest_json = serde_json::to_vec(&[entry]).expect("serializes");
        add_bytes(&mut tw, "manifest.json", &manifest_json).map_err(&io_err)?;
        tw.finish().map_err(&io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        let mut config = ImageConfig {
            env: vec!["PATH=/bin".into(), "A=b".into()],
            entrypoint: vec!["/bin/sh".into()],
            workdir: "/srv".into(),
            exposed_ports: vec!["80/tcp".into(), "53/udp".into()],
            ..ImageConfig::default()
        };
        config.labels.insert("k".into(), "v".into());
        ImageSpec {
            platform: Platform::parse("linux/arm/v7").unwrap(),
            config,
            rootfs: None,
        }
    }

    #[test]
    fn config_json_is_complete_and_deterministic() {
        let d = Digest::of(b"layer");
        let a = config_json(&spec(), std::slice::from_ref(&d), &["x".into()]);
        assert_eq!(
            a,
            config_json(&spec(), std::slice::from_ref(&d), &["x".into()])
        );
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["architecture"], "arm");
        assert_eq!(v["variant"], "v7");
        assert_eq!(v["config"]["Env"], serde_json::json!(["PATH=/bin", "A=b"]));
        assert_eq!(v["config"]["WorkingDir"], "/srv");
        assert_eq!(
            v["config"]["ExposedPorts"],
            serde_json::json!({"53/udp": {}, "80/tcp": {}})
        );
        assert_eq!(v["config"]["Labels"]["k"], "v");
        assert!(v["config"].get("Cmd").is_none() && v.get("created").is_none());
        assert_eq!(v["rootfs"]["diff_ids"][0], d.to_string());
        assert_eq!(v["history"].as_array().unwrap().len(), 1);
        // It reads back as the same config.
        let back = ImageConfig::parse(&a).unwrap();
        assert_eq!(back.env, spec().config.env);
        assert_eq!(back.labels, spec().config.labels);
    }

    #[test]
    fn media_types_and_compression_names() {
        use LayerCompression::*;
        for c in [Gzip, Zstd, Uncompressed] {
            assert_eq!(LayerCompression::from_name(c.name()), Some(c));
        }
        assert_eq!(
            Zstd.media_type(ImageMediaTypes::Docker),
            "application/vnd.docker.image.rootfs.diff.tar.zstd"
        );
        assert_eq!(
            Uncompressed.media_type(ImageMediaTypes::Oci),
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(LayerCompression::detect(&[0x1f, 0x8b, 0x08, 0]), Gzip);
        assert_eq!(LayerCompression::detect(b"plain tar"), Uncompressed);
    }
}
