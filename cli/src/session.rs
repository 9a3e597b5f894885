//! `dagger session`: the local HTTP endpoint the SDKs talk to.
//!
//! The SDKs start `dagger session`, read one JSON line `{"port": N, "session_token": "T"}` from
//! its stdout and then send GraphQL to `http://127.0.0.1:N/query` with HTTP basic auth (user
//! name = T). Each request is checked and streamed to the engine. The session ends, with exit
//! status 0, when stdin reaches EOF (Python closes it) or on SIGTERM/SIGINT (TypeScript sends
//! SIGTERM): any other status makes the SDKs fail after the user's pipeline has succeeded.
//!
//! `dagger run` uses the same proxy in-process ([`Session::start`]).

use crate::client::{Client, Endpoint};
use crate::progress::Progress;
use anyhow::Context as _;
use base64::Engine as _;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch, Mutex};

/// The realm the real CLI announces in its 401 answers.
const REALM: &str = r#"Basic realm="Access to the Dagger engine session""#;

/// How long in-flight requests may still finish once the session is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long the engine may take to answer the `{ version }` check before the handshake.
const ENGINE_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

type ProxyBody = Either<Incoming, Full<Bytes>>;

/// What goes to the engine: the client's body streamed, or a `/query` body read to check it
/// for host access.
type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// Cap on a `/query` body the proxy reads (the engine's own cap).
const MAX_QUERY_BYTES: usize = 64 << 20;

/// `dagger session [anything...]`: the arguments are accepted and ignored (`--label`,
/// `--workdir`, `--project`, `--load-workspace-modules`, and whatever later SDKs add), except
/// `--progress` (quiet by default: the SDKs read our stderr only when something fails).
pub async fn command(progress: crate::progress::Mode) -> anyhow::Result<ExitCode> {
    // Watch stdin and signals before anything slow, so a parent that gives up early (closes
    // stdin or sends SIGTERM while we connect) still gets a clean exit 0.
    let stdin_eof = stdin_eof();
    tokio::pin!(stdin_eof);
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let session = tokio::select! {
        s = async {
            let client = crate::connect::connect().await?;
            Session::start(&client, Progress::new(progress)).await
        } => s?,
        _ = &mut stdin_eof => return Ok(ExitCode::SUCCESS),
        _ = sigterm.recv() => return Ok(ExitCode::SUCCESS),
        _ = sigint.recv() => return Ok(ExitCode::SUCCESS),
    };

    let line = format!(
        r#"{{"port": {}, "session_token": {}}}"#,
        session.port,
        serde_json::Value::from(session.token.as_str())
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("writing the session handshake to stdout")?;
    drop(stdout);

    tokio::select! {
        _ = &mut stdin_eof => {}
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    session.stop(STOP_GRACE).await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves when stdin reaches EOF (or cannot be read). A plain thread, not tokio's stdin: a
/// blocking read cannot be cancelled, and tokio would wait for it at runtime shutdown, so a
/// SIGTERM would hang until the parent closed stdin.
async fn stdin_eof() {
    let (tx, rx) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = rx.await;
        }
        Err(e) => {
            // The session still stops on SIGTERM/SIGINT.
            eprintln!("dagger session: cannot watch stdin ({e}); stop the session with SIGTERM");
            std::future::pending::<()>().await
        }
    }
}

/// A running proxy on 127.0.0.1.
pub struct Session {
    pub port: u16,
    pub token: String,
    stop: watch::Sender<bool>,
    /// Yields `None` once the accept loop and every connection task have ended: each holds a
    /// clone of the matching sender.
    finished: mpsc::Receiver<()>,
    channel: Channel,
}

struct Shared {
    endpoint: Endpoint,
    token: String,
    /// For host uploads (see [`crate::host`]).
    client: Client,
    /// Sent to the engine with every request (`X-Dagger-Session-Id`).
    session_id: String,
}

impl Session {
    /// Checks that the engine answers, opens the session's event channel, then listens on
    /// 127.0.0.1:0 with a fresh token.
    pub async fn start(client: &Client, progress: Arc<Progress>) -> anyhow::Result<Session> {
        // Fail before the handshake, so the SDK reports the engine problem from our stderr
        // instead of a confusing error on its first query.
        let answer = tokio::time::timeout(ENGINE_CHECK_TIMEOUT, client.query("{ version }"))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the engine at {} did not answer within {}s",
                    client.endpoint,
                    ENGINE_CHECK_TIMEOUT.as_secs()
                )
            })??;
        if answer.body["data"]["version"].as_str().is_none() {
            anyhow::bail!(
                "the engine at {} did not report its version: {}",
                client.endpoint,
                answer.body
            );
        }
        let channel = Channel::open(client, progress).await?;
        let token = new_token().context("generating the session token")?;
        // IPv4 loopback only, like the real CLI: the SDKs connect to 127.0.0.1.
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("listening on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            endpoint: client.endpoint.clone(),
            token: token.clone(),
            client: client.clone(),
            session_id: channel.id.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (alive, finished) = mpsc::channel(1);
        tokio::spawn(accept_loop(listener, shared, stop_rx, alive));
        Ok(Session {
            port,
            token,
            stop,
            finished,
            channel,
        })
    }

    /// Stops accepting, closes idle connections and lets in-flight requests finish for up to
    /// `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, self.finished.recv()).await;
        self.channel.close().await;
    }
}

