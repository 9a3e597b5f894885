//! `Container`: a node of the operation graph. Mutations return new nodes without running
//! anything; fields that need values evaluate through the solver.

use super::directory::{Directory, File};
use super::enums::{
    CacheSharingMode, ExistsType, ImageLayerCompression, ImageMediaTypes, NetworkProtocol,
    ReturnType,
};
use super::{solve_error, PlatformScalar};
use crate::solver::node::{
    ConfigChange, ContainerNode, DirectoryNode, ExecArgs, Expect, FileNode, FsChange, MountSource,
    MountSpec,
};
use crate::solver::{id, ContainerValue};
use async_graphql::{Context, Object, Result, ID};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An OCI-compatible container, also known as a Docker container.
#[derive(Clone)]
pub struct Container(pub(crate) Arc<ContainerNode>);

impl Container {
    pub(crate) fn new(node: ContainerNode) -> Self {
        Container(Arc::new(node))
    }

    fn parent(&self) -> Box<ContainerNode> {
        Box::new((*self.0).clone())
    }

    fn mount(&self, path: String, expand: bool, source: MountSource) -> Container {
        Container::new(ContainerNode::Mount {
            parent: self.parent(),
            mount: MountSpec {
                path,
                expand,
                source,
            },
        })
    }

    fn config(&self, change: ConfigChange) -> Container {
        Container::new(ContainerNode::Config {
            parent: self.parent(),
            change,
        })
    }

    fn fs(&self, change: FsChange, expand: bool) -> Container {
        Container::new(ContainerNode::Fs {
            parent: self.parent(),
            change,
            expand,
        })
    }

    async fn value(&self, ctx: &Context<'_>) -> Result<Arc<ContainerValue>> {
        let state = super::state(ctx);
        state
            .solver
            .container(&self.0)
            .await
            .map_err(|e| solve_error(&e))
    }

    async fn last_exec(&self, ctx: &Context<'_>) -> Result<Arc<crate::solver::ExecResult>> {
        self.value(ctx).await?.exec.clone().ok_or_else(|| {
            super::gql_error(
                crate::ErrorKind::InvalidArgument,
                "no command has been executed: call withExec first".into(),
            )
        })
    }
}

/// An environment variable name and value.
#[derive(Clone, Serialize, Deserialize)]
pub struct EnvVariable {
    pub name: String,
    pub value: String,
}

#[Object]
impl EnvVariable {
    /// A unique identifier for this EnvVariable.
    pub async fn id(&self) -> ID {
        ID(id::encode("EnvVariable", self))
    }
    /// The environment variable name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// The environment variable value.
    async fn value(&self) -> &str {
        &self.value
    }
}

/// A simple key value object that represents a label.
#[derive(Clone, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

#[Object]
impl Label {
    /// A unique identifier for this Label.
    pub async fn id(&self) -> ID {
        ID(id::encode("Label", self))
    }
    /// The label name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// The label value.
    async fn value(&self) -> &str {
        &self.value
    }
}

/// A port exposed by a container.
#[derive(Clone, Serialize, Deserialize)]
pub struct Port {
    pub port: i32,
    pub protocol: NetworkProtocol,
    pub description: Option<String>,
}

#[Object]
impl Port {
    /// A unique identifier for this Port.
    pub async fn id(&self) -> ID {
        ID(id::encode("Port", self))
    }
    /// The port number.
    async fn port(&self) -> i32 {
        self.port
    }
    /// The transport layer protocol.
    async fn protocol(&self) -> NetworkProtocol {
        self.protocol
    }
    /// The port description.
    async fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// Skip the health check when run as a service.
    async fn experimental_skip_healthcheck(&self) -> bool {
        false
    }
}

#[Object]
impl Container {
    /// A unique identifier for this Container.
    pub async fn id(&self) -> ID {
        ID(id::encode("Container", &*self.0))
    }

    /// Forces evaluation of the pipeline in the engine.
    ///
    /// It doesn't run the default command if no exec has been set.
    async fn sync(&self, ctx: &Context<'_>) -> Result<ID> {
        self.value(ctx).await?;
        Ok(ID(id::encode("Container", &*self.0)))
    }

