use async_graphql::Enum;

/// File type.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ExistsType {
    /// Tests path is a regular file
    #[graphql(name = "REGULAR_TYPE")]
    Regular,
    /// Tests path is a directory
    #[graphql(name = "DIRECTORY_TYPE")]
    Directory,
    /// Tests path is a symlink
    #[graphql(name = "SYMLINK_TYPE")]
    Symlink,
}

/// Transport layer network protocol associated to a port.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, serde::Serialize, serde::Deserialize)]
pub enum NetworkProtocol {
    #[graphql(name = "TCP")]
    Tcp,
    #[graphql(name = "UDP")]
    Udp,
}

/// Expected return type of an execution
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, Default)]
pub enum ReturnType {
    /// A successful execution (exit code 0)
    #[default]
    #[graphql(name = "SUCCESS")]
    Success,
    /// A failed execution (exit codes 1-127 and 192-255)
    #[graphql(name = "FAILURE")]
    Failure,
    /// Any execution (exit codes 0-127 and 192-255)
    #[graphql(name = "ANY")]
    Any,
}

/// Sharing mode of the cache volume.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, Default)]
pub enum CacheSharingMode {
    /// Shares the cache volume amongst many build pipelines
    #[default]
    #[graphql(name = "SHARED")]
    Shared,
    /// Keeps a cache volume for a single build pipeline
    #[graphql(name = "PRIVATE")]
    Private,
    /// Shares the cache volume amongst many build pipelines, but will serialize the writes
    #[graphql(name = "LOCKED")]
    Locked,
}

impl From<CacheSharingMode> for crate::solver::node::Sharing {
    fn from(m: CacheSharingMode) -> Self {
        match m {
            CacheSharingMode::Shared => crate::solver::node::Sharing::Shared,
            CacheSharingMode::Private => crate::solver::node::Sharing::Private,
            CacheSharingMode::Locked => crate::solver::node::Sharing::Locked,
        }
    }
}

/// Compression algorithm to use for image layers.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ImageLayerCompression {
    #[graphql(name = "Gzip")]
    Gzip,
    #[graphql(name = "Zstd")]
    Zstd,
    #[graphql(name = "Uncompressed")]
    Uncompressed,
    #[graphql(name = "GZIP")]
    GzipAlias,
    #[graphql(name = "ZSTD")]
    ZstdAlias,
    #[graphql(name = "UNCOMPRESSED")]
    UncompressedAlias,
}

impl From<ImageLayerCompression> for crate::image::LayerCompression {
    fn from(c: ImageLayerCompression) -> Self {
        use crate::image::LayerCompression as L;
        match c {
            ImageLayerCompression::Gzip | ImageLayerCompression::GzipAlias => L::Gzip,
            ImageLayerCompression::Zstd | ImageLayerCompression::ZstdAlias => L::Zstd,
            ImageLayerCompression::Uncompressed | ImageLayerCompression::UncompressedAlias => {
                L::Uncompressed
            }
        }
    }
}

/// Mediatypes to use in published or exported image metadata.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, Default)]
pub enum ImageMediaTypes {
    #[default]
    #[graphql(name = "OCIMediaTypes")]
    Oci,
    #[graphql(name = "DockerMediaTypes")]
    Docker,
    #[graphql(name = "OCI")]
    OciAlias,
    #[graphql(name = "DOCKER")]
    DockerAlias,
}

impl From<ImageMediaTypes> for crate::image::ImageMediaTypes {
    fn from(m: ImageMediaTypes) -> Self {
        match m {
            ImageMediaTypes::Oci | ImageMediaTypes::OciAlias => crate::image::ImageMediaTypes::Oci,
            ImageMediaTypes::Docker | ImageMediaTypes::DockerAlias => {
                crate::image::ImageMediaTypes::Docker
            }
        }
    }
}
