//! The operation graph. Every API object is an immutable node: how to compute it from other
//! nodes, never the computed value. Nodes serialize deterministically (they are IDs), and
//! two nodes built by the same calls are equal.

use serde::{Deserialize, Serialize};

/// A container: a base and the calls applied to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ContainerNode {
    /// `Query.container(platform)`.
    Scratch { platform: String },
    /// `Container.from(address)`.
    From {
        parent: Box<ContainerNode>,
        address: String,
    },
    /// Changes to the image config (env, workdir, user, entrypoint, args, labels).
    Config {
        parent: Box<ContainerNode>,
        change: ConfigChange,
    },
    /// `Container.withExec(...)`.
    Exec {
        parent: Box<ContainerNode>,
        exec: ExecArgs,
    },
    /// `withMounted*`: something mounted into later execs (not part of the rootfs).
    Mount {
        parent: Box<ContainerNode>,
        mount: MountSpec,
    },
    /// `withoutMount(path)`.
    Unmount {
        parent: Box<ContainerNode>,
        path: String,
        expand: bool,
    },
    /// `withSecretVariable(name, secret)`.
    SecretEnv {
        parent: Box<ContainerNode>,
        name: String,
        secret: SecretNode,
    },
    /// `withoutSecretVariable(name)`.
    NoSecretEnv {
        parent: Box<ContainerNode>,
        name: String,
    },
    /// `withNewFile`, `withFile(s)`, `withDirectory`, `without*`, `withSymlink`: a change to
    /// the rootfs; paths are relative to the workdir, `$VAR`s expanded when `expand`.
    Fs {
        parent: Box<ContainerNode>,
        change: FsChange,
        expand: bool,
    },
    /// `withRootfs(directory)`.
    WithRootfs {
        parent: Box<ContainerNode>,
        directory: Box<DirectoryNode>,
    },
    /// `Container.import(source, tag)`: the image in an OCI or Docker tarball.
    Import {
        parent: Box<ContainerNode>,
        source: Box<FileNode>,
        tag: String,
    },
    /// `withRegistryAuth(address, username, secret)`: credentials for the registry host
    /// `address` names (normalised, e.g. `docker.io`, `127.0.0.1:5000`), used by the `from`
    /// pulls and `publish` pushes of this container and the ones built on it. Only the
    /// secret's salted handle is in the node.
    RegistryAuth {
        parent: Box<ContainerNode>,
        address: String,
        username: String,
        secret: SecretNode,
    },
    /// `withoutRegistryAuth(address)`: no `withRegistryAuth` credentials for that host from
    /// here on (the engine's own credentials still apply).
    NoRegistryAuth {
        parent: Box<ContainerNode>,
        address: String,
    },
}

impl ContainerNode {
    /// The container this one is built on (`None` for `Scratch`).
    pub fn parent(&self) -> Option<&ContainerNode> {
        match self {
            ContainerNode::Scratch { .. } => None,
            ContainerNode::From { parent, .. }
            | ContainerNode::Config { parent, .. }
            | ContainerNode::Exec { parent, .. }
            | ContainerNode::Mount { parent, .. }
            | ContainerNode::Unmount { parent, .. }
            | ContainerNode::SecretEnv { parent, .. }
            | ContainerNode::NoSecretEnv { parent, .. }
            | ContainerNode::Fs { parent, .. }
            | ContainerNode::WithRootfs { parent, .. }
            | ContainerNode::Import { parent, .. }
            | ContainerNode::RegistryAuth { parent, .. }
            | ContainerNode::NoRegistryAuth { parent, .. } => Some(parent),
        }
    }
}

/// Layer compression asked for by `forcedCompression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageCompression {
    Gzip,
    Zstd,
    Uncompressed,
}

/// OCI or Docker media types (`mediaTypes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageMedia {
    Oci,
    Docker,
}

/// A mount for execs: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    pub path: String,
    pub expand: bool,
    pub source: MountSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum MountSource {
    Cache {
        volume: CacheVolumeNode,
        source: Option<Box<DirectoryNode>>,
        sharing: Sharing,
        owner: String,
    },
    Directory {
        source: Box<DirectoryNode>,
        read_only: bool,
    },
    File {
        source: Box<FileNode>,
    },
    Temp {
        size: Option<i64>,
    },
    Secret {
        secret: SecretNode,
        owner: String,
        mode: i32,
    },
}

/// A cache volume: persistent, shared storage identified by its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheVolumeNode {
    pub key: String,
}

