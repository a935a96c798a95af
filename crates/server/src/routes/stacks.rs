//! `/stacks/*` and `/api/v1/stacks*`: create (multipart), read, list, delete.

use crate::auth::{Caller, Ownership, TeamCaller, audit_ctx};
use crate::bodies::{create_body, json_response};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::routes::upload::{self, Code, Form};
use crate::routes::{load_stack, page_limit, parse_slug};
use crate::state::AppState;
use axum::Json;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use stackyard_api::{
    CreatedRelease, CreatedService, CreatedStack, DeletedStack, StackDetail, StackForm, StackList,
    StackSummary,
};
use stackyard_core::ids::sha256_hex;
use stackyard_core::model::{Access, StackStatus};
use stackyard_core::store::{CreateStackError, Idempotent, NewStack, StackFilter, Store};
use stackyard_core::{EnvironmentName, Millis, StackName, StackSlug};
use std::time::{Duration, Instant};
use utoipa::IntoParams;

/// A create request that passed every check; nothing has been written yet.
struct Validated {
    name: StackName,
    environment: EnvironmentName,
    code: Code,
}

impl Validated {
    /// What makes two creates "the same request" for `Idempotency-Key`: the meaning of the form,
    /// not its bytes (a client re-encoding the same form picks a new multipart boundary).
    fn request_hash(&self) -> String {
        let identity = json!({
            "route": "POST /stacks/new",
            "name": self.name,
            "env": self.environment,
            "manifest": self.code.manifest_text,
            "services": self.code.identity(),
        });
        sha256_hex(identity.to_string().as_bytes())
    }
}

/// Every check of a create, in the order a client can fix them. `needs_start_command`: the
/// runtime's (`Runtime::needs_start_command`).
async fn validate(mut form: Form, needs_start_command: bool) -> ApiResult<Validated> {
    let manifest_text = upload::manifest_text(&mut form)?;
    let name = form
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name_required", "The `name` field is required."))?;
    let name = StackName::parse(&name).map_err(|e| ApiError::bad_request("invalid_name", e.0))?;
    let environment = match form.env.filter(|e| !e.is_empty()) {
        None => EnvironmentName::default_env(),
        Some(e) => {
            EnvironmentName::parse(&e).map_err(|e| ApiError::bad_request("invalid_env", e.0))?
        }
    };
    let code =
        upload::validate_code_blocking(manifest_text, form.files, needs_start_command).await?;
    Ok(Validated {
        name,
        environment,
        code,
    })
}

#[utoipa::path(post, path = "/stacks/new", tag = "stacks",
    description = "Create a stack from a manifest and one gzipped tarball per service (multipart/form-data). Everything is validated before anything is written. Auth optional (`--allow-anonymous`).",
    security((), ("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A replay with the same key and form returns the first response")),
    request_body(content = StackForm, content_type = "multipart/form-data"),
    responses((status = 202, description = "Accepted; the deploy job is queued", body = CreatedStack),
        (status = 400, description = "`invalid_form`, `missing_manifest`, `invalid_manifest`, `missing_tarball`, `invalid_tarball`, `name_required`, `invalid_name`, `invalid_env`, `invalid_env_key`, `missing_start_command`, `invalid_dockerfile`, `image_unsupported`: the form, manifest or a tarball is not valid (`image_unsupported`: a service names an `image:` and this runtime runs tarballs only); `invalid_token`: a `needs` entry is not a resource token, `postgres`, `redis` or `{kind, as}`; `resource_not_found`: a `needs` token names no resource"),
        (status = 401, description = "`unauthorized`: this server accepts no anonymous stacks"),
        (status = 403, description = "`forbidden`: a `needs` token is another team's (or a team's, in an anonymous stack, or another stack's own)"),
        (status = 402, description = "`deployment_limit_reached`: the team has its maximum of stacks"),
        (status = 429, description = "`rate_limit_exceeded`: the anonymous daily cap of this network is reached"),
        (status = 503, description = "`provision_failed`: the store (or artifact storage) is unavailable")))]
pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    if matches!(caller, Caller::Anonymous { .. }) && !state.config.allow_anonymous {
        return Err(ApiError::unauthorized(
            "This server does not accept anonymous stacks.",
        ));
    }
    let form = upload::read_form(multipart).await?;
    let mut validated = validate(form, state.runtime.needs_start_command()).await?;

    let reservation = match idempotency::start(
        &state.store,
        &headers,
        caller.idempotency_scope(),
        || validated.request_hash(),
        "provision_failed",
    )
    .await?
    {
        Start::Replay(res) => return Ok(res),
        Start::Reserved(r) => Some(r),
        Start::None => None,
    };
    // After the replay check: a replayed create answers as the first did, even if a resource
    // it named has gone since.
    let owner = match &caller {
        Caller::Team(p) => Some(p.team.id),
        Caller::Anonymous { .. } => None,
    };
    let result = match crate::needs::grant(&state.store, owner, &mut validated.code).await {
        Ok(()) => create_reserved(&state, &caller, &rid, validated, reservation.as_ref()).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        idempotency::abandon(&state.store, reservation.as_ref()).await;
    }
    result
}

