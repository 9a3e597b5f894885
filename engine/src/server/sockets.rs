//! HTTP side of client sockets (see [`crate::sockets`]):
//!
//! * `POST /sockets` registers one and answers `{"id": "<SocketID>", "handle": "..."}`;
//! * `GET /sockets/<handle>/accept` waits (up to [`POLL`]) for a connection to open:
//!   `{"conn": N}`, or `{"conn": null}` to poll again;
//! * `GET /sockets/<handle>/conns/<N>` with `Upgrade: dagger-socket` becomes that connection's
//!   byte stream (101 Switching Protocols).

use crate::sockets::ClientSockets;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::time::Duration;

/// How long one accept poll waits before answering "nothing yet".
const POLL: Duration = Duration::from_secs(20);
/// The upgrade protocol name.
pub const PROTOCOL: &str = "dagger-socket";

pub fn routes(sockets: ClientSockets) -> Router {
    Router::new()
        .route("/sockets", post(register))
        .route("/sockets/{handle}/accept", get(accept))
        .route("/sockets/{handle}/conns/{conn}", get(connect))
        .with_state(sockets)
}

async fn register(State(sockets): State<ClientSockets>) -> Response {
    let handle = sockets.register();
    let id = crate::api::Socket::id_for(&handle);
    Json(json!({ "id": id, "handle": handle })).into_response()
}

async fn accept(State(sockets): State<ClientSockets>, Path(handle): Path<String>) -> Response {
    match sockets.next_wanted(&handle, POLL).await {
        Ok(conn) => Json(json!({ "conn": conn })).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

async fn connect(
    State(sockets): State<ClientSockets>,
    Path((handle, conn)): Path<(String, u64)>,
    mut req: Request,
) -> Response {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wants_upgrade {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a socket connection needs `Upgrade: {PROTOCOL}`"),
        );
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = sockets.deliver(&handle, conn, Box::new(TokioIo::new(upgraded))) {
                    tracing::debug!(conn, error = %e, "socket connection not delivered");
                }
            }
            Err(e) => tracing::debug!(conn, error = %e, "socket upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    resp
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "errors": [{ "message": message }] }))).into_response()
}