/// How concurrent execs share a cache volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A secret. Its value is never part of the node (nodes are IDs, cache keys and logs):
/// `setSecret` values are held in engine memory under a salted digest. (`secret(uri)` is read
/// on the client's machine by the dagger CLI, which hands the value over with `setSecret`.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "camelCase")]
pub enum SecretNode {
    Set { name: String, handle: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "camelCase")]
pub enum ConfigChange {
    SetEnv {
        name: String,
        value: String,
        expand: bool,
    },
    UnsetEnv {
        name: String,
    },
    Workdir {
        path: String,
        expand: bool,
    },
    NoWorkdir,
    User {
        name: String,
    },
    NoUser,
    Entrypoint {
        args: Vec<String>,
        keep_default_args: bool,
    },
    NoEntrypoint {
        keep_default_args: bool,
    },
    DefaultArgs {
        args: Vec<String>,
    },
    NoDefaultArgs,
    Label {
        name: String,
        value: String,
    },
    NoLabel {
        name: String,
    },
    /// `withExposedPort`: image metadata only (services are not served).
    ExposePort {
        port: i32,
        protocol: String,
        description: Option<String>,
    },
    UnexposePort {
        port: i32,
        protocol: String,
    },
}

/// Expected outcome of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Expect {
    Success,
    Failure,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecArgs {
    pub args: Vec<String>,
    pub use_entrypoint: bool,
    pub stdin: String,
    pub redirect_stdin: String,
    pub redirect_stdout: String,
    pub redirect_stderr: String,
    pub expect: Expect,
    pub insecure_root_capabilities: bool,
    pub expand: bool,
    pub no_init: bool,
}

/// A directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum DirectoryNode {
    /// `Query.directory`: empty.
    Scratch,
    /// `Container.rootfs`.
    Rootfs { container: Box<ContainerNode> },
    /// `Container.directory(path)`: relative to the container's workdir.
    InContainer {
        container: Box<ContainerNode>,
        path: String,
    },
    /// `Directory.directory(path)`.
    Sub {
        parent: Box<DirectoryNode>,
        path: String,
    },
    /// A tree computed outside the graph (`GitRef.tree`): its snapshot, whole.
    Snapshot { snapshot: String },
    /// `Directory.with*`/`without*`: a filesystem change written into a new snapshot.
    Changed {
        parent: Box<DirectoryNode>,
        change: FsChange,
    },
    /// `Directory.diff(other)`: what `upper` adds or changes relative to `lower`.
    Diff {
        lower: Box<DirectoryNode>,
        upper: Box<DirectoryNode>,
    },
}

/// A file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum FileNode {
    /// `Container.file(path)`: relative to the container's workdir.
    InContainer {
        container: Box<ContainerNode>,
        path: String,
    },
    /// `Directory.file(path)`.
    InDirectory {
        directory: Box<DirectoryNode>,
        path: String,
    },
    /// `Query.file(name, contents, permissions)`: a file on its own.
    New {
        name: String,
        contents: String,
        permissions: i32,
    },
    /// `File.withName(name)`.
    Renamed { file: Box<FileNode>, name: String },
    /// `Container.asTarball(...)`: the container's image (and its platform variants) as an
    /// OCI layout tar that `docker load` also reads.
    AsTarball {
        container: Box<ContainerNode>,
        variants: Vec<ContainerNode>,
        compression: Option<ImageCompression>,
        media_types: ImageMedia,
    },
}

/// A filesystem change, as the API call gave it. Paths are resolved when it is evaluated
/// (against the directory, or the container's workdir with `$VAR` expansion).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum FsChange {
    NewFile {
        path: String,
        contents: String,
        permissions: i32,
        owner: String,
    },
    NewDirectory {
        path: String,
        permissions: i32,
    },
    File {
        path: String,
        source: Box<FileNode>,
        permissions: Option<i32>,
        owner: String,
    },
    Files {
        path: String,
        sources: Vec<FileNode>,
        permissions: Option<i32>,
        owner: String,
    },
    Directory {
        path: String,
        source: Box<DirectoryNode>,
        include: Vec<String>,
        exclude: Vec<String>,
        owner: String,
        permissions: Option<i32>,
    },
    /// `withoutFile(s)`, `withoutDirectory`: removal, whatever is there; `*` globs.
    Remove {
        paths: Vec<String>,
    },
    Symlink {
        target: String,
        link_name: String,
    },
}
