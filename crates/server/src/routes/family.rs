//! Env families and promotion (environments.md): the family listing and `promote`, which puts
//! a stack's live release on the family's stack for another env without uploading or building
//! anything.

use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::bodies::json_response;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::routes::parse_slug;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use stackyard_api::{Family, FamilyMember, PromoteRequest};
use stackyard_core::ids::{EnvironmentName, StackName, StackSlug, sha256_hex};
use stackyard_core::store::{Idempotent, PromoteError, Promoted, Promotion, Store, StoreError};

#[utoipa::path(get, path = "/api/v1/stacks/{slug}/family", tag = "stacks",
    description = "The stack's env family: its root and the stacks promoted from it, one per env, root first. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)")),
    responses((status = 200, description = "The family", body = Family,
            headers(("Cache-Control" = String, description = "`private, max-age=60`"))),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn family<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    Path(slug): Path<String>,
) -> ApiResult<Response> {
    let slug = parse_slug(&slug)?;
    let members = state
        .store
        .family(p.team.id, &slug)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .ok_or_else(ApiError::not_found)?;
    let family: Vec<FamilyMember> = members
        .into_iter()
        .map(|m| FamilyMember {
            slug: m.slug.to_string(),
            name: m.name,
            env: m.env,
            status: m.status.as_str().to_owned(),
            tier: m.tier,
            url: m.url,
            is_root: m.is_root,
            parent_stack_id: m.parent.map(|p| p.to_string()),
            last_deploy_at: m.last_deploy_at.map(|t| t.to_rfc3339()),
            created_at: m.created_at.to_rfc3339(),
        })
        .collect();
    let body = Family {
        ok: true,
        slug: slug.to_string(),
        total: family.len(),
        family,
    };
    let mut res = axum::Json(body).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=60"),
    );
    Ok(res)
}

#[utoipa::path(post, path = "/api/v1/stacks/{slug}/promote", tag = "stacks",
    description = "Promotes the stack's live release (its artifacts, start commands, build results, manifest) to the family's stack for the env `to`: a new stack when the family has none (202 `created`), else a new release on it (200 `updated_existing`). Nothing is uploaded or built again. The release's env is the source's env overlaid by the target's own. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The source stack's id (`stk-…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "A replay with the same key and body returns the first response")),
    request_body(content = PromoteRequest, content_type = "application/json"),
    responses((status = 202, description = "`created`: a new stack for `to`, its deploy job queued", body = stackyard_api::Promoted),
        (status = 200, description = "`updated_existing`: a new release on the family's stack for `to`", body = stackyard_api::Promoted),
        (status = 400, description = "`invalid_env`: `from` or `to` is not an env name; `invalid_target`: `to` is the source's env; `invalid_name`: `name` is not valid; `vault_ref_failed`: a `vault://` reference has no value in `to`"),
        (status = 402, description = "`deployment_limit_reached`: the team has its maximum of stacks"),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 409, description = "`env_mismatch`: the source is not in `from`; `stack_deleting`: the source or the target is being deleted; `promote_conflict`: another promote created the target at the same moment"),
        (status = 412, description = "`no_live_release`: the source has no live release; `no_services`: its live release has no services"),
        (status = 503, description = "`promote_failed`: the store is unavailable")))]