    /// Initializes this container from a pulled base image.
    async fn from(&self, address: String) -> Container {
        Container::new(ContainerNode::From {
            parent: self.parent(),
            address,
        })
    }

    /// The platform this container executes and publishes as.
    async fn platform(&self, ctx: &Context<'_>) -> Result<PlatformScalar> {
        let v = self.value(ctx).await?;
        crate::oci::Platform::parse(&v.platform)
            .map(PlatformScalar)
            .map_err(|e| super::gql_error(crate::ErrorKind::Internal, e.to_string()))
    }

    /// The unique image reference which can only be retrieved immediately after the 'Container.From' call.
    async fn image_ref(&self, ctx: &Context<'_>) -> Result<String> {
        self.value(ctx).await?.image_ref.clone().ok_or_else(|| {
            super::gql_error(
                crate::ErrorKind::InvalidArgument,
                "Image reference can only be retrieved immediately after the 'Container.From' call"
                    .into(),
            )
        })
    }

    /// Retrieves this container's root filesystem. Mounts are not included.
    async fn rootfs(&self) -> Directory {
        Directory::new(DirectoryNode::Rootfs {
            container: self.parent(),
        })
    }

    /// Retrieves a directory at the given path. Mounts are included.
    async fn directory(&self, path: String) -> Directory {
        Directory::new(DirectoryNode::InContainer {
            container: self.parent(),
            path,
        })
    }

    /// Retrieves a file at the given path. Mounts are included.
    async fn file(&self, path: String) -> File {
        File::new(FileNode::InContainer {
            container: self.parent(),
            path,
        })
    }

    /// check if a file or directory exists
    async fn exists(
        &self,
        ctx: &Context<'_>,
        path: String,
        expected_type: Option<ExistsType>,
        #[graphql(default = false)] do_not_follow_symlinks: bool,
    ) -> Result<bool> {
        let v = self.value(ctx).await?;
        let abs = crate::solver::fs::join(v.cwd(), &path);
        super::directory::exists_in(
            ctx,
            v.rootfs.clone(),
            abs,
            expected_type,
            do_not_follow_symlinks,
        )
        .await
    }

    /// Execute a command in the container, and return a new snapshot of the container state after execution.
    #[allow(clippy::too_many_arguments)]
    async fn with_exec(
        &self,
        args: Vec<String>,
        #[graphql(default = false)] use_entrypoint: bool,
        #[graphql(default)] stdin: String,
        #[graphql(default)] redirect_stdin: String,
        #[graphql(default)] redirect_stdout: String,
        #[graphql(default)] redirect_stderr: String,
        #[graphql(default_with = "ReturnType::Success")] expect: ReturnType,
        #[graphql(default = false)] experimental_privileged_nesting: bool,
        #[graphql(default = false)] insecure_root_capabilities: bool,
        #[graphql(default = false)] expand: bool,
        #[graphql(default = false)] no_init: bool,
    ) -> Result<Container> {
        if experimental_privileged_nesting {
            return Err(super::gql_error(
                crate::ErrorKind::InvalidArgument,
                "experimentalPrivilegedNesting is not supported by this engine yet".into(),
            ));
        }
        Ok(Container::new(ContainerNode::Exec {
            parent: self.parent(),
            exec: ExecArgs {
                args,
                use_entrypoint,
                stdin,
                redirect_stdin,
                redirect_stdout,
                redirect_stderr,
                expect: match expect {
                    ReturnType::Success => Expect::Success,
                    ReturnType::Failure => Expect::Failure,
                    ReturnType::Any => Expect::Any,
                },
                insecure_root_capabilities,
                expand,
                no_init,
            },
        }))
    }

    /// The output stream of the last executed command.
    ///
    /// Returns an error if no command was executed.
    async fn stdout(&self, ctx: &Context<'_>) -> Result<String> {
        Ok(self.last_exec(ctx).await?.stdout.clone())
    }

