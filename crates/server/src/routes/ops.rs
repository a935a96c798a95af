//! Operational routes: liveness, readiness, Prometheus metrics, the OpenAPI document.

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bytes::Bytes;
use stackyard_api::{Health, Ready};
use stackyard_core::store::Store;

#[utoipa::path(get, path = "/healthz", tag = "ops", description = "The process is alive.",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { ok: true })
}

#[utoipa::path(get, path = "/readyz", tag = "ops", description = "The store answers; what runs services, and the artifacts kept.",
    responses((status = 200, description = "Ready", body = Ready),
        (status = 503, description = "`not_ready`: the store does not answer")))]
pub async fn readyz<S: Store>(State(state): State<AppState<S>>) -> ApiResult<Json<Ready>> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::store("not_ready", &e))?;
    Ok(Json(Ready {
        ok: true,
        store: state.store.backend().to_owned(),
        runtime: state.runtime.name().to_owned(),
        sandbox: state.runtime.sandbox_layers(),
        artifacts: state.artifacts.usage(),
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "ops", description = "Prometheus text exposition.",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics<S: Store>(State(state): State<AppState<S>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The document `router` built from the route list, rendered once.
#[derive(Clone)]
pub struct OpenApiJson(pub Bytes);

#[utoipa::path(get, path = "/openapi.json", tag = "ops", description = "This document.",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn openapi(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}
