//! `Container`, with the values it carries from its image config.

use super::directory::{Directory, File};
use super::enums::{ExistsType, NetworkProtocol};
use super::fs::{self, join, with_root};
use super::{gql_error, ApiState, PlatformScalar};
use crate::image::ImageConfig;
use crate::oci::{Platform, Reference};
use crate::snapshot::SnapshotId;
use async_graphql::{Context, Object, Result, SimpleObject};
use std::sync::Arc;

/// An OCI-compatible container, also known as a Docker container.
#[derive(Clone)]
pub struct Container(pub(crate) Arc<ContainerState>);

#[derive(Clone, Debug)]
pub(crate) struct ContainerState {
    pub platform: Platform,
    pub rootfs: Option<SnapshotId>,
    pub config: ImageConfig,
    /// Set right after `from`; cleared by changes.
    pub image_ref: Option<String>,
}

impl Container {
    pub(crate) fn scratch(platform: Platform) -> Self {
        Container(Arc::new(ContainerState {
            platform,
            rootfs: None,
            config: ImageConfig::default(),
            image_ref: None,
        }))
    }

    /// A changed copy: the image reference no longer describes it.
    fn with(&self, f: impl FnOnce(&mut ContainerState)) -> Container {
        let mut next = (*self.0).clone();
        next.image_ref = None;
        f(&mut next);
        Container(Arc::new(next))
    }

    fn expand(&self, s: String, expand: bool) -> String {
        if expand {
            crate::util::expand(&s, crate::util::env_lookup(&self.0.config.env))
        } else {
            s
        }
    }

    fn cwd(&self) -> &str {
        if self.0.config.workdir.is_empty() {
            "/"
        } else {
            &self.0.config.workdir
        }
    }
}

fn env_name(kv: &str) -> &str {
    kv.split_once('=').map(|(k, _)| k).unwrap_or(kv)
}

/// An environment variable name and value.
#[derive(SimpleObject, Clone)]
pub struct EnvVariable {
    /// The environment variable name.
    pub name: String,
    /// The environment variable value.
    pub value: String,
}

/// A simple key value object that represents a label.
#[derive(SimpleObject, Clone)]
pub struct Label {
    /// The label name.
    pub name: String,
    /// The label value.
    pub value: String,
}

/// A port exposed by a container.
#[derive(SimpleObject, Clone)]
pub struct Port {
    /// The port number.
    pub port: i32,
    /// The transport layer protocol.
    pub protocol: NetworkProtocol,
    /// The port description.
    pub description: Option<String>,
    /// Skip the health check when run as a service.
    pub experimental_skip_healthcheck: bool,
}

#[Object]
impl Container {
    /// Initializes this container from a pulled base image.
    async fn from(&self, ctx: &Context<'_>, address: String) -> Result<Container> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let reference = Reference::parse(&address)
            .map_err(|e| gql_error(crate::ErrorKind::InvalidArgument, e.to_string()))?;
        let image = state
            .images
            .pull(&reference, &self.0.platform)
            .await
            .map_err(|e| super::classified(&*e))?;
        Ok(Container(Arc::new(ContainerState {
            platform: self.0.platform.clone(),
            rootfs: image.rootfs.clone(),
            config: image.config.clone(),
            image_ref: Some(image.reference.to_string()),
        })))
    }

    /// The platform this container executes and publishes as.
    async fn platform(&self) -> PlatformScalar {
        PlatformScalar(self.0.platform.clone())
    }

    /// The unique image reference which can only be retrieved immediately after the 'Container.From' call.
    async fn image_ref(&self) -> Result<String> {
        self.0.image_ref.clone().ok_or_else(|| {
            gql_error(
                crate::ErrorKind::InvalidArgument,
                "Image reference can only be retrieved immediately after the 'Container.From' call"
                    .into(),
            )
        })
    }

    /// Retrieves this container's root filesystem. Mounts are not included.
    async fn rootfs(&self) -> Directory {
        Directory::new(self.0.rootfs.clone(), "/".into())
    }

    /// Retrieves a directory at the given path. Mounts are included.
    async fn directory(&self, ctx: &Context<'_>, path: String) -> Result<Directory> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let abs = join(self.cwd(), &path);
        let check = abs.clone();
        with_root(
            state.images.snapshotter(),
            self.0.rootfs.clone(),
            move |root| fs::require_dir(root, &check),
        )
        .await
        .map_err(|e| super::classified(&e))?;
        Ok(Directory::new(self.0.rootfs.clone(), abs))
    }

    /// Retrieves a file at the given path. Mounts are included.
    async fn file(&self, ctx: &Context<'_>, path: String) -> Result<File> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let abs = join(self.cwd(), &path);
        let check = abs.clone();
        with_root(
            state.images.snapshotter(),
            self.0.rootfs.clone(),
            move |root| fs::require_file(root, &check),
        )
        .await
        .map_err(|e| super::classified(&e))?;
        Ok(File::new(self.0.rootfs.clone(), abs))
    }

