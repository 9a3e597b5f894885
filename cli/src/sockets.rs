//! `Host.unixSocket` for the session: the engine cannot dial this machine, so the session
//! registers the socket with the engine (`POST /sockets`) and keeps polling
//! `GET /sockets/<handle>/accept`. Each connection the engine wants is opened here, to the
//! local socket, and joined to an upgraded HTTP connection to the engine
//! (`GET /sockets/<handle>/conns/<n>`, `Upgrade: dagger-socket`). See the engine's
//! `sockets` module for the other half.

use crate::client::Client;
use anyhow::{anyhow, bail, Context as _};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UnixStream;

const PROTOCOL: &str = "dagger-socket";

/// Registers a socket with the engine; returns its ID and handle.
pub async fn register(client: &Client) -> anyhow::Result<(String, String)> {
    let (status, body) = client
        .send(
            hyper::Method::POST,
            "/sockets",
            "application/json",
            Vec::new(),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("the engine answered POST /sockets with HTTP {status}"))?;
    match (v["id"].as_str(), v["handle"].as_str()) {
        (Some(id), Some(handle)) if status == 200 => Ok((id.to_string(), handle.to_string())),
        _ => bail!("the engine refused to register a socket (HTTP {status}): {v}"),
    }
}

/// Serves the engine's connections to `handle` from `path` for as long as this process lives
/// (or until the engine forgets the socket).
pub fn spawn_forwarder(client: Client, handle: String, path: PathBuf) {
    tokio::spawn(async move {
        loop {
            let polled = client
                .send(
                    hyper::Method::GET,
                    &format!("/sockets/{handle}/accept"),
                    "application/json",
                    Vec::new(),
                )
                .await;
            match polled {
                Ok((200, body)) => {
                    let conn = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["conn"].as_u64());
                    if let Some(conn) = conn {
                        let (client, handle, path) = (client.clone(), handle.clone(), path.clone());
                        tokio::spawn(async move {
                            if let Err(e) = forward(&client, &handle, conn, &path).await {
                                eprintln!("dagger session: socket {}: {e:#}", path.display());
                            }
                        });
                    }
                }
                // The engine forgot the socket (restarted, or we stopped polling too long).
                Ok((404, _)) => return,
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
}

/// One connection: the local socket joined to an upgraded connection to the engine.
async fn forward(client: &Client, handle: &str, conn: u64, path: &PathBuf) -> anyhow::Result<()> {
    let mut local = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))?;
    let uri = format!("/sockets/{handle}/conns/{conn}");
    let stream = client.connect().await?;
    let mut remote = upgrade(stream, client.endpoint.host_header(), &uri).await?;
    tokio::io::copy_bidirectional(&mut local, &mut remote).await?;
    Ok(())
}

async fn upgrade<S>(
    stream: S,
    host: &str,
    uri: &str,
) -> anyhow::Result<TokioIo<hyper::upgrade::Upgraded>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = Request::builder()
        .method(hyper::Method::GET)
        .uri(uri)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, PROTOCOL)
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(anyhow!(
            "the engine did not accept the socket connection (HTTP {})",
            resp.status()
        ));
    }
    Ok(TokioIo::new(hyper::upgrade::on(resp).await?))
}
