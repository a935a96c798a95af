//! `POST /stacks/:slug/redeploy` and `GET /stacks/:slug/releases`.

use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::bodies::{json_response, redeploy_body};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::routes::upload::{self, Code};
use crate::routes::{load_stack, parse_slug};
use crate::state::AppState;
use axum::Json;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;
use stackyard_api::{RedeployForm, Redeployed, ReleaseItem, ReleaseList};
use stackyard_core::StackSlug;
use stackyard_core::ids::sha256_hex;
use stackyard_core::model::{ReleaseInfo, Stack};
use stackyard_core::store::{Idempotent, NewRelease, ReleaseError, Store};

/// Whether the request carries a body at all: a redeploy without one reuses the current code.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::CONTENT_TYPE)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[utoipa::path(post, path = "/stacks/{slug}/redeploy", tag = "stacks",
    description = "A new release: with no body from the current release's code and the current env; with a multipart body (as /stacks/new; `name` and `env` ignored) from new code. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "A replay with the same key and body returns the first response")),
    request_body(content = Option<RedeployForm>, content_type = "multipart/form-data", description = "Optional: without a body the current code is redeployed"),
    responses((status = 202, description = "Accepted; the deploy job is queued", body = Redeployed),
        (status = 400, description = "`invalid_form`, `missing_manifest`, `invalid_manifest`, `missing_tarball`, `invalid_tarball`, `invalid_env_key`, `missing_start_command`, `invalid_dockerfile`, `image_unsupported`: the form, manifest or a tarball is not valid (`image_unsupported`: a service names an `image:` and this runtime runs tarballs only); `invalid_token`: a `needs` entry is not a resource token, `postgres`, `redis` or `{kind, as}`; `resource_not_found`: a `needs` token names no resource"),
        (status = 403, description = "`forbidden`: a `needs` token is another team's or another stack's own"),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 409, description = "`stack_deleting`: the stack is being deleted"),
        (status = 503, description = "`provision_failed`: the store (or artifact storage) is unavailable")))]
pub async fn redeploy<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let slug = parse_slug(&slug)?;
    let mut code: Option<Code> = if has_body(&headers) {
        let mut form = upload::read_form(multipart).await?;
        let manifest = upload::manifest_text(&mut form)?;
        let needs_command = state.runtime.needs_start_command();
        Some(upload::validate_code_blocking(manifest, form.files, needs_command).await?)
    } else {
        None
    };
    let caller = Caller::Team(p);
    let request_hash = || {
        let identity = json!({
            "route": format!("POST /stacks/{slug}/redeploy"),
            "manifest": code.as_ref().map(|c| &c.manifest_text),
            "services": code.as_ref().map(Code::identity),
        });
        sha256_hex(identity.to_string().as_bytes())
    };
    let reservation = match idempotency::start(
        &state.store,
        &headers,
        caller.idempotency_scope(),
        request_hash,
        "provision_failed",
    )
    .await?
    {
        Start::Replay(res) => return Ok(res),
        Start::Reserved(r) => Some(r),
        Start::None => None,
    };
    // After the replay check, as for a create.
    let granted = match (&mut code, &caller) {
        (Some(c), Caller::Team(p)) => crate::needs::grant(&state.store, Some(p.team.id), c).await,
        _ => Ok(()),
    };
    let result = match granted {
        Ok(()) => redeploy_reserved(&state, &caller, &rid, &slug, code, reservation.as_ref()).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        idempotency::abandon(&state.store, reservation.as_ref()).await;
    }
    result
}

async fn redeploy_reserved<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rid: &RequestId,
    slug: &StackSlug,
    code: Option<Code>,
    reservation: Option<&idempotency::Reservation>,
) -> ApiResult<Response> {
    let (services, artifacts, manifest, note) = match code {
        Some(c) => {
            let sizes = upload::save_artifacts(state, c.artifacts).await?;
            (
                Some(c.services),
                sizes,
                Some(c.manifest_text),
                c.warnings.join("; "),
            )
        }
        None => (None, Vec::new(), None, String::new()),
    };
    let release_note = note.clone();
    let release = NewRelease {
        services,
        artifacts,
        manifest,
        ctx: audit_ctx(caller, rid),
        idempotency: reservation.map(|r| {
            Idempotent::new(
                r.scope.clone(),
                r.key.clone(),
                202,
                move |(stack, info): &(Stack, ReleaseInfo)| redeploy_body(&stack.slug, info, &note),
            )
        }),
    };
    let (stack, info) = match state
        .store
        .create_release(caller.access(), slug, release)
        .await
    {
        Ok(x) => x,
        Err(ReleaseError::NotFound) => return Err(ApiError::not_found()),
        Err(ReleaseError::Deleting) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "stack_deleting",
                "The stack is being deleted and accepts no new release.",
            )
            .with_action("Create a new stack instead; this one is being torn down."));
        }
        Err(ReleaseError::Vault(e)) => return Err(ApiError::vault_ref(&e)),
        Err(ReleaseError::Store(e)) => return Err(ApiError::store("provision_failed", &e)),
    };
    state.jobs_ready.notify_one();
    Ok(json_response(
        StatusCode::ACCEPTED,
        redeploy_body(&stack.slug, &info, &release_note),
    ))
}

#[utoipa::path(get, path = "/stacks/{slug}/releases", tag = "stacks", description = "The stack's releases, newest first. Auth optional.",
    security((), ("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)")),
    responses((status = 200, description = "The releases", body = ReleaseList),
        (status = 404, description = "`not_found`: no stack with that id for this caller"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    Path(slug): Path<String>,
) -> ApiResult<Json<ReleaseList>> {
    let detail = load_stack(&state, caller.access(), &parse_slug(&slug)?).await?;
    let releases = state
        .store
        .list_releases(detail.stack.id)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(ReleaseList {
        ok: true,
        stack_id: slug,
        items: releases.iter().map(ReleaseItem::from).collect(),
    }))
}
