//! `Query.host`: declared so introspecting SDKs (Python builds queries from the schema) can
//! build host queries. The engine never reads the client's disk: `dagger session` (the CLI,
//! next to the client's files) answers these fields itself, after uploading the path to
//! `POST /upload`, registering a socket at `POST /sockets` or handing a file's contents over
//! with `setSecret`. Reaching the engine directly, they fail clearly.

use super::{Directory, File};
use crate::error::ErrorKind;
use async_graphql::{Object, Result};

pub struct Host;

fn served_by_session(field: &str) -> async_graphql::Error {
    super::gql_error(
        ErrorKind::InvalidArgument,
        format!(
            "Host.{field} is served by `dagger session` (the CLI uploads the client's files); \
             the engine cannot read the client's disk"
        ),
    )
}

/// Information about the host environment.
#[Object(name = "Host")]
impl Host {
    /// Accesses a directory on the host.
    #[allow(unused_variables)]
    async fn directory(
        &self,
        path: String,
        exclude: Option<Vec<String>>,
        include: Option<Vec<String>>,
        no_cache: Option<bool>,
        gitignore: Option<bool>,
    ) -> Result<Directory> {
        Err(served_by_session("directory"))
    }

    /// Accesses a file on the host.
    #[allow(unused_variables)]
    async fn file(&self, path: String, no_cache: Option<bool>) -> Result<File> {
        Err(served_by_session("file"))
    }

    /// Accesses a Unix socket on the host.
    #[allow(unused_variables)]
    async fn unix_socket(&self, path: String) -> Result<super::Socket> {
        Err(served_by_session("unixSocket"))
    }

    /// Sets a secret given a user-defined name and the file path on the host, and returns the
    /// secret.
    #[allow(unused_variables)]
    async fn set_secret_file(&self, name: String, path: String) -> Result<super::Secret> {
        Err(served_by_session("setSecretFile"))
    }
}
