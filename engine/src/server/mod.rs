//! Listeners and the HTTP front: GraphQL at `POST /query` on every configured unix and tcp
//! address, JSON for every answer, graceful shutdown.

pub mod dial_stdio;
mod http;
mod sessions;
mod sockets;
mod upload;

pub use http::router;
pub use sockets::routes as socket_routes;
pub use upload::routes as upload_routes;

use crate::config::{GrpcConfig, ListenAddr};
use crate::error::{Classify, ErrorKind};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};

/// How long in-flight requests may run after a shutdown signal before the engine exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: another engine is already serving that socket")]
    InUse { addr: String },
    #[error("[grpc.tls] is configured, but this engine does not serve TLS yet; remove [grpc.tls] and keep tcp listeners on loopback or behind a TLS-terminating proxy")]
    TlsUnsupported,
}

impl Classify for ServerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServerError::Bind { .. } => ErrorKind::Unavailable,
            ServerError::InUse { .. } => ErrorKind::AlreadyExists,
            ServerError::TlsUnsupported => ErrorKind::InvalidArgument,
        }
    }
}

/// A bound listener, ready to serve.
pub enum Listener {
    Unix { path: PathBuf, inner: UnixListener },
    Tcp { addr: String, inner: TcpListener },
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix { path, .. } => format!("unix://{}", path.display()),
            Listener::Tcp { inner, addr } => match inner.local_addr() {
                Ok(a) => format!("tcp://{a}"),
                Err(_) => format!("tcp://{addr}"),
            },
        }
    }
}

/// Binds every configured address. Nothing is served until [`serve`]; if any address fails,
/// the sockets bound so far are removed again.
pub async fn bind(grpc: &GrpcConfig) -> Result<Vec<Listener>, ServerError> {
    if grpc.tls.is_some() {
        return Err(ServerError::TlsUnsupported);
    }
    let mut bound = Vec::new();
    for addr in &grpc.addresses {
        let result = match addr {
            ListenAddr::Unix(path) => bind_unix(path, grpc.uid, grpc.gid).await,
            ListenAddr::Tcp(hostport) => bind_tcp(hostport).await,
        };
        match result {
            Ok(l) => bound.push(l),
            Err(e) => {
                remove_sockets(&bound);
                return Err(e);
            }
        }
    }
    Ok(bound)
}

async fn bind_unix(
    path: &Path,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<Listener, ServerError> {
    let addr = format!("unix://{}", path.display());
    let bind_err = |source| ServerError::Bind {
        addr: addr.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_err)?;
    }
    if path.exists() {
        // A socket that still answers belongs to a live engine; a dead one is left over from a
        // crash and is safe to replace.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse { addr });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let inner = UnixListener::bind(path).map_err(bind_err)?;
    let setup = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).and_then(
        |_| match (uid, gid) {
            (None, None) => Ok(()),
            _ => crate::sys::chown(path, uid, gid),
        },
    );
    if let Err(e) = setup {
        let _ = std::fs::remove_file(path);
        return Err(bind_err(e));
    }
    Ok(Listener::Unix {
        path: path.to_path_buf(),
        inner,
    })
}

async fn bind_tcp(hostport: &str) -> Result<Listener, ServerError> {
    let inner = TcpListener::bind(hostport)
        .await
        .map_err(|source| ServerError::Bind {
            addr: format!("tcp://{hostport}"),
            source,
        })?;
    Ok(Listener::Tcp {
        addr: hostport.to_string(),
        inner,
    })
}

fn remove_sockets(listeners: &[Listener]) {
    for l in listeners {
        if let Listener::Unix { path, .. } = l {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves `router` on every listener until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to a grace period) and removes the unix sockets.
pub async fn serve(
    listeners: Vec<Listener>,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sockets = Vec::new();
    for l in listeners {
        let desc = l.describe();
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let app = router.clone();
        match l {
            Listener::Unix { path, inner } => {
                sockets.push(path);
                tasks.spawn(async move {
                    let r = axum::serve(inner, app).with_graceful_shutdown(stop).await;
                    (desc, r)
                });
            }
            Listener::Tcp { inner, .. } => {
                tasks.spawn(async move {
                    let r = axum::serve(inner, app).with_graceful_shutdown(stop).await;
                    (desc, r)
                });
            }
        }
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections, waiting for running requests");
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            if let Ok((desc, Err(e))) = done {
                tracing::warn!("listener {desc} ended with an error: {e}");
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            "requests still running after {}s; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        );
        tasks.abort_all();
    }
    for path in sockets {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove socket {}: {e}", path.display());
            }
        }
    }
}
