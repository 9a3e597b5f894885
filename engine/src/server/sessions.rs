//! The HTTP side of client sessions (see [`crate::session`]):
//!
//! - `GET /sessions/{id}/events`: connects session `id` and streams its events as JSON lines
//!   (`application/x-ndjson`, chunked) for as long as the client keeps the request open; a
//!   `ping` line every few seconds lets a vanished client be noticed. When the stream ends,
//!   the session ends.
//! - `POST /sessions/{id}/sync/{token}`: queues `{"type":"sync","token":...}` on the stream,
//!   behind every event queued so far.
//! - `GET /sessions/{id}/exports/{n}`: the tar of pending export `n` (once).
//! - `POST /sessions/{id}/exports/{n}`: the client's outcome, `{"path": "/abs"}` or
//!   `{"error": "why"}`.

use crate::session::{write_tar, Session, Sessions};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often an idle event stream carries a `ping` line.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Cap on an export outcome body.
const MAX_OUTCOME_BYTES: usize = 64 << 10;

pub fn routes(sessions: Sessions) -> Router {
    Router::new()
        .route("/sessions/{id}/events", get(events))
        .route("/sessions/{id}/sync/{token}", axum::routing::post(sync))
        .route("/sessions/{id}/exports/{n}", get(download).post(outcome))
        .with_state(sessions)
}

/// Ends the session when the response body is dropped (the client went away).
struct CloseOnDrop {
    sessions: Sessions,
    session: Arc<Session>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.sessions.close(&self.session);
    }
}

async fn events(State(sessions): State<Sessions>, Path(id): Path<String>) -> Response {
    let (session, rx) = match sessions.open(&id) {
        Ok(s) => s,
        Err(e) => {
            let status = match e {
                crate::session::SessionError::AlreadyConnected { .. } => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, e.to_string());
        }
    };
    let guard = CloseOnDrop { sessions, session };
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset(); // the first tick would fire at once
    let state = (rx, ping, guard);
    let stream = futures_util::stream::unfold(state, |(mut rx, mut ping, guard)| async move {
        let line = tokio::select! {
            l = rx.recv() => l?,
            _ = ping.tick() => "{\"type\":\"ping\"}\n".to_string(),
        };
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(line)),
            (rx, ping, guard),
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn sync(
    State(sessions): State<Sessions>,
    Path((id, token)): Path<(String, u64)>,
) -> Response {
    match sessions.get(&id) {
        Some(session) if session.sync(token).await => {
            (StatusCode::OK, Json(json!({}))).into_response()
        }
        _ => error(StatusCode::NOT_FOUND, format!("no client session {id:?}")),
    }
}

/// Feeds what a blocking writer produces to an async body, in chunks.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client stopped reading the export"))
    }
}

async fn download(
    State(sessions): State<Sessions>,
    Path((id, n)): Path<(String, u64)>,
) -> Response {
    let Some(session) = sessions.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no client session {id:?}"));
    };
    let Some(source) = session.take_export(n) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no export {n} waiting in this session"),
        );
    };
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = write_tar(&source, &mut w).and_then(|()| {
            use std::io::Write as _;
            w.flush()
        }) {
            tracing::warn!(export = n, "cannot send an export: {e}");
            // The body ends with an error: the client sees a broken transfer, never a
            // truncated tar that looks complete.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(serde::Deserialize)]
struct Outcome {
    path: Option<String>,
    error: Option<String>,
}

async fn outcome(
    State(sessions): State<Sessions>,
    Path((id, n)): Path<(String, u64)>,
    body: Bytes,
) -> Response {
    let Some(session) = sessions.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no client session {id:?}"));
    };
    if body.len() > MAX_OUTCOME_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "outcome too large".into());
    }
    let outcome: Outcome = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid outcome: {e}")),
    };
    let result = match (outcome.path, outcome.error) {
        (Some(p), None) => Ok(p),
        (None, Some(e)) => Err(e),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "an outcome has exactly one of path and error".into(),
            )
        }
    };
    if session.finish_export(n, result) {
        (StatusCode::OK, Json(json!({}))).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no export {n} waiting in this session"),
        )
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "errors": [{ "message": message }] }))).into_response()
}
