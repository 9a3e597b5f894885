//! A small GraphQL-over-HTTP client for the engine's unix and tcp listeners.

use anyhow::{anyhow, Context as _};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// How the CLI reaches an engine's HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(hp) => write!(f, "tcp://{hp}"),
        }
    }
}

/// Anything the CLI can speak HTTP over to the engine.
pub trait EngineIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> EngineIo for T {}

/// A fresh connection to the engine, over whichever transport its endpoint names.
pub type EngineStream = Box<dyn EngineIo>;

impl Endpoint {
    /// Opens a new connection to the engine (TCP with `TCP_NODELAY`).
    pub async fn connect(&self) -> anyhow::Result<EngineStream> {
        let cannot = || format!("cannot connect to the engine at {self}");
        Ok(match self {
            Endpoint::Unix(p) => Box::new(UnixStream::connect(p).await.with_context(cannot)?),
            Endpoint::Tcp(hostport) => {
                let stream = TcpStream::connect(hostport).await.with_context(cannot)?;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
        })
    }

    /// The `Host` header for a request to the engine here.
    pub fn host_header(&self) -> &str {
        match self {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Tcp(hostport) => hostport.as_str(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    /// The driver's local socket behind `endpoint` (`docker-container://` and the like), kept
    /// open as long as a clone of this client lives.
    _tunnel: Option<std::sync::Arc<crate::drivers::Tunnel>>,
}

/// The engine's JSON answer with the HTTP status it came with.
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Client {
            endpoint,
            _tunnel: None,
        }
    }

    /// A client for a driver's local socket, which stays open while the client lives.
    pub fn with_tunnel(endpoint: Endpoint, tunnel: std::sync::Arc<crate::drivers::Tunnel>) -> Self {
        Client {
            endpoint,
            _tunnel: Some(tunnel),
        }
    }

    /// Sends one GraphQL document and returns the JSON answer, whatever its status.
    pub async fn query(&self, document: &str) -> anyhow::Result<Answer> {
        let body = serde_json::to_vec(&serde_json::json!({ "query": document }))?;
        let (status, bytes) = self
            .send(hyper::Method::POST, "/query", "application/json", body)
            .await?;
        let body = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the engine at {} answered HTTP {status} with a body that is not JSON: {}",
                self.endpoint,
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        })?;
        Ok(Answer { status, body })
    }

    /// One HTTP request to the engine on a fresh connection: the status and the whole body.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let request = |host: &str| {
            Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, host)
                .header(hyper::header::CONTENT_TYPE, content_type)
                .header(hyper::header::ACCEPT, "application/json")
                .body(Full::new(Bytes::from(body.clone())))
        };
        let stream = self.connect().await?;
        exchange(stream, request(self.endpoint.host_header())?).await
    }

    /// Opens a new connection to the engine.
    pub async fn connect(&self) -> anyhow::Result<EngineStream> {
        self.endpoint.connect().await
    }

    /// Whether an engine answers `{ version }` here within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Option<String> {
        let answer = tokio::time::timeout(timeout, self.query("{ version }"))
            .await
            .ok()?
            .ok()?;
        answer.body["data"]["version"].as_str().map(String::from)
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the engine failed")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| anyhow!("the engine closed the connection: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the engine's answer")?
        .to_bytes();
    Ok((status, bytes))
}
