//! `/api/v1/whoami` and `/api/v1/tokens*`: a team's API tokens. A token is shown once, at
//! creation; only its SHA-256 is stored.

use crate::auth::{TeamCaller, audit_ctx};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::middleware::RequestId;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use stackyard_api::{CreateTokenRequest, CreatedToken, RevokedToken, TokenItem, TokenList, Whoami};
use stackyard_core::ApiToken;
use stackyard_core::store::{NewToken, Store};

#[utoipa::path(get, path = "/api/v1/whoami", tag = "tokens", description = "The calling team and token. Auth required.",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = Whoami),
        (status = 503, description = "`fetch_failed`: the store cannot check the token")))]
pub async fn whoami<S: Store>(
    TeamCaller(p): TeamCaller,
    State(_): State<AppState<S>>,
) -> Json<Whoami> {
    Json(Whoami::from(&p))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", description = "The team's live tokens (never their secrets). Auth required.",
    security(("bearer" = [])),
    responses((status = 200, description = "The tokens", body = TokenList),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
) -> ApiResult<Json<TokenList>> {
    let tokens = state
        .store
        .list_tokens(p.team.id)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(TokenList {
        ok: true,
        items: tokens.iter().map(TokenItem::from).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", description = "Creates a token for the caller's team; the token is in the response once. Auth required.",
    security(("bearer" = [])),
    request_body(content = CreateTokenRequest, content_type = "application/json"),
    responses((status = 201, description = "Created; `token` is shown only here", body = CreatedToken),
        (status = 400, description = "`invalid_name`: not 1-64 printable characters"),
        (status = 503, description = "`persist_failed`: the store is unavailable")))]
pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    JsonBody(body): JsonBody<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
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
        Json(CreatedToken {
            ok: true,
            id: info.id,
            name: info.name,
            token: token.expose().to_owned(),
            created_at: info.created_at.to_rfc3339(),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", description = "Revokes a token of the caller's team; it stops working at once. Auth required.",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The token's id")),
    responses((status = 200, description = "Revoked", body = RevokedToken),
        (status = 404, description = "`not_found`: no live token with that id belongs to this team"),
        (status = 503, description = "`persist_failed`: the store is unavailable")))]
pub async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(id): Path<String>,
) -> ApiResult<Json<RevokedToken>> {
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
    Ok(Json(RevokedToken {
        ok: true,
        id,
        revoked: true,
    }))
}
