//! `/db/new`, `/cache/new` and `/api/v1/resources*`: databases and caches provisioned for a
//! caller (`crate::resources` runs the DDL). A create answers only once the resource works;
//! the row is written first so a crash in between is reconciled, never left half there.

use crate::auth::{Caller, Ownership, TeamCaller, audit_ctx};
use crate::bodies::{json_response, resource_body};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::idempotency::{self, Start};
use crate::middleware::RequestId;
use crate::resources::{self as provisioning, ResourceError, generate_password};
use crate::routes::{PageQuery, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use stackyard_api::{
    CreateResourceRequest, CreatedResource, DeletedResource, ResourceDetail, ResourceItem,
    ResourceLimits, ResourceList,
};
use stackyard_core::ids::sha256_hex;
use stackyard_core::model::AuditCtx;
use stackyard_core::resource::{
    NewResource, Resource, ResourceKind, ResourceStatus, generate_id, tier_limits,
};
use stackyard_core::store::{CreateResourceError, Idempotent, Store};
use stackyard_core::{ResourceName, ResourceToken};
use std::time::Duration;

#[utoipa::path(post, path = "/db/new", tag = "resources",
    description = "Provisions a PostgreSQL database and its own role in the server named by `--resource-postgres-url`; answers once it accepts connections. Auth optional: anonymous databases expire after `--anonymous-ttl` and count against the anonymous daily limit.",
    security((), ("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A replay with the same key and name returns the first response")),
    request_body(content = CreateResourceRequest, content_type = "application/json"),
    responses((status = 201, description = "Created and ready", body = CreatedResource),
        (status = 400, description = "`invalid_name`: the name does not follow the rule"),
        (status = 401, description = "`unauthorized`: this server accepts no anonymous callers"),
        (status = 402, description = "`resource_limit_reached`: the team has its maximum of resources"),
        (status = 404, description = "`not_found`: a replay (same `Idempotency-Key`) of a create whose resource was deleted since"),
        (status = 429, description = "`rate_limit_exceeded`: the anonymous daily cap of this network is reached"),
        (status = 503, description = "`resource_unavailable`: no PostgreSQL server is configured; `provision_failed`: it (or the store) failed")))]
pub async fn create_db<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateResourceRequest>,
) -> ApiResult<Response> {
    create(
        &state,
        &caller,
        &rid,
        &headers,
        body,
        ResourceKind::Postgres,
    )
    .await
}

#[utoipa::path(post, path = "/cache/new", tag = "resources",
    description = "Provisions a Redis ACL user confined to its own key prefix (`key_prefix`) in the server named by `--resource-redis-url`. Auth optional, as `POST /db/new`.",
    security((), ("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A replay with the same key and name returns the first response")),
    request_body(content = CreateResourceRequest, content_type = "application/json"),
    responses((status = 201, description = "Created and ready", body = CreatedResource),
        (status = 400, description = "`invalid_name`: the name does not follow the rule"),
        (status = 401, description = "`unauthorized`: this server accepts no anonymous callers"),
        (status = 402, description = "`resource_limit_reached`: the team has its maximum of resources"),
        (status = 404, description = "`not_found`: a replay (same `Idempotency-Key`) of a create whose resource was deleted since"),
        (status = 429, description = "`rate_limit_exceeded`: the anonymous daily cap of this network is reached"),
        (status = 503, description = "`resource_unavailable`: no Redis server is configured; `provision_failed`: it (or the store) failed")))]
pub async fn create_cache<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateResourceRequest>,
) -> ApiResult<Response> {
    create(&state, &caller, &rid, &headers, body, ResourceKind::Redis).await
}

