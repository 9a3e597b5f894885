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

/// Queries inline object IDs as string literals, so bodies can be large.
const MAX_BODY_BYTES: usize = 64 << 20;

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/query", post(graphql).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

async fn graphql(State(api): State<Api>, body: Result<Bytes, BytesRejection>) -> Response {
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
    let started = std::time::Instant::now();
    let response = api.execute(|| request.to_request()).await;
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
