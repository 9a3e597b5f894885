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
}