async fn create<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rid: &RequestId,
    headers: &HeaderMap,
    body: CreateResourceRequest,
    kind: ResourceKind,
) -> ApiResult<Response> {
    if matches!(caller, Caller::Anonymous { .. }) && !state.config.allow_anonymous {
        return Err(ApiError::unauthorized(
            "This server does not accept anonymous callers.",
        ));
    }
    let name =
        ResourceName::parse(&body.name).map_err(|e| ApiError::bad_request("invalid_name", e.0))?;
    state
        .provisioner
        .check_configured(kind)
        .map_err(resource_error)?;
    let hash = || {
        let identity = json!({ "route": route(kind), "name": name });
        sha256_hex(identity.to_string().as_bytes())
    };
    let reservation = match idempotency::start(
        &state.store,
        headers,
        caller.idempotency_scope(),
        hash,
        "provision_failed",
    )
    .await?
    {
        Start::Replay(res) => return replay_with_url(state, caller, rid, res).await,
        Start::Reserved(r) => Some(r),
        Start::None => None,
    };
    let result = provision(state, caller, rid, name, kind, reservation.as_ref()).await;
    if result.is_err() {
        idempotency::abandon(&state.store, reservation.as_ref()).await;
    }
    result
}

fn route(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Postgres => "POST /db/new",
        ResourceKind::Redis => "POST /cache/new",
    }
}

/// Row `provisioning` → DDL → `ready` (with the audit and idempotency records) → 201. A DDL
/// failure drops what it left and removes the row before answering.
async fn provision<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rid: &RequestId,
    name: ResourceName,
    kind: ResourceKind,
    reservation: Option<&idempotency::Reservation>,
) -> ApiResult<Response> {
    let ctx = audit_ctx(caller, rid);
    if let Caller::Anonymous { fingerprint } = caller {
        state
            .rate_limiter
            .check_anonymous(&state.store, fingerprint, ctx.now)
            .await?;
    }
    let ttl = state.config.anonymous_ttl;
    let Ownership {
        team_id,
        tier,
        fingerprint,
        expires_at,
    } = caller.ownership(ctx.now, ttl);
    let id = generate_id();
    let connection_url = state
        .provisioner
        .connection_url(kind, &id, &generate_password())
        .map_err(resource_error)?;
    let resource = Resource {
        id,
        token: ResourceToken::generate(),
        kind,
        name,
        team_id,
        tier,
        status: ResourceStatus::Provisioning,
        connection_url,
        created_at: ctx.now,
        expires_at,
        stack: None,
    };
    let new = NewResource {
        resource: resource.clone(),
        fingerprint,
        max_per_team: state.config.max_resources,
    };
    match state.store.insert_resource(new).await {
        Ok(()) => {}
        Err(CreateResourceError::LimitReached { max }) => {
            return Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "resource_limit_reached",
                format!("This team already has its maximum of {max} resources."),
            )
            .with_action("Delete a resource you no longer need (DELETE /api/v1/resources/<token>) or ask the operator to raise --max-resources."));
        }
        Err(CreateResourceError::Store(e)) => return Err(ApiError::store("provision_failed", &e)),
    }
    if let Err(e) = state.provisioner.create(&resource).await {
        abandon(state, &resource, &ctx).await;
        return Err(resource_error(e));
    }
    // The answer is kept for replays without its URL (`STORED_URL`): the idempotency record
    // is not sealed, and a replay reads the URL from the sealed row instead.
    let idempotency = reservation.map(|r| {
        Idempotent::new(r.scope.clone(), r.key.clone(), 201, move |r: &Resource| {
            let mut answer = created(r, ttl);
            answer.connection_url = String::new();
            resource_body(&answer)
        })
    });
    let body = resource_body(&created(&resource, ttl));
    match state
        .store
        .mark_resource_ready(&resource, ctx.clone(), idempotency)
        .await
    {
        Ok(true) => {}
        // A reconciler took the row for a crashed create's: it is being dropped.
        Ok(false) => {
            return Err(ApiError::unavailable(
                "provision_failed",
                "The resource was reclaimed before it was ready.",
                1,
            ));
        }
        Err(e) => {
            abandon(state, &resource, &ctx).await;
            return Err(ApiError::store("provision_failed", &e));
        }
    }
    metrics::counter!("stackyard_resources_created_total", "kind" => kind.as_str()).increment(1);
    tracing::info!(resource = %resource.token, kind = kind.as_str(), "resource created");
    Ok(json_response(StatusCode::CREATED, body))
}