/// The create answer's `note`: the manifest's warnings and, for an anonymous stack, when it
/// expires and how to keep the app.
fn create_note(warnings: &[String], expires_at: Option<Millis>, ttl: Duration) -> String {
    let warnings = warnings.join("; ");
    let Some(at) = expires_at else {
        return warnings;
    };
    let mut note = format!(
        "This anonymous stack expires at {} (in {}) and is then deleted; to keep your app, get a team API token (an operator creates one with `stackyard admin create-team`) and deploy it again with that token: team stacks do not expire.",
        at.to_rfc3339(),
        humantime::format_duration(ttl)
    );
    if !warnings.is_empty() {
        note.push_str(" Manifest warnings: ");
        note.push_str(&warnings);
    }
    note
}

async fn create_reserved<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rid: &RequestId,
    v: Validated,
    reservation: Option<&idempotency::Reservation>,
) -> ApiResult<Response> {
    let ctx = audit_ctx(caller, rid);
    if let Caller::Anonymous { fingerprint } = caller {
        state
            .rate_limiter
            .check_anonymous(&state.store, fingerprint, ctx.now)
            .await?;
    }
    let slug = StackSlug::generate();
    let Ownership {
        team_id,
        tier,
        fingerprint,
        expires_at,
    } = caller.ownership(ctx.now, state.config.anonymous_ttl);
    let body = create_body(&CreatedStack {
        ok: true,
        stack_id: slug.to_string(),
        name: v.name.to_string(),
        env: v.environment.to_string(),
        status: StackStatus::Building,
        tier: tier.clone(),
        expires_in: if expires_at.is_some() {
            humantime::format_duration(state.config.anonymous_ttl).to_string()
        } else {
            String::new()
        },
        expires_at: expires_at.map(|t| t.to_rfc3339()),
        services: v.code.services.iter().map(CreatedService::from).collect(),
        release: CreatedRelease::first(),
        note: create_note(&v.code.warnings, expires_at, state.config.anonymous_ttl),
    });

    let sizes = upload::save_artifacts(state, v.code.artifacts).await?;

    let new = NewStack {
        slug: slug.clone(),
        name: v.name.into_string(),
        environment: v.environment.into_string(),
        team_id,
        fingerprint,
        tier,
        expires_at,
        manifest: v.code.manifest_text,
        services: v.code.services,
        artifacts: sizes,
        ctx,
        idempotency: reservation.map(|r| {
            let body = body.clone();
            Idempotent::new(r.scope.clone(), r.key.clone(), 202, move |_| body.clone())
        }),
    };
    match state.store.create_stack(new).await {
        Ok(_) => {}
        Err(CreateStackError::LimitReached { max }) => {
            return Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "deployment_limit_reached",
                format!("This team already has its maximum of {max} stacks."),
            )
            .with_action("Delete a stack you no longer need (DELETE /stacks/<id>) or ask an administrator to raise the team's limit."));
        }
        Err(CreateStackError::Vault(e)) => return Err(ApiError::vault_ref(&e)),
        Err(CreateStackError::Store(e)) => return Err(ApiError::store("provision_failed", &e)),
    }
    metrics::counter!("stackyard_stacks_created_total").increment(1);
    state.jobs_ready.notify_one();
    tracing::info!(stack = %slug, "stack created");
    Ok(json_response(StatusCode::ACCEPTED, body))
}

async fn get_detail<S: Store>(
    state: &AppState<S>,
    access: Access,
    slug: &str,
) -> ApiResult<Json<StackDetail>> {
    let detail = load_stack(state, access, &parse_slug(slug)?).await?;
    Ok(Json(StackDetail::from(&detail)))
}