/// Resolves once the session is told to stop (or the [`Session`] is dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(
                    stream,
                    shared.clone(),
                    stop.clone(),
                    alive.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, and do not spin.
                eprintln!("dagger session: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one client connection. Requests on an HTTP/1.1 connection come one at a time, so
/// each client connection gets one engine connection, opened on first use and kept alive
/// with it: concurrency follows the SDK's own connection pool.
async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let upstream: Arc<Mutex<Option<SendRequest<UpstreamBody>>>> = Arc::new(Mutex::new(None));
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let upstream = upstream.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, &shared, &upstream).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // No header-read timeout: hyper would also apply it to idle keep-alive connections
        // and close the SDK's pooled connections under it; the listener is loopback only.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    upstream: &Mutex<Option<SendRequest<UpstreamBody>>>,
) -> Response<ProxyBody> {
    if !authorized(req.headers(), &shared.token) {
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized: this Dagger session needs HTTP basic auth with the session token as the user name",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        return resp;
    }
    let req = match upstream_request(req, &shared.endpoint, &shared.session_id) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
    };
    let req = if req.method() == hyper::Method::POST && req.uri().path() == "/query" {
        let (parts, body) = req.into_parts();
        let bytes = match http_body_util::Limited::new(body, MAX_QUERY_BYTES)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                )
            }
        };
        if let Some(answer) = host_answer(&bytes, &shared.client).await {
            return json_response(&answer);
        }
        Request::from_parts(parts, Either::Right(Full::new(bytes)))
    } else {
        req.map(Either::Left)
    };
    let mut slot = upstream.lock().await;
    match forward(req, &shared.endpoint, &mut slot).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => {
            eprintln!("dagger session: {e:#}");
            error_response(StatusCode::BAD_GATEWAY, &format!("{e:#}"))
        }
    }
}

/// Sends `req` on the connection's engine connection, opening one when there is none or the
/// old one was closed. A request the old connection never wrote out is retried once on a
/// fresh one; one that may have reached the engine is not (a query can have side effects).
async fn forward(
    mut req: Request<UpstreamBody>,
    endpoint: &Endpoint,
    slot: &mut Option<SendRequest<UpstreamBody>>,
) -> anyhow::Result<Response<Incoming>> {
    let mut fresh_connection = false;
    loop {
        let reusable = match slot.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => {
                fresh_connection = true;
                open_upstream(endpoint).await?
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                *slot = Some(sender);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) if !fresh_connection => req = unsent,
                _ => {
                    return Err(anyhow::Error::new(e.into_error())
                        .context(format!("the engine at {endpoint} failed the request")))
                }
            },
        }
    }
}

pub(crate) async fn open_upstream(
    endpoint: &Endpoint,
) -> anyhow::Result<SendRequest<UpstreamBody>> {
    let stream = endpoint.connect().await?;
    handshake(stream)
        .await
        .with_context(|| format!("cannot connect to the engine at {endpoint}"))
}