    /// check if a file or directory exists
    async fn exists(
        &self,
        ctx: &Context<'_>,
        path: String,
        expected_type: Option<ExistsType>,
        #[graphql(default = false)] do_not_follow_symlinks: bool,
    ) -> Result<bool> {
        let abs = join(self.cwd(), &path);
        Directory::new(self.0.rootfs.clone(), "/".into())
            .exists_at(ctx, abs, expected_type, do_not_follow_symlinks)
            .await
    }

    /// Retrieves this container plus the given environment variable.
    async fn with_env_variable(
        &self,
        name: String,
        value: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        let value = self.expand(value, expand);
        self.with(|s| {
            let entry = format!("{name}={value}");
            match s.config.env.iter_mut().find(|kv| env_name(kv) == name) {
                Some(existing) => *existing = entry,
                None => s.config.env.push(entry),
            }
        })
    }

    /// Retrieves this container minus the given environment variable.
    async fn without_env_variable(&self, name: String) -> Container {
        self.with(|s| s.config.env.retain(|kv| env_name(kv) != name))
    }

    /// Retrieves this container with a different working directory.
    async fn with_workdir(
        &self,
        path: String,
        #[graphql(default = false)] expand: bool,
    ) -> Container {
        let path = join(self.cwd(), &self.expand(path, expand));
        self.with(|s| s.config.workdir = path)
    }

    /// Retrieves this container with an unset working directory.
    ///
    /// Should default to "/".
    async fn without_workdir(&self) -> Container {
        self.with(|s| s.config.workdir.clear())
    }

    /// Retrieves this container with a different command user.
    async fn with_user(&self, name: String) -> Container {
        self.with(|s| s.config.user = name)
    }

    /// Retrieves this container with an unset command user.
    ///
    /// Should default to root.
    async fn without_user(&self) -> Container {
        self.with(|s| s.config.user.clear())
    }

    /// Retrieves this container but with a different command entrypoint.
    async fn with_entrypoint(
        &self,
        args: Vec<String>,
        #[graphql(default = false)] keep_default_args: bool,
    ) -> Container {
        self.with(|s| {
            s.config.entrypoint = args;
            if !keep_default_args {
                s.config.cmd.clear();
            }
        })
    }

    /// Reset the container's OCI entrypoint.
    async fn without_entrypoint(
        &self,
        #[graphql(default = false)] keep_default_args: bool,
    ) -> Container {
        self.with(|s| {
            s.config.entrypoint.clear();
            if !keep_default_args {
                s.config.cmd.clear();
            }
        })
    }

    /// Configures default arguments for future commands.
    async fn with_default_args(&self, args: Vec<String>) -> Container {
        self.with(|s| s.config.cmd = args)
    }

    /// Retrieves this container with unset default arguments for future commands.
    async fn without_default_args(&self) -> Container {
        self.with(|s| s.config.cmd.clear())
    }

    /// Retrieves this container plus the given label.
    async fn with_label(&self, name: String, value: String) -> Container {
        self.with(|s| {
            s.config.labels.insert(name, value);
        })
    }

    /// Retrieves this container minus the given label.
    async fn without_label(&self, name: String) -> Container {
        self.with(|s| {
            s.config.labels.remove(&name);
        })
    }

    /// Retrieves the list of environment variables passed to commands.
    async fn env_variables(&self) -> Vec<EnvVariable> {
        self.0
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
            .collect()
    }

    /// Retrieves the value of the specified environment variable.
    async fn env_variable(&self, name: String) -> Option<String> {
        self.0.config.env.iter().rev().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    }

    /// Return the container's entrypoint.
    async fn entrypoint(&self) -> Vec<String> {
        self.0.config.entrypoint.clone()
    }

    /// Return the container's default arguments.
    async fn default_args(&self) -> Vec<String> {
        self.0.config.cmd.clone()
    }

    /// Retrieves the working directory for all commands.
    async fn workdir(&self) -> String {
        self.0.config.workdir.clone()
    }

    /// Retrieves the user to be set for all commands.
    async fn user(&self) -> String {
        self.0.config.user.clone()
    }

    /// Retrieves the list of labels passed to container.
    async fn labels(&self) -> Vec<Label> {
        self.0
            .config
            .labels
            .iter()
            .map(|(name, value)| Label {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    }

    /// Retrieves the value of the specified label.
    async fn label(&self, name: String) -> Option<String> {
        self.0.config.labels.get(&name).cloned()
    }

    /// Retrieves the list of exposed ports.
    async fn exposed_ports(&self) -> Vec<Port> {
        self.0
            .config
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
                    description: None,
                    experimental_skip_healthcheck: false,
                })
            })
            .collect()
    }
}
