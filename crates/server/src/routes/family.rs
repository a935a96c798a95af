//! Env families and promotion (environments.md): the family listing and `promote`, which puts
//! a stack's live release on the family's stack for another env without uploading or building
//! anything.

use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::bodies::json_response;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::extract::QueryParams;
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::routes::parse_slug;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use stackyard_api::{
    Family, FamilyMember, PromoteRequest, PromotionDecided, PromotionItem, PromotionList,
    PromotionPending,
};
use stackyard_core::ids::{EnvironmentName, StackName, StackSlug, random_hex, sha256_hex};
use stackyard_core::model::{Principal, TeamId};
use stackyard_core::store::{
    Approval, ApprovalError, ApprovalStatus, Idempotent, PromoteError, Promoted, Promotion, Store,
    StoreError,
};

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
    responses((status = 202, description = "`created`: a new stack for `to`, its deploy job queued; or, for an env of `--approval-envs` without `approval_id`, `pending_approval` (`PromotionPending`)", body = stackyard_api::Promoted),
        (status = 200, description = "`updated_existing`: a new release on the family's stack for `to`", body = stackyard_api::Promoted),
        (status = 400, description = "`invalid_env`: `from` or `to` is not an env name; `invalid_target`: `to` is the source's env; `invalid_name`: `name` is not valid; `vault_ref_failed`: a `vault://` reference has no value in `to`"),
        (status = 402, description = "`deployment_limit_reached`: the team has its maximum of stacks"),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 403, description = "`forbidden`: (with `approval_id`) not used by its team"),
        (status = 409, description = "`env_mismatch`: the source is not in `from`; `stack_deleting`: the source or the target is being deleted; `promote_conflict`: another promote created the target at the same moment; `approval_already_executed`, `approval_rejected`, `approval_not_pending`: the `approval_id` cannot run (again)"),
        (status = 410, description = "`approval_expired`: the `approval_id` expired"),
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
    let (team, token) = (p.team.id, p.token.id);
    let caller = Caller::Team(p);
    let hash = || {
        let identity = json!({
            "route": format!("POST /api/v1/stacks/{source}/promote"),
            "from": from, "to": to, "name": name, "copy_vault": body.copy_vault,
            "approval_id": body.approval_id,
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
    let needs_approval = state.config.approval_envs.contains(&to);
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
    let result = match (needs_approval, body.approval_id) {
        (true, None) => {
            // Nothing to replay: each request is its own approval.
            idempotency::abandon(&state.store, reservation.as_ref()).await;
            return request_approval(&state, team, token, &source, promotion).await;
        }
        (_, Some(id)) => state
            .store
            .execute_promotion(team, &source, &id, promotion)
            .await
            .map_err(approval_error),
        (false, None) => state
            .store
            .promote(team, &source, promotion)
            .await
            .map_err(promote_error),
    };
    let promoted = match result {
        Ok(p) => p,
        Err(e) => {
            idempotency::abandon(&state.store, reservation.as_ref()).await;
            return Err(e);
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
        PromoteError::InvalidTarget => invalid_target(),
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

/// 202 `pending_approval`: the request is recorded, nothing runs until another token of the
/// team approves it and a promote names it.
async fn request_approval<S: Store>(
    state: &AppState<S>,
    team: TeamId,
    token: i64,
    source: &StackSlug,
    promotion: Promotion,
) -> ApiResult<Response> {
    let now = promotion.ctx.now;
    let approval = Approval {
        id: format!("apr_{}", random_hex(16)),
        team,
        source: source.clone(),
        from: String::new(),
        to: promotion.to.clone(),
        name: promotion.name.clone(),
        copy_vault: promotion.copy_vault,
        requested_by: token,
        status: ApprovalStatus::Pending,
        created_at: now,
        expires_at: now.saturating_add_ms(
            i64::try_from(state.config.approval_ttl.as_millis()).unwrap_or(i64::MAX),
        ),
        decided_by: None,
        target: None,
    };
    let a = state
        .store
        .request_promotion(team, source, &promotion, approval)
        .await
        .map_err(promote_error)?;
    let body = PromotionPending {
        ok: true,
        status: "pending_approval".into(),
        approval_id: a.id.clone(),
        expires_at: a.expires_at.to_rfc3339(),
        from: a.from.clone(),
        to: a.to.clone(),
        source: a.source.to_string(),
        agent_action: format!(
            "Promoting to `{}` needs an approval: another token of the team sends POST /api/v1/promotions/{}/approve, then send this promote again with \"approval_id\": \"{}\" before {}.",
            a.to,
            a.id,
            a.id,
            a.expires_at.to_rfc3339()
        ),
    };
    Ok(json_response(
        StatusCode::ACCEPTED,
        stackyard_api::to_json_string(&body, 512),
    ))
}

fn approval_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "No promote approval with that id for this team.",
        )
        .with_action("List them with GET /api/v1/promotions."),
        ApprovalError::Expired => ApiError::new(
            StatusCode::GONE,
            "approval_expired",
            "The approval expired before it ran.",
        )
        .with_action("Send the promote again for a new approval."),
        ApprovalError::AlreadyExecuted => ApiError::new(
            StatusCode::CONFLICT,
            "approval_already_executed",
            "This approval already ran its promote; an approval runs once.",
        )
        .with_action("Send the promote again for a new approval to promote again."),
        ApprovalError::Rejected => ApiError::new(
            StatusCode::CONFLICT,
            "approval_rejected",
            "This approval was rejected.",
        ),
        ApprovalError::WrongState(state) => ApiError::new(
            StatusCode::CONFLICT,
            "approval_not_pending",
            format!("This approval is {state}."),
        )
        .with_action("A pending approval is approved or rejected once; an approved one is run by a promote naming it."),
        ApprovalError::OwnRequest => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The token that asked for this promote cannot decide it.",
        )
        .with_action("Approve it with another token of the team (POST /api/v1/tokens creates one)."),
        ApprovalError::Mismatch => ApiError::bad_request(
            "approval_mismatch",
            "This approval is for another source stack or target env.",
        ),
        ApprovalError::Promote(e) => promote_error(e),
    }
}

fn item(a: &Approval) -> PromotionItem {
    let expired = matches!(a.status, ApprovalStatus::Pending | ApprovalStatus::Approved)
        && crate::now().0 >= a.expires_at.0;
    PromotionItem {
        id: a.id.clone(),
        status: a.status.as_str().to_owned(),
        source: a.source.to_string(),
        from: a.from.clone(),
        to: a.to.clone(),
        created_at: a.created_at.to_rfc3339(),
        expires_at: a.expires_at.to_rfc3339(),
        expired,
        target: a.target.as_ref().map(|t| t.to_string()),
    }
}

async fn decide<S: Store>(
    state: &AppState<S>,
    p: Principal,
    rid: &RequestId,
    id: &str,
    approve: bool,
) -> ApiResult<Json<PromotionDecided>> {
    let (team, token) = (p.team.id, p.token.id);
    let ctx = audit_ctx(&Caller::Team(p), rid);
    let a = state
        .store
        .decide_promotion(team, id, approve, token, ctx)
        .await
        .map_err(approval_error)?;
    Ok(Json(PromotionDecided {
        ok: true,
        promotion: item(&a),
    }))
}

#[utoipa::path(post, path = "/api/v1/promotions/{id}/approve", tag = "stacks",
    description = "Approves a pending promote. A token of the same team other than the one that asked. The promote then runs once, when a promote names the approval (`approval_id`). Auth required.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The approval id (`apr_…`)")),
    responses((status = 200, description = "Approved", body = PromotionDecided),
        (status = 403, description = "`forbidden`: the token that asked cannot decide"),
        (status = 404, description = "`not_found`: no approval with that id for this team"),
        (status = 409, description = "`approval_not_pending`: decided already; `approval_already_executed`: it ran"),
        (status = 410, description = "`approval_expired`: past its expiry"),
        (status = 503, description = "`promote_failed`: the store is unavailable")))]