async fn handshake<S>(stream: S) -> hyper::Result<SendRequest<UpstreamBody>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Errors surface through the sender (the next request fails or `ready` reports closed).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The client's request, re-addressed to the engine: same method, path, headers and streamed
/// body, minus hop-by-hop headers and the session credentials.
fn upstream_request(
    req: Request<Incoming>,
    endpoint: &Endpoint,
    session_id: &str,
) -> anyhow::Result<Request<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    parts.uri = path.parse().context("invalid request path")?;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    let host = endpoint.host_header();
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(host).context("invalid engine host")?,
    );
    parts.headers.insert(
        SESSION_HEADER,
        HeaderValue::from_str(session_id).context("invalid session id")?,
    );
    Ok(Request::from_parts(parts, body))
}

/// The answer to a `/query` body that uses `host` or `secret(uri)`, served here (see
/// [`crate::host`]); `None` for everything else, which goes to the engine.
async fn host_answer(body: &[u8], client: &Client) -> Option<serde_json::Value> {
    // Cheap check first: almost every query is forwarded untouched.
    if !crate::host::mentions_client_fields(body) {
        return None;
    }
    let request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let query = request["query"].as_str()?;
    match crate::host::scan(query) {
        crate::host::HostQuery::NotHost => None,
        crate::host::HostQuery::Unsupported(message) => Some(serde_json::json!({
            "data": null,
            "errors": [{ "message": message }],
        })),
        crate::host::HostQuery::Call(call) => Some(crate::host::serve(&call, client).await),
    }
}

/// A GraphQL answer (HTTP 200, errors included, as the engine does).
fn json_response(value: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(value.to_string()))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Headers that describe one HTTP hop; hyper sets its own for each side.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Basic auth with the session token as the user name; the password is ignored, as in the
/// real CLI (Go's `Request.BasicAuth`).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    constant_time_eq(&decoded[..colon], token.as_bytes())
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON GraphQL-style error: the TypeScript SDK only parses `application/json` bodies.
fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "errors": [{ "message": message }] }).to_string();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A random version-4 UUID, as the real CLI uses, from the kernel's CSPRNG.
/// The header that ties a request to its session's channel on the engine.
pub const SESSION_HEADER: &str = "x-dagger-session-id";

/// One request to the engine on a fresh connection; the answer's body streams.
pub(crate) async fn engine_request(
    endpoint: &Endpoint,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<Response<Incoming>> {
    let mut sender = open_upstream(endpoint).await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, endpoint.host_header());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Either::Right(Full::new(Bytes::from(body))))
        .context("building a request to the engine")?;
    sender
        .send_request(req)
        .await
        .with_context(|| format!("the engine at {endpoint} failed the request"))
}

/// The engine → client channel of a session: `GET /sessions/<id>/events` kept open for the
/// session's lifetime. Progress events go to the renderer; export requests are carried out
/// on this machine (see [`crate::export`]). Closing it ends the session on the engine.
pub struct Channel {
    pub id: String,
    endpoint: Endpoint,
    reader: tokio::task::JoinHandle<()>,
    progress: Arc<Progress>,
    /// The last `sync` token the reader has seen.
    synced: watch::Receiver<u64>,
}

/// How long closing a channel waits for the events still in flight.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

impl Channel {
    /// Connects a new session and waits until the engine has registered it.
    pub async fn open(client: &Client, progress: Arc<Progress>) -> anyhow::Result<Channel> {
        let id = new_token().context("generating the session id")?;
        let endpoint = client.endpoint.clone();
        let resp = engine_request(
            &endpoint,
            hyper::Method::GET,
            &format!("/sessions/{id}/events"),
            &[],
            Vec::new(),
        )
        .await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            anyhow::bail!(
                "the engine at {endpoint} refused to open a session (HTTP {status}): {}",
                body.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            );
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        // The first line says the session is registered: requests may name it from now on.
        loop {
            if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let hello: serde_json::Value =
                    serde_json::from_slice(&buf[..nl]).unwrap_or_default();
                if hello["type"] != "hello" {
                    anyhow::bail!(
                        "the engine at {endpoint} sent an unexpected first session event: {}",
                        String::from_utf8_lossy(&buf[..nl])
                    );
                }
                buf.drain(..=nl);
                break;
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("reading the session channel from {endpoint}")))
                }
                None => anyhow::bail!("the engine at {endpoint} closed the session channel"),
            }
        }
        let (synced_tx, synced) = watch::channel(0);
        let reader = tokio::spawn(read_events(
            body,
            buf,
            endpoint.clone(),
            id.clone(),
            progress.clone(),
            synced_tx,
        ));
        Ok(Channel {
            id,
            endpoint,
            reader,
            progress,
            synced,
        })
    }

    /// Waits until every event the engine queued so far has been handled (bounded by
    /// [`SYNC_TIMEOUT`]): the engine answers a request before its last events are read.
    pub async fn sync(&mut self) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let token = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = async {
            let resp = engine_request(
                &self.endpoint,
                hyper::Method::POST,
                &format!("/sessions/{}/sync/{token}", self.id),
                &[],
                Vec::new(),
            )
            .await
            .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            self.synced.wait_for(|t| *t >= token).await.ok()
        };
        let _ = tokio::time::timeout(SYNC_TIMEOUT, wait).await;
    }

    /// Ends the session after the events in flight are shown: the engine sees its channel
    /// close.
    pub async fn close(mut self) {
        self.sync().await;
        self.reader.abort();
        self.progress.finish();
    }
}

