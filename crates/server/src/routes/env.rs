//! `/stacks/:slug/env*`: the stack's environment map — merge PATCH, read (masked), history and
//! rollback. Writes go through the per-stack group-commit queue (`envqueue`).

use crate::app::AppState;
use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::envqueue::WriteResult;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, JsonBytes, QueryParams};
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::routes::{load_stack, page_limit, parse_slug};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use stackyard_core::StackSlug;
use stackyard_core::env::{EnvError, EnvPatch, push_json_str};
use stackyard_core::ids::sha256_hex;
use stackyard_core::model::{Access, EnvOutcome, StackId};
use stackyard_core::store::{EnvBatchError, EnvOp, EnvWrite, EnvWriteError, Idempotent, Store};

/// The PATCH / rollback response body; also what an idempotent replay returns (the store
/// renders it inside the write's transaction). Written by hand around the masked map so a
/// possibly 64 KiB map is neither copied nor run through a generic serializer per response
/// (it was most of the cost of a PATCH with a large map):
/// `{ok, stack_id, env, version, changed: {set, deleted}, message[, dry_run]}`.
fn response_json(slug: &StackSlug, o: &EnvOutcome, dry_run: bool) -> String {
    let message = if dry_run {
        "Dry run: nothing was written.".to_owned()
    } else {
        format!("Env vars persisted. Call POST /stacks/{slug}/redeploy to apply.")
    };
    let mut out = String::with_capacity(o.env.encoded_len() + 256);
    out.push_str("{\"ok\":true,\"stack_id\":");
    push_json_str(&mut out, slug.as_str());
    out.push_str(",\"env\":");
    o.env.write_masked_json(&mut out);
    out.push_str(",\"version\":");
    out.push_str(&o.version.to_string());
    out.push_str(",\"changed\":");
    out.push_str(&serde_json::to_string(&o.changed).unwrap_or_default());
    out.push_str(",\"message\":");
    push_json_str(&mut out, &message);
    if dry_run {
        out.push_str(",\"dry_run\":true");
    }
    out.push('}');
    out
}

/// `EnvResponseRenderer` for the store.
pub fn render(slug: &StackSlug, o: &EnvOutcome) -> String {
    response_json(slug, o, false)
}

fn json_response(body: String, version: i64) -> Response {
    let res = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    with_etag(res, version)
}

/// The env version as the response's `ETag`, the value `If-Match` takes back.
fn with_etag(mut res: Response, version: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// The stack's id for a team caller, or 404. Ids and owners never change and slugs are never
/// reused, so the answer is cached; a stack deleted since is caught by the write's own
/// transaction (`NotFound`).
async fn resolve<S: Store>(
    state: &AppState<S>,
    access: Access,
    slug: &StackSlug,
) -> ApiResult<StackId> {
    if let Some(id) = state.stack_ids.get(access, slug) {
        return Ok(id);
    }
    let detail = load_stack(state, access, slug).await?;
    state.stack_ids.put(access, slug.clone(), detail.stack.id);
    Ok(detail.stack.id)
}

fn env_error(e: &EnvError) -> ApiError {
    let status = match e {
        EnvError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut err = ApiError::new(status, e.code(), e.to_string());
    if let EnvError::TooLarge { .. } = e {
        err = err.with_action("Remove keys you no longer need (set them to null) or keep large values outside env vars.");
    }
    err
}

fn write_error(e: EnvWriteError) -> ApiError {
    match e {
        EnvWriteError::VersionMismatch { current } => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "version_mismatch",
            format!("The env version is {current}, not the one in If-Match."),
        )
        .with_field("current_version", json!(current))
        .with_action("GET /stacks/<id>/env, re-apply your change to the current map, and send it with If-Match set to the current version."),
        EnvWriteError::VersionNotFound(v) => ApiError::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("Env version {v} does not exist or is older than the history kept."),
        )
        .with_action("List the versions you can roll back to with GET /stacks/<id>/env/versions."),
        EnvWriteError::Invalid(e) => env_error(&e),
    }
}

