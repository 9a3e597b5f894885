//! Host access: `dagger session` (the CLI, next to the client's files) uploads a host
//! directory or file as a tar; the engine never reads the client's disk.
//!
//! - `POST /upload[?file=NAME]`: the body is a tar (gzip optional). It is unpacked with
//!   [`crate::archive::apply_layer`] into a fresh snapshot, committed with the sha256 of the
//!   uncompressed tar as its chain id, so an identical upload maps to the same snapshot.
//! - `GET /upload/{digest}[?file=NAME]`: answers as POST would when a snapshot for that digest
//!   exists (the CLI asks first and skips sending an unchanged tree), 404 otherwise.
//!
//! Both answer `{"snapshot", "digest", "directory": <Directory ID>}`, plus `"file": <File ID>`
//! for `NAME` inside that directory when `?file=` is given.

use crate::archive::{apply_layer, ApplyOptions};
use crate::oci::Digest;
use crate::solver::node::{DirectoryNode, FileNode};
use crate::solver::Solver;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

/// Cap on an upload's request body (compressed or not).
const MAX_UPLOAD_BYTES: usize = 1 << 30;
/// Cap on what an upload expands to.
const MAX_UNCOMPRESSED_BYTES: u64 = 4 << 30;
const MAX_ENTRIES: u64 = 1_000_000;

pub fn routes(solver: Solver) -> Router {
    Router::new()
        .route("/upload", post(upload))
        .route("/upload/{digest}", get(lookup))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .with_state(solver)
}

#[derive(serde::Deserialize)]
struct Params {
    file: Option<String>,
}

async fn lookup(
    State(solver): State<Solver>,
    Path(digest): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let digest = match Digest::parse(&digest) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid digest: {e}")),
    };
    let found = tokio::task::spawn_blocking({
        let solver = solver.clone();
        let digest = digest.clone();
        move || solver.snapshotter().by_chain_id(&digest)
    })
    .await;
    match found {
        Ok(Ok(Some(snapshot))) => answer(&snapshot, &digest, params.file.as_deref()),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no upload {digest}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn upload(
    State(solver): State<Solver>,
    Query(params): Query<Params>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            return error(
                r.status(),
                format!("cannot read the upload: {}", r.body_text()),
            )
        }
    };
    if let Some(name) = &params.file {
        if let Err(e) = check_file_name(name) {
            return error(StatusCode::BAD_REQUEST, e);
        }
    }
    let _operation = solver.snapshotter().usage().begin_operation();
    let done = tokio::task::spawn_blocking({
        let solver = solver.clone();
        move || -> Result<(String, Digest), (StatusCode, String)> {
            let snap = solver.snapshotter();
            let bad = |e: String| (StatusCode::BAD_REQUEST, e);
            let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
            let active = snap.prepare(None).map_err(|e| internal(e.to_string()))?;
            let opts = ApplyOptions {
                whiteouts: active.whiteout_mode(),
                max_uncompressed_bytes: MAX_UNCOMPRESSED_BYTES,
                max_entries: MAX_ENTRIES,
            };
            let applied = apply_layer(&active.fs(), std::io::Cursor::new(&body[..]), &opts)
                .map_err(|e| bad(format!("cannot unpack the upload: {e}")))?;
            let digest = applied.diff_id.clone();
            let id = snap
                .commit(
                    active,
                    Some(&digest),
                    Some(&digest),
                    applied.uncompressed_size,
                )
                .map_err(|e| internal(e.to_string()))?;
            Ok((id, digest))
        }
    })
    .await;
    match done {
        Ok(Ok((snapshot, digest))) => {
            tracing::info!(%digest, %snapshot, "upload unpacked");
            answer(&snapshot, &digest, params.file.as_deref())
        }
        Ok(Err((status, message))) => error(status, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A single path component: the uploaded file sits at the top of the tar.
fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("invalid file name {name:?}"));
    }
    Ok(())
}

fn answer(snapshot: &str, digest: &Digest, file: Option<&str>) -> Response {
    let directory = DirectoryNode::Snapshot {
        snapshot: snapshot.to_string(),
    };
    let mut body = json!({
        "snapshot": snapshot,
        "digest": digest.to_string(),
        "directory": crate::solver::id::encode("Directory", &directory),
    });
    if let Some(name) = file {
        if let Err(e) = check_file_name(name) {
            return error(StatusCode::BAD_REQUEST, e);
        }
        let node = FileNode::InDirectory {
            directory: Box::new(directory),
            path: name.to_string(),
        };
        body["file"] = json!(crate::solver::id::encode("File", &node));
    }
    (StatusCode::OK, Json(body)).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "errors": [{ "message": message }] }))).into_response()
}
