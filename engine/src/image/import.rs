//! Image import: an OCI image layout tar (`oci-layout`, `index.json`, `blobs/sha256/...`) or a
//! `docker save` tar (`manifest.json`, legacy `<id>/layer.tar` paths included) into verified
//! blobs in the content store and layer snapshots, exactly as a pull would leave them.
//!
//! The tar is read in two passes and nothing in it is ever written to the filesystem by its
//! own name: pass one keeps the small JSON documents in memory (4 MiB cap each), pass two
//! streams the chosen image's blobs into the content store, whose writer verifies every
//! digest. Layers then unpack with the pull's code, into snapshots keyed by chain id.

use super::export::{commit_path, HashWriter, TempFile};
use super::{chain_ids, stream, ImageConfig, ImageError, ImageService, PullLease};
use crate::archive::ApplyOptions;
use crate::content::ContentError;
use crate::metadata::{LayerBlobRecord, ResourceKind};
use crate::oci::{Digest, Platform};
use crate::snapshot::SnapshotId;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};

/// Cap on a JSON document (index, manifest, config) read from the tar.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// Cap on the JSON documents kept from one tar, together.
const MAX_SMALL_TOTAL: u64 = 64 << 20;
/// Cap on the entries of an image tar.
const MAX_ENTRIES: u64 = 1_000_000;
/// Cap on an image's layers.
const MAX_LAYERS: usize = 1000;

/// What an import produced: the container's new config and root filesystem.
#[derive(Debug, Clone)]
pub struct Imported {
    pub config: ImageConfig,
    pub rootfs: Option<SnapshotId>,
    pub manifest_digest: Digest,
}

fn invalid(message: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        reference: "import".into(),
        message: message.into(),
    }
}