/// How a stored create answer holds its connection URL: not at all.
const STORED_URL: &str = r#""connection_url":"""#;

/// A replayed create: the stored answer with the URL read from the resource's sealed row
/// (audited `resource.url_read`, as every read of a URL is), so the idempotency record never
/// holds it. A resource deleted since answers 404: its URL no longer connects anywhere.
async fn replay_with_url<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rid: &RequestId,
    res: Response,
) -> ApiResult<Response> {
    let (mut parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|_| ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    let text = String::from_utf8_lossy(&bytes);
    if parts.status != StatusCode::CREATED || !text.contains(STORED_URL) {
        return Ok(Response::from_parts(parts, axum::body::Body::from(bytes)));
    }
    let token = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| ResourceToken::parse(v["token"].as_str()?).ok())
        .ok_or_else(|| ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    let team = caller.ownership(crate::now(), Duration::ZERO).team_id;
    let resource = state
        .store
        .reveal_granted_resource(team, &token, audit_ctx(caller, rid))
        .await
        .map_err(|e| ApiError::store("provision_failed", &e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "The resource this request created has been deleted since.",
            )
            .with_action("Create a new one with a new Idempotency-Key.")
        })?;
    let url = serde_json::to_string(&resource.connection_url)
        .map_err(|_| ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    let body = text.replacen(STORED_URL, &format!(r#""connection_url":{url}"#), 1);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, axum::body::Body::from(body)))
}

/// Undoes a create that failed after its row was written. If this fails too, the row stays
/// (`deleting` or `provisioning`) and the reconciler finishes the drop.
async fn abandon<S: Store>(state: &AppState<S>, r: &Resource, ctx: &AuditCtx) {
    let dropped = provisioning::delete(
        &state.store,
        &state.provisioner,
        None,
        &r.token,
        ctx.clone(),
    )
    .await;
    if let Err(e) = dropped {
        tracing::warn!(resource = %r.token, error = %e, "could not undo a failed create; the reconciler will");
    }
}

/// The create answer, from the resource as stored.
fn created(r: &Resource, ttl: Duration) -> CreatedResource {
    let expires_in = r
        .expires_at
        .map(|_| humantime::format_duration(ttl).to_string());
    let what = match r.kind {
        ResourceKind::Postgres => "database",
        ResourceKind::Redis => "cache",
    };
    let note = match r.expires_at {
        Some(at) => format!(
            "This anonymous {what} expires at {} and is then dropped with its data; to keep one, create it with a team API token.",
            at.to_rfc3339()
        ),
        None => String::new(),
    };
    CreatedResource {
        ok: true,
        id: r.id.clone(),
        token: r.token.to_string(),
        name: r.name.to_string(),
        resource_type: r.kind,
        connection_url: r.connection_url.clone(),
        tier: r.tier.clone(),
        env: match r.kind {
            ResourceKind::Postgres => "DATABASE_URL",
            ResourceKind::Redis => "REDIS_URL",
        }
        .to_owned(),
        limits: ResourceLimits::new(tier_limits(&r.tier), expires_in),
        note,
        expires_at: r.expires_at.map(|t| t.to_rfc3339()),
        key_prefix: (r.kind == ResourceKind::Redis).then(|| r.key_prefix()),
    }
}

/// The envelope of a resource server or store failure. The server's own message is logged,
/// never sent (it may name roles; it never holds a URL or password, see `crate::resources`).
fn resource_error(e: ResourceError) -> ApiError {
    match e {
        // A 503 like every other (with `Retry-After`, which a client may honour), though only
        // an operator can change this answer.
        ResourceError::NotConfigured { kind, flag } => ApiError::unavailable(
            "resource_unavailable",
            format!("This server provisions no {kind} resources."),
            3600,
        )
        .with_action(format!(
            "Ask the operator to start Stackyard with {flag} (an admin URL of a {kind} server)."
        )),
        ResourceError::Server { .. } => {
            tracing::warn!(error = %e, "resource server failure");
            ApiError::unavailable(
                "provision_failed",
                "The resource server failed; nothing was kept.",
                5,
            )
        }
        ResourceError::Store(e) => ApiError::store("provision_failed", &e),
    }
}

fn resource_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "No resource with that token exists for this team.",
    )
    .with_action("List the team's resources with GET /api/v1/resources.")
}

/// A token from the path. A malformed one cannot name any resource, so it is a plain 404.
fn parse_token(raw: &str) -> ApiResult<ResourceToken> {
    ResourceToken::parse(raw).map_err(|_| resource_not_found())
}

#[utoipa::path(get, path = "/api/v1/resources", tag = "resources", description = "The team's resources, newest first (no connection URLs). Auth required.",
    security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, description = "Page size, clamped to 1-200; default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "A page of resources", body = ResourceList),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<ResourceList>> {
    let page = state
        .store
        .list_resources(p.team.id, page_limit(q.limit), q.cursor.as_deref())
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(ResourceList {
        ok: true,
        items: page.items.iter().map(ResourceItem::from).collect(),
        total: page.total,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/resources/{token}", tag = "resources", description = "A ready resource with its connection URL. Every call writes an audit row `resource.url_read` (naming the resource, never the URL). Auth required.",
    security(("bearer" = [])),
    params(("token" = String, Path, description = "The resource's token (a UUID)")),
    responses((status = 200, description = "The resource", body = ResourceDetail),
        (status = 404, description = "`not_found`: no ready resource with that token for this team"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(token): Path<String>,
) -> ApiResult<Json<ResourceDetail>> {
    let token = parse_token(&token)?;
    let ctx = audit_ctx(&Caller::Team(p.clone()), &rid);
    let r = state
        .store
        .reveal_resource(p.team.id, &token, ctx)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .ok_or_else(resource_not_found)?;
    Ok(Json(ResourceDetail {
        ok: true,
        item: ResourceItem::from(&r),
        connection_url: r.connection_url.clone(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/resources/{token}", tag = "resources", description = "Drops the database and role, or the Redis user and its keys, then answers. Repeating it after a failure finishes the drop. Auth required.",
    security(("bearer" = [])),
    params(("token" = String, Path, description = "The resource's token (a UUID)")),
    responses((status = 200, description = "Deleted: the database or user is gone", body = DeletedResource),
        (status = 404, description = "`not_found`: no resource with that token for this team"),
        (status = 503, description = "`delete_failed`: the resource server or the store failed; the resource is `deleting` and is dropped later")))]
pub async fn delete<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(token): Path<String>,
) -> ApiResult<Json<DeletedResource>> {
    let token = parse_token(&token)?;
    let ctx = audit_ctx(&Caller::Team(p.clone()), &rid);
    provisioning::delete(
        &state.store,
        &state.provisioner,
        Some(p.team.id),
        &token,
        ctx,
    )
    .await
    .map_err(|e| match e {
        ResourceError::Store(e) => ApiError::store("delete_failed", &e),
        e => {
            tracing::warn!(resource = %token, error = %e, "could not drop a resource");
            ApiError::unavailable(
                "delete_failed",
                "The resource could not be dropped yet; it is marked deleting and will be.",
                5,
            )
        }
    })?
    .ok_or_else(resource_not_found)?;
    Ok(Json(DeletedResource {
        ok: true,
        token: token.to_string(),
        status: "deleted".to_owned(),
    }))
}