pub async fn approve<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(id): Path<String>,
) -> ApiResult<Json<PromotionDecided>> {
    decide(&state, p, &rid, &id, true).await
}

#[utoipa::path(post, path = "/api/v1/promotions/{id}/reject", tag = "stacks",
    description = "Rejects a pending promote. A token of the same team other than the one that asked. Auth required.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The approval id (`apr_…`)")),
    responses((status = 200, description = "Rejected", body = PromotionDecided),
        (status = 403, description = "`forbidden`: the token that asked cannot decide"),
        (status = 404, description = "`not_found`: no approval with that id for this team"),
        (status = 409, description = "`approval_not_pending`: decided already; `approval_already_executed`: it ran"),
        (status = 410, description = "`approval_expired`: past its expiry"),
        (status = 503, description = "`promote_failed`: the store is unavailable")))]
pub async fn reject<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(id): Path<String>,
) -> ApiResult<Json<PromotionDecided>> {
    decide(&state, p, &rid, &id, false).await
}

/// `?status=`: one state only.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct PromotionQuery {
    /// `pending`, `approved`, `rejected` or `executed`.
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/promotions", tag = "stacks",
    description = "The team's promote approvals, newest first (at most 200). Auth required.",
    security(("bearer" = [])),
    params(PromotionQuery),
    responses((status = 200, description = "The approvals", body = PromotionList),
        (status = 400, description = "`invalid_status`: not one of the states"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    QueryParams(q): QueryParams<PromotionQuery>,
) -> ApiResult<Json<PromotionList>> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            ApprovalStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_status",
                    "`status` is one of pending, approved, rejected, executed.",
                )
            })
        })
        .transpose()?;
    let items: Vec<PromotionItem> = state
        .store
        .list_promotions(p.team.id, status)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .iter()
        .map(item)
        .collect();
    Ok(Json(PromotionList {
        ok: true,
        total: items.len(),
        items,
    }))
}