    /// The error stream of the last executed command.
    ///
    /// Returns an error if no command was executed.
    async fn stderr(&self, ctx: &Context<'_>) -> Result<String> {
        Ok(self.last_exec(ctx).await?.stderr.clone())
    }

    /// The combined output of the last executed command: stdout and stderr as they were written.
    ///
    /// Returns an error if no command was executed.
    async fn combined_output(&self, ctx: &Context<'_>) -> Result<String> {
        Ok(self.last_exec(ctx).await?.combined.clone())
    }

    /// The exit code of the last executed command.
    ///
    /// Returns an error if no command was executed.
    async fn exit_code(&self, ctx: &Context<'_>) -> Result<i32> {
        Ok(self.last_exec(ctx).await?.exit_code)
    }

    /// Retrieves this container plus a cache volume mounted at the given path.
    #[allow(clippy::too_many_arguments)]
    async fn with_mounted_cache(
        &self,
        path: String,
        cache: ID,
        source: Option<ID>,
        #[graphql(default_with = "CacheSharingMode::Shared")] sharing: CacheSharingMode,
        #[graphql(default)] owner: String,
        #[graphql(default = false)] expand: bool,
    ) -> Result<Container> {
        let volume = super::node::load_cache_volume(cache.as_str())?.0;
        let source = match source {
            Some(id) => Some(Box::new(
                (*super::node::load_directory(id.as_str())?.0).clone(),
            )),
            None => None,
        };
        Ok(self.mount(
            path,
            expand,
            MountSource::Cache {
                volume,
                source,
                sharing: sharing.into(),
                owner,
            },
        ))
    }

    /// Retrieves this container plus a directory mounted at the given path.
    async fn with_mounted_directory(
        &self,
        path: String,
        source: ID,
        #[graphql(default = false)] read_only: bool,
        #[graphql(default = false)] expand: bool,
    ) -> Result<Container> {
        let dir = super::node::load_directory(source.as_str())?;
        Ok(self.mount(
            path,
            expand,
            MountSource::Directory {
                source: Box::new((*dir.0).clone()),
                read_only,
            },
        ))
    }

    /// Retrieves this container plus a file mounted at the given path.
    async fn with_mounted_file(
        &self,
        path: String,
        source: ID,
        #[graphql(default = false)] expand: bool,
    ) -> Result<Container> {
        let file = super::node::load_file(source.as_str())?;
        Ok(self.mount(
            path,
            expand,
            MountSource::File {
                source: Box::new((*file.0).clone()),
            },
        ))
    }

    /// Retrieves this container plus a temporary directory mounted at the given path. Any writes will be ephemeral to a single withExec call; they will not be persisted to subsequent withExecs.
    async fn with_mounted_temp(
        &self,
        path: String,
        size: Option<i64>,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        self.mount(path, expand, MountSource::Temp { size })
    }

    /// Retrieves this container plus a secret mounted into a file at the given path.
    async fn with_mounted_secret(
        &self,
        path: String,
        source: ID,
        #[graphql(default)] owner: String,
        #[graphql(default = 256)] mode: i32,
        #[graphql(default = false)] expand: bool,
    ) -> Result<Container> {
        let secret = super::node::load_secret(source.as_str())?.0;
        Ok(self.mount(
            path,
            expand,
            MountSource::Secret {
                secret,
                owner,
                mode,
            },
        ))
    }

    /// Retrieves this container after unmounting everything at the given path.
    async fn without_mount(
        &self,
        path: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        Container::new(ContainerNode::Unmount {
            parent: self.parent(),
            path,
            expand,
        })
    }

    /// Retrieves this container plus an env variable containing the given secret.
    async fn with_secret_variable(&self, name: String, secret: ID) -> Result<Container> {
        let secret = super::node::load_secret(secret.as_str())?.0;
        Ok(Container::new(ContainerNode::SecretEnv {
            parent: self.parent(),
            name,
            secret,
        }))
    }

