//! Containers as image tarballs and back: `Container.asTarball` (a file holding an OCI image
//! layout tar) and `Container.import` (a container from such a file, or a `docker save` tar).

use super::node::{ContainerNode, FileNode, ImageCompression, ImageMedia};
use super::{fs, ContainerValue, Result, SolveError, Solver, TreeRef};
use crate::image::{ImageMediaTypes, ImageSpec, LayerCompression};
use crate::oci::{Digest, Platform};
use serde::{Deserialize, Serialize};

/// The name of the file `asTarball` returns.
pub const TARBALL_NAME: &str = "container.tar";

#[derive(Serialize, Deserialize)]
struct CachedTarball {
    snapshot: Option<String>,
}

fn platform_of(v: &ContainerValue) -> Result<Platform> {
    Platform::parse(&v.platform).map_err(|e| SolveError::InvalidArgument(e.to_string()))
}

impl Solver {
    /// Evaluates `FileNode::AsTarball`: builds the image (layers cached per snapshot and
    /// compression) and writes the tar into a new snapshot, cached persistently by the
    /// content of the containers.
    pub(super) async fn as_tarball(
        &self,
        container: &ContainerNode,
        variants: &[ContainerNode],
        compression: Option<ImageCompression>,
        media: ImageMedia,
    ) -> Result<TreeRef> {
        let nodes: Vec<&ContainerNode> = std::iter::once(container).chain(variants).collect();
        let values =
            futures_util::future::try_join_all(nodes.iter().map(|n| self.container(n))).await?;
        let mut specs = Vec::new();
        let mut material = Vec::new();
        // As in Dagger, variants without a root filesystem are left out.
        for v in values.iter().filter(|v| v.rootfs.is_some()) {
            specs.push(ImageSpec {
                platform: platform_of(v)?,
                config: v.config.clone(),
                rootfs: v.rootfs.clone(),
            });
            material.push(serde_json::json!({
                "platform": v.platform,
                "rootfs": v.rootfs,
                "config": v.config,
            }));
        }
        if specs.is_empty() {
            return Err(SolveError::InvalidArgument(
                "nothing to export: the container has no root filesystem (start from an image or add files)"
                    .into(),
            ));
        }
        let key_material = serde_json::json!({
            "op": "tarball/v1",
            "variants": material,
            "compression": compression,
            "media": media,
        });
        let key = Digest::of(key_material.to_string().as_bytes());
        let path = format!("/{TARBALL_NAME}");
        if let Some(hit) = self.cached_result::<CachedTarball>(&key).await? {
            if hit.snapshot.is_some() {
                return Ok(TreeRef {
                    snapshot: hit.snapshot,
                    path,
                });
            }
        }
        let compression = compression.map(|c| match c {
            ImageCompression::Gzip => LayerCompression::Gzip,
            ImageCompression::Zstd => LayerCompression::Zstd,
            ImageCompression::Uncompressed => LayerCompression::Uncompressed,
        });
        let media = match media {
            ImageMedia::Oci => ImageMediaTypes::Oci,
            ImageMedia::Docker => ImageMediaTypes::Docker,
        };
        let images = self.inner.images.clone();
        let built = images.build_image(&specs, compression, media).await?;
        let snapshots = self.snapshotter().clone();
        let snapshot = tokio::task::spawn_blocking(move || -> Result<String> {
            let active = snapshots.prepare(None)?;
            let file_path = active.fs().join(TARBALL_NAME);
            let io = |e: std::io::Error| SolveError::Internal(format!("writing the tarball: {e}"));
            let file = std::fs::File::create(&file_path).map_err(io)?;
            let out = std::io::BufWriter::with_capacity(1 << 20, file);
            let out = images.write_image_tarball(&built, None, out)?;
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            let size = file.metadata().map_err(io)?.len();
            drop(file);
            Ok(snapshots.commit(active, None, None, size)?)
        })
        .await
        .map_err(|e| SolveError::Internal(e.to_string()))??;
        let _ = self
            .snapshotter()
            .label(&snapshot, "regular", "image tarball");
        self.record_result(
            key,
            "tarball",
            &CachedTarball {
                snapshot: Some(snapshot.clone()),
            },
            Some(snapshot.clone()),
        )
        .await?;
        Ok(TreeRef {
            snapshot: Some(snapshot),
            path,
        })
    }

    /// Evaluates `ContainerNode::Import`: the image in the tarball `source` for the
    /// container's platform replaces its root filesystem and config.
    pub(super) async fn import_container(
        &self,
        parent: &ContainerNode,
        source: &FileNode,
        tag: &str,
    ) -> Result<ContainerValue> {
        let p = self.container(parent).await?;
        let platform = platform_of(&p)?;
        let file = self.file(source).await?;
        let path = file.path.clone();
        let opened = fs::with_root(self.snapshotter(), file.snapshot.clone(), move |root| {
            // The view unmounts lazily: the open file stays readable.
            root.open_file(&path)
                .map_err(|e| fs::FsError::Internal(format!("opening {path}: {e}")))
        })
        .await?;
        let imported = self
            .inner
            .images
            .import_tarball(opened, &platform, tag)
            .await?;
        Ok(ContainerValue {
            platform: p.platform.clone(),
            rootfs: imported.rootfs,
            config: imported.config,
            image_ref: None,
            exec: None,
            mounts: p.mounts.clone(),
            secret_env: p.secret_env.clone(),
        })
    }
}
