//! The HTTP surface. Every answer, errors included, is JSON with `Content-Type: application/json`,
//! because the TypeScript SDK only parses bodies with that content type.

use crate::api::Api;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::session::{RequestSession, Sessions, SESSION_HEADER};

/// What the GraphQL handler needs: the API and the connected client sessions.
#[derive(Clone)]
struct Front {
    api: Api,
    sessions: Sessions,
}

/// Queries inline object IDs as string literals, so bodies can be large.
const MAX_BODY_BYTES: usize = 64 << 20;

pub fn router(api: Api) -> Router {
    let sessions = Sessions::new();
    Router::new()
        .route("/query", post(graphql).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Front {
            api,
            sessions: sessions.clone(),
        })
        .merge(super::sessions::routes(sessions))
}

async fn graphql(
    State(Front { api, sessions }): State<Front>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            return error_response(
                rejection.status(),
                format!("cannot read the request body: {}", rejection.body_text()),
            )
        }
    };
    let request: GraphqlBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid GraphQL request body: {e}"),
            )
        }
    };
    let session = headers
        .get(SESSION_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .map(|id| sessions.get(&id).ok_or(id));
    // Work done for this request reports to its session's event stream.
    let reporter = match &session {
        Some(Ok(s)) => Some(s.reporter()),
        _ => None,
    };
    let data = RequestSession(session);
    let started = std::time::Instant::now();
    let response = crate::progress::scope(
        reporter,
        api.execute(|| request.to_request().data(data.clone())),
    )
    .await;
    tracing::debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        errors = response.errors.len(),
        "query"
    );
    (StatusCode::OK, Json(response)).into_response()
}

/// The JSON body of a GraphQL-over-HTTP request.
#[derive(serde::Deserialize)]
struct GraphqlBody {
    query: String,
    #[serde(default, rename = "operationName")]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<serde_json::Value>,
}

impl GraphqlBody {
    fn to_request(&self) -> async_graphql::Request {
        let mut r = async_graphql::Request::new(self.query.clone());
        if let Some(op) = &self.operation_name {
            r = r.operation_name(op.clone());
        }
        if let Some(vars) = &self.variables {
            r = r.variables(async_graphql::Variables::from_json(vars.clone()));
        }
        r
    }
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "send GraphQL requests with POST /query".into(),
    )
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not found: the GraphQL endpoint is POST /query".into(),
    )
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "errors": [{ "message": message }] }))).into_response()
}