    /// Retrieves this container minus the given environment variable containing the secret.
    async fn without_secret_variable(&self, name: String) -> Container {
        Container::new(ContainerNode::NoSecretEnv {
            parent: self.parent(),
            name,
        })
    }

    /// Retrieves this container with a registry authentication for a given address.
    async fn with_registry_auth(
        &self,
        #[graphql(
            desc = "Registry's address to bind the authentication to. Formatted as [host]/[user]/[repo]:[tag] (e.g. docker.io/dagger/dagger:main)."
        )]
        address: String,
        #[graphql(desc = "The username of the registry's account (e.g., \"Dagger\").")]
        username: String,
        #[graphql(desc = "The API key, password or token to authenticate to this registry.")]
        secret: super::scalars::SecretId,
    ) -> Result<Container> {
        let host = registry_auth_host(&address)?;
        let secret = super::node::load_secret(&secret.0)?.0;
        Ok(Container::new(ContainerNode::RegistryAuth {
            parent: self.parent(),
            address: host,
            username,
            secret,
        }))
    }

    /// Retrieves this container without the registry authentication of a given address.
    async fn without_registry_auth(
        &self,
        #[graphql(
            desc = "Registry's address to remove the authentication from. Formatted as [host]/[user]/[repo]:[tag] (e.g. docker.io/dagger/dagger:main)."
        )]
        address: String,
    ) -> Result<Container> {
        let host = registry_auth_host(&address)?;
        Ok(Container::new(ContainerNode::NoRegistryAuth {
            parent: self.parent(),
            address: host,
        }))
    }

    /// Retrieves the list of paths where a directory is mounted.
    async fn mounts(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        Ok(self
            .value(ctx)
            .await?
            .mounts
            .iter()
            .map(|(p, _)| p.clone())
            .collect())
    }

    /// Retrieves this container plus a new file written at the given path.
    async fn with_new_file(
        &self,
        path: String,
        contents: String,
        #[graphql(default = 420)] permissions: i32,
        #[graphql(default)] owner: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        let change = FsChange::NewFile {
            path,
            contents,
            permissions,
            owner,
        };
        self.fs(change, expand)
    }

    /// Retrieves this container plus the contents of the given file copied to the given path.
    async fn with_file(
        &self,
        path: String,
        source: ID,
        permissions: Option<i32>,
        #[graphql(default)] owner: String,
        #[graphql(default = false)] expand: bool,
    ) -> Result<Container> {
        let source = super::directory::file_arg(&source)?;
        let change = FsChange::File {
            path,
            source,
            permissions,
            owner,
        };
        Ok(self.fs(change, expand))
    }

    /// Retrieves this container plus the contents of the given files copied to the given path.
    async fn with_files(
        &self,
        path: String,
        sources: Vec<ID>,
        permissions: Option<i32>,
        #[graphql(default)] owner: String,
        #[graphql(default = false)] expand: bool,
    ) -> Result<Container> {
        let sources = super::directory::files_arg(&sources)?;
        let change = FsChange::Files {
            path,
            sources,
            permissions,
            owner,
        };
        Ok(self.fs(change, expand))
    }

    /// Retrieves this container plus a directory written at the given path.
    #[allow(clippy::too_many_arguments)]
    async fn with_directory(
        &self,
        path: String,
        source: ID,
        #[graphql(default)] exclude: Vec<String>,
        #[graphql(default)] include: Vec<String>,
        #[graphql(default)] owner: String,
        #[graphql(default = false)] expand: bool,
        permissions: Option<i32>,
    ) -> Result<Container> {
        let source = super::directory::directory_arg(&source)?;
        let change = FsChange::Directory {
            path,
            source,
            include,
            exclude,
            owner,
            permissions,
        };
        Ok(self.fs(change, expand))
    }

    /// Retrieves this container with the file at the given path removed.
    async fn without_file(
        &self,
        path: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        self.fs(FsChange::Remove { paths: vec![path] }, expand)
    }

    /// Retrieves this container with the files at the given paths removed.
    async fn without_files(
        &self,
        paths: Vec<String>,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        self.fs(FsChange::Remove { paths }, expand)
    }

    /// Retrieves this container with the directory at the given path removed.
    async fn without_directory(
        &self,
        path: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        self.fs(FsChange::Remove { paths: vec![path] }, expand)
    }

    /// Return a snapshot with a symlink.
    async fn with_symlink(
        &self,
        target: String,
        link_name: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        self.fs(FsChange::Symlink { target, link_name }, expand)
    }

    /// Package the container state as an OCI image, and return it as a tar archive
    async fn as_tarball(
        &self,
        #[graphql(
            default,
            desc = "Identifiers for other platform specific containers. Used for multi-platform images."
        )]
        platform_variants: Vec<ID>,
        #[graphql(
            desc = "Force each layer of the image to use the specified compression algorithm. If this is unset, then if a layer already has a compressed blob in the engine's cache, that will be used (this can result in a mix of compression algorithms for different layers). If this is unset and a layer has no compressed blob in the engine's cache, then it will be compressed using Gzip."
        )]
        forced_compression: Option<ImageLayerCompression>,
        #[graphql(
            default,
            desc = "Use the specified media types for the image's layers. Defaults to OCI, which is largely compatible with most recent container runtimes, but Docker may be needed for older runtimes without OCI support."
        )]
        media_types: ImageMediaTypes,
    ) -> Result<File> {
        use crate::solver::node::{ImageCompression, ImageMedia};
        let mut variants = Vec::new();
        for id in &platform_variants {
            variants.push((*super::node::load_container(id.as_str())?.0).clone());
        }
        let compression = forced_compression.map(|c| match c.into() {
            crate::image::LayerCompression::Gzip => ImageCompression::Gzip,
            crate::image::LayerCompression::Zstd => ImageCompression::Zstd,
            crate::image::LayerCompression::Uncompressed => ImageCompression::Uncompressed,
        });
        let media = match media_types.into() {
            crate::image::ImageMediaTypes::Oci => ImageMedia::Oci,
            crate::image::ImageMediaTypes::Docker => ImageMedia::Docker,
        };
        Ok(File::new(FileNode::AsTarball {
            container: self.parent(),
            variants,
            compression,
            media_types: media,
        }))
    }

    /// Writes the container as an OCI tarball to the destination file path on the host.
    ///
    /// It can also export platform variants.
    async fn export(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "Host's destination path (e.g., \"./tarball\"). Path can be relative to the engine's workdir or absolute."
        )]
        path: String,
        #[graphql(
            default,
            desc = "Identifiers for other platform specific containers. Used for multi-platform image."
        )]
        platform_variants: Vec<ID>,
        #[graphql(
            desc = "Force each layer of the exported image to use the specified compression algorithm. If this is unset, then if a layer already has a compressed blob in the engine's cache, that will be used (this can result in a mix of compression algorithms for different layers). If this is unset and a layer has no compressed blob in the engine's cache, then it will be compressed using Gzip."
        )]
        forced_compression: Option<ImageLayerCompression>,
        #[graphql(
            default,
            desc = "Use the specified media types for the exported image's layers. Defaults to OCI, which is largely compatible with most recent container runtimes, but Docker may be needed for older runtimes without OCI support."
        )]
        media_types: ImageMediaTypes,
        #[graphql(
            default = false,
            desc = "Replace \"${VAR}\" or \"$VAR\" in the value of path according to the current environment variables defined in the container (e.g. \"/$VAR/foo\")."
        )]
        expand: bool,
    ) -> Result<String> {
        super::directory::require_session(ctx, "Container.export")?;
        let path = if expand {
            let c = self.value(ctx).await?;
            crate::util::expand(&path, crate::util::env_lookup(&c.config.env))
        } else {
            path
        };
        // The same file `asTarball` gives, written on the client as `File.export` does.
        let tarball = self
            .as_tarball(ctx, platform_variants, forced_compression, media_types)
            .await?;
        let tree = super::state(ctx)
            .solver
            .file(&tarball.0)
            .await
            .map_err(|e| solve_error(&e))?;
        super::directory::export_to_client(
            ctx,
            "Container.export",
            (*tree).clone(),
            crate::session::ExportKind::File,
            crate::session::ExportRequest {
                path,
                wipe: false,
                allow_parent_dir_path: false,
            },
        )
        .await
    }

    /// Reads the container from an OCI tarball.
    #[graphql(name = "import")]
    async fn import_(
        &self,
        #[graphql(desc = "File to read the container from.")] source: ID,
        #[graphql(
            default,
            desc = "Identifies the tag to import from the archive, if the archive bundles multiple tags."
        )]
        tag: String,
    ) -> Result<Container> {
        Ok(Container::new(ContainerNode::Import {
            parent: self.parent(),
            source: super::directory::file_arg(&source)?,
            tag,
        }))
    }

    /// Retrieves this container with its root filesystem replaced by the given directory.
    async fn with_rootfs(&self, directory: ID) -> Result<Container> {
        Ok(Container::new(ContainerNode::WithRootfs {
            parent: self.parent(),
            directory: super::directory::directory_arg(&directory)?,
        }))
    }

    /// Retrieves this container plus the given environment variable.
    async fn with_env_variable(
        &self,
        name: String,
        value: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        self.config(ConfigChange::SetEnv {
            name,
            value,
            expand,
        })
    }

    /// Retrieves this container minus the given environment variable.
    async fn without_env_variable(&self, name: String) -> Container {
        self.config(ConfigChange::UnsetEnv { name })
    }

    /// Retrieves this container with a different working directory.
    async fn with_workdir(
        &self,
        path: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        self.config(ConfigChange::Workdir { path, expand })
    }

    /// Retrieves this container with an unset working directory.
    ///
    /// Should default to "/".
    async fn without_workdir(&self) -> Container {
        self.config(ConfigChange::NoWorkdir)
    }

    /// Retrieves this container with a different command user.
    async fn with_user(&self, name: String) -> Container {
        self.config(ConfigChange::User { name })
    }

    /// Retrieves this container with an unset command user.
    ///
    /// Should default to root.
    async fn without_user(&self) -> Container {
        self.config(ConfigChange::NoUser)
    }

    /// Retrieves this container but with a different command entrypoint.
    async fn with_entrypoint(
        &self,
        args: Vec<String>,
        #[graphql(default = false)] keep_default_args: bool,
    ) -> Container {
        self.config(ConfigChange::Entrypoint {
            args,
            keep_default_args,
        })
    }

    /// Reset the container's OCI entrypoint.
    async fn without_entrypoint(
        &self,
        #[graphql(default = false)] keep_default_args: bool,
    ) -> Container {
        self.config(ConfigChange::NoEntrypoint { keep_default_args })
    }

    /// Configures default arguments for future commands.
    async fn with_default_args(&self, args: Vec<String>) -> Container {
        self.config(ConfigChange::DefaultArgs { args })
    }

    /// Retrieves this container with unset default arguments for future commands.
    async fn without_default_args(&self) -> Container {
        self.config(ConfigChange::NoDefaultArgs)
    }

    /// Retrieves this container plus the given label.
    async fn with_label(&self, name: String, value: String) -> Container {
        self.config(ConfigChange::Label { name, value })
    }

    /// Expose a network port. Metadata only: it is recorded in the image config (services,
    /// which would use it, are not served).
    async fn with_exposed_port(
        &self,
        port: i32,
        #[graphql(default_with = "NetworkProtocol::Tcp")] protocol: NetworkProtocol,
        description: Option<String>,
    ) -> Result<Container> {
        if !(1..=65535).contains(&port) {
            return Err(super::gql_error(
                crate::ErrorKind::InvalidArgument,
                format!("port {port} is out of range 1-65535"),
            ));
        }
        Ok(self.config(ConfigChange::ExposePort {
            port,
            protocol: protocol_name(protocol).into(),
            description,
        }))
    }

    /// Unexpose a previously exposed port.
    async fn without_exposed_port(
        &self,
        port: i32,
        #[graphql(default_with = "NetworkProtocol::Tcp")] protocol: NetworkProtocol,
    ) -> Container {
        self.config(ConfigChange::UnexposePort {
            port,
            protocol: protocol_name(protocol).into(),
        })
    }

    /// Retrieves this container minus the given label.
    async fn without_label(&self, name: String) -> Container {
        self.config(ConfigChange::NoLabel { name })
    }

    /// Retrieves the list of environment variables passed to commands.
    async fn env_variables(&self, ctx: &Context<'_>) -> Result<Vec<EnvVariable>> {
        Ok(self
            .value(ctx)
            .await?
            .config
            .env
            .iter()
            .map(|kv| {
                let (name, value) = kv.split_once('=').unwrap_or((kv, ""));
                EnvVariable {
                    name: name.into(),
                    value: value.into(),
                }
            })
            .collect())
    }

    /// Retrieves the value of the specified environment variable.
    async fn env_variable(&self, ctx: &Context<'_>, name: String) -> Result<Option<String>> {
        let v = self.value(ctx).await?;
        let value = crate::util::env_lookup(&v.config.env)(&name);
        Ok(value)
    }

    /// Return the container's entrypoint.
    async fn entrypoint(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        Ok(self.value(ctx).await?.config.entrypoint.clone())
    }

    /// Return the container's default arguments.
    async fn default_args(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        Ok(self.value(ctx).await?.config.cmd.clone())
    }

    /// Retrieves the working directory for all commands.
    async fn workdir(&self, ctx: &Context<'_>) -> Result<String> {
        Ok(self.value(ctx).await?.config.workdir.clone())
    }

    /// Retrieves the user to be set for all commands.
    async fn user(&self, ctx: &Context<'_>) -> Result<String> {
        Ok(self.value(ctx).await?.config.user.clone())
    }

    /// Retrieves the list of labels passed to container.
    async fn labels(&self, ctx: &Context<'_>) -> Result<Vec<Label>> {
        Ok(self
            .value(ctx)
            .await?
            .config
            .labels
            .iter()
            .map(|(name, value)| Label {
                name: name.clone(),
                value: value.clone(),
            })
            .collect())
    }

    /// Retrieves the value of the specified label.
    async fn label(&self, ctx: &Context<'_>, name: String) -> Result<Option<String>> {
        Ok(self.value(ctx).await?.config.labels.get(&name).cloned())
    }

    /// Package the container state as an OCI image, and publish it to a registry.
    ///
    /// Returns the fully qualified address of the published image, with digest.
    async fn publish(
        &self,
        ctx: &Context<'_>,
        address: String,
        #[graphql(
            default,
            desc = "Identifiers for other platform specific containers. Used for multi-platform image."
        )]
        platform_variants: Vec<ID>,
        #[graphql(
            desc = "Force each layer of the published image to use the specified compression algorithm. If this is unset, then if a layer already has a compressed blob in the engine's cache, that will be used (this can result in a mix of compression algorithms for different layers). If this is unset and a layer has no compressed blob in the engine's cache, then it will be compressed using Gzip."
        )]
        forced_compression: Option<ImageLayerCompression>,
        #[graphql(
            default,
            desc = "Use the specified media types for the published image's layers. Defaults to OCI, which is largely compatible with most recent registries, but Docker may be needed for older registries without OCI support."
        )]
        media_types: ImageMediaTypes,
    ) -> Result<String> {
        publish_image(
            ctx,
            self,
            &address,
            &platform_variants,
            forced_compression,
            media_types,
        )
        .await
    }

    /// Retrieves the list of exposed ports.
    async fn exposed_ports(&self, ctx: &Context<'_>) -> Result<Vec<Port>> {
        let v = self.value(ctx).await?;
        Ok(v.config
            .exposed_ports
            .iter()
            .filter_map(|p| {
                let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                Some(Port {
                    port: num.parse().ok()?,
                    protocol: if proto.eq_ignore_ascii_case("udp") {
                        NetworkProtocol::Udp
                    } else {
                        NetworkProtocol::Tcp
                    },
                    description: v.config.port_descriptions.get(p).cloned(),
                })
            })
            .collect())
    }
}

