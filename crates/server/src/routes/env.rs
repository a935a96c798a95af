//! `/stacks/:slug/env*`: the stack's environment map — merge PATCH, read (masked), history and
//! rollback. Writes go through the per-stack group-commit queue (`envqueue`).

use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::bodies::{self, env_body};
use crate::envqueue::WriteResult;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, JsonBytes, QueryParams};
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::routes::{load_stack, page_limit, parse_slug};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use stackyard_api::{
    EnvPatchRequest, EnvRead, EnvVars, EnvVersion, EnvVersionPage, EnvWriteResponse,
    RollbackRequest,
};
use stackyard_core::StackSlug;
use stackyard_core::env::{EnvError, EnvPatch};
use stackyard_core::ids::sha256_hex;
use stackyard_core::model::{Access, StackId};
use stackyard_core::store::{EnvBatchError, EnvOp, EnvWrite, EnvWriteError, Idempotent, Store};
use std::collections::BTreeMap;
use utoipa::IntoParams;
use utoipa::openapi::RefOr;

fn json_response(body: String, version: i64) -> Response {
    with_etag(bodies::json_response(StatusCode::OK, body), version)
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
        .with_current_version(current)
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

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// `true`: answer what the write would do, write nothing.
    dry_run: Option<bool>,
}

/// The headers an env write reads (documentation only: the handlers read `HeaderMap`).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct WriteHeaders {
    /// `"<env_version>"`: apply only if the env is still at that version.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
    /// A replay with the same key and body returns the first response.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// The error answers every env write shares (their bodies are the envelope, added with the
/// other shared answers by `openapi`).
pub struct WriteErrors;

impl utoipa::IntoResponses for WriteErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        [
            (409, "`stack_deleting`: the stack is being deleted"),
            (412, "`version_mismatch`: `If-Match` is not the current version (`current_version` says which is)"),
            (413, "`env_too_large`: the map would be over 64 KiB as JSON"),
            (503, "`persist_failed`: the store is unavailable or the stack's lock wait exceeded its limit"),
        ]
        .into_iter()
        .map(|(status, description)| {
            (status.to_string(), RefOr::T(utoipa::openapi::Response::new(description)))
        })
        .collect()
    }
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
    // A malformed key is refused even on a dry run, which otherwise ignores it.
    idempotency::key_from(headers)?;
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
            env_body(slug, &outcome, true),
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
            bodies::env_body(&slug, o, false)
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
    Ok(json_response(
        env_body(slug, &outcome, false),
        outcome.version,
    ))
}

#[utoipa::path(patch, path = "/stacks/{slug}/env", tag = "env",
    description = "Merges `{\"env\": {KEY: value | \"\" | null}}` into the stack's env map (`\"\"` and `null` delete) as one new version. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"), WriteQuery, WriteHeaders),
    request_body(content = EnvPatchRequest, content_type = "application/json"),
    responses((status = 200, description = "The whole map after the change, masked", body = EnvWriteResponse,
            headers(("ETag" = String, description = "`\"<version>\"`, for `If-Match`"))),
        (status = 400, description = "`invalid_body`, `missing_env`, `invalid_env_key`, `duplicate_env_key`, `invalid_env_value`: the patch is not valid"),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        WriteErrors))]
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

#[utoipa::path(post, path = "/stacks/{slug}/env/rollback", tag = "env",
    description = "Makes the env map equal to version N's, as a new version (history is never rewritten). Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"), WriteQuery, WriteHeaders),
    request_body(content = RollbackRequest, content_type = "application/json"),
    responses((status = 200, description = "As PATCH: the whole map after the rollback, masked", body = EnvWriteResponse,
            headers(("ETag" = String, description = "`\"<version>\"`, for `If-Match`"))),
        (status = 404, description = "`not_found`: no stack with that id for this team; `version_not_found`: no such version in the history kept"),
        WriteErrors))]
pub async fn rollback<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<WriteQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RollbackRequest>,
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
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"),
        ("reveal" = Option<bool>, Query, description = "`true`: values in clear (writes a `stack.env.revealed` audit row)")),
    responses((status = 200, description = "The env map", body = EnvRead,
            headers(("ETag" = String, description = "`\"<version>\"`, for `If-Match`"))),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
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
        EnvVars::Revealed(&outcome.env)
    } else {
        EnvVars::Masked(&outcome.env)
    };
    let res = Json(EnvRead {
        ok: true,
        stack_id: slug.to_string(),
        env,
        version: outcome.version,
        updated_at: outcome.updated_at.to_rfc3339(),
    })
    .into_response();
    Ok(with_etag(res, outcome.version))
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionsQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/stacks/{slug}/env/versions", tag = "env", description = "Env history, newest first (key names only). Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"),
        ("limit" = Option<i64>, Query, description = "Page size, clamped to 1-200; default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "A page of env versions", body = EnvVersionPage),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn versions<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<VersionsQuery>,
) -> ApiResult<Json<EnvVersionPage>> {
    let slug = parse_slug(&slug)?;
    let stack = resolve(&state, Access::Team(p.team.id), &slug).await?;
    let page = state
        .store
        .list_env_versions(stack, page_limit(q.limit), q.cursor.as_deref())
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(EnvVersionPage {
        ok: true,
        items: page.items.iter().map(EnvVersion::from).collect(),
        total: page.total,
        next_cursor: page.next_cursor,
    }))
}