pub async fn promote<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PromoteRequest>,
) -> ApiResult<Response> {
    let source = parse_slug(&slug)?;
    let env = |raw: &str| {
        EnvironmentName::parse(raw)
            .map(|e| e.as_str().to_owned())
            .map_err(|e| ApiError::bad_request("invalid_env", e.0))
    };
    let to = env(&body.to)?;
    let from = body.from.as_deref().map(env).transpose()?;
    if from.as_deref() == Some(to.as_str()) {
        return Err(invalid_target());
    }
    let name = body
        .name
        .as_deref()
        .map(|n| {
            StackName::parse(n)
                .map(|n| n.to_string())
                .map_err(|e| ApiError::bad_request("invalid_name", e.0))
        })
        .transpose()?;
    let team = p.team.id;
    let caller = Caller::Team(p);
    let hash = || {
        let identity = json!({
            "route": format!("POST /api/v1/stacks/{source}/promote"),
            "from": from, "to": to, "name": name, "copy_vault": body.copy_vault,
        });
        sha256_hex(identity.to_string().as_bytes())
    };
    let reservation = match idempotency::start(
        &state.store,
        &headers,
        caller.idempotency_scope(),
        hash,
        "promote_failed",
    )
    .await?
    {
        Start::Replay(res) => return Ok(res),
        Start::Reserved(r) => Some(r),
        Start::None => None,
    };
    let promotion = Promotion {
        from,
        to,
        name,
        copy_vault: body.copy_vault,
        new_slug: StackSlug::generate(),
        ctx: audit_ctx(&caller, &rid),
        idempotency: reservation.as_ref().map(|r| {
            // The status is the outcome's (`PromoteAction::status`), set by the store.
            Idempotent::new(r.scope.clone(), r.key.clone(), 202, |p: &Promoted| {
                promoted_body(p)
            })
        }),
    };
    let result = state.store.promote(team, &source, promotion).await;
    let promoted = match result {
        Ok(p) => p,
        Err(e) => {
            idempotency::abandon(&state.store, reservation.as_ref()).await;
            return Err(promote_error(e));
        }
    };
    state.jobs_ready.notify_one();
    let status = StatusCode::from_u16(promoted.action.status()).unwrap_or(StatusCode::OK);
    Ok(json_response(status, promoted_body(&promoted)))
}

fn promoted_body(p: &Promoted) -> String {
    let body = stackyard_api::Promoted {
        ok: true,
        action: p.action.as_str().to_owned(),
        stack_id: p.stack.slug.to_string(),
        env: p.stack.environment.clone(),
        parent_id: p.parent.to_string(),
        source: p.source.to_string(),
        source_release: p.source_release,
        release: p.release.version,
        status: p.stack.status.as_str().to_owned(),
        vault_keys_copied: p.vault_keys_copied.len(),
        note: format!(
            "Release v{} of {} is being rolled out on {}; follow it with GET /stacks/{}.",
            p.source_release, p.source, p.stack.slug, p.stack.slug
        ),
    };
    stackyard_api::to_json_string(&body, 512)
}

fn invalid_target() -> ApiError {
    ApiError::bad_request(
        "invalid_target",
        "`to` is the source's own env: promote to another env.",
    )
}

fn promote_error(e: PromoteError) -> ApiError {
    match e {
        PromoteError::NotFound => ApiError::not_found(),
        PromoteError::Deleting => ApiError::new(
            StatusCode::CONFLICT,
            "stack_deleting",
            "The source, or the family's stack for that env, is being deleted.",
        )
        .with_action("Wait until the deletion finishes, then promote again."),
        PromoteError::EnvMismatch { actual } => ApiError::new(
            StatusCode::CONFLICT,
            "env_mismatch",
            format!("The source stack's env is `{actual}`, not the `from` given."),
        )
        .with_action("Check which stack you mean (GET /api/v1/stacks/<id>/family) and send its env as `from`."),
        PromoteError::NoLiveRelease => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "no_live_release",
            "The source stack has no live release to promote.",
        )
        .with_action("Wait until the source is healthy (GET /stacks/<id>), then promote again."),
        PromoteError::NoServices => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "no_services",
            "The source's live release has no services.",
        ),
        PromoteError::LimitReached { max } => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "deployment_limit_reached",
            format!("This team already has its maximum of {max} stacks."),
        )
        .with_action("Delete a stack you no longer need (DELETE /stacks/<id>) or ask an administrator to raise the team's limit."),
        PromoteError::Vault(e) => ApiError::vault_ref(&e),
        PromoteError::Store(StoreError::Conflict(_)) => ApiError::new(
            StatusCode::CONFLICT,
            "promote_conflict",
            "Another promote created the family's stack for that env at the same moment.",
        )
        .with_action("Promote again: it now updates that stack."),
        PromoteError::Store(e) => ApiError::store("promote_failed", &e),
    }
}
