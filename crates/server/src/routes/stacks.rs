//! `/stacks/*` and `/api/v1/stacks*`: create (multipart), read, list, delete.

use crate::app::AppState;
use crate::artifacts;
use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::routes::{page_limit, parse_slug, views};
use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use stackyard_core::ids::sha256_hex;
use stackyard_core::manifest::Manifest;
use stackyard_core::model::{Access, ReleaseService};
use stackyard_core::store::{CreateStackError, IdempotencyCompletion, NewStack, Store};
use stackyard_core::tarball::{self, TarballLimits};
use stackyard_core::{EnvironmentName, StackName, StackSlug};
use std::collections::BTreeMap;

/// The parts of a `POST /stacks/new` form, as received.
#[derive(Default)]
struct Form {
    manifest: Option<String>,
    name: Option<String>,
    env: Option<String>,
    files: BTreeMap<String, Bytes>,
}

/// A create request that passed every check; nothing has been written yet.
struct Validated {
    name: StackName,
    environment: EnvironmentName,
    manifest_text: String,
    warnings: Vec<String>,
    services: Vec<ReleaseService>,
    /// `(digest, bytes)` per distinct artifact.
    artifacts: BTreeMap<String, Bytes>,
}

impl Validated {
    /// What makes two creates "the same request" for `Idempotency-Key`: the meaning of the form,
    /// not its bytes (a client re-encoding the same form picks a new multipart boundary).
    fn request_hash(&self) -> String {
        let services: Vec<(&str, &str)> = self
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.artifact.as_str()))
            .collect();
        let identity = json!({
            "route": "POST /stacks/new",
            "name": self.name,
            "env": self.environment,
            "manifest": self.manifest_text,
            "services": services,
        });
        sha256_hex(identity.to_string().as_bytes())
    }
}

fn invalid_form(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_form", message)
        .with_action("Send multipart/form-data with a `manifest` field, a `name` field and one gzipped tarball part per service named after the service.")
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        invalid_form(format!(
            "The multipart body could not be read: {}.",
            e.body_text()
        ))
    }
}

async fn read_form(mut mp: Multipart) -> ApiResult<Form> {
    let mut form = Form::default();
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(invalid_form("A form part has no field name."));
        };
        let slot = match name.as_str() {
            "manifest" => Some(&mut form.manifest),
            "name" => Some(&mut form.name),
            "env" => Some(&mut form.env),
            _ => None,
        };
        match slot {
            Some(slot) => {
                let bytes = field.bytes().await.map_err(multipart_error)?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| invalid_form(format!("The `{name}` field is not UTF-8 text.")))?;
                if slot.replace(text).is_some() {
                    return Err(invalid_form(format!(
                        "The `{name}` field appears more than once."
                    )));
                }
            }
            None => {
                let bytes = field.bytes().await.map_err(multipart_error)?;
                if form.files.insert(name.clone(), bytes).is_some() {
                    return Err(invalid_form(format!(
                        "The tarball part `{}` appears more than once.",
                        stackyard_core::ids::truncate_for_message(&name)
                    )));
                }
            }
        }
    }
    Ok(form)
}

/// Every check of a create, in the order a client can fix them. CPU-heavy (tarball
/// inspection), so it runs on the blocking pool.
fn validate(form: Form) -> ApiResult<Validated> {
    let manifest_text = form
        .manifest
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_manifest",
                "The `manifest` field (the stack's YAML manifest) is required.",
            )
        })?;
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
    let manifest = Manifest::parse(&manifest_text)
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;

    let mut files = form.files;
    let limits = TarballLimits::default();
    let mut services = Vec::with_capacity(manifest.services.len());
    let mut artifacts = BTreeMap::new();
    for spec in &manifest.services {
        let svc = spec.name.as_str();
        let bytes = files.remove(svc).ok_or_else(|| {
            ApiError::bad_request("missing_tarball", format!("No tarball part named `{svc}` was sent for service `{svc}`."))
                .with_action(format!("Add a form part named `{svc}` holding a gzipped tar of the service's build directory."))
        })?;
        let info = tarball::inspect(&bytes, &limits).map_err(|e| {
            ApiError::bad_request("invalid_tarball", format!("Service `{svc}`: {e}"))
        })?;
        let start = tarball::resolve_start(spec.command.as_deref(), &info).ok_or_else(|| {
            ApiError::bad_request(
                "missing_start_command",
                format!("Service `{svc}` has no start command: no `command` in the manifest, no Procfile and no Dockerfile CMD/ENTRYPOINT in its tarball."),
            )
            .with_action(format!("Add `command: \"...\"` to service `{svc}` in the manifest, or a Procfile with a `web:` line at the tarball root."))
        })?;
        services.push(ReleaseService {
            name: spec.name.clone(),
            artifact: info.digest.clone(),
            command: start.command,
            workdir: start.workdir,
            port: spec.port,
            expose: spec.expose,
            health: spec.health.clone(),
            env: spec.env.clone(),
        });
        artifacts.insert(info.digest, bytes);
    }
    if let Some(extra) = files.keys().next() {
        return Err(invalid_form(format!(
            "The form part `{}` does not name a service in the manifest.",
            stackyard_core::ids::truncate_for_message(extra)
        )));
    }
    Ok(Validated {
        name,
        environment,
        manifest_text,
        warnings: manifest.warnings,
        services,
        artifacts,
    })
}