/// An entry name made comparable: no leading `./` or `/`, no empty or `.` components. `None`
/// for names with `..`: nothing may refer to them.
fn clean(name: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(name).ok()?;
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The content-store digest named by a layout path `blobs/<alg>/<hex>`.
fn blob_path_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

#[derive(Deserialize)]
struct DescriptorIn {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<PlatformIn>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct PlatformIn {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct IndexIn {
    #[serde(default)]
    manifests: Vec<DescriptorIn>,
}

#[derive(Deserialize)]
struct ManifestIn {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<DescriptorIn>,
    #[serde(default)]
    layers: Vec<DescriptorIn>,
    #[serde(default)]
    manifests: Option<Vec<DescriptorIn>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// Where a blob comes from in the tar.
#[derive(Debug, Clone)]
struct Wanted {
    path: String,
    /// Known for layout blobs; computed for legacy Docker layer paths.
    digest: Option<Digest>,
}

/// Pass one: entry sizes and the small documents.
struct Listing {
    sizes: HashMap<String, u64>,
    small: HashMap<String, Vec<u8>>,
}

fn list(file: &mut std::fs::File) -> Result<Listing, ImageError> {
    file.rewind().map_err(read_err)?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut sizes = HashMap::new();
    let mut small = HashMap::new();
    let mut kept = 0u64;
    let mut count = 0u64;
    for entry in archive.entries_with_seek().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(invalid(format!(
                "the tarball has more than {MAX_ENTRIES} entries"
            )));
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(name) = clean(&entry.path_bytes()) else {
            continue;
        };
        let size = entry.size();
        let keep = matches!(name.as_str(), "index.json" | "manifest.json" | "oci-layout")
            || (size <= MAX_JSON_BYTES && kept + size <= MAX_SMALL_TOTAL);
        if matches!(name.as_str(), "index.json" | "manifest.json") && size > MAX_JSON_BYTES {
            return Err(invalid(format!(
                "{name} is {size} bytes, more than the {MAX_JSON_BYTES} allowed"
            )));
        }
        if keep {
            let mut buf = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(MAX_JSON_BYTES + 1)
                .read_to_end(&mut buf)
                .map_err(tar_err)?;
            kept += buf.len() as u64;
            small.insert(name.clone(), buf);
        }
        sizes.insert(name, size);
    }
    Ok(Listing { sizes, small })
}

fn tar_err(e: io::Error) -> ImageError {
    invalid(format!("unreadable tarball: {e}"))
}

fn read_err(e: io::Error) -> ImageError {
    ImageError::Internal(format!("reading the tarball: {e}"))
}

fn platform_matches(p: &PlatformIn, want: &Platform) -> bool {
    let arch = Platform::parse(&format!("{}/{}", p.os, p.architecture))
        .map(|x| x.architecture)
        .unwrap_or_else(|_| p.architecture.clone());
    p.os == want.os
        && arch == want.architecture
        && match (&p.variant, &want.variant) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

fn parse_digest(d: &str) -> Result<Digest, ImageError> {
    Digest::parse(d).map_err(|e| invalid(e.to_string()))
}

impl Listing {
    /// A layout blob's bytes, verified against its digest.
    fn blob(&self, d: &DescriptorIn) -> Result<(Digest, Vec<u8>), ImageError> {
        let digest = parse_digest(&d.digest)?;
        let path = format!("blobs/{}/{}", digest.algorithm(), digest.hex());
        if d.size > MAX_JSON_BYTES {
            return Err(invalid(format!(
                "{} is {} bytes, more than the {MAX_JSON_BYTES} allowed for a manifest or config",
                d.digest, d.size
            )));
        }
        let bytes = self
            .small
            .get(&path)
            .ok_or_else(|| invalid(format!("blob {} is missing from the tarball", d.digest)))?;
        let actual = Digest::of(bytes);
        if actual != digest {
            return Err(invalid(format!(
                "blob {path} does not match its digest (it hashes to {actual})"
            )));
        }
        Ok((digest, bytes.clone()))
    }
}

/// The chosen image inside the tar.
struct Plan {
    manifest: Option<(Digest, Vec<u8>, String)>,
    config: (Digest, Vec<u8>),
    layers: Vec<(Wanted, u64)>,
}

fn plan(listing: &Listing, platform: &Platform, tag: &str) -> Result<Plan, ImageError> {
    if let Some(index) = listing.small.get("index.json") {
        return plan_oci(listing, index, platform, tag);
    }
    if let Some(m) = listing.small.get("manifest.json") {
        return plan_docker(listing, m, tag);
    }
    Err(invalid(
        "not an image tarball: it has neither index.json (OCI layout) nor manifest.json (docker save)",
    ))
}

fn plan_oci(
    listing: &Listing,
    index: &[u8],
    platform: &Platform,
    tag: &str,
) -> Result<Plan, ImageError> {
    let index: IndexIn =
        serde_json::from_slice(index).map_err(|e| invalid(format!("index.json: {e}")))?;
    let mut candidates: Vec<DescriptorIn> = index.manifests;
    if !tag.is_empty() {
        candidates.retain(|d| {
            d.annotations.iter().any(|(k, v)| {
                (k == "org.opencontainers.image.ref.name" || k == "io.containerd.image.name")
                    && (v == tag || v.ends_with(&format!(":{tag}")))
            })
        });
        if candidates.is_empty() {
            return Err(invalid(format!("no image tagged {tag:?} in the tarball")));
        }
    }
    // Descend through indexes until one manifest for the platform is left.
    for _depth in 0..4 {
        let with_platform: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| platform_matches(p, platform))
            })
            .map(|(i, _)| i)
            .collect();
        let pick = match (with_platform.first(), candidates.len()) {
            (Some(&i), _) => i,
            (None, 1) if candidates[0].platform.is_none() => 0,
            (None, 0) => return Err(invalid("the tarball's index lists no images")),
            _ => {
                return Err(invalid(format!(
                    "no image for platform {platform} in the tarball"
                )))
            }
        };
        let chosen = candidates.swap_remove(pick);
        let (digest, bytes) = listing.blob(&chosen)?;
        let m: ManifestIn = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
        if let Some(children) = m.manifests {
            candidates = children;
            continue;
        }
        let config = m
            .config
            .as_ref()
            .ok_or_else(|| invalid(format!("manifest {digest} has no config")))?;
        let config = listing.blob(config)?;
        if m.layers.len() > MAX_LAYERS {
            return Err(invalid(format!("more than {MAX_LAYERS} layers")));
        }
        let mut layers = Vec::new();
        for l in &m.layers {
            let d = parse_digest(&l.digest)?;
            let path = format!("blobs/{}/{}", d.algorithm(), d.hex());
            layers.push((
                Wanted {
                    path,
                    digest: Some(d),
                },
                l.size,
            ));
        }
        let media = if m.media_type.is_empty() {
            chosen.media_type.clone()
        } else {
            m.media_type.clone()
        };
        return Ok(Plan {
            manifest: Some((digest, bytes, media)),
            config,
            layers,
        });
    }
    Err(invalid("indexes nested too deeply in the tarball"))
}

fn plan_docker(listing: &Listing, manifest: &[u8], tag: &str) -> Result<Plan, ImageError> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(manifest).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let entry = if tag.is_empty() {
        entries.first()
    } else {
        entries.iter().find(|e| {
            e.repo_tags
                .iter()
                .flatten()
                .any(|t| t == tag || t.ends_with(&format!(":{tag}")))
        })
    }
    .ok_or_else(|| match tag {
        "" => invalid("manifest.json lists no images"),
        t => invalid(format!("no image tagged {t:?} in the tarball")),
    })?;
    let path_of = |p: &str| {
        clean(p.as_bytes())
            .ok_or_else(|| invalid(format!("manifest.json: path {p:?} leaves the tarball")))
    };
    let config_path = path_of(&entry.config)?;
    let config = listing
        .small
        .get(&config_path)
        .ok_or_else(|| invalid(format!("config {config_path} is missing from the tarball")))?;
    let config_digest = Digest::of(config);
    if let Some(expected) = blob_path_digest(&config_path) {
        if expected != config_digest {
            return Err(invalid(format!(
                "blob {config_path} does not match its digest (it hashes to {config_digest})"
            )));
        }
    }
    if entry.layers.len() > MAX_LAYERS {
        return Err(invalid(format!("more than {MAX_LAYERS} layers")));
    }
    let mut layers = Vec::new();
    for l in &entry.layers {
        let path = path_of(l)?;
        let size = *listing
            .sizes
            .get(&path)
            .ok_or_else(|| invalid(format!("layer {path} is missing from the tarball")))?;
        layers.push((
            Wanted {
                digest: blob_path_digest(&path),
                path,
            },
            size,
        ));
    }
    Ok(Plan {
        manifest: None,
        config: (config_digest, config.clone()),
        layers,
    })
}