/// Builds the image of `container` and its `variants` (containers without a root filesystem
/// are left out, as in Dagger) and pushes it to `address`. Not memoised: every call pushes.
async fn publish_image(
    ctx: &Context<'_>,
    container: &Container,
    address: &str,
    variants: &[ID],
    compression: Option<ImageLayerCompression>,
    media: ImageMediaTypes,
) -> Result<String> {
    let state = super::state(ctx);
    let reference = crate::oci::Reference::parse(address)
        .map_err(|e| super::gql_error(crate::ErrorKind::InvalidArgument, e.to_string()))?;
    let mut nodes = vec![container.0.clone()];
    for id in variants {
        nodes.push(super::node::load_container(id.as_str())?.0);
    }
    let values =
        futures_util::future::try_join_all(nodes.iter().map(|n| state.solver.container(n)))
            .await
            .map_err(|e| solve_error(&e))?;
    let mut specs = Vec::new();
    for v in values.iter().filter(|v| v.rootfs.is_some()) {
        specs.push(crate::image::ImageSpec {
            platform: crate::oci::Platform::parse(&v.platform)
                .map_err(|e| super::gql_error(crate::ErrorKind::Internal, e.to_string()))?,
            config: v.config.clone(),
            rootfs: v.rootfs.clone(),
        });
    }
    if specs.is_empty() {
        return Err(super::gql_error(
            crate::ErrorKind::InvalidArgument,
            "nothing to publish: the container has no root filesystem (start from an image or add files)".into(),
        ));
    }
    let images = state.solver.images();
    let built = images
        .build_image(&specs, compression.map(Into::into), media.into())
        .await
        .map_err(|e| super::classified(&e))?;
    // The container's `withRegistryAuth` credentials, for this push only.
    let auth = state
        .solver
        .registry_auth(&container.0)
        .map_err(|e| solve_error(&e))?;
    let digest = images
        .push_with_auth(&reference, &built, &auth)
        .await
        .map_err(|e| super::classified(&e))?;
    Ok(published_name(address, &reference, &digest))
}