#[utoipa::path(post, path = "/stacks/new", tag = "stacks",
    description = "Create a stack from a manifest and one gzipped tarball per service (multipart/form-data). Auth optional.",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    responses((status = 202, description = "Accepted; the deploy job is queued"),
              (status = 400, description = "invalid_form, missing_manifest, invalid_manifest, missing_tarball, invalid_tarball, name_required, invalid_name, invalid_env, invalid_env_key, missing_start_command"),
              (status = 401, description = "unauthorized"), (status = 402, description = "deployment_limit_reached"),
              (status = 409, description = "idempotency_in_progress"), (status = 413, description = "payload_too_large"),
              (status = 422, description = "idempotency_key_reused"), (status = 503, description = "provision_failed")))]
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
    let multipart = multipart.map_err(|e| {
        invalid_form(format!(
            "Expected a multipart/form-data body: {}.",
            e.body_text()
        ))
    })?;
    let form = read_form(multipart).await?;
    let validated = tokio::task::spawn_blocking(move || validate(form))
        .await
        .map_err(|_| ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR))??;

    let reservation = match idempotency::start(
        &state.store,
        &headers,
        caller.idempotency_scope(),
        &validated.request_hash(),
        "provision_failed",
    )
    .await?
    {
        Start::Replay(res) => return Ok(res),
        Start::Reserved(r) => Some(r),
        Start::None => None,
    };
    let result = create_reserved(&state, &caller, &rid, validated, reservation.as_ref()).await;
    if result.is_err() {
        idempotency::abandon(&state.store, reservation.as_ref()).await;
    }
    result
}