impl ImageService {
    /// Imports the image for `platform` (or tagged `tag`) from the image tarball `file`.
    /// Blocking parts run on blocking threads.
    pub async fn import_tarball(
        &self,
        file: std::fs::File,
        platform: &Platform,
        tag: &str,
    ) -> Result<Imported, ImageError> {
        let lease = PullLease::new(&self.inner.meta)?;
        let (plan, digests, file) = {
            let this = self.clone();
            let platform = platform.clone();
            let tag = tag.to_string();
            let lease_ref = &lease;
            let (plan, file) = tokio::task::spawn_blocking(move || {
                let mut file = file;
                let listing = list(&mut file)?;
                Ok::<_, ImageError>((plan(&listing, &platform, &tag)?, file))
            })
            .await
            .map_err(|e| ImageError::Internal(e.to_string()))??;
            let mut held = vec![(ResourceKind::Blob, plan.config.0.to_string())];
            held.extend(
                plan.layers
                    .iter()
                    .filter_map(|(w, _)| w.digest.as_ref())
                    .map(|d| (ResourceKind::Blob, d.to_string())),
            );
            lease_ref.hold(&held)?;
            let layers = plan.layers.clone();
            let (digests, file) = tokio::task::spawn_blocking(move || {
                let mut file = file;
                let d = this.import_blobs(&mut file, &layers)?;
                Ok::<_, ImageError>((d, file))
            })
            .await
            .map_err(|e| ImageError::Internal(e.to_string()))??;
            (plan, digests, file)
        };
        drop(file);
        lease.hold(
            &digests
                .iter()
                .map(|d| (ResourceKind::Blob, d.to_string()))
                .collect::<Vec<_>>(),
        )?;
        let config = ImageConfig::parse(&plan.config.1).map_err(invalid)?;
        if config.diff_ids.len() != digests.len() {
            return Err(invalid(format!(
                "the manifest has {} layers but the config lists {} diff_ids",
                digests.len(),
                config.diff_ids.len()
            )));
        }
        let diff_ids: Vec<Digest> = config
            .diff_ids
            .iter()
            .map(|d| parse_digest(d))
            .collect::<Result<_, _>>()?;
        let chains = chain_ids(&diff_ids);
        let mut parent: Option<SnapshotId> = None;
        for (i, blob) in digests.iter().enumerate() {
            if let Some(id) = self.inner.snapshots.by_chain_id(&chains[i])? {
                lease.hold(&[(ResourceKind::Snapshot, id.clone())])?;
                if self.inner.snapshots.claim(&id)? {
                    self.record_imported_layer(&id, blob, &diff_ids[i]).await;
                    parent = Some(id);
                    continue;
                }
            }
            let active = self.inner.snapshots.prepare(parent.as_ref())?;
            let opts = ApplyOptions {
                whiteouts: active.whiteout_mode(),
                ..ApplyOptions::default()
            };
            let content = self.inner.content.clone();
            let b = blob.clone();
            let (active, applied) = tokio::task::spawn_blocking(move || {
                let fs = active.fs();
                let result = content
                    .open_blob(&b)
                    .map_err(ImageError::from)
                    .and_then(|f| {
                        let f = io::BufReader::with_capacity(1 << 20, f);
                        stream::apply_pipelined(&fs, f, &opts).map_err(ImageError::from)
                    });
                (active, result)
            })
            .await
            .map_err(|e| ImageError::Internal(e.to_string()))?;
            let (applied, _) = applied?;
            if applied.diff_id != diff_ids[i] {
                return Err(ImageError::DiffIdMismatch {
                    reference: "import".into(),
                    index: i,
                    digest: blob.clone(),
                    expected: diff_ids[i].to_string(),
                    actual: applied.diff_id,
                });
            }
            let id = self.inner.snapshots.commit(
                active,
                Some(&chains[i]),
                Some(&diff_ids[i]),
                applied.uncompressed_size,
            )?;
            lease.hold(&[(ResourceKind::Snapshot, id.clone())])?;
            self.record_imported_layer(&id, blob, &diff_ids[i]).await;
            parent = Some(id);
        }
        // Keep the config and manifest too, for a later export of the same image.
        let config_type = super::export::OCI_CONFIG;
        self.store_bytes(&plan.config.0, plan.config.1.clone().into(), config_type)
            .await?;
        let manifest_digest = match plan.manifest {
            Some((d, bytes, media)) => {
                self.store_bytes(&d, bytes.into(), &media).await?;
                d
            }
            None => plan.config.0.clone(),
        };
        Ok(Imported {
            config,
            rootfs: parent,
            manifest_digest,
        })
    }

