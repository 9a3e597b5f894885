use super::node::{self, NodeObject};
use super::scalars::{ContainerId, DirectoryId, EnvVariableId, FileId, LabelId, PortId};
use super::{ApiState, Container, Directory, File, PlatformScalar};
use crate::solver::node::{ContainerNode, DirectoryNode};
use async_graphql::{Context, Object, Result, ID};
use std::sync::Arc;

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
        PlatformScalar(
            ctx.data_unchecked::<Arc<ApiState>>()
                .default_platform
                .clone(),
        )
    }

    /// Creates a scratch container, with no image or metadata.
    ///
    /// To pull an image, follow up with the "from" function.
    async fn container(&self, ctx: &Context<'_>, platform: Option<PlatformScalar>) -> Container {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
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

    /// Queries a Git repository.
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
    ) -> async_graphql::Result<super::GitRepository> {
        super::GitRepository::open(ctx, &url, keep_git_dir, &ssh_known_hosts)
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
}
