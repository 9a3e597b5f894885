//! The `Node` interface and loading objects back from their IDs.

use super::container::{Container, EnvVariable, Label, Port};
use super::directory::{Directory, File};
use super::gql_error;
use super::volumes::{CacheVolume, Secret, Socket};
use crate::solver::id::{self, IdError};
use crate::solver::node::{ContainerNode, DirectoryNode, FileNode};
use async_graphql::{Interface, ID};

/// An object with an ID.
#[derive(Interface)]
#[graphql(name = "Node", field(name = "id", ty = "ID"))]
pub enum NodeObject {
    Container(Container),
    Directory(Directory),
    File(File),
    EnvVariable(EnvVariable),
    Label(Label),
    Port(Port),
    CacheVolume(CacheVolume),
    Secret(Secret),
    Socket(Socket),
}

fn id_error(e: IdError) -> async_graphql::Error {
    gql_error(crate::ErrorKind::InvalidArgument, e.to_string())
}

/// The object an ID names, whatever its type.
pub(crate) fn load(raw: &str) -> async_graphql::Result<NodeObject> {
    let t = id::type_of(raw).map_err(id_error)?;
    Ok(match t {
        "Container" => NodeObject::Container(load_container(raw)?),
        "Directory" => NodeObject::Directory(load_directory(raw)?),
        "File" => NodeObject::File(load_file(raw)?),
        "EnvVariable" => NodeObject::EnvVariable(id::decode("EnvVariable", raw).map_err(id_error)?),
        "Label" => NodeObject::Label(id::decode("Label", raw).map_err(id_error)?),
        "Port" => NodeObject::Port(id::decode("Port", raw).map_err(id_error)?),
        "CacheVolume" => NodeObject::CacheVolume(load_cache_volume(raw)?),
        "Secret" => NodeObject::Secret(load_secret(raw)?),
        "Socket" => NodeObject::Socket(load_socket(raw)?),
        other => {
            return Err(id_error(IdError::Malformed(format!(
                "unknown object type {other:?}"
            ))))
        }
    })
}

pub(crate) fn load_container(raw: &str) -> async_graphql::Result<Container> {
    id::decode::<ContainerNode>("Container", raw)
        .map(Container::new)
        .map_err(id_error)
}

pub(crate) fn load_directory(raw: &str) -> async_graphql::Result<Directory> {
    id::decode::<DirectoryNode>("Directory", raw)
        .map(Directory::new)
        .map_err(id_error)
}

pub(crate) fn load_file(raw: &str) -> async_graphql::Result<File> {
    id::decode::<FileNode>("File", raw)
        .map(File::new)
        .map_err(id_error)
}

pub(crate) fn load_cache_volume(raw: &str) -> async_graphql::Result<CacheVolume> {
    id::decode("CacheVolume", raw)
        .map(CacheVolume)
        .map_err(id_error)
}

pub(crate) fn load_secret(raw: &str) -> async_graphql::Result<Secret> {
    id::decode("Secret", raw).map(Secret).map_err(id_error)
}

pub(crate) fn load_socket(raw: &str) -> async_graphql::Result<Socket> {
    id::decode("Socket", raw).map_err(id_error)
}

/// `ID` accepted as written, whatever the legacy per-type scalar it was sent as.
pub(crate) fn raw(id: &ID) -> &str {
    id.as_str()
}
