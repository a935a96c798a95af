//! Custom domains of a stack: add (with the DNS records to create), list, verify (a TXT
//! look-up now), remove. A verified domain is routed to the stack's first exposed service.

use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::middleware::RequestId;
use crate::routes::parse_slug;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use stackyard_api::{
    AddDomainRequest, DnsRecord, DomainAnswer, DomainItem, DomainList, DomainRemoved,
    DomainVerification,
};
use stackyard_core::domain::{Domain, DomainStatus, Hostname};
use stackyard_core::ids::random_hex;
use stackyard_core::store::{DomainError, NewDomain, Store};

fn item<S: Store>(state: &AppState<S>, d: &Domain) -> DomainItem {
    DomainItem {
        id: d.id.clone(),
        hostname: d.hostname.clone(),
        status: d.status.as_str().to_owned(),
        created_at: d.created_at.to_rfc3339(),
        verification: DomainVerification {
            txt: DnsRecord {
                record_type: "TXT".into(),
                record_name: format!("{}{}", stackyard_core::domain::TXT_PREFIX, d.hostname),
                record_value: d.token.clone(),
            },
            cname: DnsRecord {
                record_type: "CNAME".into(),
                record_name: d.hostname.clone(),
                record_value: state.config.public_hostname.clone(),
            },
        },
        verified: d.status.is_verified(),
        certificate_ready: d.status == DomainStatus::CertificateReady,
        last_check_at: d.last_check_at.map(|t| t.to_rfc3339()),
        last_check_err: d.last_check_err.clone(),
        certificate_expires_at: d.cert_not_after.map(|t| t.to_rfc3339()),
        certificate_error: d.cert_error.clone(),
    }
}

fn domain_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "No domain with that id on this stack.",
    )
    .with_action("List the stack's domains with GET /api/v1/stacks/<id>/domains.")
}

#[utoipa::path(post, path = "/api/v1/stacks/{slug}/domains", tag = "domains",
    description = "Adds a custom hostname to the stack, pending verification; the answer names the DNS records to create (a TXT record proving ownership, a CNAME sending traffic here). Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)")),
    request_body(content = AddDomainRequest, content_type = "application/json"),
    responses((status = 201, description = "Added, pending verification", body = DomainAnswer),
        (status = 400, description = "`invalid_hostname`: not a hostname this server can route"),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 409, description = "`hostname_taken`: another stack has it; `domain_limit_reached`: the team has its maximum of domains; `stack_deleting`: the stack is being deleted"),
        (status = 503, description = "`domain_failed`: the store is unavailable")))]
pub async fn add<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody<AddDomainRequest>,
) -> ApiResult<(StatusCode, Json<DomainAnswer>)> {
    let slug = parse_slug(&slug)?;
    let host = Hostname::parse(&body.hostname, &state.config.base_domain)
        .map_err(|e| ApiError::bad_request("invalid_hostname", e))?;
    let team = p.team.id;
    let new = NewDomain {
        id: format!("dom_{}", random_hex(12)),
        hostname: host.to_string(),
        token: crate::domains::new_token(),
        max_per_team: Some(state.config.max_domains),
        ctx: audit_ctx(&Caller::Team(p), &rid),
    };
    let d = state
        .store
        .add_domain(team, &slug, new)
        .await
        .map_err(|e| match e {
            DomainError::NotFound => ApiError::not_found(),
            DomainError::Deleting => ApiError::new(
                StatusCode::CONFLICT,
                "stack_deleting",
                "The stack is being deleted.",
            ),
            DomainError::HostnameTaken => ApiError::new(
                StatusCode::CONFLICT,
                "hostname_taken",
                format!("{host} is already a custom domain of a stack."),
            )
            .with_action("Remove it from the stack that has it first."),
            DomainError::LimitReached { max } => ApiError::new(
                StatusCode::CONFLICT,
                "domain_limit_reached",
                format!("This team already has its maximum of {max} custom domains."),
            )
            .with_action(
                "Remove a domain you no longer need, or ask the operator to raise --max-domains.",
            ),
            DomainError::Store(e) => ApiError::store("domain_failed", &e),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(DomainAnswer {
            ok: true,
            domain: item(&state, &d),
        }),
    ))
}

