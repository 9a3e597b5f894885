//! Pushing an assembled image ([`BuiltImage`]) to a registry: its blobs stream from the
//! content store, layers pulled from another repository of the same registry are mounted
//! from there, and manifests go last (children before the index).

use super::{BuiltImage, ImageError, ImageService};
use crate::oci::{Digest, Reference};
use crate::registry::{is_index_type, is_manifest_type, Credentials, PushBlob, PushManifest};

/// Cap on a manifest or index read back from the content store for a push.
const MAX_MANIFEST_BYTES: u64 = crate::registry::DEFAULT_MAX_MANIFEST_BYTES;

/// Repositories (`team/app`) on `registry` among `sources` (`host/team/app`).
fn same_registry_sources(registry: &str, sources: &[String]) -> Vec<String> {
    sources
        .iter()
        .filter_map(|s| s.split_once('/'))
        .filter(|(host, _)| host.eq_ignore_ascii_case(registry))
        .map(|(_, repo)| repo.to_string())
        .collect()
}

impl ImageService {
    /// Pushes `image` to `reference` (its tag, or its digest when it has no tag) with the
    /// engine's own credentials, and returns the root manifest's digest as the registry
    /// confirmed it.
    pub async fn push(
        &self,
        reference: &Reference,
        image: &BuiltImage,
    ) -> Result<Digest, ImageError> {
        self.push_with_auth(reference, image, &Credentials::none())
            .await
    }

    /// Like [`ImageService::push`], with `auth` (a request's `withRegistryAuth`) taking
    /// precedence over the engine's credentials.
    pub async fn push_with_auth(
        &self,
        reference: &Reference,
        image: &BuiltImage,
        auth: &Credentials,
    ) -> Result<Digest, ImageError> {
        let mut blobs = Vec::new();
        let mut manifests = Vec::new();
        let mut root = None;
        for b in &image.blobs {
            if is_manifest_type(&b.media_type) || is_index_type(&b.media_type) {
                let content = self.inner.content.clone();
                let d = b.digest.clone();
                let bytes =
                    tokio::task::spawn_blocking(move || content.read_blob(&d, MAX_MANIFEST_BYTES))
                        .await
                        .map_err(|e| ImageError::Internal(e.to_string()))??;
                let m = PushManifest {
                    digest: b.digest.clone(),
                    media_type: b.media_type.clone(),
                    bytes: bytes.into(),
                };
                if b.digest == image.root.digest {
                    root = Some(m);
                } else {
                    manifests.push(m);
                }
            } else {
                let mount_from = image
                    .layer_sources
                    .get(&b.digest)
                    .map(|s| same_registry_sources(&reference.registry, s))
                    .unwrap_or_default();
                blobs.push(PushBlob {
                    digest: b.digest.clone(),
                    size: b.size,
                    path: self.inner.content.blob_path(&b.digest),
                    mount_from,
                });
            }
        }
        let root = root.ok_or_else(|| {
            ImageError::Internal(format!(
                "the image's root {} is not among its manifests",
                image.root.digest
            ))
        })?;
        manifests.push(root);
        let op = crate::progress::start(&format!("push {reference}"), None);
        let pushed = self
            .inner
            .registry
            .with_credentials(auth)
            .push_image(reference, blobs, manifests)
            .await;
        op.finish(&pushed);
        let report = pushed?;
        if report.digest != image.root.digest {
            return Err(ImageError::Internal(format!(
                "pushed {} but the image is {}",
                report.digest, image.root.digest
            )));
        }
        Ok(report.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_sources_are_repositories_of_the_target_registry() {
        let sources = vec![
            "127.0.0.1:5000/lib/busybox".to_string(),
            "docker.io/library/alpine".to_string(),
            "127.0.0.1:5001/other".to_string(),
            "garbage".to_string(),
        ];
        assert_eq!(
            same_registry_sources("127.0.0.1:5000", &sources),
            ["lib/busybox"]
        );
        assert_eq!(
            same_registry_sources("docker.io", &sources),
            ["library/alpine"]
        );
    }
}