#[utoipa::path(get, path = "/stacks/{slug}", tag = "stacks", description = "A stack and its services. Auth optional: an anonymous caller sees only anonymous stacks.",
    security((), ("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)")),
    responses((status = 200, description = "The stack", body = StackDetail),
        (status = 404, description = "`not_found`: no stack with that id for this caller"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn get_compat<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    Path(slug): Path<String>,
) -> ApiResult<Json<StackDetail>> {
    get_detail(&state, caller.access(), &slug).await
}

#[utoipa::path(get, path = "/api/v1/stacks/{slug}", tag = "stacks", description = "A stack and its services. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)")),
    responses((status = 200, description = "The stack", body = StackDetail),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn get_v1<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    Path(slug): Path<String>,
) -> ApiResult<Json<StackDetail>> {
    get_detail(&state, Access::Team(p.team.id), &slug).await
}

#[derive(Debug, Default, Deserialize)]
pub struct StackListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    status: Option<String>,
    env: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/stacks", tag = "stacks", description = "The team's stacks, newest first, optionally only those with a status or env. Auth required.",
    security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, description = "Page size, clamped to 1-200; default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (with the same filters)"),
        ("status" = Option<stackyard_api::schema::StackStatus>, Query, description = "Only stacks with this status"),
        ("env" = Option<String>, Query, description = "Only stacks of this deployment environment")),
    responses((status = 200, description = "A page of stacks; `total` counts every match", body = StackList),
        (status = 400, description = "`invalid_query`: a query parameter has the wrong type, or `status` is not a stack status"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    QueryParams(q): QueryParams<StackListQuery>,
) -> ApiResult<Json<StackList>> {
    // An empty `status=` is no status either: the schema's enum has no empty value.
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(StackStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "`status` must be one of building, deploying, healthy, degraded, failed, deleting.",
            )
        })?),
    };
    let filter = StackFilter {
        status,
        env: q.env.filter(|e| !e.is_empty()),
    };
    let page = state
        .store
        .list_stacks(p.team.id, &filter, page_limit(q.limit), q.cursor.as_deref())
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(StackList {
        ok: true,
        items: page.items.iter().map(StackSummary::from).collect(),
        total: page.total,
        next_cursor: page.next_cursor,
    }))
}

/// `DELETE /stacks/:slug?wait=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// `false`: answer 202 as soon as the teardown is queued instead of waiting for it.
    wait: Option<bool>,
}

/// How often a waiting `DELETE` looks whether another server finished the teardown (this
/// server's own workers wake it at once).
const DELETE_POLL: Duration = Duration::from_millis(250);

#[utoipa::path(delete, path = "/stacks/{slug}", tag = "stacks",
    description = "Marks the stack `deleting` and queues its teardown in one transaction, then waits for the teardown up to the server's `--delete-wait` (default 10 s): 200 once the stack is gone, else 202 (GET answers 404 once it has finished). Repeating the call is harmless. Auth optional.",
    security((), ("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"), DeleteQuery),
    responses((status = 200, description = "Deleted: the teardown finished and the stack is gone (`message` is `Stack deleted`, no `status`)", body = DeletedStack),
        (status = 202, description = "Teardown queued or still running (`status` is `deleting`)", body = DeletedStack),
        (status = 404, description = "`not_found`: no stack with that id for this caller"),
        (status = 503, description = "`delete_failed`: the store is unavailable")))]
pub async fn delete<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<DeleteQuery>,
) -> ApiResult<(StatusCode, Json<DeletedStack>)> {
    let slug = parse_slug(&slug)?;
    let access = caller.access();
    let stack = state
        .store
        .request_deletion(access, &slug, audit_ctx(&caller, &rid))
        .await
        .map_err(|e| ApiError::store("delete_failed", &e))?
        .ok_or_else(ApiError::not_found)?;
    state.jobs_ready.notify_one();
    let stack_id = stack.slug.to_string();
    if q.wait.unwrap_or(true) && gone_within(&state, access, &slug, state.config.delete_wait).await
    {
        return Ok((
            StatusCode::OK,
            Json(DeletedStack {
                ok: true,
                stack_id,
                status: None,
                message: "Stack deleted".to_owned(),
            }),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(DeletedStack {
            ok: true,
            message: format!(
                "Teardown queued. GET /stacks/{stack_id} answers 404 once it has finished."
            ),
            stack_id,
            status: Some(StackStatus::Deleting),
        }),
    ))
}

/// Waits up to `wait` for the stack to be gone (its teardown finished), woken by this
/// server's workers as teardowns finish and looking every [`DELETE_POLL`] for one another
/// server ran. A store error ends the wait early: the deletion itself is committed, and the
/// client learns the rest from the 202.
async fn gone_within<S: Store>(
    state: &AppState<S>,
    access: Access,
    slug: &StackSlug,
    wait: Duration,
) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        // Registered before looking, so a teardown finishing in between still wakes us.
        let finished = state.teardowns_done.notified();
        match state.store.get_stack(access, slug).await {
            Ok(None) => return true,
            Ok(Some(_)) => {}
            Err(_) => return false,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::select! {
            _ = finished => {}
            _ = tokio::time::sleep(left.min(DELETE_POLL)) => {}
        }
    }
}
