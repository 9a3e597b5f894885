//! `CacheVolume`, `Secret` and `Socket`: what execs and sources use, by ID.

use super::gql_error;
use crate::solver::id;
use crate::solver::node::{CacheVolumeNode, SecretNode};
use async_graphql::{Context, Object, Result, ID};

/// A directory whose contents persist across runs.
#[derive(Clone)]
pub struct CacheVolume(pub(crate) CacheVolumeNode);

#[Object]
impl CacheVolume {
    /// A unique identifier for this CacheVolume.
    pub async fn id(&self) -> ID {
        ID(id::encode("CacheVolume", &self.0))
    }
}

/// A reference to a secret value, which can be handled more safely than the value itself.
#[derive(Clone)]
pub struct Secret(pub(crate) SecretNode);

/// A unix socket on the client's machine (`Host.unixSocket`), reached through its session;
/// see [`crate::sockets`]. The handle is the capability.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Socket {
    pub(crate) handle: String,
}

impl Socket {
    /// The ID of the socket registered under `handle`.
    pub fn id_for(handle: &str) -> String {
        id::encode(
            "Socket",
            &Socket {
                handle: handle.to_string(),
            },
        )
    }
}

#[Object]
impl Socket {
    /// A unique identifier for this Socket.
    pub async fn id(&self) -> ID {
        ID(id::encode("Socket", self))
    }
}

#[Object]
impl Secret {
    /// A unique identifier for this Secret.
    pub async fn id(&self) -> ID {
        ID(id::encode("Secret", &self.0))
    }

    /// The name of this secret.
    async fn name(&self) -> String {
        match &self.0 {
            SecretNode::Set { name, .. } => name.clone(),
        }
    }

    /// The value of this secret.
    async fn plaintext(&self, ctx: &Context<'_>) -> Result<String> {
        let state = super::state(ctx);
        let value = state
            .solver
            .secret_plaintext(&self.0)
            .map_err(|e| super::solve_error(&e))?;
        String::from_utf8(value).map_err(|_| {
            gql_error(
                crate::ErrorKind::InvalidArgument,
                "the secret is not valid UTF-8".into(),
            )
        })
    }

    /// The URI of this secret.
    async fn uri(&self) -> String {
        match &self.0 {
            // The dagger CLI names a secret it read from `env://X` or `file://P` by that URI.
            SecretNode::Set { name, .. } if name.contains("://") => name.clone(),
            SecretNode::Set { name, .. } => format!("name://{name}"),
        }
    }
}