fn batch_error(e: EnvBatchError) -> ApiError {
    match e {
        EnvBatchError::NotFound => ApiError::not_found(),
        EnvBatchError::Deleting => ApiError::new(
            StatusCode::CONFLICT,
            "stack_deleting",
            "The stack is being deleted and accepts no changes.",
        )
        .with_action("Create a new stack instead; this one is being torn down."),
        EnvBatchError::Store(e) => ApiError::store("persist_failed", &e),
    }
}

/// `If-Match: "5"` (or `5`, `W/"5"`). A value that cannot be a version can never match.
fn if_match(headers: &HeaderMap) -> Option<i64> {
    let v = headers.get(header::IF_MATCH)?;
    let s = v.to_str().unwrap_or("").trim();
    let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
    Some(s.parse::<i64>().unwrap_or(-1))
}

#[derive(Debug, Default, Deserialize)]
pub struct WriteQuery {
    dry_run: Option<bool>,
}

/// What every env write request carries besides its operation.
struct WriteRequest<'a> {
    caller: Caller,
    rid: &'a RequestId,
    headers: &'a HeaderMap,
    slug: &'a StackSlug,
    dry_run: bool,
}

/// Runs one env write for a team caller: idempotency, dry run or the queue, and the response.
/// `identity` (its parts concatenated) is what makes two requests "the same" for
/// `Idempotency-Key`; it is passed in parts so a PATCH body is copied only when a key was sent.
async fn write<S: Store>(
    state: &AppState<S>,
    req: WriteRequest<'_>,
    op: EnvOp,
    identity: &[&[u8]],
) -> ApiResult<Response> {
    let WriteRequest {
        caller,
        rid,
        headers,
        slug,
        dry_run,
    } = req;
    let caller = &caller;
    let stack = resolve(state, caller.access(), slug).await?;
    let mut write = EnvWrite {
        op,
        if_match: if_match(headers),
        ctx: audit_ctx(caller, rid),
        idempotency: None,
        deadline: None,
    };
    if dry_run {
        let outcome = state
            .store
            .preview_env_write(stack, write)
            .await
            .map_err(batch_error)?
            .map_err(write_error)?;
        return Ok(json_response(
            response_json(slug, &outcome, true),
            outcome.version,
        ));
    }
    let if_match = write.if_match;
    let request_hash = || {
        let mut bytes = identity.concat();
        bytes.extend_from_slice(format!("{if_match:?}").as_bytes());
        sha256_hex(&bytes)
    };
    let reservation = match idempotency::start(
        &state.store,
        headers,
        caller.idempotency_scope(),
        request_hash,
        "persist_failed",
    )
    .await?
    {
        Start::Replay(r) => return Ok(r),
        Start::Reserved(r) => Some(r),
        Start::None => None,
    };
    write.idempotency = reservation.as_ref().map(|r| {
        let slug = slug.clone();
        Idempotent::new(r.scope.clone(), r.key.clone(), 200, move |o| {
            render(&slug, o)
        })
    });
    let result: WriteResult = state.env_queue.submit(stack, write).await;
    let outcome = match result {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            idempotency::abandon(&state.store, reservation.as_ref()).await;
            return Err(write_error(e));
        }
        Err(e) => {
            if matches!(e, EnvBatchError::NotFound) {
                state.stack_ids.forget(slug);
            }
            idempotency::abandon(&state.store, reservation.as_ref()).await;
            return Err(batch_error(e));
        }
    };
    metrics::counter!("stackyard_env_writes_total", "changed" => if outcome.changed.is_empty() { "no" } else { "yes" }).increment(1);
    Ok(json_response(render(slug, &outcome), outcome.version))
}

#[utoipa::path(patch, path = "/stacks/{slug}/env", tag = "env",
    description = "Merges `{\"env\": {KEY: value | \"\" | null}}` into the stack's env map (\"\" and null delete). Auth required.",
    params(("slug" = String, Path), ("dry_run" = Option<bool>, Query), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "{ok, stack_id, env (masked), version, changed, message}"),
        (status = 400, description = "invalid_body, missing_env, invalid_env_key, duplicate_env_key, invalid_env_value"),
        (status = 401, description = "unauthorized"), (status = 404, description = "not_found"), (status = 409, description = "stack_deleting, idempotency_in_progress"),
        (status = 412, description = "version_mismatch"), (status = 413, description = "env_too_large"), (status = 422, description = "idempotency_key_reused"),
        (status = 503, description = "persist_failed")))]
