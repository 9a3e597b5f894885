use super::node::{self, NodeObject};
use super::scalars::{
    CacheVolumeId, ContainerId, DirectoryId, EnvVariableId, FileId, LabelId, PortId, SecretId,
    SocketId,
};
use super::{CacheVolume, Secret};
use super::{Container, Directory, File, PlatformScalar};
use crate::solver::node::CacheVolumeNode;
use crate::solver::node::{ContainerNode, DirectoryNode};
use async_graphql::{Context, Object, Result, ID};

pub struct QueryRoot;

/// The root of the Dagger API.
#[Object(name = "Query")]
impl QueryRoot {
    /// Get the current Dagger Engine version.
    async fn version(&self) -> &'static str {
        crate::VERSION
    }

    /// The default platform of the engine.
    async fn default_platform(&self, ctx: &Context<'_>) -> PlatformScalar {
        PlatformScalar(super::state(ctx).default_platform.clone())
    }

    /// Creates a scratch container, with no image or metadata.
    ///
    /// To pull an image, follow up with the "from" function.
    async fn container(&self, ctx: &Context<'_>, platform: Option<PlatformScalar>) -> Container {
        let state = super::state(ctx);
        let platform = platform
            .map(|p| p.0)
            .unwrap_or_else(|| state.default_platform.clone());
        Container::new(ContainerNode::Scratch {
            platform: platform.to_string(),
        })
    }

    /// Creates an empty directory.
    async fn directory(&self) -> Directory {
        Directory::new(DirectoryNode::Scratch)
    }

    /// Creates a file with the specified contents.
    async fn file(
        &self,
        name: String,
        contents: String,
        #[graphql(default = 420)] permissions: i32,
    ) -> File {
        File::new(crate::solver::node::FileNode::New {
            name,
            contents,
            permissions,
        })
    }

    /// Queries the host environment (served by `dagger session`, see `api/host.rs`).
    async fn host(&self) -> super::host::Host {
        super::host::Host
    }

    /// The Dagger engine container configuration and state
    async fn engine(&self) -> super::engine::Engine {
        super::engine::Engine
    }

    /// Queries a Git repository.
    #[allow(clippy::too_many_arguments)] // one per GraphQL argument
    async fn git(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "URL of the git repository.\n\nCan be formatted as `https://{host}/{owner}/{repo}`, `git@{host}:{owner}/{repo}`.\n\nSuffix \".git\" is optional."
        )]
        url: String,
        #[graphql(
            default = true,
            desc = "Set to true to keep .git directory.",
            deprecation = "Set to true by default; use `discardGitDir` on `tree` instead."
        )]
        keep_git_dir: bool,
        #[graphql(default, desc = "Set SSH known hosts")] ssh_known_hosts: String,
        #[graphql(
            default,
            desc = "Username used to populate the password during basic HTTP Authorization"
        )]
        http_auth_username: String,
        #[graphql(desc = "Secret used to populate the password during basic HTTP Authorization")]
        http_auth_token: Option<SecretId>,
        #[graphql(desc = "Secret used to populate the Authorization HTTP header")]
        http_auth_header: Option<SecretId>,
        #[graphql(desc = "Set SSH auth socket")] ssh_auth_socket: Option<SocketId>,
    ) -> async_graphql::Result<super::GitRepository> {
        let ssh_agent = ssh_auth_socket
            .map(|id| node::load_socket(&id.0))
            .transpose()?;
        let auth = super::git::HttpAuthArgs {
            username: http_auth_username,
            token: http_auth_token
                .map(|id| node::load_secret(&id.0))
                .transpose()?,
            header: http_auth_header
                .map(|id| node::load_secret(&id.0))
                .transpose()?,
        };
        super::GitRepository::open(ctx, &url, keep_git_dir, &ssh_known_hosts, auth, ssh_agent).await
    }

    /// Load any object by its ID.
    async fn node(&self, id: ID) -> Result<Option<NodeObject>> {
        node::load(node::raw(&id)).map(Some)
    }

    /// Load a Container from its ID.
    #[graphql(name = "loadContainerFromID")]
    async fn load_container_from_id(&self, id: ContainerId) -> Result<Container> {
        node::load_container(&id.0)
    }

    /// Load a Directory from its ID.
    #[graphql(name = "loadDirectoryFromID")]
    async fn load_directory_from_id(&self, id: DirectoryId) -> Result<Directory> {
        node::load_directory(&id.0)
    }

    /// Load a File from its ID.
    #[graphql(name = "loadFileFromID")]
    async fn load_file_from_id(&self, id: FileId) -> Result<File> {
        node::load_file(&id.0)
    }

    /// Load a EnvVariable from its ID.
    #[graphql(name = "loadEnvVariableFromID")]
    async fn load_env_variable_from_id(
        &self,
        id: EnvVariableId,
    ) -> Result<super::container::EnvVariable> {
        crate::solver::id::decode("EnvVariable", &id.0)
            .map_err(|e| super::gql_error(crate::ErrorKind::InvalidArgument, e.to_string()))
    }

    /// Load a Label from its ID.
    #[graphql(name = "loadLabelFromID")]
    async fn load_label_from_id(&self, id: LabelId) -> Result<super::container::Label> {
        crate::solver::id::decode("Label", &id.0)
            .map_err(|e| super::gql_error(crate::ErrorKind::InvalidArgument, e.to_string()))
    }

    /// Load a Port from its ID.
    #[graphql(name = "loadPortFromID")]
    async fn load_port_from_id(&self, id: PortId) -> Result<super::container::Port> {
        crate::solver::id::decode("Port", &id.0)
            .map_err(|e| super::gql_error(crate::ErrorKind::InvalidArgument, e.to_string()))
    }

    /// Constructs a cache volume for a given cache key.
    async fn cache_volume(&self, key: String) -> Result<CacheVolume> {
        if key.is_empty() {
            return Err(super::gql_error(
                crate::ErrorKind::InvalidArgument,
                "a cache volume needs a non-empty key".into(),
            ));
        }
        Ok(CacheVolume(CacheVolumeNode { key }))
    }

    /// Sets a secret given a user defined name to its plaintext and returns the secret.
    ///
    /// The plaintext value is limited to a size of 128000 bytes.
    async fn set_secret(
        &self,
        ctx: &Context<'_>,
        name: String,
        plaintext: String,
    ) -> Result<Secret> {
        if plaintext.len() > 128_000 {
            return Err(super::gql_error(
                crate::ErrorKind::InvalidArgument,
                format!("secret {name:?} is larger than 128000 bytes"),
            ));
        }
        let state = super::state(ctx);
        Ok(Secret(state.solver.set_secret(&name, plaintext.as_bytes())))
    }

    /// Creates a new secret from a URI: env://NAME or file://PATH, read on the client's machine.
    ///
    /// The dagger CLI's session answers this itself (it reads the value where the SDK runs and
    /// hands it over with setSecret). An engine never reads its own environment or files for a
    /// client: that would hand the engine's credentials to anyone who can send a query.
    async fn secret(&self, uri: String) -> Result<Secret> {
        let _ = uri;
        Err(super::gql_error(
            crate::ErrorKind::InvalidArgument,
            "secret(uri) is resolved on the client's machine by the dagger CLI: send it through \
             `dagger run`, `dagger session` or `dagger query`, or use setSecret"
                .into(),
        ))
    }

    /// Load a CacheVolume from its ID.
    #[graphql(name = "loadCacheVolumeFromID")]
    async fn load_cache_volume_from_id(&self, id: CacheVolumeId) -> Result<CacheVolume> {
        node::load_cache_volume(&id.0)
    }

    /// Load a Secret from its ID.
    #[graphql(name = "loadSecretFromID")]
    async fn load_secret_from_id(&self, id: SecretId) -> Result<Secret> {
        node::load_secret(&id.0)
    }

    /// Load a Socket from its ID.
    #[graphql(name = "loadSocketFromID")]
    async fn load_socket_from_id(&self, id: SocketId) -> Result<super::Socket> {
        node::load_socket(&id.0)
    }
}