    /// Records an imported layer blob for its snapshot, so an export reuses it. Best effort.
    async fn record_imported_layer(&self, snapshot: &str, blob: &Digest, diff_id: &Digest) {
        let content = self.inner.content.clone();
        let meta = self.inner.meta.clone();
        let (snapshot, blob, diff_id) = (snapshot.to_string(), blob.clone(), diff_id.clone());
        let done = tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
            let size = content
                .info(&blob)
                .ok_or_else(|| ImageError::Internal(format!("layer {blob} is gone")))?;
            let compression = super::stored_compression(&content, &blob)?;
            meta.put_blob(
                &blob,
                size,
                compression.media_type(super::ImageMediaTypes::Oci),
            )?;
            meta.put_layer_blob(&LayerBlobRecord {
                snapshot,
                compression: compression.name().to_string(),
                digest: blob,
                size,
                diff_id,
                source: None,
            })?;
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!("recording an imported layer: {e}");
        }
    }

    /// Pass two: streams the wanted blobs into the content store (verified); returns each
    /// layer's digest in order. Blocking.
    fn import_blobs(
        &self,
        file: &mut std::fs::File,
        layers: &[(Wanted, u64)],
    ) -> Result<Vec<Digest>, ImageError> {
        let content = &self.inner.content;
        let mut by_path: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut found: Vec<Option<Digest>> = vec![None; layers.len()];
        for (i, (w, _)) in layers.iter().enumerate() {
            match &w.digest {
                Some(d) if content.info(d).is_some() => found[i] = Some(d.clone()),
                _ => by_path.entry(w.path.as_str()).or_default().push(i),
            }
        }
        if !by_path.is_empty() {
            file.rewind().map_err(read_err)?;
            let mut archive = tar::Archive::new(io::BufReader::new(&mut *file));
            for entry in archive.entries_with_seek().map_err(tar_err)? {
                let mut entry = entry.map_err(tar_err)?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let Some(name) = clean(&entry.path_bytes()) else {
                    continue;
                };
                let Some(idx) = by_path.remove(name.as_str()) else {
                    continue;
                };
                let size = entry.size();
                let (expected, expected_size) = (&layers[idx[0]].0.digest, layers[idx[0]].1);
                let digest = match expected {
                    Some(d) => {
                        if size != expected_size {
                            return Err(invalid(format!(
                                "blob {name} is {size} bytes, but the manifest says {expected_size}"
                            )));
                        }
                        self.ingest(&mut entry, d, size).map_err(|e| match e {
                            ImageError::Content(ContentError::DigestMismatch {
                                actual, ..
                            }) => invalid(format!(
                                "blob {name} does not match its digest (it hashes to {actual})"
                            )),
                            other => other,
                        })?;
                        d.clone()
                    }
                    None => self.ingest_unknown(&mut entry, size)?,
                };
                for i in idx {
                    found[i] = Some(digest.clone());
                }
                if by_path.is_empty() {
                    break;
                }
            }
        }
        found
            .into_iter()
            .zip(layers)
            .map(|(d, (w, _))| {
                d.ok_or_else(|| invalid(format!("layer {} is missing from the tarball", w.path)))
            })
            .collect()
    }

    /// Writes `size` bytes from `r` as blob `digest` (verified on commit).
    fn ingest(&self, r: &mut impl Read, digest: &Digest, size: u64) -> Result<(), ImageError> {
        let mut w = match self.inner.content.writer(digest, size) {
            Ok(w) => w,
            Err(ContentError::AlreadyExists { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        w.truncate()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(tar_err)?;
            if n == 0 {
                break;
            }
            w.write_chunk(&buf[..n])?;
        }
        w.commit()?;
        Ok(())
    }

    /// A blob whose digest the tar does not give (a legacy `docker save` layer): hashed into
    /// a temporary file first, then stored.
    fn ingest_unknown(&self, r: &mut impl Read, size: u64) -> Result<Digest, ImageError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = TempFile(
            self.inner
                .snapshots
                .tmp_dir()
                .join(format!("import-{}-{n}", std::process::id())),
        );
        let file = std::fs::File::create(&tmp.0).map_err(read_err)?;
        let mut w = HashWriter::new(io::BufWriter::new(file));
        io::copy(r, &mut w).map_err(tar_err)?;
        w.flush().map_err(read_err)?;
        if w.count != size {
            return Err(invalid("a layer in the tarball is truncated"));
        }
        let digest = std::mem::take(&mut w.hasher).finish();
        drop(w);
        commit_path(&self.inner.content, &tmp.0, &digest, size)?;
        Ok(digest)
    }
}
