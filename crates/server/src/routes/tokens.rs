//! `/api/v1/whoami` and `/api/v1/tokens*`: a team's API tokens. A token is shown once, at
//! creation; only its SHA-256 is stored.

use crate::app::AppState;
use crate::auth::{TeamCaller, audit_ctx};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::middleware::RequestId;
use crate::routes::views;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use stackyard_core::ApiToken;
use stackyard_core::store::{NewToken, Store};

#[utoipa::path(get, path = "/api/v1/whoami", tag = "tokens", description = "The calling team and token. Auth required.",
    responses((status = 200, description = "{ok, team, token}"), (status = 401, description = "unauthorized")))]
pub async fn whoami<S: Store>(
    TeamCaller(p): TeamCaller,
    State(_): State<AppState<S>>,
) -> Json<Value> {
    Json(json!({
        "ok": true,
        "team": { "id": p.team.id, "name": p.team.name, "max_stacks": p.team.max_stacks },
        "token": views::token(&p.token),
    }))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", description = "The team's live tokens (never their secrets). Auth required.",
    responses((status = 200, description = "{ok, items}"), (status = 401, description = "unauthorized")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
) -> ApiResult<Json<Value>> {
    let tokens = state
        .store
        .list_tokens(p.team.id)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(
        json!({ "ok": true, "items": tokens.iter().map(views::token).collect::<Vec<_>>() }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct CreateToken {
    name: String,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", description = "Creates a token for the caller's team; the token is in the response once. Auth required.",
    request_body(content = String, description = "{\"name\": \"ci\"}", content_type = "application/json"),
    responses((status = 201, description = "{ok, id, name, token}"), (status = 400, description = "invalid_body, invalid_name"), (status = 401, description = "unauthorized")))]
pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<Response> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "A token name is 1-64 printable characters.",
        ));
    }
    let token = ApiToken::generate();
    let caller = crate::auth::Caller::Team(p.clone());
    let info = state
        .store
        .create_token(
            p.team.id,
            NewToken {
                name: name.to_owned(),
                digest: token.digest(),
            },
            audit_ctx(&caller, &rid),
        )
        .await
        .map_err(|e| ApiError::store("persist_failed", &e))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "ok": true, "id": info.id, "name": info.name, "token": token.expose(), "created_at": info.created_at.to_rfc3339() })),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", description = "Revokes a token of the caller's team; it stops working at once. Auth required.",
    params(("id" = i64, Path)),
    responses((status = 200, description = "{ok, id, revoked}"), (status = 401, description = "unauthorized"), (status = 404, description = "not_found")))]
pub async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "No live token with that id belongs to this team.",
        )
    };
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let caller = crate::auth::Caller::Team(p.clone());
    let revoked = state
        .store
        .revoke_token(p.team.id, id, audit_ctx(&caller, &rid))
        .await
        .map_err(|e| ApiError::store("persist_failed", &e))?;
    if !revoked {
        return Err(not_found());
    }
    state.auth_cache.forget_token(id);
    Ok(Json(json!({ "ok": true, "id": id, "revoked": true })))
}