/// Reads the session's events until the stream ends.
async fn read_events(
    mut body: Incoming,
    mut buf: Vec<u8>,
    endpoint: Endpoint,
    id: String,
    progress: Arc<Progress>,
    synced: watch::Sender<u64>,
) {
    loop {
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            match event["type"].as_str() {
                Some("op") => progress.event(&event),
                Some("sync") => {
                    if let Some(t) = event["token"].as_u64() {
                        synced.send_if_modified(|cur| {
                            let newer = t > *cur;
                            if newer {
                                *cur = t;
                            }
                            newer
                        });
                    }
                }
                Some("export") => {
                    tokio::spawn(crate::export::serve(
                        endpoint.clone(),
                        id.clone(),
                        event,
                        progress.clone(),
                    ));
                }
                _ => {}
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                eprintln!("dagger: the session channel to the engine at {endpoint} broke: {e}");
                return;
            }
            None => {
                eprintln!("dagger: the engine at {endpoint} closed the session channel");
                return;
            }
        }
    }
}

/// Sends one GraphQL document to the engine as part of session `session_id` (what
/// `dagger query` does) and returns the JSON answer, whatever its status.
pub async fn query_in_session(
    client: &Client,
    session_id: &str,
    document: &str,
) -> anyhow::Result<crate::client::Answer> {
    let body = serde_json::to_vec(&serde_json::json!({ "query": document }))?;
    let resp = engine_request(
        &client.endpoint,
        hyper::Method::POST,
        "/query",
        &[
            (SESSION_HEADER, session_id),
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        body,
    )
    .await?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("reading the engine's answer")?
        .to_bytes();
    let body = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the engine at {} answered HTTP {status} with a body that is not JSON: {}",
            client.endpoint,
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })?;
    Ok(crate::client::Answer { status, body })
}

fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(resp: Response<ProxyBody>) -> String {
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
    }

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(userpass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(userpass)
        )
    }

    #[test]
    fn basic_auth_checks_the_user_name_only() {
        let t = "0b6c1f9e-2c1d-4a7b-9f3e-5d6c7b8a9f00";
        assert!(authorized(&auth(&basic(&format!("{t}:"))), t));
        assert!(authorized(&auth(&basic(&format!("{t}:anything"))), t));
        assert!(authorized(
            &auth(&format!("basic  {}", &basic(&format!("{t}:"))[6..])),
            t
        ));
        assert!(!authorized(&HeaderMap::new(), t));
        assert!(!authorized(&auth(&basic(t)), t), "no colon: not basic auth");
        assert!(!authorized(&auth(&basic(&format!(":{t}"))), t));
        assert!(!authorized(&auth(&basic("wrong:")), t));
        assert!(!authorized(&auth(&format!("Bearer {t}")), t));
        assert!(!authorized(&auth("Basic !!!not-base64"), t));
    }

    #[test]
    fn tokens_are_random_v4_uuids() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert!(a
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("traceparent", HeaderValue::from_static("00-1-2-01"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "traceparent"]);
    }

    #[tokio::test]
    async fn errors_are_json() {
        let r = error_response(StatusCode::UNAUTHORIZED, "no");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
        assert_eq!(v, serde_json::json!({"errors": [{"message": "no"}]}));
    }
}