async fn domains_of<S: Store>(
    state: &AppState<S>,
    team: stackyard_core::model::TeamId,
    slug: &stackyard_core::StackSlug,
) -> ApiResult<Vec<Domain>> {
    state
        .store
        .list_domains(team, slug)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .ok_or_else(ApiError::not_found)
}

#[utoipa::path(get, path = "/api/v1/stacks/{slug}/domains", tag = "domains",
    description = "The stack's custom domains, oldest first. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)")),
    responses((status = 200, description = "The domains", body = DomainList),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    Path(slug): Path<String>,
) -> ApiResult<Json<DomainList>> {
    let slug = parse_slug(&slug)?;
    let items: Vec<DomainItem> = domains_of(&state, p.team.id, &slug)
        .await?
        .iter()
        .map(|d| item(&state, d))
        .collect();
    Ok(Json(DomainList {
        ok: true,
        total: items.len(),
        items,
    }))
}

#[utoipa::path(post, path = "/api/v1/stacks/{slug}/domains/{id}/verify", tag = "domains",
    description = "Looks the domain's TXT record up now (5 s at most) and answers with the new state: 200 whatever the DNS says (a failure is in `last_check_err`). Verified, the domain routes to the stack's first exposed service. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"),
        ("id" = String, Path, description = "The domain's id (`dom_…`)")),
    responses((status = 200, description = "The domain after the check", body = DomainAnswer),
        (status = 404, description = "`not_found`: no such stack or domain for this team"),
        (status = 503, description = "`domain_failed`: the store is unavailable")))]
pub async fn verify<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<Json<DomainAnswer>> {
    let slug = parse_slug(&slug)?;
    let d = domains_of(&state, p.team.id, &slug)
        .await?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(domain_not_found)?;
    let d = crate::domains::check(&state.store, &state.dns, d, crate::now())
        .await
        .map_err(|e| ApiError::store("domain_failed", &e))?;
    crate::domains::sync_routes(&state.store, state.runtime.as_ref()).await;
    // Verified: its certificate is ordered now rather than at the next maintenance pass
    // (the answer does not wait for the CA; `certificate_ready` turns true when it is in).
    if let Some(acme) = state.acme.clone()
        && d.status.is_verified()
        && d.cert_not_after.is_none()
    {
        let (store, d) = (state.store.clone(), d.clone());
        tokio::spawn(async move { acme.issue(&store, d, crate::now()).await });
    }
    Ok(Json(DomainAnswer {
        ok: true,
        domain: item(&state, &d),
    }))
}

#[utoipa::path(delete, path = "/api/v1/stacks/{slug}/domains/{id}", tag = "domains",
    description = "Removes the custom domain; its route is gone when this answers. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"),
        ("id" = String, Path, description = "The domain's id (`dom_…`)")),
    responses((status = 200, description = "Removed", body = DomainRemoved),
        (status = 404, description = "`not_found`: no such stack or domain for this team"),
        (status = 503, description = "`domain_failed`: the store is unavailable")))]
pub async fn remove<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<Json<DomainRemoved>> {
    let slug = parse_slug(&slug)?;
    let team = p.team.id;
    let ctx = audit_ctx(&Caller::Team(p), &rid);
    let removed = state
        .store
        .remove_domain(team, &slug, &id, ctx)
        .await
        .map_err(|e| ApiError::store("domain_failed", &e))?;
    if !removed {
        return Err(domain_not_found());
    }
    crate::domains::sync_routes(&state.store, state.runtime.as_ref()).await;
    if let Some(acme) = &state.acme {
        acme.reload(&state.store).await;
    }
    Ok(Json(DomainRemoved {
        ok: true,
        id,
        message: "The domain and its route are removed.".into(),
    }))
}