async fn create_reserved<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rid: &RequestId,
    v: Validated,
    reservation: Option<&idempotency::Reservation>,
) -> ApiResult<Response> {
    let ctx = audit_ctx(caller, rid);
    let slug = StackSlug::generate();
    let (team_id, tier, fingerprint, expires_at) = match caller {
        Caller::Team(p) => (Some(p.team.id), p.team.tier.clone(), None, None),
        Caller::Anonymous { fingerprint } => {
            let ttl = i64::try_from(state.config.anonymous_ttl.as_millis()).unwrap_or(i64::MAX);
            (
                None,
                "anonymous".to_owned(),
                Some(fingerprint.clone()),
                Some(ctx.now.saturating_add_ms(ttl)),
            )
        }
    };
    let body = json!({
        "ok": true,
        "stack_id": slug,
        "name": v.name,
        "env": v.environment,
        "status": "building",
        "tier": tier,
        "expires_in": if expires_at.is_some() { humantime::format_duration(state.config.anonymous_ttl).to_string() } else { String::new() },
        "expires_at": expires_at.map(|t| t.to_rfc3339()),
        "services": v.services.iter().map(|s| json!({
            "name": s.name, "status": "building", "expose": s.expose, "port": s.port, "url": Value::Null,
        })).collect::<Vec<_>>(),
        "release": { "version": 1, "name": "v1", "status": "pending", "env_version": 0 },
        "note": v.warnings.join("; "),
    });

    // Artifacts go to disk before the rows that name them (see `artifacts`).
    let data_dir = state.data_dir.clone();
    let files: Vec<(String, Bytes)> = v.artifacts.into_iter().collect();
    let sizes: Vec<(String, i64)> = files
        .iter()
        .map(|(d, b)| (d.clone(), b.len() as i64))
        .collect();
    tokio::task::spawn_blocking(move || {
        files
            .iter()
            .try_for_each(|(digest, bytes)| artifacts::save(&data_dir, digest, bytes))
    })
    .await
    .map_err(|_| ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR))?
    .map_err(|e| {
        tracing::error!(error = %e, "could not store an artifact");
        ApiError::unavailable(
            "provision_failed",
            "The server could not store the service tarballs.",
            5,
        )
    })?;

    let new = NewStack {
        slug: slug.clone(),
        name: v.name.into_string(),
        environment: v.environment.into_string(),
        team_id,
        fingerprint,
        tier,
        expires_at,
        manifest: v.manifest_text,
        services: v.services,
        artifacts: sizes,
        ctx,
        idempotency: reservation.map(|r| IdempotencyCompletion {
            scope: r.scope.clone(),
            key: r.key.clone(),
            status: 202,
            body: body.to_string(),
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
        Err(CreateStackError::Store(e)) => return Err(ApiError::store("provision_failed", &e)),
    }
    metrics::counter!("stackyard_stacks_created_total").increment(1);
    state.jobs_ready.notify_one();
    tracing::info!(stack = %slug, "stack created");
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn get_detail<S: Store>(
    state: &AppState<S>,
    access: Access,
    slug: &str,
) -> ApiResult<Json<Value>> {
    let slug = parse_slug(slug)?;
    let detail = state
        .store
        .get_stack(access, &slug)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(views::stack_detail(&detail)))
}

#[utoipa::path(get, path = "/stacks/{slug}", tag = "stacks", description = "A stack and its services. Auth optional.",
    params(("slug" = String, Path)),
    responses((status = 200, description = "The stack"), (status = 401, description = "unauthorized"), (status = 404, description = "not_found"), (status = 503, description = "fetch_failed")))]
pub async fn get_compat<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    Path(slug): Path<String>,
) -> ApiResult<Json<Value>> {
    get_detail(&state, caller.access(), &slug).await
}

#[utoipa::path(get, path = "/api/v1/stacks/{slug}", tag = "stacks", description = "A stack and its services. Auth required.",
    params(("slug" = String, Path)),
    responses((status = 200, description = "The stack"), (status = 401, description = "unauthorized"), (status = 404, description = "not_found"), (status = 503, description = "fetch_failed")))]
pub async fn get_v1<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    Path(slug): Path<String>,
) -> ApiResult<Json<Value>> {
    get_detail(&state, Access::Team(p.team.id), &slug).await
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/stacks", tag = "stacks", description = "The team's stacks, newest first. Auth required.",
    params(("limit" = Option<i64>, Query, description = "1-200, default 50"), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "{ok, items, total, next_cursor}"), (status = 401, description = "unauthorized"), (status = 503, description = "fetch_failed")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Value>> {
    let page = state
        .store
        .list_stacks(p.team.id, page_limit(q.limit), q.cursor.as_deref())
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(json!({
        "ok": true,
        "items": page.items.iter().map(views::stack_summary).collect::<Vec<_>>(),
        "total": page.total,
        "next_cursor": page.next_cursor,
    })))
}

#[utoipa::path(delete, path = "/stacks/{slug}", tag = "stacks",
    description = "Marks the stack `deleting` and queues its teardown; GET answers 404 once it finished. Auth optional.",
    params(("slug" = String, Path)),
    responses((status = 202, description = "Teardown queued"), (status = 401, description = "unauthorized"), (status = 404, description = "not_found"), (status = 503, description = "delete_failed")))]
pub async fn delete<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    Path(slug): Path<String>,
) -> ApiResult<Response> {
    let slug = parse_slug(&slug)?;
    let stack = state
        .store
        .request_deletion(caller.access(), &slug, audit_ctx(&caller, &rid))
        .await
        .map_err(|e| ApiError::store("delete_failed", &e))?
        .ok_or_else(ApiError::not_found)?;
    state.jobs_ready.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "ok": true,
            "stack_id": stack.slug,
            "status": "deleting",
            "message": format!("Teardown queued. GET /stacks/{} answers 404 once it has finished.", stack.slug),
        })),
    )
        .into_response())
}