/// The registry host a `withRegistryAuth` address names.
fn registry_auth_host(address: &str) -> Result<String> {
    crate::registry::auth_address_host(address)
        .map_err(|m| super::gql_error(crate::ErrorKind::InvalidArgument, m))
}

/// What `publish` returns, as Dagger does: the normalised name, the tag only when the address
/// gave one, and the digest (`127.0.0.1:5000/app:v1@sha256:...`).
fn published_name(
    address: &str,
    reference: &crate::oci::Reference,
    digest: &crate::oci::Digest,
) -> String {
    let name_part = address.split('@').next().unwrap_or(address);
    let last = name_part.rsplit('/').next().unwrap_or(name_part);
    match (&reference.tag, last.contains(':')) {
        (Some(tag), true) => format!("{}:{tag}@{digest}", reference.name()),
        _ => format!("{}@{digest}", reference.name()),
    }
}

fn protocol_name(p: NetworkProtocol) -> &'static str {
    match p {
        NetworkProtocol::Tcp => "tcp",
        NetworkProtocol::Udp => "udp",
    }
}

#[cfg(test)]
mod publish_tests {
    use super::published_name;
    use crate::oci::{Digest, Reference};

    #[test]
    fn published_names_keep_only_a_given_tag() {
        let d = Digest::of(b"x");
        let name = |a: &str| published_name(a, &Reference::parse(a).unwrap(), &d);
        assert_eq!(
            name("127.0.0.1:5000/app:v1"),
            format!("127.0.0.1:5000/app:v1@{d}")
        );
        assert_eq!(
            name("127.0.0.1:5000/app"),
            format!("127.0.0.1:5000/app@{d}")
        );
        assert_eq!(name("alpine"), format!("docker.io/library/alpine@{d}"));
        assert_eq!(
            name("localhost:5000/team/app:latest"),
            format!("localhost:5000/team/app:latest@{d}")
        );
    }
}
