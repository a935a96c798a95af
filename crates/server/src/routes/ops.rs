//! Operational routes: liveness, readiness, Prometheus metrics, the OpenAPI document.

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use stackyard_core::store::Store;

#[utoipa::path(get, path = "/healthz", tag = "ops", description = "The process is alive.", responses((status = 200, description = "{ok: true}")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "ok": true }))
}

#[utoipa::path(get, path = "/readyz", tag = "ops", description = "The store answers.",
    responses((status = 200, description = "{ok: true}"), (status = 503, description = "not_ready")))]
pub async fn readyz<S: Store>(State(state): State<AppState<S>>) -> ApiResult<Json<Value>> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::store("not_ready", &e))?;
    Ok(Json(json!({ "ok": true, "store": state.store.backend() })))
}

#[utoipa::path(get, path = "/metrics", tag = "ops", description = "Prometheus text exposition.", responses((status = 200, description = "metrics")))]
pub async fn metrics<S: Store>(State(state): State<AppState<S>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", description = "This document.", responses((status = 200, description = "OpenAPI 3.1")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}