pub async fn patch<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<WriteQuery>,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Response> {
    let slug = parse_slug(&slug)?;
    let patch = EnvPatch::parse(&body).map_err(|e| env_error(&e))?;
    let route = format!("PATCH /stacks/{slug}/env\n");
    let req = WriteRequest {
        caller: Caller::Team(p),
        rid: &rid,
        headers: &headers,
        slug: &slug,
        dry_run: q.dry_run.unwrap_or(false),
    };
    write(&state, req, EnvOp::Patch(patch), &[route.as_bytes(), &body]).await
}

#[derive(Debug, Deserialize)]
pub struct RollbackBody {
    version: i64,
}

#[utoipa::path(post, path = "/stacks/{slug}/env/rollback", tag = "env",
    description = "Makes the env map equal to version N's, as a new version. Auth required.",
    params(("slug" = String, Path), ("dry_run" = Option<bool>, Query), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = String, description = "{\"version\": N}", content_type = "application/json"),
    responses((status = 200, description = "Same as PATCH"), (status = 404, description = "not_found, version_not_found"), (status = 409, description = "stack_deleting"),
        (status = 412, description = "version_mismatch"), (status = 413, description = "env_too_large"), (status = 503, description = "persist_failed")))]
pub async fn rollback<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<WriteQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RollbackBody>,
) -> ApiResult<Response> {
    let slug = parse_slug(&slug)?;
    let identity = format!("POST /stacks/{slug}/env/rollback\n{}", body.version);
    let op = EnvOp::Rollback {
        to_version: body.version,
    };
    let req = WriteRequest {
        caller: Caller::Team(p),
        rid: &rid,
        headers: &headers,
        slug: &slug,
        dry_run: q.dry_run.unwrap_or(false),
    };
    write(&state, req, op, &[identity.as_bytes()]).await
}

#[derive(Debug, Default, Deserialize)]
pub struct ReadQuery {
    reveal: Option<bool>,
}

#[utoipa::path(get, path = "/stacks/{slug}/env", tag = "env",
    description = "The env map, secret-looking values masked; `?reveal=true` shows them and is audited. Auth required.",
    params(("slug" = String, Path), ("reveal" = Option<bool>, Query)),
    responses((status = 200, description = "{ok, stack_id, env, version, updated_at}"), (status = 401, description = "unauthorized"), (status = 404, description = "not_found"), (status = 503, description = "fetch_failed")))]
pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<ReadQuery>,
) -> ApiResult<Response> {
    let slug = parse_slug(&slug)?;
    let caller = Caller::Team(p);
    let stack = resolve(&state, caller.access(), &slug).await?;
    let reveal = q.reveal.unwrap_or(false);
    let outcome = state
        .store
        .get_env(stack, reveal.then(|| audit_ctx(&caller, &rid)))
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .ok_or_else(ApiError::not_found)?;
    let env = if reveal {
        json!(outcome.env)
    } else {
        json!(outcome.env.masked())
    };
    let res = Json(json!({
        "ok": true,
        "stack_id": slug,
        "env": env,
        "version": outcome.version,
        "updated_at": outcome.updated_at.to_rfc3339(),
    }))
    .into_response();
    Ok(with_etag(res, outcome.version))
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionsQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/stacks/{slug}/env/versions", tag = "env", description = "Env history, newest first (key names only). Auth required.",
    params(("slug" = String, Path), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "{ok, items: [{version, created_at, actor, set, deleted}], total, next_cursor}"), (status = 404, description = "not_found")))]
pub async fn versions<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<VersionsQuery>,
) -> ApiResult<Json<Value>> {
    let slug = parse_slug(&slug)?;
    let stack = resolve(&state, Access::Team(p.team.id), &slug).await?;
    let page = state
        .store
        .list_env_versions(stack, page_limit(q.limit), q.cursor.as_deref())
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|v| json!({ "version": v.version, "created_at": v.created_at.to_rfc3339(), "actor": v.actor, "set": v.set, "deleted": v.deleted }))
        .collect();
    Ok(Json(
        json!({ "ok": true, "items": items, "total": page.total, "next_cursor": page.next_cursor }),
    ))
}
